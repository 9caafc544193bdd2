"""Tests for ssmtl_jax.evaluation.metrics: AUCs vs sklearn, RBDC/TBDC by hand and vs
py-ssvad-metrics (on separated boxes, and on the evaluator's overlapping
object boxes with scores on its threshold grid: where the two agree exactly
and by how much they differ)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ssmtl_jax.evaluation import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_tensorflow_or_jax_import():
  code = ("import sys; import ssmtl_jax.evaluation.metrics, ssmtl_jax.evaluation.frame_scoring; "
          "bad = [m for m in ('jax', 'tensorflow', 'flax') "
          "if m in sys.modules]; assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- frame-level AUC -------------------------------------------------------


def _videos(seed=0):
  rng = np.random.default_rng(seed)
  scores, labels = {}, {}
  for i, n in enumerate([30, 45, 20, 25]):
    lab = (rng.random(n) < 0.3).astype(np.int64)
    if i == 2:
      lab[:] = 0  # a single-class (all normal) video
    # Rounded scores: ties inside and across videos.
    scores[f"v{i}"] = np.round(rng.normal(size=n) + lab, 1)
    labels[f"v{i}"] = lab.astype(bool) if i == 1 else lab
  return scores, labels


def _mann_whitney_auc(scores, labels):
  pos, neg = scores[labels == 1], scores[labels == 0]
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_micro_auc_matches_sklearn_and_brute_force():
  scores, labels = _videos()
  got = metrics.micro_auc(scores, labels)
  s = np.concatenate(list(scores.values()))
  l = np.concatenate(list(labels.values())).astype(int)
  assert got == pytest.approx(roc_auc_score(l, s), abs=1e-12)
  assert got == pytest.approx(_mann_whitney_auc(s, l), abs=1e-12)


def test_macro_auc_skips_single_class_videos():
  scores, labels = _videos()
  macro, per_video, num_single = metrics.macro_auc(scores, labels)
  assert num_single == 1 and per_video["v2"] is None
  want = {v: roc_auc_score(labels[v].astype(int), scores[v])
          for v in scores if v != "v2"}
  for v, a in want.items():
    assert per_video[v] == pytest.approx(a, abs=1e-12)
  assert macro == pytest.approx(np.mean(list(want.values())), abs=1e-12)
  only_single = {"a": np.zeros(3)}
  assert metrics.macro_auc(only_single, {"a": np.ones(3)}) == (
      None, {"a": None}, 1)


def test_auc_input_errors():
  with pytest.raises(ValueError, match=r"video 'b': 4 scores but 5 labels"):
    metrics.micro_auc({"a": np.ones(2), "b": np.ones(4)},
                      {"a": np.array([0, 1]), "b": np.zeros(5)})
  with pytest.raises(ValueError, match=r"no scores for \['c'\]"):
    metrics.macro_auc({"a": np.ones(2)}, {"a": [0, 1], "c": [0, 1]})
  with pytest.raises(ValueError, match="labels must be 0/1"):
    metrics.micro_auc({"a": np.ones(2)}, {"a": np.array([0, 2])})
  with pytest.raises(ValueError, match="normal and abnormal"):
    metrics.micro_auc({"a": np.ones(2)}, {"a": np.array([1, 1])})


# --- RBDC / TBDC by hand ----------------------------------------------------

H, W = 40, 60


def _gt(frames, boxes, tracks=None, num_frames=4):
  return metrics.GroundTruth.from_boxes(num_frames, H, W, frames, boxes,
                                        tracks)


def _det(frames, boxes, scores):
  return metrics.Detections(frames, boxes, scores)


GT_A = (10, 10, 20, 20)
GT_B = (30, 5, 40, 25)
BG = (45, 30, 55, 38)  # background, no GT there


def test_perfect_detector():
  gt = {"v": _gt([0, 1], [GT_A, GT_B], [0, 0])}
  det = {"v": _det([0, 1], [GT_A, GT_B], [0.9, 0.8])}
  c = metrics.detection_curves(det, gt)
  assert c.rbdc == pytest.approx(1.0) and c.tbdc == pytest.approx(1.0)
  np.testing.assert_allclose(c.fpr, [0, 0, 0])
  np.testing.assert_allclose(c.rbdr, [0, 0.5, 1])
  # py-ssvad-metrics convention: no extension past the last point (FPR 0).
  c = metrics.detection_curves(det, gt, extend_to_fpr_max=False)
  assert c.rbdc == 0.0 and c.tbdc == 0.0


def test_background_only_detector():
  gt = {"v": _gt([0, 1], [GT_A, GT_B])}
  det = {"v": _det([0, 1, 2, 3], [BG] * 4, [0.9, 0.1, 0.5, 0.7])}
  c = metrics.detection_curves(det, gt)
  assert c.rbdc == 0.0 and c.tbdc == 0.0
  np.testing.assert_allclose(c.fpr, [0, 0.25, 0.5, 0.75, 1.0])
  # Tracks were derived: A (frame 0) and B (frame 1) do not overlap.
  assert c.num_gt_tracks == 2 and c.num_videos_tracks_derived == 1


def test_one_miss_exact_values():
  # 4 frames; GT A in frame 0 (hit at 0.9), GT B in frame 1 (hit at 0.5),
  # a false positive at 0.8 in frame 2.
  gt = [0, 1], [GT_A, GT_B]
  det = {"v": _det([0, 2, 1], [GT_A, BG, (31, 5, 40, 24)], [0.9, 0.8, 0.5])}
  c = metrics.detection_curves(det, {"v": _gt(*gt, [0, 1])})
  np.testing.assert_allclose(c.thresholds, [np.inf, 0.9, 0.8, 0.5])
  np.testing.assert_allclose(c.fpr, [0, 0, 0.25, 0.25])
  np.testing.assert_allclose(c.rbdr, [0, 0.5, 0.5, 1.0])
  # Area: 0.25 * 0.5 (FPR 0..0.25) + 0.75 * 1.0 (extended flat to 1).
  assert c.rbdc == pytest.approx(0.875)
  assert c.tbdc == pytest.approx(0.875)  # one region per track
  # Both regions in one track: 1 hit of 2 >= 0.1 * 2 from threshold 0.9 on.
  c = metrics.detection_curves(det, {"v": _gt(*gt, [0, 0])})
  assert c.tbdc == pytest.approx(1.0) and c.rbdc == pytest.approx(0.875)
  # Without extension: 0.25 * 0.5 only.
  c = metrics.detection_curves(det, {"v": _gt(*gt, [0, 1])},
                               extend_to_fpr_max=False)
  assert c.rbdc == pytest.approx(0.125)


def test_iou_beta_boundary_and_double_hits():
  # GT A is 10x10 = 100 px; a 10x1 box inside it has IoU 10 / 100 = beta
  # exactly -> hit (>=); a 9x1 box (IoU 0.09) misses and is a false positive.
  gt = {"v": _gt([0], [GT_A], num_frames=1)}
  hit = {"v": _det([0], [(10, 10, 20, 11)], [1.0])}
  c = metrics.detection_curves(hit, gt)
  assert c.rbdr[-1] == 1.0 and c.fpr[-1] == 0.0
  miss = {"v": _det([0], [(10, 10, 19, 11)], [1.0])}
  c = metrics.detection_curves(miss, gt)
  assert c.rbdr[-1] == 0.0 and c.fpr[-1] == 1.0
  # One prediction covering two GT regions hits both (no one-to-one
  # matching); a second prediction on an already hit region is no FP.
  gt2 = {"v": _gt([0, 0], [(0, 0, 4, 4), (5, 0, 9, 4)], num_frames=1)}
  det2 = {"v": _det([0, 0], [(0, 0, 9, 4), (0, 0, 4, 4)], [0.5, 0.7])}
  c = metrics.detection_curves(det2, gt2)
  np.testing.assert_allclose(c.rbdr, [0, 0.5, 1.0])
  np.testing.assert_allclose(c.fpr, [0, 0, 0])


def test_track_alpha():
  # One track of 11 regions (frames 0..10): needs ceil(1.1) = 2 hits.
  n = 11
  gt = {"v": metrics.GroundTruth.from_boxes(n, H, W, np.arange(n), [GT_A] * n,
                                            [0] * n)}
  det = {"v": _det([0, 5], [GT_A, GT_A], [0.9, 0.4])}
  c = metrics.detection_curves(det, gt)
  np.testing.assert_allclose(c.thresholds, [np.inf, 0.9, 0.4])
  np.testing.assert_allclose(c.tbdr, [0, 0, 1])
  np.testing.assert_allclose(c.rbdr, [0, 1 / 11, 2 / 11])
  assert metrics.tbdc(det, gt, alpha=0.05) == pytest.approx(1.0)


def test_link_tracks_and_from_masks():
  masks = np.zeros((5, 12, 12), bool)
  masks[0, 1:3, 1:3] = True
  masks[1, 2:4, 2:4] = True     # overlaps frame 0's region -> same track
  masks[1, 8:10, 8:10] = True   # new track
  masks[2, 4:6, 4:6] = True     # touches frame 1's region only diagonally
  masks[2, 6, 6] = True         # 8-connected to the region above: one region
  masks[4, 4:6, 4:6] = True     # gap at frame 3 -> new track
  gt = metrics.GroundTruth.from_masks(masks)
  assert gt.num_regions == 5
  np.testing.assert_array_equal(gt.frame_index, [0, 1, 1, 2, 4])
  np.testing.assert_array_equal(gt.boxes[3], [4, 4, 7, 7])
  assert gt.masks[3].sum() == 5
  linked = metrics.link_tracks(gt)
  np.testing.assert_array_equal(linked.track_ids, [0, 0, 1, 2, 3])
  per_frame = metrics.GroundTruth.from_masks(masks, [5, 6, 7, -1, 8])
  np.testing.assert_array_equal(per_frame.track_ids, [5, 6, 6, 7, 8])


def test_mask_iou_and_regions_from_maps():
  # An L-shaped GT region: its box is 4x4 but it has 7 pixels.
  masks = np.zeros((1, 10, 10), bool)
  masks[0, 2:6, 2] = True
  masks[0, 5, 2:6] = True
  gt = metrics.GroundTruth.from_masks(masks)
  got = metrics._iou_matrix(np.array([[2, 2, 6, 6], [2, 5, 6, 6]]), gt, [0])
  np.testing.assert_allclose(got[:, 0], [7 / 16, 4 / 7])
  maps = np.zeros((2, 10, 20), np.float32)
  maps[0, 1:3, 2:5] = 0.5
  maps[0, 2, 3] = 0.9
  maps[0, 3, 5] = 0.3   # diagonal neighbour: same region
  maps[1, 6:8, 10:14] = 0.7
  det = metrics.regions_from_maps(maps, 0.2, height=20, width=40)
  np.testing.assert_array_equal(det.frame_index, [0, 1])
  np.testing.assert_allclose(det.boxes, [[4, 2, 12, 8], [20, 12, 28, 16]])
  np.testing.assert_allclose(det.scores, [0.9, 0.7])
  assert metrics.regions_from_maps(maps, 1.0).scores.size == 0


def test_detection_input_errors():
  gt = {"v": _gt([0], [GT_A])}
  with pytest.raises(ValueError, match="differ"):
    metrics.rbdc({"w": metrics.Detections.empty()}, gt)
  with pytest.raises(ValueError, match="no ground-truth"):
    metrics.rbdc({"v": metrics.Detections.empty()}, {"v": _gt([], [])})
  with pytest.raises(ValueError, match="outside"):
    metrics.rbdc({"v": _det([7], [GT_A], [1.0])}, gt)


# --- RBDC / TBDC vs py-ssvad-metrics -----------------------------------------

OH, OW, OT = 30, 40, 8


def _random_video(rng, num_preds):
  """GT blobs (per-frame track id) and separated predicted boxes."""
  masks = np.zeros((OT, OH, OW), bool)
  frame_tracks = np.full(OT, -1)
  yy, xx = np.mgrid[:OH, :OW]
  gt_boxes = []
  for t in range(OT):
    if rng.random() < 0.3:
      continue
    frame_tracks[t] = int(t >= OT // 2) if rng.random() < 0.85 else -1
    for _ in range(rng.integers(1, 3)):
      cy, cx = rng.integers(4, OH - 4), rng.integers(4, OW - 4)
      ry, rx = rng.integers(2, 4), rng.integers(2, 5)
      # An ellipse plus a tail: not box-shaped, so mask IoU matters.
      blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
      blob |= (yy == cy) & (xx > cx) & (xx <= cx + rx + 2)
      masks[t] |= blob
      gt_boxes.append((t, cx - rx, cy - ry, cx + rx + 3, cy + ry + 1))
  preds = []
  occupied = np.zeros((OT, OH, OW), bool)
  for _ in range(200):
    if len(preds) == num_preds:
      break
    u = rng.random()
    if gt_boxes and u < 0.4:  # around a GT blob: hits and misses
      t, x1, y1, x2, y2 = gt_boxes[rng.integers(len(gt_boxes))]
      j = rng.integers(-2, 3, 4)
      box = (x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3])
    elif gt_boxes and u < 0.7:  # small, inside a blob's box: IoU near beta
      t, x1, y1, x2, y2 = gt_boxes[rng.integers(len(gt_boxes))]
      x1, y1 = rng.integers(x1, x2 - 1), rng.integers(y1, y2 - 1)
      box = (x1, y1, x1 + rng.integers(1, 5), y1 + rng.integers(1, 5))
    else:
      t = rng.integers(OT)
      x1, y1 = rng.integers(0, OW - 3), rng.integers(0, OH - 3)
      box = (x1, y1, x1 + rng.integers(2, 9), y1 + rng.integers(2, 7))
    x1, y1 = max(box[0], 0), max(box[1], 0)
    x2, y2 = min(box[2], OW), min(box[3], OH)
    if x2 - x1 < 1 or y2 - y1 < 1:
      continue
    # py-ssvad-metrics merges touching boxes into one region: keep a gap.
    if occupied[t, max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1].any():
      continue
    occupied[t, y1:y2, x1:x2] = True
    # Scores halfway between the oracle's 0.01-spaced thresholds, and above
    # 0.01: below it a box is only active where the oracle's whole frame is
    # one region (see _ours_like_oracle).
    preds.append((t, (x1, y1, x2, y2), (rng.integers(1, 100) + 0.5) / 100))
  return masks, frame_tracks, preds


def _import_oracle():
  """py-ssvad-metrics (GPL, test-only; in the [test] extra, needs pydantic<2).

  Imported unconditionally: a missing oracle fails the tests that use it
  instead of skipping them (the conftest hook also fails the run when a test
  skips for a missing package that the installed extras provide).
  """
  if "ssvad_metrics" not in sys.modules and "numba" not in sys.modules:
    # numba compiling the oracle's helpers takes ~10 s on 2 cores, far more
    # than running them as plain numpy on these tiny frames. The flag is read
    # when the helpers are decorated, i.e. at import.
    old = os.environ.get("NUMBA_DISABLE_JIT")
    os.environ["NUMBA_DISABLE_JIT"] = "1"
    try:
      import ssvad_metrics  # pylint: disable=g-import-not-at-top,unused-import
    finally:
      if old is None:
        del os.environ["NUMBA_DISABLE_JIT"]
      else:
        os.environ["NUMBA_DISABLE_JIT"] = old
  from ssvad_metrics import criteria, data_schema  # pylint: disable=g-import-not-at-top
  return criteria.CurrentCriteriaAccumulator, data_schema.VADAnnotation


# Fails collection of this module (not a skip) when py-ssvad-metrics is
# missing.
_import_oracle()


def _oracle(videos, tmp_path):
  accumulator, annotation = _import_oracle()
  acc = accumulator(alpha=0.1, beta=0.1)
  for v, (masks, frame_tracks, preds) in enumerate(videos):
    gt_frames, pred_frames = [], []
    for t in range(OT):
      path = str(tmp_path / f"gt_{v}_{t}.npy")
      np.save(path, masks[t].astype(np.float32))
      gt_frames.append(dict(frame_id=t + 1, pixel_level_scores_map=path,
                            anomaly_track_id=int(frame_tracks[t])))
      pred_frames.append(dict(frame_id=t + 1, anomalous_regions=[
          dict(bounding_box=list(map(int, b)), score=float(s))
          for tt, b, s in preds if tt == t]))
    common = dict(frames_count=OT, is_anomalous_regions_available=True,
                  frame_width=OW, frame_height=OH)
    acc.update(
        annotation(is_gt=False, is_anomaly_track_id_available=False,
                   frames=pred_frames, **common),
        annotation(is_gt=True, is_anomaly_track_id_available=True,
                   frames=gt_frames, **common))
  out = acc.summarize()
  return out["region_roc_auc"], out["track_roc_auc"]


def _ours_like_oracle(videos):
  """Our curve plus the oracle's whole-frame point, integrated its way.

  py-ssvad-metrics' lowest thresholds (0.0, -0.01) are <= its zero
  background, so there every frame is one frame-sized region: one extra
  operating point (FPR 1 when GT regions are small), computed here with our
  own code from one full-frame detection per frame.
  """
  dets, gts, full = {}, {}, {}
  for v, (masks, frame_tracks, preds) in enumerate(videos):
    gts[v] = metrics.GroundTruth.from_masks(masks, frame_tracks)
    dets[v] = metrics.Detections([p[0] for p in preds],
                                 np.array([p[1] for p in preds]).reshape(-1, 4),
                                 [p[2] for p in preds])
    full[v] = metrics.Detections(np.arange(OT), [(0, 0, OW, OH)] * OT,
                                 np.zeros(OT))
  c = metrics.detection_curves(dets, gts, extend_to_fpr_max=False)
  f = metrics.detection_curves(full, gts, extend_to_fpr_max=False)
  assert f.fpr[-1] == 1.0
  fpr = np.append(c.fpr, f.fpr[-1])
  area = lambda y, yf: metrics.curve_area(fpr, np.append(y, yf[-1]),
                                          extend_to_fpr_max=False)
  return area(c.rbdr, f.rbdr), area(c.tbdr, f.tbdr), c


# (seed, predictions per video, whether our FPR passes 1 = truncation).
# The oracle divides 0/0 where no box is painted (then zeroes the NaNs).
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("seed,num_preds,past_one",
                         [(0, 8, False), (1, 20, True), (2, 30, True)])
def test_rbdc_tbdc_match_py_ssvad_metrics(seed, num_preds, past_one,
                                          tmp_path):
  _import_oracle()
  rng = np.random.default_rng(seed)
  videos = [_random_video(rng, num_preds) for _ in range(3)]
  rb, tb, c = _ours_like_oracle(videos)
  want_rb, want_tb = _oracle(videos, tmp_path)
  assert c.num_gt_regions > 10 and c.num_gt_tracks > 3
  assert 0 < c.rbdr[-1] < 1 and (c.fpr[-1] > 1) == past_one
  assert rb == pytest.approx(want_rb, abs=1e-3)
  assert tb == pytest.approx(want_tb, abs=1e-3)


# --- The evaluator's case: overlapping object boxes, scores on the grid -----

# py-ssvad-metrics' thresholds; the last two (0.0, -0.01) make every frame
# one frame-sized region (see metrics' module doc, difference 2).
_ORACLE_GRID = np.linspace(1.01, -0.01, 103)


def _object_boxes(rng, masks, num_preds):
  """Predicted boxes like the evaluator's: one per detected object, around
  the GT blobs (jittered) or on the background, free to overlap and touch;
  scores on the oracle's grid (k / 100)."""
  gt = metrics.GroundTruth.from_masks(masks)
  preds = []
  while len(preds) < num_preds:
    if gt.num_regions and rng.random() < 0.6:
      i = rng.integers(gt.num_regions)
      t, (x1, y1, x2, y2) = int(gt.frame_index[i]), gt.boxes[i]
      j = rng.integers(-3, 4, 4)
      box = (x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3])
    else:
      t = int(rng.integers(OT))
      x1, y1 = rng.integers(0, OW - 3), rng.integers(0, OH - 3)
      box = (x1, y1, x1 + rng.integers(2, 12), y1 + rng.integers(2, 10))
    x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
    x2, y2 = min(int(box[2]), OW), min(int(box[3]), OH)
    if x2 - x1 >= 1 and y2 - y1 >= 1:
      preds.append((t, (x1, y1, x2, y2), int(rng.integers(1, 100)) / 100))
  return preds


