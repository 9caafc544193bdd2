r"""Trains SSMTL (and evaluates, when config.eval.after_training).

  python -m ssmtl_jax.main --config configs/synthetic.py --workdir /tmp/ssmtl
  python -m ssmtl_jax.main --config configs/ped2.py --workdir DIR \
      --config.data.root=../shared/data/ped2 --config.data.records=DIR/records
"""

import os

# Nothing here imports TensorFlow; a library that imports it where it happens
# to be installed (tensorboard, orbax) is kept quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from ssmtl_jax.base import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and reports.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssmtl_jax.jobs import config_checks  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.jobs import runner  # pylint: disable=g-import-not-at-top
  cli.quiet_library_logs()
  config = flags.FLAGS.config
  cli.run_reporting_user_errors(lambda: config_checks.check(config))
  cli.run_reporting_user_errors(lambda: runner.run(config, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
