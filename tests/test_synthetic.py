"""Tests for data_prep.synthetic (small sizes, so each generation is ~0.1 s)."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from data_prep import synthetic as synthetic_command
from ssmtl_jax.data import synthetic
from ssmtl_jax.perception import detections as detections_lib

# Small but above the minimums; num_test=3 so all anomaly types appear.
SMALL = dict(num_train=2, num_test=3, num_frames=32, height=72, width=96,
             objects_per_frame=2)


def _tree_digest(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under root."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _read_tracks(path: str) -> dict[int, list[tuple[int, float, int, int]]]:
  """{track_id: [(frame, x_centre, class, abnormal)]} sorted by frame."""
  tracks: dict[int, list[tuple[int, float, int, int]]] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == synthetic.TRACKS_HEADER
    for r in reader:
      xc = (float(r["x1"]) + float(r["x2"])) / 2
      tracks.setdefault(int(r["track_id"]), []).append(
          (int(r["frame"]), xc, int(r["class"]), int(r["abnormal"])))
  return {k: sorted(v) for k, v in tracks.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[str, dict]:
  root = str(tmp_path_factory.mktemp("syn") / "data")
  return root, synthetic.generate(root, seed=1, **SMALL)


def test_layout_and_shapes(small):
  root, summary = small
  t_len, h, w = SMALL["num_frames"], SMALL["height"], SMALL["width"]
  assert summary["videos"] == {"train": ["train_00", "train_01"],
                               "test": ["test_00", "test_01", "test_02"]}
  assert summary["frames"] == 5 * t_len
  for split, ids in summary["videos"].items():
    for vid in ids:
      frames = sorted(os.listdir(os.path.join(root, split, vid)))
      assert frames == [f"{t:04d}.png" for t in range(t_len)]
      img = cv2.imread(os.path.join(root, split, vid, frames[5]),
                       cv2.IMREAD_UNCHANGED)
      assert img.dtype == np.uint8 and img.shape == (h, w)  # 1-channel PNG.
      dets = detections_lib.read_detections(
          os.path.join(root, "detections", split, f"{vid}.csv"))
      for boxes in dets.values():
        assert np.all(boxes[:, 4] == 1.0)
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= w)
        assert np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2] - boxes[:, 0] >= synthetic.MIN_BOX)
        assert np.all(boxes[:, 3] - boxes[:, 1] >= synthetic.MIN_BOX)
      if split == "test":
        gt = np.load(os.path.join(root, "gt_frame", f"{vid}.npy"))
        assert gt.dtype == np.uint8 and gt.shape == (t_len,)
        with np.load(os.path.join(root, "gt_pixel", f"{vid}.npz")) as z:
          assert list(z.keys()) == ["mask"]
          assert z["mask"].dtype == bool and z["mask"].shape == (t_len, h, w)
      else:
        assert not os.path.exists(os.path.join(root, "gt_frame", f"{vid}.npy"))
  # Train objects are all pedestrians; about objects_per_frame per frame.
  counts = []
  for vid in summary["videos"]["train"]:
    dets = detections_lib.read_detections(
        os.path.join(root, "detections", "train", f"{vid}.csv"))
    assert all(np.all(b[:, 5] == synthetic.PERSON) for b in dets.values())
    counts += [len(dets.get(t, ())) for t in range(t_len)]
  assert 0.5 * SMALL["objects_per_frame"] <= np.mean(counts) <= (
      1.5 * SMALL["objects_per_frame"])
  marker = json.load(open(os.path.join(root, synthetic.MARKER)))
  assert marker["complete"] is True
  assert marker["params"]["seed"] == 1


def test_ground_truth_consistency(small):
  root, summary = small
  types = set()
  abnormal_total = 0
  for vid in summary["videos"]["test"]:
    gt = np.load(os.path.join(root, "gt_frame", f"{vid}.npy"))
    with np.load(os.path.join(root, "gt_pixel", f"{vid}.npz")) as z:
      mask = z["mask"]
    np.testing.assert_array_equal(gt.astype(bool), mask.any(axis=(1, 2)))
    assert 0 < gt.sum() < len(gt), (vid, gt)  # Both classes in every video.
    assert 0.1 <= gt.mean() <= 0.5, (vid, gt.mean())
    abnormal_total += int(gt.sum())
    info = summary["per_video"][vid]
    types.add(info["anomaly"])
    # Events are contiguous intervals matching gt_frame.
    expected = np.zeros_like(gt)
    for ev in info["events"]:
      expected[ev["frames"][0]:ev["frames"][1]] = 1
    np.testing.assert_array_equal(gt, expected)
    dets = detections_lib.read_detections(
        os.path.join(root, "detections", "test", f"{vid}.csv"))
    for t in np.flatnonzero(gt):
      ys, xs = np.nonzero(mask[t])
      boxes = dets[int(t)]
      inside = ((boxes[:, 0] <= xs.min()) & (boxes[:, 1] <= ys.min())
                & (boxes[:, 2] >= xs.max() + 1) & (boxes[:, 3] >= ys.max() + 1))
      assert inside.any(), (vid, t)
  assert types == set(synthetic.ANOMALY_TYPES)
  assert summary["abnormal_frames"] == abnormal_total


def test_tracks_match_detections_and_directions(small):
  root, summary = small
  normal_dx, wrong_way_dx = [], []
  for split, ids in summary["videos"].items():
    for vid in ids:
      tracks = _read_tracks(os.path.join(root, "gt_tracks", f"{vid}.csv"))
      dets = detections_lib.read_detections(
          os.path.join(root, "detections", split, f"{vid}.csv"))
      assert sum(len(v) for v in tracks.values()) == sum(
          len(v) for v in dets.values())
      for tid, rows in tracks.items():
        frames = [r[0] for r in rows]
        assert frames == list(range(frames[0], frames[-1] + 1))  # Contiguous.
        if len(rows) < 4:
          continue
        # Interior frames only: boxes are clipped at the borders.
        xc = np.array([r[1] for r in rows[1:-1]])
        dx = float(np.mean(np.diff(xc)))
        anomaly = summary["per_video"][vid]["tracks"][tid]["anomaly"]
        if split == "train":
          assert rows[0][3] == 0 and anomaly is None
          normal_dx.append(dx)
        elif anomaly == "wrong_way":
          assert all(r[3] == 1 for r in rows)
          wrong_way_dx.append(dx)
  assert normal_dx and all(dx > 0 for dx in normal_dx), normal_dx
  assert wrong_way_dx and all(dx < 0 for dx in wrong_way_dx), wrong_way_dx


def test_running_is_faster_and_unusual_class(small):
  root, summary = small
  for vid in summary["videos"]["test"]:
    info = summary["per_video"][vid]
    abnormal = [t for t in info["tracks"] if t["anomaly"]]
    normal = [t for t in info["tracks"] if not t["anomaly"]]
    assert abnormal
    if info["anomaly"] == "running":
      assert min(t["vx"] for t in abnormal) > 1.5 * max(t["vx"] for t in normal)
    elif info["anomaly"] == "unusual_object":
      assert {t["class"] for t in abnormal} <= {synthetic.BICYCLE,
                                                synthetic.TRUCK}
    else:
      assert all(t["vx"] < 0 for t in abnormal)


def test_deterministic(tmp_path, small):
  root, _ = small
  again = str(tmp_path / "again")
  synthetic.generate(again, seed=1, **SMALL)
  assert _tree_digest(root) == _tree_digest(again)
  other = str(tmp_path / "other")
  synthetic.generate(other, seed=2, **SMALL)
  a, b = _tree_digest(root), _tree_digest(other)
  assert a.keys() == b.keys()
  assert a["train/train_00/0000.png"] != b["train/train_00/0000.png"]
  assert a["gt_pixel/test_00.npz"] != b["gt_pixel/test_00.npz"]


def test_complete_and_interrupted(tmp_path):
  root = str(tmp_path / "d")
  params = dict(SMALL, num_train=1, num_test=1, seed=3)
  assert not synthetic.is_complete(root, **params)
  first = synthetic.generate(root, **params)
  assert first["generated"] and synthetic.is_complete(root, **params)
  assert not synthetic.is_complete(root, **dict(params, seed=4))
  again = synthetic.generate(root, **params)
  assert not again["generated"]
  assert again["objects"] == first["objects"]
  digest = _tree_digest(root)

  # An interrupted run: no marker, a truncated frame, a stale extra video.
  os.remove(os.path.join(root, synthetic.MARKER))
  with open(os.path.join(root, "train", "train_00", "0003.png"), "wb") as f:
    f.write(b"trunc")
  os.makedirs(os.path.join(root, "train", "train_07"))
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not ours")
  assert not synthetic.is_complete(root, **params)
  redo = synthetic.generate(root, **params)
  assert redo["generated"] and synthetic.is_complete(root, **params)
  assert not os.path.exists(os.path.join(root, "train", "train_07"))
  assert os.path.exists(os.path.join(root, "notes.txt"))  # Foreign: kept.
  os.remove(os.path.join(root, "notes.txt"))
  assert _tree_digest(root) == digest

  # Other parameters regenerate, dropping videos that no longer exist.
  synthetic.generate(root, **dict(params, num_test=0))
  assert not os.path.exists(os.path.join(root, "test", "test_00"))
  assert not os.path.exists(os.path.join(root, "gt_frame", "test_00.npy"))


def test_rgb_and_validation(tmp_path):
  root = str(tmp_path / "rgb")
  synthetic.generate(root, num_train=0, num_test=1, num_frames=16, height=48,
                     width=64, channels=3, objects_per_frame=1)
  img = cv2.imread(os.path.join(root, "test", "test_00", "0000.png"),
                   cv2.IMREAD_UNCHANGED)
  assert img.shape == (48, 64, 3) and img.dtype == np.uint8
  gt = np.load(os.path.join(root, "gt_frame", "test_00.npy"))
  assert 0 < gt.sum() < len(gt)
  with pytest.raises(ValueError):
    synthetic.generate(root, channels=2)
  with pytest.raises(TypeError):
    synthetic.is_complete(root, frames=3)


def test_cli(tmp_path):
  root = str(tmp_path / "cli")
  synthetic_command.main(["--root", root, "--num_train", "1", "--num_test", "1",
                  "--num_frames", "16", "--height", "48", "--width", "64"])
  assert synthetic.is_complete(root, num_train=1, num_test=1, num_frames=16,
                               height=48, width=64)
