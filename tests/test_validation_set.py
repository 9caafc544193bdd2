"""Tests for data_prep.validation on tiny synthetic frame folders (~32x48,
grayscale jpg like Ped2, 40-60 frames)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from data_prep import validation as validation_command
from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.data import validation_split
from ssmtl_jax.perception import detections as detections_lib
from ssmtl_jax.perception import video_io

H, W = 32, 48
# Ped2-like ids: train and test both count from 01.
TRAIN = {"01": 48, "02": 60, "03": 44}
TEST = {"01": 30, "02": 30}


def _frame(rng: np.random.Generator, t: int) -> np.ndarray:
  """A gray frame: noise background and a bright square moving right."""
  img = rng.integers(0, 80, (H, W), dtype=np.uint8)
  x = 2 + (t % (W - 10))
  img[10:18, x:x + 8] = 250
  return img


def _write_video(folder: str, n: int, seed: int) -> None:
  os.makedirs(folder)
  rng = np.random.default_rng(seed)
  for t in range(n):
    cv2.imwrite(os.path.join(folder, f"{t:03d}.jpg"), _frame(rng, t))


def _make_root(tmp_path, train=None, test=None, detections=False) -> str:
  root = str(tmp_path / "ped")
  for i, (vid, n) in enumerate((train or TRAIN).items()):
    _write_video(os.path.join(root, "train", vid), n, seed=i)
  os.makedirs(os.path.join(root, "gt_frame"))
  os.makedirs(os.path.join(root, "gt_pixel"))
  for i, (vid, n) in enumerate((test or TEST).items()):
    _write_video(os.path.join(root, "test", vid), n, seed=100 + i)
    np.save(os.path.join(root, "gt_frame", f"{vid}.npy"),
            (np.arange(n) >= n // 2).astype(np.uint8))
  # Only test 01 has pixel masks: only existing files are linked.
  np.savez(os.path.join(root, "gt_pixel", "01.npz"),
           mask=np.zeros((TEST["01"], H, W), bool))
  if detections:
    for vid, n in (train or TRAIN).items():
      detections_lib.write_detections(
          os.path.join(root, "detections", "train", f"{vid}.csv"),
          [(t, t, 1, t + 5, 9, 0.5, 0) for t in range(n)])
    for vid, n in (test or TEST).items():
      detections_lib.write_detections(
          os.path.join(root, "detections", "test", f"{vid}.csv"), [])
  return root


def _frames(root: str, split: str, vid: str) -> list[np.ndarray]:
  src = {v.video_id: v for v in video_io.list_videos(root, split)}[vid]
  return list(video_io.iter_frames(src, 3))


def _tree(root: str) -> dict[str, tuple[str, int]]:
  """{relative path: (sha256 or link target, mtime_ns)} of everything under
  root, without following links."""
  out = {}
  for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      if os.path.islink(path):
        out[rel] = (os.readlink(path), os.lstat(path).st_mtime_ns)
      elif os.path.isfile(path):
        with open(path, "rb") as f:
          out[rel] = (hashlib.sha256(f.read()).hexdigest(),
                      os.stat(path).st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """One validation root (holdout 02) shared by the read-only tests."""
  tmp = tmp_path_factory.mktemp("made")
  root = _make_root(tmp)
  out = str(tmp / "val_root")
  summary = validation_split.make_validation_root(root, out, holdout=["02"])
  return root, out, summary


def test_frames_follow_the_construction(made):
  root, out, summary = made
  source = _frames(root, "train", "02")
  k = 3
  for kind in ("fast", "reverse"):
    vid = f"val02_{kind}"
    v = summary["videos"][vid]
    a, end = v["segment"]
    m = end - a
    frames = _frames(out, "val", vid)
    assert len(frames) == v["frames"] == len(os.listdir(
        os.path.join(out, "val", vid)))
    assert v["source"] == "02" and v["source_frames"] == TRAIN["02"]
    assert v["abnormal_frames"] == m >= validation_split.MIN_SEGMENT
    assert 8 <= a and end <= v["frames"] - 8  # min_normal each side.
    # PNG round trip is lossless: every frame is exactly a source frame.
    lead_in = frames[:a]
    assert all(np.array_equal(f, source[t]) for t, f in enumerate(lead_in))
    if kind == "fast":
      assert v["stride"] == k and v["frames"] + m * (k - 1) <= len(source)
      seg = [source[a - 1 + (i + 1) * k] for i in range(m)]
      after = a - 1 + m * k + 1  # Continues from where the source reached.
    else:
      assert v["stride"] == -1 and v["frames"] == len(source)
      seg = source[a - 1 - m:a - 1][::-1]
      after = a - m  # Turns around and plays forwards again.
    assert all(np.array_equal(f, s) for f, s in zip(frames[a:end], seg))
    lead_out = frames[end:]
    assert all(np.array_equal(f, source[after + i])
               for i, f in enumerate(lead_out))
    # The recorded runs are that same mapping.
    index = np.concatenate([np.arange(*r) for r in v["source_runs"]])
    assert all(np.array_equal(f, source[j]) for f, j in zip(frames, index))
    # Labels: 1 exactly on the segment, i.e. where the step is abnormal.
    labels = np.load(os.path.join(out, "gt_frame", f"{vid}.npy"))
    assert labels.dtype == np.uint8 and labels.shape == (v["frames"],)
    expected = np.zeros(v["frames"], np.uint8)
    expected[a:end] = 1
    np.testing.assert_array_equal(labels, expected)
    steps = np.diff(index)
    np.testing.assert_array_equal(labels[1:], (steps != 1).astype(np.uint8))
    assert set(steps.tolist()) == {1, v["stride"]}
    assert labels.sum() == v["abnormal_frames"]
  # Ped2-like gray input is written as single-channel PNG, 0000.png ...
  names = sorted(os.listdir(os.path.join(out, "val", "val02_fast")))
  assert names[:2] == ["0000.png", "0001.png"]
  img = cv2.imread(os.path.join(out, "val", "val02_fast", names[0]),
                   cv2.IMREAD_UNCHANGED)
  assert img.shape == (H, W)


def test_layout(made):
  root, out, summary = made
  abs_root = os.path.abspath(root)
  # Held-out 02 is not trained on; the others are absolute symlinks.
  assert sorted(os.listdir(os.path.join(out, "train"))) == ["01", "03"]
  for vid in ("01", "03"):
    link = os.path.join(out, "train", vid)
    assert os.readlink(link) == os.path.join(abs_root, "train", vid)
  assert os.readlink(os.path.join(out, "test")) == os.path.join(abs_root,
                                                                "test")
  for vid in TEST:
    assert os.readlink(os.path.join(out, "gt_frame", f"{vid}.npy")) == (
        os.path.join(abs_root, "gt_frame", f"{vid}.npy"))
  # The test video's masks are linked; the paste video's are written.
  assert sorted(os.listdir(os.path.join(out, "gt_pixel"))) == [
      "01.npz", "val02_paste.npz"]
  assert os.path.islink(os.path.join(out, "gt_pixel", "01.npz"))
  assert not os.path.exists(os.path.join(out, "detections"))
  # What the builder will see.
  ids = {split: [v.video_id for v in video_io.list_videos(out, split)]
         for split in ("train", "val", "test")}
  assert ids == {"train": ["01", "03"],
                 "val": ["val02_fast", "val02_paste", "val02_reverse"],
                 "test": ["01", "02"]}
  assert len(set(ids["val"]) | set(ids["test"])) == 5  # No collision.
  for vid in ids["val"]:
    n = len(_frames(out, "val", vid))
    labels = ground_truth.load_frame_labels(out, vid, n)
    assert 0 < labels.sum() < n  # Both classes: per-video AUC defined.
    masks = ground_truth.load_pixel_masks(out, vid, (n, H, W))
    assert (masks is None) == (not vid.endswith("_paste"))
  np.testing.assert_array_equal(
      ground_truth.load_frame_labels(out, "01", TEST["01"]),
      np.load(os.path.join(root, "gt_frame", "01.npy")))
  # The marker.
  marker = validation_split.read_marker(out)
  assert marker == {k: v for k, v in summary.items() if k != "made"}
  assert marker["complete"] and marker["arguments"]["holdout"] == ["02"]
  assert marker["arguments"]["root"] == abs_root
  assert marker["train"] == ["01", "03"] and marker["test"] == ["01", "02"]
  assert sorted(marker["val"]) == ids["val"]  # Made in KINDS order.
  assert summary["made"] == marker["val"]
  assert {v["source"] for v in marker["videos"].values()} == {"02"}
  assert {v["kind"] for v in marker["videos"].values()} == set(
      validation_split.KINDS)
  assert not [n for n in os.listdir(os.path.join(out, "val"))
              if n.startswith(".")]


def test_paste_draws_a_foreign_object_where_its_masks_say(made):
  """Outside the masks every frame is its source frame; inside, the pasted
  texture (dark outline, both dark and light cells); the masks are one box
  of the planned size on exactly the labelled frames, moving across the
  frame from one outer third to the other, whole inside it."""
  root, out, summary = made
  source = _frames(root, "train", "02")
  v = summary["videos"]["val02_paste"]
  a, end = v["segment"]
  frames = _frames(out, "val", "val02_paste")
  assert v["frames"] == len(frames) == len(source) and v["stride"] == 1
  masks = ground_truth.load_pixel_masks(out, "val02_paste",
                                        (len(frames), H, W))
  labels = ground_truth.load_frame_labels(out, "val02_paste", len(frames))
  np.testing.assert_array_equal(masks.any(axis=(1, 2)), labels.astype(bool))
  assert labels[a:end].all() and labels.sum() == end - a
  obj = validation_split.PastedObject(**{
      k: tuple(x) if isinstance(x, list) else x
      for k, x in v["object"].items()})
  h, w = obj.shape(H, W)
  centres = []
  for t, (f, s) in enumerate(zip(frames, source)):
    m = masks[t]
    np.testing.assert_array_equal(f[~m], s[~m])
    if not m.any():
      continue
    ys, xs = np.nonzero(m)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert box == obj.box(t - a, end - a, H, W)
    assert m.sum() == h * w == (box[2] - box[0]) * (box[3] - box[1])
    patch = f[box[1]:box[3], box[0]:box[2], 0].astype(int)
    assert (patch[0] == 10).all() and (patch[:, -1] == 10).all()
    inner = patch[1:-1, 1:-1]
    assert inner.min() < 75 and inner.max() > 165  # Dark and light cells.
    centres.append((box[0] + box[2]) / 2)
  assert h == max(validation_split.MIN_OBJECT_PX, round(0.2 * H))
  # Crosses from one outer third of the width to the other.
  assert abs(centres[-1] - centres[0]) > W / 4
  assert validation_split.describe("val02_paste", v).startswith(
      f"val02_paste: {len(frames)} frames from train/02 (")


def test_paste_in_colour_video_is_tinted_and_gray_stays_gray(tmp_path):
  obj = validation_split.PastedObject(size=0.5, aspect=1.0, start=(0.2, 0.5),
                                      end=(0.8, 0.5), texture_seed=3)
  gray = obj.texture(20, 20, gray=True)
  assert (gray[..., 0] == gray[..., 1]).all() and (
      gray[..., 1] == gray[..., 2]).all()
  colour = obj.texture(20, 20, gray=False)
  assert not (colour[..., 0] == colour[..., 1]).all()
  np.testing.assert_array_equal(colour, obj.texture(20, 20, gray=False))
  # The box never leaves the frame, even when the object is too wide.
  wide = dataclasses.replace(obj, aspect=5.0, start=(0.0, 0.0),
                             end=(1.0, 1.0))
  for i in range(10):
    x0, y0, x1, y1 = wide.box(i, 10, 30, 40)
    assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 30


def test_rerun_is_a_noop_and_deterministic(tmp_path):
  root = _make_root(tmp_path, detections=True)
  out = str(tmp_path / "out")
  first = validation_split.make_validation_root(root, out, holdout="03,01", seed=5)
  assert first["arguments"]["holdout"] == ["01", "03"]
  assert first["val"] == ["val01_fast", "val01_reverse", "val01_paste",
                          "val03_fast", "val03_reverse", "val03_paste"]
  before = _tree(out)
  again = validation_split.make_validation_root(root, out, holdout=["01", "03"],
                                          seed=5)
  assert again["made"] == [] and _tree(out) == before
  # Same arguments elsewhere: identical files (links aside).
  other = str(tmp_path / "other")
  validation_split.make_validation_root(root, other, holdout=["01", "03"], seed=5)
  digest = {k: v[0] for k, v in _tree(out).items()}
  assert {k: v[0] for k, v in _tree(other).items()} == digest
  # The seed moves segments; each segment depends on its own video only.
  starts = set()
  for seed in range(4):
    s = validation_split.make_validation_root(
        root, str(tmp_path / f"s{seed}"), holdout=["01"], seed=seed,
        kinds=["fast"])
    starts.add(s["videos"]["val01_fast"]["segment"][0])
  assert len(starts) > 1
  alone = validation_split.make_validation_root(
      root, str(tmp_path / "alone"), holdout=["01"], seed=5)
  assert alone["videos"]["val01_fast"] == first["videos"]["val01_fast"]


def test_detections_are_remapped(tmp_path):
  root = _make_root(tmp_path, detections=True)
  out = str(tmp_path / "out")
  summary = validation_split.make_validation_root(root, out, holdout=["02"])
  det = os.path.join(out, "detections")
  assert sorted(os.listdir(os.path.join(det, "train"))) == ["01.csv",
                                                             "03.csv"]
  assert os.path.islink(os.path.join(det, "test"))
  for vid, v in summary["videos"].items():
    index = np.concatenate([np.arange(*r) for r in v["source_runs"]])
    rows = detections_lib.read_detections(
        os.path.join(det, "val", f"{vid}.csv"))
    assert sorted(rows) == list(range(v["frames"]))
    for t, j in enumerate(index):  # Source frame j's box starts at x = j.
      np.testing.assert_allclose(rows[t][:, 0], [j])


def test_resume_after_interruption(tmp_path):
  root = _make_root(tmp_path)
  out = str(tmp_path / "out")
  validation_split.make_validation_root(root, out, holdout=["01"])
  before = _tree(out)
  # As if killed while writing val01_reverse: marker incomplete, a stale
  # temporary folder, the video and its labels missing.
  marker = validation_split.read_marker(out)
  marker["complete"] = False
  with open(os.path.join(out, validation_split.MARKER), "w") as f:
    json.dump(marker, f)
  os.rename(os.path.join(out, "val", "val01_reverse"),
            os.path.join(out, "val", ".tmp-val01_reverse"))
  os.remove(os.path.join(out, "gt_frame", "val01_reverse.npy"))
  os.rename(os.path.join(out, "val", "val01_paste"),
            os.path.join(out, "val", ".tmp-val01_paste"))
  again = validation_split.make_validation_root(root, out, holdout=["01"])
  assert again["made"] == ["val01_reverse", "val01_paste"]
  assert again["complete"]
  after = _tree(out)
  assert {k: v[0] for k, v in after.items()} == {
      k: v[0] for k, v in before.items()}
  assert after["val/val01_fast/0000.png"] == before["val/val01_fast/0000.png"]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(holdout=["07"]), errors.ConfigError,
     "--holdout: no training video 07 in .*available: 01, 02, 03"),
    (dict(holdout="01,02,03"), errors.ConfigError,
     "holds out every training video.*nothing is left to train"),
    (dict(holdout=[]), errors.ConfigError, "--holdout is empty"),
    (dict(holdout=["01"], fast_stride=1), errors.ConfigError,
     "--fast_stride=1"),
    (dict(holdout=["01"], segment=0.6), errors.ConfigError,
     "--segment=0.6 leaves no room"),
    (dict(holdout=["01"], kinds=["slow"]), errors.ConfigError, "--kinds=slow"),
    (dict(holdout=["01"], prefix=""), errors.ConfigError, "--prefix"),
    (dict(holdout=["01"], paste_size=1.5), errors.ConfigError,
     "--paste_size=1.5"),
])
def test_argument_errors(tmp_path, kwargs, error, message):
  root = _make_root(tmp_path)
  out = str(tmp_path / "out")
  with pytest.raises(error, match=message):
    validation_split.make_validation_root(root, out, **kwargs)
  assert not os.path.exists(out)


def test_too_short_source(tmp_path):
  root = _make_root(tmp_path, train={"01": 48, "02": 30})
  out = str(tmp_path / "out")
  need = validation_split.min_source_frames("fast")
  assert need > 30
  with pytest.raises(errors.DataError,
                     match=f"has 30 frames but its 'fast' validation video "
                     f"needs at least {need}"):
    validation_split.make_validation_root(root, out, holdout=["02"])
  assert not os.path.exists(out)
  # Reverse alone fits in 30 frames.
  s = validation_split.make_validation_root(root, out, holdout=["02"],
                                      kinds=["reverse", "paste"])
  assert s["val"] == ["val02_reverse", "val02_paste"]


def test_foreign_or_different_out(tmp_path):
  root = _make_root(tmp_path)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(errors.ConfigError,
                     match="is not empty and is not a validation root"):
    validation_split.make_validation_root(root, str(foreign), holdout=["01"])
  assert sorted(os.listdir(foreign)) == ["notes.txt"]
  out = str(tmp_path / "out")
  validation_split.make_validation_root(root, out, holdout=["01"])
  before = _tree(out)
  with pytest.raises(errors.ConfigError,
                     match=r"other arguments \(seed: 0 there, 1 now\)"):
    validation_split.make_validation_root(root, out, holdout=["01"], seed=1)
  with pytest.raises(errors.ConfigError, match="holdout: \\['01'\\] there"):
    validation_split.make_validation_root(root, out, holdout=["03"])
  assert _tree(out) == before
  (tmp_path / "empty").mkdir()  # An empty folder is fine.
  validation_split.make_validation_root(root, str(tmp_path / "empty"),
                                  holdout=["01"])
  with pytest.raises(errors.ConfigError, match="is --root itself"):
    validation_split.make_validation_root(root, root, holdout=["01"])


def test_prefix_colliding_with_test_ids(tmp_path):
  root = _make_root(tmp_path, test={"01": 30, "v01_fast": 30})
  with pytest.raises(errors.ConfigError,
                     match="validation ids v01_fast are also test video ids"):
    validation_split.make_validation_root(root, str(tmp_path / "out"),
                                    holdout=["01"], prefix="v")


def test_corrupt_source_leaves_no_partial_video(tmp_path):
  root = _make_root(tmp_path)
  with open(os.path.join(root, "train", "02", "025.jpg"), "wb") as f:
    f.write(b"not a jpeg")
  out = str(tmp_path / "out")
  with pytest.raises(video_io.VideoInputError, match="025.jpg"):
    validation_split.make_validation_root(root, out, holdout=["02"])
  assert os.listdir(os.path.join(out, "val")) == []
  assert not [n for n in os.listdir(os.path.join(out, "gt_frame"))
              if n.startswith("val")]
  assert not validation_split.read_marker(out)["complete"]


def test_video_file_source(tmp_path):
  root = _make_root(tmp_path)
  path = os.path.join(root, "train", "04.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
  rng = np.random.default_rng(7)
  for t in range(45):
    writer.write(cv2.cvtColor(_frame(rng, t), cv2.COLOR_GRAY2BGR))
  writer.release()
  out = str(tmp_path / "out")
  s = validation_split.make_validation_root(root, out, holdout=["04"],
                                      kinds=["fast"])
  assert os.readlink(os.path.join(out, "train", "01")) == os.path.join(
      os.path.abspath(root), "train", "01")
  assert "04.avi" not in os.listdir(os.path.join(out, "train"))
  source = _frames(root, "train", "04")
  v = s["videos"]["val04_fast"]
  index = np.concatenate([np.arange(*r) for r in v["source_runs"]])
  frames = _frames(out, "val", "val04_fast")
  assert all(np.array_equal(f, source[j]) for f, j in zip(frames, index))
  # Held out 03 instead: the video file is linked with its extension.
  out2 = str(tmp_path / "out2")
  validation_split.make_validation_root(root, out2, holdout=["03"], kinds=["fast"])
  assert os.path.islink(os.path.join(out2, "train", "04.avi"))
  assert [v.video_id for v in video_io.list_videos(out2, "train")] == [
      "01", "02", "04"]


def test_cli(tmp_path, capsys):
  root = _make_root(tmp_path)
  out = str(tmp_path / "out")
  validation_command.main(["--root", root, "--out", out, "--holdout", "02",
                   "--seed", "3", "--fast_stride", "2"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("val02_fast: ") and "fast x2" in lines[0]
  assert lines[1].startswith("val02_reverse: ") and "reversed" in lines[1]
  assert lines[2].startswith("val02_paste: ") and "pasted" in lines[2]
  assert "made val02_fast, val02_reverse, val02_paste" in lines[3]
  marker = validation_split.read_marker(out)
  assert marker["arguments"]["seed"] == 3
  assert marker["videos"]["val02_fast"]["stride"] == 2
  validation_command.main(["--root", root, "--out", out, "--holdout", "02",
                   "--seed", "3", "--fast_stride", "2"])
  assert "nothing to do" in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    validation_command.main(["--root", root, "--out", str(tmp_path / "o2"),
                     "--holdout", "09"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --holdout: no training video 09")
  assert len(err.strip().splitlines()) == 1
  with pytest.raises(SystemExit) as e:
    validation_command.main(["--root", root, "--out", out])  # --holdout missing.
  assert e.value.code == 2
