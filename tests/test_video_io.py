"""Tests for ssmtl_jax.perception.video_io: listing, decoding, errors (ground truth:
tests/test_ground_truth.py)."""

import os

import cv2
import numpy as np
import pytest

from ssmtl_jax.base import ground_truth
from ssmtl_jax.perception import video_io
from ssmtl_jax.perception.video_io import VideoInputError
from ssmtl_jax.perception.video_io import VideoSource

from tests.paths import PED2


def _write_frames(folder, names, h=8, w=10):
  """Writes gray frames whose value encodes their position in ``names``."""
  os.makedirs(folder, exist_ok=True)
  for i, name in enumerate(names):
    # 20 * i survives lossless formats exactly; jpg is checked with tolerance.
    cv2.imwrite(os.path.join(folder, name),
                np.full((h, w, 3), 20 * i, np.uint8))


def _frames_src(folder):
  return VideoSource(os.path.basename(folder), "test", str(folder), "frames")


def test_natural_key_orders_numbers_by_value():
  names = ["10.jpg", "2.jpg", "1.jpg", "frame_100.png", "frame_20.png"]
  assert sorted(names, key=video_io.natural_key) == [
      "1.jpg", "2.jpg", "10.jpg", "frame_20.png", "frame_100.png"]


def test_list_videos_folders_and_files_naturally_sorted(tmp_path):
  split = tmp_path / "train"
  for vid in ["10", "2", "1"]:
    _write_frames(str(split / vid), ["0.png"])
  (split / "3.avi").write_bytes(b"")
  (split / "README.txt").write_text("not a video")
  (split / ".DS_Store").write_bytes(b"")
  videos = video_io.list_videos(str(tmp_path), "train")
  assert [v.video_id for v in videos] == ["1", "2", "3", "10"]
  assert [v.kind for v in videos] == ["frames", "frames", "file", "frames"]
  assert all(v.split == "train" for v in videos)
  assert videos[2].path == str(split / "3.avi")


def test_list_videos_missing_split(tmp_path):
  with pytest.raises(VideoInputError, match="split folder not found") as e:
    video_io.list_videos(str(tmp_path), "test")
  assert str(tmp_path / "test") in str(e.value)


def test_list_videos_no_videos(tmp_path):
  (tmp_path / "test").mkdir()
  (tmp_path / "test" / "notes.txt").write_text("x")
  with pytest.raises(VideoInputError, match="no videos"):
    video_io.list_videos(str(tmp_path), "test")


def test_list_videos_duplicate_id(tmp_path):
  _write_frames(str(tmp_path / "test" / "01"), ["0.png"])
  (tmp_path / "test" / "01.avi").write_bytes(b"")
  with pytest.raises(VideoInputError, match="two videos with id '01'"):
    video_io.list_videos(str(tmp_path), "test")


def test_frames_natural_order_and_mixed_extensions(tmp_path):
  folder = tmp_path / "v"
  # Written in natural order, so frame value 20*i must come back in order i.
  names = ["1.png", "2.bmp", "3.tif", "10.png", "11.jpg"]
  _write_frames(str(folder), names)
  (folder / "Thumbs.db").write_bytes(b"junk")  # non-image files are ignored
  src = _frames_src(str(folder))
  assert video_io.count_frames(src) == 5
  frames = list(video_io.iter_frames(src, channels=1))
  values = [int(f.mean()) for f in frames]
  assert values[:4] == [0, 20, 40, 60]  # lossless formats: exact
  assert abs(values[4] - 80) <= 2  # jpg
  assert all(f.shape == (8, 10, 1) and f.dtype == np.uint8 for f in frames)


def test_rgb_order_and_grayscale(tmp_path):
  folder = tmp_path / "v"
  folder.mkdir()
  red_bgr = np.zeros((4, 6, 3), np.uint8)
  red_bgr[..., 2] = 255  # OpenCV writes BGR: channel 2 is red
  cv2.imwrite(str(folder / "0.png"), red_bgr)
  src = _frames_src(str(folder))
  (rgb,) = video_io.iter_frames(src, channels=3)
  assert rgb.shape == (4, 6, 3)
  np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
  (gray,) = video_io.iter_frames(src, channels=1)
  assert gray.shape == (4, 6, 1)
  # ITU-R BT.601 luma of pure red: 0.299 * 255 = 76.
  assert int(gray[0, 0, 0]) == 76


def test_gray_source_image_gives_three_equal_channels(tmp_path):
  folder = tmp_path / "v"
  folder.mkdir()
  cv2.imwrite(str(folder / "0.png"), np.full((4, 6), 123, np.uint8))
  (rgb,) = video_io.iter_frames(_frames_src(str(folder)), channels=3)
  assert rgb.shape == (4, 6, 3) and (rgb == 123).all()


