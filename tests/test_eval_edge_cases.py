"""Evaluator edge cases (issue #16, item 3): videos without objects, videos
shorter than the cube window, the per-checkpoint score cache, NaN scores into
the AUCs; and checkpoint.keep on the trainer run these tests evaluate.

One tiny job serves them all: the synthetic data set (1 train video, 1 test
video of 20 frames) plus two hand-made test videos -- ``test_empty`` (20
frames, no detection) and ``test_short`` (5 frames < 2W+1 = 7, with
detections) -- built with pre-computed detections and no classifier, trained
4 steps with a checkpoint every step and checkpoint.keep=2.
"""

import os
import shutil

import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.data import builder
from ssmtl_jax.data import synthetic
from ssmtl_jax.evaluation import evaluator as ev
from ssmtl_jax.evaluation import inference
from ssmtl_jax.evaluation import metrics
from ssmtl_jax.perception import detections
from ssmtl_jax.train import trainer
from tests import process_helpers
from tests import record_helpers


W = 3            # build.half_window: cubes of 2W+1 = 7 frames
FRAMES = 20
# Test objects need frames t-C..t+C, C = tasks.seq_half = 1 (build.test_context
# 0): a 2-frame video has no such frame.
SHORT = 2
STEPS, KEEP = 4, 2


def _config(root, records):
  config = record_helpers.file_detections_config(root, records, half_window=W)
  config.model.widths = (4,)
  config.tasks.seq_half = 1        # 3-frame sequences (seq_half*max_gap <= W)
  config.tasks.mi.weight = 0.0     # aot + mbp + kd: fewer heads to compile
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  config.total_steps = STEPS
  config.log_every_steps = STEPS
  config.checkpoint.every_steps = 1
  config.checkpoint.keep = KEEP
  config.checkpoint.async_save = True   # the default path
  config.progress_bar = False
  config.eval.after_training = False
  config.eval.batch_size = 16
  config.eval.plots = False
  return config


def _add_video(root, vid, frames, rows, labels, masks):
  """A test video made of the frames `frames` of test_00 (copied), with the
  given detection rows (frame, x1, y1, x2, y2, score, class) and ground truth."""
  src = os.path.join(root, "test", "test_00")
  names = sorted(os.listdir(src))[:frames]
  os.makedirs(os.path.join(root, "test", vid))
  for name in names:
    shutil.copy(os.path.join(src, name), os.path.join(root, "test", vid, name))
  detections.write_detections(
      os.path.join(root, "detections", "test", f"{vid}.csv"), rows)
  np.save(os.path.join(root, "gt_frame", f"{vid}.npy"), labels)
  np.savez(os.path.join(root, "gt_pixel", f"{vid}.npz"), mask=masks)


def _rows(root, vid, frames):
  per_frame = detections.read_detections(
      os.path.join(root, "detections", "test", f"{vid}.csv"))
  return [(t, *r[:4], r[4], int(r[5])) for t in sorted(per_frame)
          if t < frames for r in per_frame[t]]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  base = tmp_path_factory.mktemp("edge")
  root, records, workdir = (str(base / n) for n in ("root", "records", "wd"))
  synthetic.generate(root, seed=1, num_train=1, num_test=1, num_frames=FRAMES,
                     height=60, width=80, channels=1, objects_per_frame=2)
  labels = np.load(os.path.join(root, "gt_frame", "test_00.npy"))
  with np.load(os.path.join(root, "gt_pixel", "test_00.npz")) as f:
    masks = f["mask"]
  _add_video(root, "test_empty", FRAMES, [], np.zeros(FRAMES, np.uint8),
             np.zeros_like(masks))
  short_rows = _rows(root, "test_00", SHORT)
  assert short_rows  # the short video has detections, only no full window
  _add_video(root, "test_short", SHORT, short_rows, labels[:SHORT],
             masks[:SHORT])
  config = _config(root, records)
  metas = builder.build(config)
  summary = trainer.train(config, workdir)
  return config, workdir, metas, summary


class _CountScoring:
  """Counts the model passes over a split (Scorer.score_split) by `desc`."""

  def __init__(self, monkeypatch):
    self.calls = []
    original = inference.ObjectScorer.score_split

    def counted(scorer, info, *args, **kwargs):
      self.calls.append(kwargs.get("desc", "score"))
      return original(scorer, info, *args, **kwargs)

    monkeypatch.setattr(inference.ObjectScorer, "score_split", counted)

  def take(self):
    calls, self.calls = sorted(self.calls), []
    return calls


