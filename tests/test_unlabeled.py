"""Unlabeled test videos (issue #14, item 0): scored like the others, not
measured.

One tiny job serves every test: a synthetic folder (1 train video, 2 test
videos of 20 frames, pre-computed detections, no classifier) whose
``gt_frame`` and ``gt_pixel`` files are deleted, run as configs/folder.py
runs (``data.build_missing=True``, ``data.records`` empty) through
``runner.run``: build, 2 training steps, evaluation. The labelled copy of the
same folder then gives the scores and metrics to compare with.
"""

import json
import os
import shutil

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from ssmtl_jax import validate
from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.data import synthetic
from ssmtl_jax.evaluation import evaluator as ev
from ssmtl_jax.jobs import runner
from ssmtl_jax.jobs import steps
from tests import event_helpers
from tests import record_helpers

FRAMES = 20
STEPS = 2
TEST_VIDEOS = ("test_00", "test_01")
GT_DIRS = ("gt_frame", "gt_pixel")


def _config(root, records=""):
  """configs/folder.py's data settings on a tiny model and detection files."""
  config = record_helpers.file_detections_config(root, records, half_window=3)
  config.data.build_missing = True
  config.model.widths = (4,)
  config.tasks.seq_half = 1        # 3-frame sequences (seq_half*max_gap <= W)
  config.tasks.mi.weight = 0.0     # aot + mbp + kd: fewer heads to compile
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  config.total_steps = STEPS
  config.log_every_steps = STEPS
  config.checkpoint.every_steps = STEPS
  config.checkpoint.async_save = False
  config.progress_bar = False
  config.eval.batch_size = 16
  config.eval.render_video = True
  return config


def _copy_root(src, dst, keep_gt=()):
  """A copy of the data root holding the ground truth of `keep_gt` only."""
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*GT_DIRS))
  for vid in keep_gt:
    for path in (ground_truth.frame_labels_path(src, vid),
                 ground_truth.pixel_masks_path(src, vid)):
      rel = os.path.relpath(path, src)
      os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
      shutil.copy(path, os.path.join(dst, rel))
  return dst


def _copy_workdir(src, dst):
  """The trained workdir without its evaluation (the model scores again)."""
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval"))
  return dst


def _scores(workdir):
  return {vid: np.load(os.path.join(workdir, "eval", "scores", f"{vid}.npy"))
          for vid in TEST_VIDEOS}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  base = tmp_path_factory.mktemp("unlabeled")
  labelled = str(base / "labelled")
  synthetic.generate(labelled, seed=1, num_train=1, num_test=2,
                     num_frames=FRAMES, height=60, width=80, channels=1,
                     objects_per_frame=2)
  # The folder: the same videos and detections, ground truth deleted.
  folder = _copy_root(labelled, str(base / "folder"))
  assert not any(os.path.exists(os.path.join(folder, d)) for d in GT_DIRS)
  workdir = str(base / "wd")
  config = _config(folder)
  result = runner.run(config, workdir)
  return config, workdir, result, labelled


def test_folder_config_builds_trains_and_scores_unlabeled_videos(job):
  config, workdir, result, _ = job
  # data.build_missing: the records were built under WORKDIR/records.
  assert config.data.records == os.path.join(workdir, "records")
  with open(os.path.join(workdir, "records", "meta", "test.json")) as f:
    videos = json.load(f)["videos"]
  assert sorted(videos) == list(TEST_VIDEOS)
  assert all(v["abnormal_frames"] is None for v in videos.values())
  assert result["train"]["step"] == STEPS
  report = result["eval"]
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert report["num_videos"] == 2 and report["num_frames"] == 2 * FRAMES
  assert report["num_objects"] > 0


def test_unlabeled_report_has_null_metrics_and_the_reason(job):
  _, workdir, result, _ = job
  report = result["eval"]
  for key in ("micro_auc", "macro_auc", "macro_auc_single_class_as_1",
              "rbdc", "tbdc"):
    assert report[key] is None, key
  assert set(report["per_task_micro_auc"]) == {"aot", "mbp", "kd"}
  assert all(v is None for v in report["per_task_micro_auc"].values())
  assert all(v is None for v in report["per_task_macro_auc"].values())
  assert report["per_video_auc"] == {vid: None for vid in TEST_VIDEOS}
  assert report["labels"] == "none"
  assert report["unlabeled_videos"] == list(TEST_VIDEOS)
  reason = report["metrics_unavailable"]
  assert reason.startswith("no frame labels: ")
  assert "gt_frame/<video>.npy missing for all 2 'test' videos" in reason
  assert any(reason in note for note in report["notes"])
  table = ev.summary_table(report)
  assert "label metrics unavailable: no frame labels" in table
  assert "micro AUC" in table and "n/a" in table
  # TensorBoard: only the metrics that exist (none), the training scalars.
  scalars = event_helpers.read_scalars(workdir)
  assert "train/loss" in scalars
  assert not [tag for tag in scalars if tag.startswith("eval/")]


