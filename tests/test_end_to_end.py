"""The README's main job on a shrunken synthetic config: generate -> build ->
train -> evaluate; and the evaluator's outputs and errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic as synthetic_config
from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.evaluation import evaluator
from ssmtl_jax.jobs import runner
from ssmtl_jax.jobs import steps
from ssmtl_jax.model import checkpointing
from tests import event_helpers
from tests.paths import REPO

STEPS = 150
# Measured: micro AUC 0.677 after 150 steps (chance: 0.5).
MIN_MICRO_AUC = 0.60


def _config():
  config = synthetic_config.get_config()
  config.build.crop_size = 16
  config.model.widths = (4, 8, 8)
  config.input.batch_size = 16
  config.total_steps = STEPS
  config.log_every_steps = 50
  config.checkpoint.every_steps = 100
  config.progress_bar = False
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("synthetic_job"))
  config = _config()
  result = runner.run(config, workdir)
  return config, workdir, result


def test_job_generates_builds_trains_and_evaluates(trained):
  config, workdir, result = trained
  assert config.data.root == os.path.join(workdir, "synthetic_data")
  assert config.data.records == os.path.join(workdir, "records")
  with open(os.path.join(workdir, "records", "meta", "train.json")) as f:
    assert json.load(f)["num_videos"] == 4
  assert result["train"]["step"] == STEPS
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "100", str(STEPS)]
  report = result["eval"]
  assert report["micro_auc"] > MIN_MICRO_AUC, report
  assert report["checkpoint_step"] == STEPS


def test_eval_outputs_follow_the_contract(trained):
  config, workdir, _ = trained
  eval_dir = os.path.join(workdir, "eval")
  with open(os.path.join(eval_dir, "report.json")) as f:
    report = json.load(f)
  for key in ("micro_auc", "macro_auc", "rbdc", "tbdc", "per_task_micro_auc",
              "fps", "num_frames", "num_videos", "checkpoint_step"):
    assert key in report, key
  for key in ("micro_auc", "macro_auc", "rbdc", "tbdc", "pixel_auc"):
    assert 0.0 <= report[key] <= 1.0, key
  assert set(report["per_task_micro_auc"]) == {"aot", "mi", "mbp", "kd"}
  assert report["kd_score"] == "balanced"
  assert report["fps"]["model"] > 0 and report["fps"]["end_to_end"] > 0
  assert report["num_videos"] == 3 and report["num_frames"] == 3 * 64
  gt_dir = os.path.join(config.data.root, "gt_frame")
  for vid in ("test_00", "test_01", "test_02"):
    scores = np.load(os.path.join(eval_dir, "scores", f"{vid}.npy"))
    labels = np.load(os.path.join(gt_dir, f"{vid}.npy"))
    assert scores.dtype == np.float32 and scores.shape == labels.shape
    assert os.path.getsize(os.path.join(eval_dir, f"scores_{vid}.png")) > 1000
  assert os.path.getsize(os.path.join(eval_dir, "roc.png")) > 1000


def test_pixel_auc_is_every_pixel_of_the_maps_against_the_masks(trained):
  """The report's pixel AUC is that of the evaluator's own smoothed maps,
  resized to the masks, over every pixel of the test videos: sklearn's exact
  AUC to within the bins' tie bound."""
  import cv2  # pylint: disable=g-import-not-at-top
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  config, workdir, result = trained
  ev = evaluator.Evaluator(config, workdir)
  out = ev.outputs
  scores, labels = [], []

  combined = np.asarray(out.combined)
  acc = metrics.PixelAUC(float(combined.min()), float(combined.max()))

  def keep(vid, maps):
    masks = out.gt[vid].masks()
    acc.add(maps, masks)
    height, width = masks.shape[1:]
    scores.append(np.stack([cv2.resize(m, (width, height)) for m in maps]
                           ).ravel())
    labels.append(masks.ravel())

  ev.frame_scores(out.combined, ev.settings, on_maps=keep)
  assert len(scores) == 3 and isinstance(ev.settings, frame_scoring.Settings)
  want = sk_metrics.roc_auc_score(np.concatenate(labels),
                                  np.concatenate(scores))
  assert result["eval"]["pixel_auc"] == acc.value()
  assert abs(acc.value() - want) <= acc.tie_bound
  assert acc.tie_bound < 1e-3 and 0.5 < want <= 1.0