def _cached_scores(workdir, step):
  with np.load(os.path.join(workdir, "eval",
                            f"object_scores_step{step}.npz")) as f:
    return str(f["cache_key"]), {k: f[k] for k in f.files
                                 if k.startswith("score_")}


# --------------------------------------------------------------------------
# checkpoint.keep


def test_checkpoint_keep_leaves_the_latest_steps(job):
  _, workdir, _, summary = job
  assert summary["step"] == STEPS
  # 4 saves (every step) with keep=2: only the latest 2 remain, no leftovers
  # of the pruned ones or of temporary directories.
  assert process_helpers.committed_steps(workdir) == [STEPS - 1, STEPS]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      str(STEPS - 1), str(STEPS)]


# --------------------------------------------------------------------------
# Videos without objects, videos shorter than the window.


def test_short_video_builds_with_zero_objects(job):
  _, _, metas, _ = job
  videos = metas["test"]["videos"]
  # Frames 0-1 of test_00 hold detections, but no frame t has the frames
  # t-1..t+1 that scoring reads: the builder keeps the video (frames, size,
  # labels) and writes no object, without an error.
  assert videos["test_short"]["frames"] == SHORT
  assert videos["test_short"]["objects"] == 0
  assert videos["test_short"]["abnormal_frames"] is not None
  empty = videos["test_empty"]
  assert (empty["frames"], empty["objects"], empty["abnormal_frames"]) == (
      FRAMES, 0, 0)
  assert videos["test_00"]["objects"] > 0
  assert metas["test"]["num_objects"] == videos["test_00"]["objects"]


def test_videos_without_objects_get_background_scores(job, monkeypatch):
  config, workdir, metas, _ = job
  counter = _CountScoring(monkeypatch)
  report = ev.evaluate_checkpoint(config, workdir, STEPS)
  assert counter.take() == ["test", "train stats"]
  assert report["num_videos"] == 3
  assert report["num_frames"] == 2 * FRAMES + SHORT
  assert report["num_objects"] == metas["test"]["num_objects"]
  scores = {vid: np.load(os.path.join(workdir, "eval", "scores", f"{vid}.npy"))
            for vid in ("test_00", "test_empty", "test_short")}
  assert scores["test_empty"].shape == (FRAMES,)
  assert scores["test_short"].shape == (SHORT,)
  assert all(np.isfinite(s).all() for s in scores.values())
  # No object: every frame gets the background, the lowest object score of
  # the test set -- one constant, the same in both videos, at or below every
  # frame of the video with objects.
  background = scores["test_empty"][0]
  np.testing.assert_array_equal(scores["test_empty"], background)
  np.testing.assert_array_equal(scores["test_short"], background)
  assert background <= scores["test_00"].min() + 1e-6
  assert scores["test_00"].max() > background
  # test_empty is all normal: one class, skipped by macro AUC and counted.
  assert report["per_video_auc"]["test_empty"] is None
  assert report["num_single_class_videos"] >= 1
  for key in ("micro_auc", "macro_auc", "rbdc", "tbdc"):
    assert 0.0 <= report[key] <= 1.0, (key, report[key])


def test_test_split_without_any_object_is_a_clear_error(job, tmp_path):
  """A test split whose only video is shorter than the window has no object:
  the evaluator stops with a DataError naming the split (no AUC of nothing)."""
  config, workdir, _, _ = job
  root = str(tmp_path / "root")
  for sub in ("train", "detections/train"):
    shutil.copytree(os.path.join(config.data.root, sub),
                    os.path.join(root, sub))
  for sub, ext in (("test", ""), ("detections/test", ".csv"),
                   ("gt_frame", ".npy"), ("gt_pixel", ".npz")):
    src = os.path.join(config.data.root, sub, "test_short" + ext)
    dst = os.path.join(root, sub, "test_short" + ext)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
  short_only = _config(root, str(tmp_path / "records"))
  metas = builder.build(short_only)
  assert metas["test"]["num_objects"] == 0
  with pytest.raises(errors.DataError, match="'test' has no objects"):
    ev.evaluate_checkpoint(short_only, workdir, STEPS)