def test_unlabeled_videos_get_frame_scores_plots_and_videos(job):
  import cv2
  _, workdir, _, _ = job
  eval_dir = os.path.join(workdir, "eval")
  for vid, scores in _scores(workdir).items():
    assert scores.dtype == np.float32 and scores.shape == (FRAMES,), vid
    assert np.isfinite(scores).all()
    assert os.path.getsize(os.path.join(eval_dir, f"scores_{vid}.png")) > 1000
    cap = cv2.VideoCapture(os.path.join(eval_dir, "videos", f"{vid}.mp4"))
    frames = 0
    while cap.read()[0]:
      frames += 1
    assert frames == FRAMES, vid
  assert not os.path.exists(os.path.join(eval_dir, "roc.png"))


def test_labels_do_not_change_the_scores(job, tmp_path):
  config, workdir, _, labelled = job
  other = _copy_workdir(workdir, str(tmp_path / "wd"))
  config = _config(labelled, config.data.records)
  config.eval.render_video = False
  report = ev.evaluate_checkpoint(config, other)
  assert report["labels"] == "all" and report["unlabeled_videos"] == []
  assert report["metrics_unavailable"] is None
  for key in ("micro_auc", "macro_auc", "rbdc", "tbdc"):
    assert 0.0 <= report[key] <= 1.0, key
  assert os.path.getsize(os.path.join(other, "eval", "roc.png")) > 1000
  unlabeled, with_labels = _scores(workdir), _scores(other)
  for vid in TEST_VIDEOS:
    np.testing.assert_array_equal(with_labels[vid], unlabeled[vid], vid)


def test_partly_labelled_split_is_measured_on_the_labelled_videos(
    job, tmp_path):
  config, workdir, _, labelled = job
  root = _copy_root(labelled, str(tmp_path / "root"), keep_gt=["test_00"])
  other = _copy_workdir(workdir, str(tmp_path / "wd"))
  config = _config(root, config.data.records)
  config.eval.render_video = False
  report = ev.evaluate_checkpoint(config, other)
  scores = _scores(other)
  np.testing.assert_array_equal(scores["test_01"], _scores(workdir)["test_01"])
  labels = np.load(ground_truth.frame_labels_path(root, "test_00"))
  expected = sk_metrics.roc_auc_score(labels, scores["test_00"])
  assert report["micro_auc"] == pytest.approx(expected, abs=1e-12)
  assert report["macro_auc"] == pytest.approx(expected, abs=1e-12)
  assert report["per_video_auc"] == {"test_00": pytest.approx(expected),
                                     "test_01": None}
  assert report["labels"] == "partial"
  assert report["unlabeled_videos"] == ["test_01"]
  assert report["metrics_unavailable"] is None
  assert report["num_single_class_videos"] == 0
  assert report["rbdc"] is not None and report["tbdc"] is not None
  assert all(v is not None for v in report["per_task_micro_auc"].values())
  assert any("frame labels for 1 of 2 videos" in n and "test_01" in n
             for n in report["notes"]), report["notes"]
  assert "(1 without frame labels)" in ev.summary_table(report)
  assert os.path.getsize(os.path.join(other, "eval", "roc.png")) > 1000


def test_labelled_frames_of_one_class_give_no_label_metrics(job, tmp_path):
  """Labels that hold no abnormal frame: no ROC curve, the reason reported
  (not a ValueError from the AUC)."""
  config, workdir, _, _ = job
  root = _copy_root(config.data.root, str(tmp_path / "root"))
  os.makedirs(os.path.join(root, "gt_frame"))
  np.save(ground_truth.frame_labels_path(root, "test_00"),
          np.zeros(FRAMES, np.uint8))
  other = str(tmp_path / "wd")
  shutil.copytree(workdir, other)   # with the score caches: no model pass
  config = _config(root, config.data.records)
  config.eval.render_video = False
  report = ev.evaluate_checkpoint(config, other)
  assert report["labels"] == "partial"
  assert report["metrics_unavailable"] == (
      f"the {FRAMES} labelled frames (1 video(s)) are all normal: no ROC "
      "curve")
  assert report["micro_auc"] is None and report["rbdc"] is None
  assert report["per_video_auc"] == {vid: None for vid in TEST_VIDEOS}


def test_labels_can_still_be_required(job):
  """ssmtl_jax.validate (and the Ped2 scripts) need every label: a clear
  error naming the missing file, before any model is restored."""
  config, workdir, _, _ = job
  with pytest.raises(ground_truth.GroundTruthError,
                     match=r"'test_00' has no frame labels .*gt_frame"):
    ev.Evaluator(config, workdir, require_labels=True)
  # The unlabeled test split as ssmtl_jax.validate's validation split.
  val = config.copy_and_resolve_references()
  val.data.val_split = val.data.test_split
  with pytest.raises(ground_truth.GroundTruthError, match="no frame labels"):
    validate.select(val, workdir)
  assert issubclass(ground_truth.GroundTruthError, errors.DataError)


def test_build_missing_needs_a_data_root(tmp_path):
  config = _config("")
  steps.resolve_paths(config, str(tmp_path))
  assert config.data.records == str(tmp_path / "records")
  with pytest.raises(errors.ConfigError, match="config.data.root is empty"):
    steps.prepare_data(config)
