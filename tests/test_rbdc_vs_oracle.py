"""scripts/rbdc_vs_oracle.py: our RBDC/TBDC vs py-ssvad-metrics on the same
boxes, scores and GT (the GT track mapping, the split of the difference into
its causes, exact agreement where the boxes of a frame are separated), and
its command line on a tiny trained and evaluated synthetic workdir."""

import importlib.util
import json
import os
import types

import numpy as np
import pytest

from ssmtl_jax.evaluation import metrics
from ssmtl_jax.jobs import runner
from tests.paths import REPO

SCRIPT = os.path.join(REPO, "scripts", "rbdc_vs_oracle.py")


def _load_script():
  spec = importlib.util.spec_from_file_location("rbdc_vs_oracle", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


rvo = _load_script()
# Fails collection (not a skip) when py-ssvad-metrics is missing.
rvo.import_oracle()

T, H, W = 10, 30, 40


def _objects(rows):
  """rows of (video, frame, (x1, y1, x2, y2), score) -> (objs, scores)."""
  objs = types.SimpleNamespace(
      video_id=np.array([r[0] for r in rows]),
      frame_index=np.array([r[1] for r in rows], np.int32),
      box=np.array([r[2] for r in rows], np.float32).reshape(-1, 4))
  return objs, np.array([r[3] for r in rows], np.float64)


def _videos(seed, overlapping):
  """Two videos: 'a' has one moving blob (one track), 'b' two blobs one after
  the other (two tracks, never in one frame). Predicted boxes on and around
  the blobs and on the background; separated (gap >= 1 px, so no 8-touch)
  unless ``overlapping``."""
  rng = np.random.default_rng(seed)
  gt = {"a": np.zeros((T, H, W), bool), "b": np.zeros((T, H, W), bool)}
  blobs = {"a": [(t, 4 + t, 5, 7, 6) for t in range(1, 8)],
           "b": [(t, 3 + t, 4, 6, 5) for t in range(0, 4)]
                + [(t, 20, 2 * t, 5, 7) for t in range(6, 10)]}
  for vid, bs in blobs.items():
    for t, x, y, w, h in bs:
      gt[vid][t, y:y + h, x:x + w] = True
      gt[vid][t, y + h - 1, x + w:x + w + 2] = True  # a tail: not a box
  rows = []
  for vid, bs in blobs.items():
    occupied = np.zeros((T, H, W), bool)
    for t, x, y, w, h in bs + [(t, None, 0, 0, 0) for t in range(T)] * 2:
      for _ in range(3 if x is not None else 1):
        if x is None:  # background
          bx, by = rng.integers(0, W - 6), rng.integers(0, H - 6)
          box = (bx, by, bx + rng.integers(2, 7), by + rng.integers(2, 7))
        else:  # around the blob: hits and misses (IoU near beta)
          j = rng.integers(-3, 4, 4)
          box = (x + j[0], y + j[1], x + w + j[2], y + h + j[3])
        x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
        x2, y2 = min(int(box[2]), W), min(int(box[3]), H)
        if x2 - x1 < 1 or y2 - y1 < 1:
          continue
        if not overlapping and occupied[t, max(y1 - 1, 0):y2 + 1,
                                        max(x1 - 1, 0):x2 + 1].any():
          continue
        occupied[t, y1:y2, x1:x2] = True
        rows.append((vid, t, (x1, y1, x2, y2), float(rng.normal())))
  return gt, rows


def test_frame_track_ids_mapping():
  masks = np.zeros((6, 12, 12), bool)
  masks[0, 1:3, 1:3] = True
  masks[1, 2:4, 2:4] = True    # linked to frame 0: track 0
  masks[1, 8:10, 8:10] = True  # track 1, in frame 1 with track 0
  masks[2, 8:10, 8:10] = True  # track 1 only
  masks[4, 4:6, 4:6] = True    # after a gap: track 2, alone
  gt = metrics.GroundTruth.from_masks(masks)
  np.testing.assert_array_equal(metrics.link_tracks(gt).track_ids,
                                [0, 0, 1, 1, 2])
  ids, info = rvo.frame_track_ids(gt, "linked")
  # Tracks 0 and 1 share frame 1: merged; track 2 keeps its own id.
  np.testing.assert_array_equal(ids, [0, 0, 0, -1, 1, -1])
  assert info == {"num_linked_tracks": 3, "num_frame_tracks": 2,
                  "frames_with_several_linked_tracks": 1}
  ids, info = rvo.frame_track_ids(gt, "video")
  np.testing.assert_array_equal(ids, [0, 0, 0, -1, 0, -1])
  assert info["num_frame_tracks"] == 1
  empty = metrics.GroundTruth.from_masks(np.zeros((3, 4, 4), bool))
  ids, info = rvo.frame_track_ids(empty)
  np.testing.assert_array_equal(ids, [-1, -1, -1])
  assert info["num_linked_tracks"] == info["num_frame_tracks"] == 0
  with pytest.raises(ValueError, match="mapping"):
    rvo.frame_track_ids(gt, "frame")


def test_normalize_scores():
  np.testing.assert_allclose(rvo.normalize_scores([2.0, -1.0, 0.5]),
                             [1.0, 0.0, 0.5])
  np.testing.assert_array_equal(rvo.normalize_scores([3.0, 3.0]), [1.0, 1.0])
  with pytest.raises(ValueError, match="non-finite"):
    rvo.normalize_scores([0.0, np.nan])


def _check_consistent(r):
  """The differences are what the values say."""
  d = r["differences"]
  for k in ("rbdc", "tbdc"):
    for v in ("ours_frame_tracks", "ours_oracle_grid", "oracle"):
      assert 0.0 <= r[v][k] <= 1.0
    for v in ("unextended", "extended"):
      assert 0.0 <= r["ours"][v][k] <= 1.0
      assert d[f"oracle_minus_ours_{v}"][k] == pytest.approx(
          r["oracle"][k] - r["ours"][v][k], abs=1e-15)
      assert d[f"abs_oracle_minus_ours_{v}"][k] == pytest.approx(
          abs(r["oracle"][k] - r["ours"][v][k]), abs=1e-15)
    parts = (d["track_mapping"][k] + d["grid_and_whole_frame_point"][k]
             + d["box_merging"][k])
    assert parts == pytest.approx(d["oracle_minus_ours_unextended"][k],
                                  abs=1e-12)
  assert d["track_mapping"]["rbdc"] == 0.0  # tracks do not touch RBDC


def _ours_directly(gt, objs, scores, extend):
  dets = {v: metrics.Detections(objs.frame_index[objs.video_id == v],
                                objs.box[objs.video_id == v],
                                scores[objs.video_id == v]) for v in gt}
  gts = {v: metrics.GroundTruth.from_masks(m) for v, m in gt.items()}
  return metrics.detection_curves(dets, gts, extend_to_fpr_max=extend)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("seed", [0, 1])
def test_separated_boxes_agree_with_the_oracle(seed):
  gt, rows = _videos(seed, overlapping=False)
  objs, raw = _objects(rows)
  r = rvo.compare(objs, raw, gt, progress=False)
  _check_consistent(r)
  assert r["frames_with_touching_boxes"] == 0
  assert r["mapping"] == dict(
      r["mapping"], name="linked", num_linked_tracks=3, num_frame_tracks=3,
      frames_with_several_linked_tracks=0)
  assert r["num_gt_tracks_ours"] == 3 and r["num_videos"] == 2
  assert r["num_frames"] == 2 * T and r["num_objects"] == len(rows)
  # Ours is the evaluator's computation, on raw or normalised scores alike.
  for extend, key in ((False, "unextended"), (True, "extended")):
    for scores in (raw, rvo.normalize_scores(raw)):
      c = _ours_directly(gt, objs, scores, extend)
      assert (r["ours"][key]["rbdc"], r["ours"][key]["tbdc"]) == (
          pytest.approx(c.rbdc, abs=1e-12), pytest.approx(c.tbdc, abs=1e-12))
  d = r["differences"]
  # No frame holds two tracks: the oracle counts our tracks.
  assert d["track_mapping"] == {"rbdc": 0.0, "tbdc": 0.0}
  # Separated boxes: the oracle is ours on its grid, exactly.
  assert abs(d["box_merging"]["rbdc"]) < 1e-9
  assert abs(d["box_merging"]["tbdc"]) < 1e-9
  assert 0.05 < r["ours"]["unextended"]["rbdc"] < 0.95


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_perfect_detector_known_values():
  """Every GT region's box predicted, nothing else: no false positive, so our
  curve stays at FPR 0. Unextended it has no area (0), extended it is 1. The
  oracle adds its whole-frame point (FPR 1, nothing detected: the blobs are
  < 10% of the frame) and joins it to its last point at FPR 0 by the
  trapezoid rule: half that point's rate. That rate misses the lowest-scored
  region: normalised to 0.0, it is active only at the oracle's thresholds
  <= 0, where the whole frame is one region. So RBDC (n - 1) / (2 n) and
  TBDC 1 / 2 (one region less does not undetect a track)."""
  gt, _ = _videos(0, overlapping=False)
  rows = []
  for vid, masks in gt.items():
    g = metrics.GroundTruth.from_masks(masks)
    rows += [(vid, int(t), tuple(b), 0.0)
             for t, b in zip(g.frame_index, g.boxes)]
  n = len(rows)
  objs, _ = _objects(rows)
  raw = np.linspace(0.5, 1.0, n)  # distinct: one lowest-scored region
  r = rvo.compare(objs, raw, gt, progress=False)
  _check_consistent(r)
  assert r["ours_last_fpr"] == 0.0 and r["num_gt_regions"] == n == 15
  want = {"rbdc": (n - 1) / (2 * n), "tbdc": 0.5}
  for k in ("rbdc", "tbdc"):
    assert r["ours"]["unextended"][k] == 0.0
    assert r["ours"]["extended"][k] == pytest.approx(1.0)
    assert r["ours_oracle_grid"][k] == pytest.approx(want[k], abs=1e-12)
    assert r["oracle"][k] == pytest.approx(want[k], abs=1e-12)
    assert r["differences"]["abs_oracle_minus_ours_extended"][k] == (
        pytest.approx(1.0 - want[k], abs=1e-12))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_overlapping_boxes_and_video_mapping():
  gt, rows = _videos(2, overlapping=True)
  objs, raw = _objects(rows)
  r = rvo.compare(objs, raw, gt, progress=False)
  _check_consistent(r)
  assert r["frames_with_touching_boxes"] > 5
  # The oracle merges overlapping boxes: a real difference, reported.
  assert abs(r["differences"]["box_merging"]["rbdc"]) > 1e-3
  v = rvo.compare(objs, raw, gt, mapping="video", progress=False)
  _check_consistent(v)
  assert v["mapping"]["num_frame_tracks"] == 2  # video b's 2 tracks -> 1
  assert v["ours"] == r["ours"] and v["oracle"]["rbdc"] == r["oracle"]["rbdc"]
  assert v["differences"]["track_mapping"]["tbdc"] != 0.0


def test_errors():
  gt, rows = _videos(0, overlapping=False)
  objs, raw = _objects(rows)
  with pytest.raises(ValueError, match="without ground truth"):
    rvo.compare(objs, raw, {"a": gt["a"]}, progress=False)
  with pytest.raises(ValueError, match="mapping"):
    rvo.compare(objs, raw, gt, mapping="frame", progress=False)
  objs.frame_index[0] = T
  with pytest.raises(ValueError, match="outside"):
    rvo.compare(objs, raw, gt, progress=False)


# --- The command line on a real (tiny) evaluated workdir ---------------------

TINY_CONFIG = '''
from configs import synthetic


def get_config():
  config = synthetic.get_config()
  config.synthetic.num_train = 1
  config.synthetic.num_test = 2
  config.synthetic.num_frames = 16
  config.synthetic.height = 60
  config.synthetic.width = 80
  config.build.crop_size = 16
  config.build.half_window = 3
  config.model.widths = (4,)
  config.tasks.seq_half = 1
  config.tasks.mi.weight = 0.0
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  config.total_steps = 2
  config.log_every_steps = 2
  config.checkpoint.every_steps = 2
  config.checkpoint.async_save = False
  config.progress_bar = False
  config.eval.batch_size = 16
  config.eval.plots = False
  return config
'''


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  base = tmp_path_factory.mktemp("rbdc_vs_oracle")
  path = str(base / "tiny.py")
  with open(path, "w") as f:
    f.write(TINY_CONFIG)
  spec = importlib.util.spec_from_file_location("tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  workdir = str(base / "wd")
  result = runner.run(module.get_config(), workdir)
  return path, workdir, result["eval"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_command_line_on_an_evaluated_workdir(evaluated, capsys):
  config, workdir, report = evaluated
  r = rvo.main(["--config", config, "--workdir", workdir, "--noprogress"])
  out = capsys.readouterr().out
  assert "py-ssvad-metrics" in out and "rbdc_vs_oracle.json" in out
  path = os.path.join(workdir, "eval", "rbdc_vs_oracle.json")
  with open(path) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(r))
  assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n]
  _check_consistent(saved)
  assert saved["num_videos"] == 2 and saved["num_frames"] == 32
  assert saved["num_objects"] == report["num_objects"]
  assert saved["versions"]["py-ssvad-metrics"] == "1.0.0"
  # Ours is the evaluator's own number (report.json: extended by default).
  extend = "extended" if saved["evaluator_metrics"]["extend_curves"] else (
      "unextended")
  for k in ("rbdc", "tbdc"):
    assert saved["ours"][extend][k] == pytest.approx(report[k], abs=1e-12)