# --------------------------------------------------------------------------
# The score cache (eval/object_scores_step<N>.npz, train_stats_step<N>.json).


def test_score_cache_reused_and_invalidated(job, monkeypatch, tmp_path):
  config, workdir, _, _ = job
  eval_dir = os.path.join(workdir, "eval")
  counter = _CountScoring(monkeypatch)
  first = ev.evaluate_checkpoint(config, workdir, STEPS)   # fills the cache if needed
  counter.take()
  key4, scores4 = _cached_scores(workdir, STEPS)

  # Nothing changed: no model pass, same report.
  again = ev.evaluate_checkpoint(config, workdir, STEPS)
  assert counter.take() == []
  assert again["micro_auc"] == first["micro_auc"]
  assert again["per_task_micro_auc"] == first["per_task_micro_auc"]

  # Other variables under the same step number (e.g. a workdir retrained with
  # another seed): plant step 4's caches as step 3's; evaluating checkpoint
  # 3 must rerun the model, not report step 4's scores.
  step = STEPS - 1
  shutil.copy(os.path.join(eval_dir, f"object_scores_step{STEPS}.npz"),
              os.path.join(eval_dir, f"object_scores_step{step}.npz"))
  shutil.copy(os.path.join(eval_dir, f"train_stats_step{STEPS}.json"),
              os.path.join(eval_dir, f"train_stats_step{step}.json"))
  ev.evaluate_checkpoint(config, workdir, step)
  assert counter.take() == ["test", "train stats"]
  key3, scores3 = _cached_scores(workdir, step)
  assert key3 != key4
  assert any(not np.array_equal(scores3[k], scores4[k]) for k in scores4)

  # Records rebuilt with other crops (build.padding): rerun the model.
  rebuilt = _config(config.data.root, str(tmp_path / "records_padded"))
  rebuilt.build.padding = 0.25
  builder.build(rebuilt)
  ev.evaluate_checkpoint(rebuilt, workdir, STEPS)
  assert counter.take() == ["test", "train stats"]
  key4b, scores4b = _cached_scores(workdir, STEPS)
  assert key4b != key4
  assert any(not np.allclose(scores4b[k], scores4[k]) for k in scores4)


def test_score_cache_invalidated_by_the_kd_loss(job, monkeypatch):
  config, workdir, _, _ = job
  ev.evaluate_checkpoint(config, workdir, STEPS)           # l1 scores in the cache
  _, l1 = _cached_scores(workdir, STEPS)
  l2_config = _config(config.data.root, config.data.records)
  l2_config.tasks.kd.loss = "l2"
  counter = _CountScoring(monkeypatch)
  ev.evaluate_checkpoint(l2_config, workdir, STEPS)
  _, l2 = _cached_scores(workdir, STEPS)
  assert "test" in counter.take()
  assert not np.allclose(l2["score_kd"], l1["score_kd"])


# --------------------------------------------------------------------------
# NaN scores into the AUCs.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise_in_aucs(bad):
  labels = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 0, 1]),
            "c": np.zeros(3, np.uint8)}   # c: single class
  scores = {"a": np.array([0.1, 0.2, 0.8, 0.9]),
            "b": np.array([0.3, bad, 0.2, 0.7]), "c": np.array([0.1, 0.2, 0.3])}
  with pytest.raises(ValueError, match=r"video 'b'.*non-finite"):
    metrics.micro_auc(scores, labels)
  with pytest.raises(ValueError, match=r"video 'b'.*non-finite"):
    metrics.macro_auc(scores, labels)
  # Also in a video that macro AUC skips (one class): still an error, not a
  # silently ignored video.
  scores = dict(scores, b=np.array([0.3, 0.5, 0.2, 0.7]),
                c=np.array([0.1, bad, 0.3]))
  with pytest.raises(ValueError, match=r"video 'c'.*non-finite"):
    metrics.macro_auc(scores, labels)
  with pytest.raises(ValueError, match=r"video 'c'.*non-finite"):
    metrics.micro_auc(scores, labels)
  # The same finite scores give a number.
  scores["c"] = np.array([0.1, 0.2, 0.3])
  assert 0.0 <= metrics.micro_auc(scores, labels) <= 1.0