def test_bad_channels_raises_at_call():
  with pytest.raises(ValueError, match="channels"):
    video_io.iter_frames(VideoSource("x", "test", "/nonexistent", "frames"), 2)


def test_video_file_round_trip(tmp_path):
  path = str(tmp_path / "clip.avi")
  h, w, n = 32, 48, 7
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
  assert writer.isOpened()
  for i in range(n):
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 2] = 30 * i  # red ramp in BGR
    writer.write(frame)
  writer.release()
  src = VideoSource("clip", "test", path, "file")
  assert video_io.count_frames(src) == n
  frames = list(video_io.iter_frames(src, channels=3))
  assert len(frames) == n
  for i, f in enumerate(frames):
    assert f.shape == (h, w, 3) and f.dtype == np.uint8
    # JPEG + chroma subsampling: tolerate a few levels.
    assert abs(f[..., 0].mean() - 30 * i) < 6  # red is channel 0 in RGB
    assert f[..., 2].mean() < 6
  gray = next(iter(video_io.iter_frames(src, channels=1)))
  assert gray.shape == (h, w, 1)


def test_video_file_listed_by_list_videos(tmp_path):
  (tmp_path / "test").mkdir()
  path = str(tmp_path / "test" / "07.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))
  for _ in range(3):
    writer.write(np.zeros((16, 16, 3), np.uint8))
  writer.release()
  (src,) = video_io.list_videos(str(tmp_path), "test")
  assert src == VideoSource("07", "test", path, "file")
  assert video_io.count_frames(src) == 3


def test_corrupt_video_file(tmp_path):
  path = tmp_path / "bad.avi"
  path.write_bytes(b"this is not a video" * 10)
  src = VideoSource("bad", "test", str(path), "file")
  with pytest.raises(VideoInputError) as e:
    list(video_io.iter_frames(src, channels=3))
  assert str(path) in str(e.value)
  with pytest.raises(VideoInputError) as e:
    video_io.count_frames(src)
  assert str(path) in str(e.value)


def test_corrupt_jpg_names_file(tmp_path):
  folder = tmp_path / "v"
  _write_frames(str(folder), ["0.jpg", "1.jpg"])
  bad = folder / "2.jpg"
  bad.write_bytes(b"\x00garbage, not a jpeg" * 5)
  frames = video_io.iter_frames(_frames_src(str(folder)), channels=3)
  next(frames)
  next(frames)  # the two good frames stream before the error
  with pytest.raises(VideoInputError, match="cannot decode") as e:
    next(frames)
  assert str(bad) in str(e.value)


def test_empty_folder(tmp_path):
  folder = tmp_path / "v"
  folder.mkdir()
  src = _frames_src(str(folder))
  with pytest.raises(VideoInputError, match="empty frame folder") as e:
    list(video_io.iter_frames(src, channels=1))
  assert str(folder) in str(e.value)
  with pytest.raises(VideoInputError, match="empty frame folder"):
    video_io.count_frames(src)


def test_frame_size_mismatch_names_file(tmp_path):
  folder = tmp_path / "v"
  _write_frames(str(folder), ["0.png", "1.png"], h=8, w=10)
  cv2.imwrite(str(folder / "2.png"), np.zeros((9, 10, 3), np.uint8))
  with pytest.raises(VideoInputError) as e:
    list(video_io.iter_frames(_frames_src(str(folder)), channels=3))
  msg = str(e.value)
  assert str(folder / "2.png") in msg and "10x9" in msg and "10x8" in msg


def test_ped2_smoke():
  if not os.path.isdir(os.path.join(PED2, "test")):
    pytest.skip(f"{PED2} not available")
  videos = video_io.list_videos(PED2, "test")
  assert [v.video_id for v in videos] == [f"{i:02d}" for i in range(1, 13)]
  assert all(v.kind == "frames" for v in videos)
  src = videos[0]
  assert video_io.count_frames(src) == 180
  # Only decode two frames: the full video is covered by count_frames.
  frames = video_io.iter_frames(src, channels=1)
  first = next(frames)
  frames.close()
  h, w = first.shape[:2]
  assert (h, w) == (240, 360) and first.shape[2] == 1
  labels, masks = ground_truth.load(PED2, "01", 180, h, w)
  assert labels.shape == (180,) and labels.dtype == np.uint8
  assert 0 < labels.sum() < 180
  assert masks.shape == (180, h, w) and masks.dtype == bool
  # Frames flagged anomalous are the ones with mask pixels (up to a few
  # annotation slips, hence the tolerance).
  agree = (masks.any(axis=(1, 2)) == labels.astype(bool)).mean()
  assert agree > 0.95
  with pytest.raises(ground_truth.GroundTruthError, match="01.npy"):
    ground_truth.load(PED2, "01", 179, h, w)
