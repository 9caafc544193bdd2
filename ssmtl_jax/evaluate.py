r"""Evaluates a trained checkpoint on the test split (the separate eval binary).

  python -m ssmtl_jax.evaluate --config configs/synthetic.py --workdir DIR \
      [--checkpoint STEP]

Writes DIR/eval/report.json, scores/<video>.npy, roc.png, scores_<video>.png
and eval/<metric> scalars to DIR's TensorBoard events.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from ssmtl_jax.base import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.")
_CHECKPOINT = flags.DEFINE_integer(
    "checkpoint", None, "Checkpoint step (default: config.eval.checkpoint_step,"
    " -1 = latest).")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


# Without --config, the training run's own (WORKDIR/config.json).
PARSE_FLAGS = cli.parse_flags_config_from_workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssmtl_jax.jobs import steps  # pylint: disable=g-import-not-at-top
  cli.quiet_library_logs()
  config = flags.FLAGS.config
  cli.run_reporting_user_errors(lambda: steps.check_reader(
      config, _WORKDIR.value, _WORKDIR.value, "--workdir"))
  cli.run_reporting_user_errors(
      lambda: steps.evaluate_with_videos(config, _WORKDIR.value, _CHECKPOINT.value))


if __name__ == "__main__":
  app.run(main, flags_parser=PARSE_FLAGS)