def test_rerun_does_not_retrain(trained):
  config, workdir, result = trained
  again = runner.run(config, workdir)
  assert again["train"] == json.loads(json.dumps(result["train"]))
  assert again["eval"]["micro_auc"] == pytest.approx(result["eval"]["micro_auc"])


def test_eval_errors(trained, tmp_path):
  config, workdir, _ = trained
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint"):
    evaluator.evaluate_checkpoint(config, str(tmp_path / "empty"))
  with pytest.raises(checkpointing.CheckpointError, match="step 7"):
    evaluator.evaluate_checkpoint(config, workdir, step=7)
  # A data root without frame labels: scored, not measured
  # (tests/test_unlabeled.py), unless labels are required (ssmtl_jax.validate).
  bare = tmp_path / "bare"
  bare.mkdir()
  config = _config()
  config.data.records = os.path.join(workdir, "records")
  config.data.root = str(bare)
  with pytest.raises(ground_truth.GroundTruthError, match="no frame labels"):
    evaluator.Evaluator(config, workdir, require_labels=True)
  # Frame labels that disagree with the video length.
  shutil.copytree(os.path.join(workdir, "synthetic_data", "gt_frame"),
                  bare / "gt_frame")
  np.save(bare / "gt_frame" / "test_01.npy", np.zeros(10, np.uint8))
  with pytest.raises(ground_truth.GroundTruthError, match="10 labels"):
    evaluator.evaluate_checkpoint(config, workdir)
  config = _config()
  config.eval.kd_score = "logits"
  with pytest.raises(errors.ConfigError, match="config.eval.kd_score"):
    evaluator.evaluate_checkpoint(config, workdir)
  config = _config()
  config.eval.render_video = True
  with pytest.raises(errors.ConfigError, match="render_video"):
    evaluator.evaluate_checkpoint(config, workdir)  # no frame reader given


def test_render_annotated_videos(trained, tmp_path):
  import cv2
  config, workdir, _ = trained
  config = _config()
  config.data.root = os.path.join(workdir, "synthetic_data")
  config.data.records = os.path.join(workdir, "records")
  config.eval.render_video = True
  config.eval.plots = False
  steps.evaluate_with_videos(config, workdir)  # the binary layer reads the frames
  path = os.path.join(workdir, "eval", "videos", "test_01.mp4")
  cap = cv2.VideoCapture(path)
  frames = 0
  while cap.read()[0]:
    frames += 1
  assert frames == 64


def test_evaluator_run_yields_the_report_metrics(trained):
  config, workdir, _ = trained
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    report = json.load(f)
  ev = evaluator.Evaluator(config, workdir)  # scores come from the caches
  values = dict(ev.run())
  tasks = ("aot", "mi", "mbp", "kd")
  assert list(values) == [
      "micro_auc", "macro_auc", "macro_auc_single_class_as_1", "rbdc",
      "tbdc", "pixel_auc"] + [f"{k}/{t}" for t in tasks
                              for k in ("per_task", "per_task_macro")]
  for name in ("micro_auc", "macro_auc", "macro_auc_single_class_as_1",
               "rbdc", "tbdc", "pixel_auc"):
    assert values[name] == report[name], name
  for t in tasks:
    assert values[f"per_task/{t}"] == report["per_task_micro_auc"][t], t
    assert values[f"per_task_macro/{t}"] == report["per_task_macro_auc"][t], t
  assert ev.outputs.step == report["checkpoint_step"] == STEPS


