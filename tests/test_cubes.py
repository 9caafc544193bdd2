"""Tests for ssmtl_jax.perception.cubes: sliding windows and crop geometry."""

import cv2
import numpy as np
import pytest

from ssmtl_jax.perception import cubes


def _indexed_frames(n, h=4, w=5, c=1, log=None):
  """Generator of frames whose every pixel equals the frame index."""
  for i in range(n):
    if log is not None:
      log.append(i)
    yield np.full((h, w, c), i, np.uint8)


@pytest.mark.parametrize("n,half", [(10, 2), (7, 3), (5, 0), (13, 6)])
def test_sliding_windows_indices(n, half):
  out = list(cubes.sliding_windows(_indexed_frames(n), half))
  assert [t for t, _ in out] == list(range(half, n - half))
  assert len(out) == n - 2 * half
  for t, win in out:
    assert win.shape == (2 * half + 1, 4, 5, 1) and win.dtype == np.uint8
    np.testing.assert_array_equal(win[:, 0, 0, 0],
                                  np.arange(t - half, t + half + 1))


def test_sliding_windows_too_short_video():
  assert list(cubes.sliding_windows(_indexed_frames(4), 2)) == []


def test_sliding_windows_lazy_and_bounded():
  pulled = []
  half = 3
  gen = cubes.sliding_windows(_indexed_frames(1000, log=pulled), half)
  assert pulled == []  # nothing read before the first request
  t, _ = next(gen)
  assert t == half and len(pulled) == 2 * half + 1
  t, _ = next(gen)
  # One more frame per window: the reader never runs ahead of the consumer.
  assert t == half + 1 and len(pulled) == 2 * half + 2
  # The ring buffer (generator local) references at most 2W+1 frames.
  buf = gen.gi_frame.f_locals["buf"]
  assert len(buf) == 2 * half + 1 and buf.maxlen == 2 * half + 1
  gen.close()


def test_sliding_windows_windows_are_independent():
  out = list(cubes.sliding_windows(_indexed_frames(6), 1))
  # Windows kept by the caller are not overwritten by later steps.
  assert [int(w[1, 0, 0, 0]) for _, w in out] == [1, 2, 3, 4]


def test_sliding_windows_negative():
  with pytest.raises(ValueError):
    list(cubes.sliding_windows(_indexed_frames(3), -1))


def _window_with_rect(box, t=3, h=60, w=80, c=3, value=255):
  x1, y1, x2, y2 = box
  win = np.zeros((t, h, w, c), np.uint8)
  win[:, y1:y2, x1:x2] = value
  return win


def test_clip_box_basic_rounding_and_clipping():
  assert cubes.clip_box((10, 20, 30, 50), 60, 80) == (10, 20, 30, 50)
  assert cubes.clip_box((10.4, 19.6, 30.5, 50.2), 60, 80) == (10, 20, 31, 50)
  assert cubes.clip_box((-5, -3, 90, 70), 60, 80) == (0, 0, 80, 60)
  # padding 0.5: a 20x30 box grows by 10 px left/right and 15 px top/bottom.
  assert cubes.clip_box((20, 20, 40, 50), 100, 100, padding=0.5) == (
      10, 5, 50, 65)
  # square: the 20-wide side grows to 30 around the centre x = 30.
  assert cubes.clip_box((20, 20, 40, 50), 100, 100, square=True) == (
      15, 20, 45, 50)
  # Entirely outside -> empty box.
  x1, _, x2, _ = cubes.clip_box((100, 10, 120, 20), 60, 80)
  assert x2 <= x1


@pytest.mark.parametrize("c", [1, 3])
def test_crop_cube_shape(c):
  win = _window_with_rect((10, 10, 30, 40), t=7, c=c)
  cube = cubes.crop_cube(win, (10, 10, 30, 40), size=16)
  assert cube.shape == (7, 16, 16, c) and cube.dtype == np.uint8
  cube = cubes.crop_cube(win, (10, 10, 30, 40), size=64)  # enlarging
  assert cube.shape == (7, 64, 64, c)


def test_crop_cube_single_frame_gray():
  win = _window_with_rect((10, 10, 30, 40), t=1, c=1)
  assert cubes.crop_cube(win, (10, 10, 30, 40), size=8).shape == (1, 8, 8, 1)


@pytest.mark.parametrize("size", [8, 64])
def test_crop_cube_no_padding_is_all_bright(size):
  box = (20, 10, 52, 46)
  cube = cubes.crop_cube(_window_with_rect(box), box, size=size)
  assert (cube == 255).mean() > 0.99


