r"""Trains SSMTL (and evaluates, when config.eval.after_training).

  python -m ssmtl_jax.main --config configs/synthetic.py --workdir /tmp/ssmtl
  python -m ssmtl_jax.main --config configs/ped2.py --workdir DIR \
      --config.data.root=../shared/data/ped2 --config.data.records=DIR/records
"""

import os
import sys

# TensorFlow is only the input pipeline; keep it off any accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and reports.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssmtl_jax import runner  # pylint: disable=g-import-not-at-top
  runner.quiet_library_logs()
  config = flags.FLAGS.config
  try:
    runner.run(config, _WORKDIR.value)
  except runner.USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
