r"""Builds object records from raw videos.

  python -m data_prep.build --config configs/ped2.py \
      --config.data.root=../shared/data/ped2 --config.data.records=DIR/records

On Apache Beam (the [beam] extra; DirectRunner with build.workers processes
unless Beam pipeline options say otherwise, after ``--``):

  python -m data_prep.build --config configs/ped2.py ... \
      --config.build.engine=beam -- --runner=DataflowRunner --project=P ...
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from ssmtl_jax.base import cli
from ssmtl_jax.base import files

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  # After `--`: Beam pipeline options (engine 'beam'; checked by the builder).
  beam_args = tuple(argv[1:])
  from ssmtl_jax.jobs import config_checks  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.jobs import steps  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  cli.run_reporting_user_errors(lambda: config_checks.check(config))
  cli.run_reporting_user_errors(lambda: files.check_writable_dir(
      config.data.records, "config.data.records"))
  cli.run_reporting_user_errors(lambda: config_checks.check_build(config))
  metas = cli.run_reporting_user_errors(
      lambda: steps.build_records(config, beam_args=beam_args))
  for split, meta in metas.items():
    print(f"{split}: {meta['num_videos']} videos, {meta['num_frames']} frames, "
          f"{meta['num_objects']} objects")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