def test_crop_cube_padding_proportions():
  box = (30, 20, 50, 40)  # 20x20 bright square
  cube = cubes.crop_cube(_window_with_rect(box, h=80, w=80), box, size=40,
                         padding=0.5)
  # Crop is 40x40 px (10 px each side), mapped 1:1 onto 40x40: the bright
  # square sits exactly in the middle half.
  assert cubes.clip_box(box, 80, 80, padding=0.5) == (20, 10, 60, 50)
  frame = cube[1, ..., 0]
  assert (frame[10:30, 10:30] == 255).all()
  border = np.ones_like(frame, bool)
  border[10:30, 10:30] = False
  assert (frame[border] == 0).all()
  # Bright fraction = (1 / (1 + 2 * 0.5)) ** 2 = 1/4.
  assert (frame > 127).mean() == pytest.approx(0.25)


def test_crop_cube_padding_proportions_after_resize():
  box = (30, 20, 60, 50)  # 30x30, padded by 0.25 -> 45x45, resized to 16
  cube = cubes.crop_cube(_window_with_rect(box, h=80, w=90), box, size=16,
                         padding=0.25)
  frame = cube[0, ..., 1].astype(float) / 255
  # Bright area fraction is preserved by area resampling: (30/45)^2.
  assert frame.mean() == pytest.approx((30 / 45) ** 2, abs=0.02)
  assert frame[8, 8] == 1.0 and frame[0, 0] == 0.0 and frame[-1, -1] == 0.0


def test_crop_cube_box_partly_outside_is_clipped():
  # Bright region is the visible part of the box; crop must be all bright.
  win = _window_with_rect((60, 40, 80, 60), h=60, w=80)
  cube = cubes.crop_cube(win, (60, 40, 100, 75), size=10)
  assert cube.shape == (3, 10, 10, 3)
  assert (cube == 255).all()
  # Even with padding, the clipped part adds only the left/top dark margin.
  assert cubes.clip_box((60, 40, 100, 75), 60, 80, padding=0.25) == (
      50, 31, 80, 60)


def test_crop_cube_min_size_and_empty():
  win = _window_with_rect((10, 10, 20, 20))
  assert cubes.crop_cube(win, (10, 10, 13, 30), size=8, min_size=4) is None
  assert cubes.crop_cube(win, (10, 10, 30, 13), size=8, min_size=4) is None
  assert cubes.crop_cube(win, (10, 10, 14, 14), size=8, min_size=4) is not None
  # Box outside the frame: empty after clipping.
  assert cubes.crop_cube(win, (100, 10, 120, 20), size=8) is None
  # Only 2 px of this box are inside the 80-wide frame.
  assert cubes.crop_cube(win, (78, 10, 120, 20), size=8, min_size=3) is None


def test_crop_cube_same_box_every_frame_and_matches_cv2():
  rng = np.random.default_rng(0)
  win = rng.integers(0, 256, (5, 40, 50, 3), dtype=np.uint8)
  box = (5.3, 7.8, 33.1, 29.5)
  x1, y1, x2, y2 = cubes.clip_box(box, 40, 50)
  for size in (8, 48):  # shrinking (INTER_AREA) and enlarging (INTER_LINEAR)
    cube = cubes.crop_cube(win, box, size=size)
    interp = cv2.INTER_AREA if size < 20 else cv2.INTER_LINEAR
    for t in range(5):
      ref = cv2.resize(np.ascontiguousarray(win[t, y1:y2, x1:x2]),
                       (size, size), interpolation=interp)
      np.testing.assert_array_equal(cube[t], ref)


def test_crop_cube_square_keeps_aspect():
  # A tall 10x30 bright bar; square crop -> bar occupies the middle third.
  box = (40, 15, 50, 45)
  cube = cubes.crop_cube(_window_with_rect(box), box, size=30, square=True)
  frame = cube[0, ..., 0]
  assert (frame[:, 10:20] == 255).all()
  assert (frame[:, :10] == 0).all() and (frame[:, 20:] == 0).all()
  stretched = cubes.crop_cube(_window_with_rect(box), box, size=30)
  assert (stretched == 255).all()


def test_crop_cube_rejects_bad_input():
  win = np.zeros((3, 10, 10, 1), np.uint8)
  with pytest.raises(ValueError):
    cubes.crop_cube(win[0], (0, 0, 5, 5), size=4)
  with pytest.raises(ValueError):
    cubes.crop_cube(win.astype(np.float32), (0, 0, 5, 5), size=4)
  with pytest.raises(ValueError):
    cubes.crop_cube(win, (0, 0, float("nan"), 5), size=4)