def _separated(preds):
  """Greedy subset (input order) whose boxes neither overlap nor touch
  (8-connectivity) another kept box of their frame."""
  occupied = np.zeros((OT, OH, OW), bool)
  kept = []
  for t, (x1, y1, x2, y2), s in preds:
    if not occupied[t, max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1].any():
      occupied[t, y1:y2, x1:x2] = True
      kept.append((t, (x1, y1, x2, y2), s))
  return kept


def _inputs(videos):
  dets, gts = {}, {}
  for v, (masks, frame_tracks, preds) in enumerate(videos):
    gts[v] = metrics.GroundTruth.from_masks(masks, frame_tracks)
    dets[v] = metrics.Detections(
        [p[0] for p in preds], np.array([p[1] for p in preds]).reshape(-1, 4),
        [p[2] for p in preds])
  return dets, gts


def _ours_on_oracle_grid(videos):
  """Ours computed the oracle's way: its threshold grid, scores rounded to
  float32 (its painted map's dtype), plus its whole-frame point."""
  dets, gts = _inputs(videos)
  dets = {v: metrics.Detections(d.frame_index, d.boxes,
                                d.scores.astype(np.float32).astype(np.float64))
          for v, d in dets.items()}
  grid = _ORACLE_GRID[_ORACLE_GRID > 0]
  assert grid.size == 101  # only 0.0 and -0.01 reach the zero background
  c = metrics.detection_curves(dets, gts, thresholds=grid,
                               extend_to_fpr_max=False)
  full = {v: metrics.Detections(np.arange(OT), [(0, 0, OW, OH)] * OT,
                                np.zeros(OT)) for v in gts}
  f = metrics.detection_curves(full, gts, extend_to_fpr_max=False)
  fpr = np.append(c.fpr, f.fpr[-1])
  area = lambda y, yf: metrics.curve_area(fpr, np.append(y, yf[-1]),
                                          extend_to_fpr_max=False)
  return area(c.rbdr, f.rbdr), area(c.tbdr, f.tbdr)


