"""ssmtl_jax.base.summaries: TensorBoard scalars without TensorFlow (issue #11),
read back with TensorBoard's own loader."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from ssmtl_jax.base import summaries
from ssmtl_jax.evaluation import evaluator
from tests import event_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TF = ("tensorflow", "tensorflow_datasets", "clu", "tensorboardX")


def _event_files(logdir):
  return sorted(f for f in os.listdir(logdir)
                if f.startswith("events.out.tfevents."))


def test_scalars_round_trip(tmp_path):
  logdir = tmp_path / "wd"  # created by the writer
  with summaries.create_default_writer(logdir) as w:
    w.write_scalars(10, {"train/loss": 0.5, "train/aot_acc": np.float32(0.25),
                         "train/steps_per_sec": float("nan")})
    w.write_scalars(20, {"train/loss": np.float64(0.125), "train/n": 3})
  scalars = event_helpers.read_scalars(logdir)
  assert set(scalars) == {"train/loss", "train/aot_acc",
                          "train/steps_per_sec", "train/n"}
  assert scalars["train/loss"] == {10: 0.5, 20: 0.125}
  assert scalars["train/aot_acc"] == {10: 0.25}
  assert scalars["train/n"] == {20: 3.0}
  assert np.isnan(scalars["train/steps_per_sec"][10])
  assert len(_event_files(logdir)) == 1


def test_float32_values_like_tf_summary_scalar(tmp_path):
  with summaries.create_default_writer(tmp_path) as w:
    w.write_scalars(1, {"eval/micro_auc": 0.6789})
  value = event_helpers.read_scalars(tmp_path)["eval/micro_auc"][1]
  assert value == float(np.float32(0.6789))


def test_train_and_eval_writers_share_the_run(tmp_path):
  """The trainer's and the evaluator's files in one workdir read as one run,
  also when both are opened by the same process in the same second."""
  with summaries.create_default_writer(tmp_path) as train_w:
    train_w.write_scalars(5, {"train/loss": 1.0})
    with summaries.create_default_writer(tmp_path) as eval_w:
      eval_w.write_scalars(5, {"eval/micro_auc": 0.75})
  assert len(_event_files(tmp_path)) == 2
  assert event_helpers.read_scalars(tmp_path) == {
      "train/loss": {5: 1.0}, "eval/micro_auc": {5: 0.75}}


def test_flush_makes_events_readable_before_close(tmp_path):
  w = summaries.create_default_writer(tmp_path)
  w.write_scalars(1, {"train/loss": 2.0})
  w.flush()
  assert event_helpers.read_scalars(tmp_path) == {"train/loss": {1: 2.0}}
  w.close()
  w.close()  # idempotent
  with pytest.raises(ValueError, match="closed"):
    w.write_scalars(2, {"train/loss": 1.0})


def test_rejects_non_scalars(tmp_path):
  with summaries.create_default_writer(tmp_path) as w:
    with pytest.raises(ValueError, match="train/v"):
      w.write_scalars(1, {"train/v": np.zeros(3)})
    with pytest.raises(ValueError, match="train/s"):
      w.write_scalars(1, {"train/s": "x"})


def test_just_logging_writes_nothing_but_logs(tmp_path, caplog):
  logdir = tmp_path / "wd"
  caplog.set_level(logging.INFO)
  with summaries.create_default_writer(logdir, just_logging=True) as w:
    assert w.path is None
    w.write_scalars(7, {"train/loss": 0.5, "train/mi_acc": 1})
  assert not logdir.exists()
  assert "[7] train/loss=0.5, train/mi_acc=1" in caplog.text


def test_evaluator_scalars_only_from_process_0(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluator.jax, "process_index", lambda: 1)
  evaluator.write_scalars(str(tmp_path / "p1"), 3, {"micro_auc": 0.5})
  assert not (tmp_path / "p1").exists()
  monkeypatch.setattr(evaluator.jax, "process_index", lambda: 0)
  evaluator.write_scalars(str(tmp_path / "p0"), 3, {"micro_auc": 0.5,
                                                    "per_task/aot": 0.25})
  assert event_helpers.read_scalars(tmp_path / "p0") == {
      "eval/micro_auc": {3: 0.5}, "eval/per_task/aot": {3: 0.25}}


def _run(code, *args):
  proc = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_writer_never_imports_tensorflow_even_when_installed(tmp_path):
  _run("import sys\n"
       "from ssmtl_jax.base import summaries\n"
       "with summaries.create_default_writer(sys.argv[1]) as w:\n"
       "  w.write_scalars(1, {'train/loss': 0.5})\n"
       "bad = [m for m in sys.modules if m.split('.')[0] in "
       f"{NO_TF!r}]\n"
       "assert not bad, bad\n", tmp_path)
  assert event_helpers.read_scalars(tmp_path) == {"train/loss": {1: 0.5}}


def test_without_tensorflow(tmp_path):
  """With tensorflow, tensorflow_datasets and clu unimportable: the writer
  writes, TensorBoard's loader reads, and the trainer and evaluator import."""
  _run("import sys\n"
       f"for m in {NO_TF!r}:\n"
       "  sys.modules[m] = None  # `import m` raises ImportError\n"
       "from ssmtl_jax.base import summaries\n"
       "from tests import event_helpers\n"
       "with summaries.create_default_writer(sys.argv[1]) as w:\n"
       "  w.write_scalars(4, {'train/loss': 0.5, 'train/kd_loss': 2})\n"
       "got = event_helpers.read_scalars(sys.argv[1])\n"
       "assert got == {'train/loss': {4: 0.5}, 'train/kd_loss': {4: 2.0}}, got\n"
       "import ssmtl_jax.train.trainer, ssmtl_jax.evaluation.evaluator\n", tmp_path)
