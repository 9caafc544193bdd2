r"""Writes a portable model bundle from a training workdir.

  python -m ssmtl_jax.export --config configs/synthetic.py --workdir DIR \
      --out BUNDLE [--checkpoint STEP]

BUNDLE holds the weights, the config, the detector and teacher identities
and calibration statistics computed on training objects only
(ssmtl_jax/serve/bundle.py); ``python -m ssmtl_jax.score --bundle BUNDLE`` scores
videos with it on any machine, without the workdir or the records.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from ssmtl_jax.base import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.")
_OUT = flags.DEFINE_string("out", None, "The bundle directory (must not exist).")
_CHECKPOINT = flags.DEFINE_integer(
    "checkpoint", None, "Checkpoint step (default: config.eval.checkpoint_step,"
    " -1 = latest).")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir", "out"])


# Without --config, the training run's own (WORKDIR/config.json).
PARSE_FLAGS = cli.parse_flags_config_from_workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssmtl_jax.serve import bundle  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.jobs import steps  # pylint: disable=g-import-not-at-top
  cli.quiet_library_logs()
  config = flags.FLAGS.config
  cli.run_reporting_user_errors(lambda: steps.check_reader(
      config, _WORKDIR.value, _OUT.value, "--out"))
  meta = cli.run_reporting_user_errors(
      lambda: bundle.export(config, _WORKDIR.value, _OUT.value,
                            _CHECKPOINT.value))
  cal = meta["calibration"]
  print(f"bundle {_OUT.value}: checkpoint step {meta['step']}, calibrated on "
        f"{cal['objects']} training objects; default threshold "
        f"{cal['threshold']:.3f} ({cal['threshold_rule']})")


if __name__ == "__main__":
  app.run(main, flags_parser=PARSE_FLAGS)