def test_eval_metrics_go_to_the_trainers_tensorboard_events(trained):
  _, workdir, _ = trained
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    report = json.load(f)
  scalars = event_helpers.read_scalars(workdir)
  # The same event directory as the trainer (log_every_steps=50).
  assert sorted(scalars["train/loss"]) == [50, 100, STEPS]
  assert sorted(scalars["train/steps_per_sec"]) == [50, 100, STEPS]
  for name in ("micro_auc", "macro_auc", "rbdc", "tbdc"):
    assert scalars[f"eval/{name}"][STEPS] == pytest.approx(report[name],
                                                           rel=1e-6), name
  for t, auc in report["per_task_micro_auc"].items():
    assert scalars[f"eval/per_task/{t}"][STEPS] == pytest.approx(auc, rel=1e-6)


# The user's command, and what a machine without TensorFlow sees (the GPU
# image: no tensorflow, tensorflow-datasets or clu): those imports fail.
_WITH_TF = ("import runpy, sys\n"
            "sys.argv = ['ssmtl_jax.main'] + sys.argv[1:]\n"
            "runpy.run_module('ssmtl_jax.main', run_name='__main__')\n")
_NO_TF = ("import runpy, sys\n"
          "for m in ('tensorflow', 'tensorflow_datasets', 'clu'):\n"
          "  sys.modules[m] = None\n"
          "sys.argv = ['ssmtl_jax.main'] + sys.argv[1:]\n"
          "runpy.run_module('ssmtl_jax.main', run_name='__main__')\n")


def _records_files(records):
  out = {}
  for dirpath, _, files in os.walk(records):
    for f in files:
      path = os.path.join(dirpath, f)
      rel = os.path.relpath(path, records)
      if rel.startswith("meta"):  # build seconds and the data root differ
        meta = json.load(open(path))
        for v in (meta, meta.get("summary", {})):
          for k in ("build_seconds", "seconds", "root"):
            v.pop(k, None)
        for v in meta.get("videos", {}).values():
          v.pop("seconds", None)
        out[rel] = meta
      else:
        out[rel] = open(path, "rb").read()
  return out


def test_whole_job_runs_without_tensorflow(trained, tmp_path):
  """generate -> build -> train -> evaluate with tensorflow unimportable:
  the same records byte for byte as the in-process run above (where TF is
  installed), and the same losses and metrics as the same command with TF
  importable. Both commands run with one device, as a user's would; the
  in-process run has conftest's 8 fake devices, whose losses agree with one
  device's to rounding only (the same global batch summed in another
  order), so the losses are compared between the two commands."""
  config, _, _ = trained
  overrides = ["--config.build.crop_size=16", "--config.model.widths=(4,8,8)",
               "--config.input.batch_size=16", f"--config.total_steps={STEPS}",
               "--config.log_every_steps=50",
               "--config.checkpoint.every_steps=100",
               "--config.progress_bar=False"]
  runs = {}
  for name, code in (("no_tf", _NO_TF), ("tf", _WITH_TF)):
    workdir = str(tmp_path / name)
    proc = subprocess.run(
        [sys.executable, "-c", code, "--config",
         os.path.join(REPO, "configs", "synthetic.py"), f"--workdir={workdir}"]
        + overrides, cwd=REPO, capture_output=True, text=True, timeout=900,
        env=_one_device_env())
    # Head and tail: an abort's own message (XLA's, glibc's) comes first,
    # the faulthandler's thread dump after it.
    assert proc.returncode == 0, (name, proc.returncode, proc.stderr[:2000],
                                  proc.stderr[-3000:])
    assert _records_files(os.path.join(workdir, "records")) == _records_files(
        config.data.records), name
    runs[name] = (
        json.load(open(os.path.join(workdir, "train_summary.json"))),
        json.load(open(os.path.join(workdir, "eval", "report.json"))))
  (summary, report), (tf_summary, tf_report) = runs["no_tf"], runs["tf"]
  assert summary["num_devices"] == tf_summary["num_devices"] == 1
  assert summary["losses"] == tf_summary["losses"]
  for key in ("micro_auc", "macro_auc", "rbdc", "tbdc", "per_task_micro_auc"):
    assert report[key] == tf_report[key], key


# The user commands run with one device (issue #22: a subprocess on
# conftest's 8 fake devices aborted once under load, in XLA's CPU collective
# rendezvous).
def _one_device_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env