# (seed, boxes per video of 8 frames, oracle minus plain
# detection_curves(extend_to_fpr_max=False) for (RBDC, TBDC), oracle minus
# ours on the oracle's grid: the effect of merging overlapping boxes alone).
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("seed,num_preds,plain,merge", [
    (0, 10, (0.1090, 0.2014), (-0.0280, -0.0694)),
    (1, 30, (-0.2479, -0.2882), (-0.2469, -0.2882))])
def test_rbdc_tbdc_vs_py_ssvad_metrics_overlapping_boxes(
    seed, num_preds, plain, merge, tmp_path):
  """What the README may claim about py-ssvad-metrics for the evaluator's
  input (scored object boxes, which overlap; here scores k / 100).

  1. Boxes of a frame separated (no overlap, no 8-touch): the oracle equals
     ours computed on its grid with float32 scores plus its whole-frame
     point, exactly, although the scores lie on grid values.
  2. The plain ``detection_curves(extend_to_fpr_max=False)`` differs from it
     by that whole-frame point and the grid.
  3. Overlapping boxes: the oracle merges them (score map averaged where
     boxes overlap, connected components thresholded), which nothing here
     reproduces: the values differ by the pinned amounts, far beyond 1e-3.
  """
  rng = np.random.default_rng(seed)
  videos = []
  for _ in range(3):
    masks, frame_tracks, _ = _random_video(rng, 0)
    videos.append((masks, frame_tracks, _object_boxes(rng, masks, num_preds)))
  separated = [(m, ft, _separated(p)) for m, ft, p in videos]
  # The inputs do overlap, and the separated subset keeps boxes on GT.
  assert all(len(s[2]) < len(v[2]) for s, v in zip(separated, videos))
  dets, gts = _inputs(separated)
  c = metrics.detection_curves(dets, gts, extend_to_fpr_max=False)
  assert c.rbdr[-1] > 0.2 and c.num_gt_tracks > 3

  # 1. Separated boxes: exact agreement on the oracle's grid.
  (tmp_path / "separated").mkdir()
  (tmp_path / "overlapping").mkdir()
  want_rb, want_tb = _oracle(separated, tmp_path / "separated")
  rb, tb = _ours_on_oracle_grid(separated)
  assert rb == pytest.approx(want_rb, abs=1e-12)
  assert tb == pytest.approx(want_tb, abs=1e-12)
  # 2. The plain value misses the oracle's whole-frame point when its curve
  # ends below FPR 1 (seed 0), and only the grid when it passes 1 (seed 1).
  if c.fpr[-1] < 1:
    assert c.rbdc < want_rb - 0.05 and c.tbdc < want_tb - 0.05
  else:
    assert abs(c.rbdc - want_rb) < 0.01 and abs(c.tbdc - want_tb) < 0.01
  assert (c.fpr[-1] < 1) == (seed == 0)

  # 3. Overlapping boxes: merged by the oracle.
  want_rb, want_tb = _oracle(videos, tmp_path / "overlapping")
  rb, tb = _ours_on_oracle_grid(videos)
  dets, gts = _inputs(videos)
  c = metrics.detection_curves(dets, gts, extend_to_fpr_max=False)
  assert (want_rb - c.rbdc, want_tb - c.tbdc) == pytest.approx(plain, abs=2e-4)
  assert (want_rb - rb, want_tb - tb) == pytest.approx(merge, abs=2e-4)


