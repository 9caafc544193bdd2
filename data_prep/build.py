r"""Builds object records from raw videos.

  python -m data_prep.build --config configs/ped2.py \
      --config.data.root=../shared/data/ped2 --config.data.records=DIR/records
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from data_prep import builder  # pylint: disable=g-import-not-at-top
  from ssmtl_jax import runner  # pylint: disable=g-import-not-at-top
  try:
    metas = builder.build(flags.FLAGS.config)
  except runner.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for split, meta in metas.items():
    logging.info("%s: %d videos, %d frames, %d objects", split,
                 meta["num_videos"], meta["num_frames"], meta["num_objects"])
    print(f"{split}: {meta['num_videos']} videos, {meta['num_frames']} frames, "
          f"{meta['num_objects']} objects")


if __name__ == "__main__":
  app.run(main)