# --------------------------------------------------------------------------
# Pixel-level AUC.


def _upsampled(maps, height, width):
  import cv2  # pylint: disable=g-import-not-at-top
  return np.stack([cv2.resize(m, (width, height),
                              interpolation=cv2.INTER_LINEAR) for m in maps])


def test_pixel_auc_matches_sklearn_on_every_pixel():
  rng = np.random.default_rng(0)
  acc = metrics.PixelAUC(-1.0, 3.0)
  all_scores, all_masks = [], []
  for frames, (h, w), (height, width) in ((5, (6, 8), (12, 16)),
                                          (3, (10, 10), (10, 10))):
    masks = rng.random((frames, height, width)) < 0.2
    # Scores that lean towards the masks, at the maps' own resolution.
    maps = rng.normal(size=(frames, h, w)).astype(np.float32)
    maps += 0.8 * _upsampled(masks.astype(np.float32), h, w)
    maps = np.clip(maps, -1.0, 3.0)
    acc.add(maps, masks)
    all_scores.append(_upsampled(maps, height, width).ravel())
    all_masks.append(masks.ravel())
  want = roc_auc_score(np.concatenate(all_masks),
                       np.concatenate(all_scores))
  assert 0.55 < want < 0.95
  assert abs(acc.value() - want) <= acc.tie_bound + 1e-12
  assert acc.value() == pytest.approx(want, abs=1e-6)
  # Coarse bins: still within the stated bound, and the bound is not 0.
  coarse = metrics.PixelAUC(-1.0, 3.0, bins=8)
  for scores, masks in zip(all_scores[:1], all_masks[:1]):
    coarse.add(scores.reshape(5, 12, 16), masks.reshape(5, 12, 16))
  exact = roc_auc_score(all_masks[0], all_scores[0])
  assert coarse.tie_bound > 0.01
  assert abs(coarse.value() - exact) <= coarse.tie_bound


def test_pixel_auc_perfect_inverted_and_one_class():
  masks = np.zeros((2, 4, 4), bool)
  masks[0, 1:3, 1:3] = True
  perfect = metrics.PixelAUC(0.0, 1.0)
  perfect.add(masks.astype(np.float32), masks)
  inverted = metrics.PixelAUC(0.0, 1.0)
  inverted.add(1.0 - masks.astype(np.float32), masks)
  assert perfect.value() == 1.0 and inverted.value() == 0.0
  normal = metrics.PixelAUC(0.0, 1.0)
  normal.add(np.ones((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool))
  assert normal.value() is None
  with pytest.raises(ValueError, match="same T"):
    normal.add(np.ones((3, 4, 4), np.float32), masks)
