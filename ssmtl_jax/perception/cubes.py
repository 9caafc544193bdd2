"""Object cubes: the same box cropped from frames t-W..t+W and resized.

Temporal border policy: **skip what the cube's user reads**.
:func:`sliding_windows` yields centre frames t with C <= t < T-C, where the
*context* C <= W is the number of real frames needed on each side:

* training (C = W, the default): every frame of the window is real, since the
  intermittent sequences of motion irregularity reach t +- seq_half*max_gap.
  Repeating the first/last frame instead was rejected: repeated frames look
  like an object that suddenly stops, i.e. fake (ir)regular motion that the
  arrow-of-time and motion-irregularity tasks would learn from;
* scoring (C = tasks.seq_half, ``build.test_context``): only frames
  t-seq_half..t+seq_half are read, so centres closer than W to a video end
  still get cubes; the stored frames beyond the video's ends repeat its
  first/last frame and are never read. Only the first and last C frames of a
  video hold no cube; the evaluator gives them the score of the nearest frame
  that does (``ssmtl_jax.evaluation.frame_scoring.fill_borders``).

Spatial policy: the detector's box is enlarged by ``padding`` x its width
(height) on the left and right (top and bottom), clipped to the frame, and the
*same* pixel box is cut from every frame of the window. Boxes are **not** made
square by default: the crop is stretched to ``size`` x ``size``, which keeps
every pixel of the object at the cost of a changed aspect ratio (a pedestrian
becomes wide). ``square=True`` instead expands the shorter side around the
centre before clipping (near the frame edge the clipped box may still be
non-square).
"""

from __future__ import annotations

import collections
import math
from typing import Iterable, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np


def sliding_windows(
    frames: Iterable[np.ndarray], half_window: int,
    context: Optional[int] = None,
) -> Iterator[Tuple[int, np.ndarray]]:
  """Streams temporal windows of 2W+1 frames over a frame stream.

  Args:
    frames: uint8 [H, W, C] frames in order (e.g. ``video_io.iter_frames``);
      consumed lazily, one frame per yielded window after the first.
    half_window: W >= 0.
    context: C in [0, W] (default W): real frames needed on each side of a
      centre (see the module docstring).
  Yields:
    (t, window) for every t with C <= t < T-C, in order; window is a fresh
    uint8 array [2W+1, H, W, C] holding frames t-W..t+W, where frame indices
    outside [0, T) repeat frame 0 / frame T-1 (only when C < W). Safe to keep
    after the next step.
  """
  if half_window < 0:
    raise ValueError(f"half_window must be >= 0, got {half_window}")
  context = half_window if context is None else int(context)
  if not 0 <= context <= half_window:
    raise ValueError(f"context must lie in [0, {half_window}] (the half "
                     f"window), got {context}")
  length = 2 * half_window + 1
  # A deque with maxlen drops the oldest frame on append: at most 2W+1 frames
  # are ever referenced here, whatever the video length.
  buf: collections.deque = collections.deque(maxlen=length)

  def window(t: int, last: int) -> np.ndarray:
    """Frames t-W..t+W, clamped to [0, last]; buf ends with frame `last`."""
    first_in_buf = last + 1 - len(buf)
    idx = np.clip(np.arange(t - half_window, t + half_window + 1), 0, last)
    return np.stack([buf[j - first_in_buf] for j in idx])

  num = 0
  for i, frame in enumerate(frames):
    buf.append(frame)
    num = i + 1
    t = i - half_window
    if t >= context:
      # Frames before 0 are still in buf here: t - W < 0 means i < 2W.
      yield t, (np.stack(buf) if len(buf) == length else window(t, i))
  # Centres whose window runs past the end (none when C = W).
  for t in range(max(context, num - half_window), num - context):
    yield t, window(t, num - 1)


def _expand_box(
    box: Sequence[float], padding: float, square: bool,
) -> Tuple[float, float, float, float]:
  x1, y1, x2, y2 = (float(v) for v in box)
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
    raise ValueError(f"box has non-finite coordinates: {tuple(box)}")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  w, h = x2 - x1, y2 - y1
  if square and w > 0 and h > 0:
    # Squaring before padding gives the same box as after: the padding is
    # proportional to each side, so a square stays square.
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(w, h)
    x1, x2, y1, y2 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    w = h = side
  return (x1 - padding * w, y1 - padding * h, x2 + padding * w,
          y2 + padding * h)


def clip_box(
    box: Sequence[float], height: int, width: int, *,
    padding: float = 0.0, square: bool = False,
) -> Tuple[int, int, int, int]:
  """The integer pixel box that :func:`crop_cube` actually cuts.

  Args:
    box: (x1, y1, x2, y2) in pixels, floats allowed, x2/y2 exclusive.
    height, width: frame size.
    padding: enlarge by padding x width (height) on each side, before clipping.
    square: expand the shorter side around the centre first.
  Returns:
    (x1, y1, x2, y2) ints with 0 <= x1, x2 <= width, 0 <= y1, y2 <= height,
    to be used as ``frame[y1:y2, x1:x2]``. May be empty (x2 <= x1 or y2 <= y1)
    when the box lies outside the frame.
  """
  x1, y1, x2, y2 = _expand_box(box, padding, square)
  # Round each edge to the nearest pixel boundary (not floor/ceil): unbiased,
  # so sub-pixel detector jitter does not systematically grow the crops.
  def rnd(v: float, hi: int) -> int:
    return min(max(int(math.floor(v + 0.5)), 0), hi)
  return rnd(x1, width), rnd(y1, height), rnd(x2, width), rnd(y2, height)


def crop_cube(
    window: np.ndarray, box: Sequence[float], *, size: int,
    padding: float = 0.0, min_size: float = 0.0, square: bool = False,
) -> Optional[np.ndarray]:
  """Crops the same box from every frame of a window and resizes it.

  Args:
    window: uint8 [T, H, W, C] (T = 2W+1, C = 1 or 3), e.g. from
      :func:`sliding_windows`.
    box: (x1, y1, x2, y2) pixels in the frame, x2/y2 exclusive.
    size: output side in pixels.
    padding: relative enlargement per side (see :func:`clip_box`).
    min_size: minimum side in pixels of the clipped box; smaller -> None.
    square: expand the box to a square before clipping (default: stretch).
  Returns:
    uint8 [T, size, size, C], or None if the clipped box is empty or has a
    side shorter than ``min_size``. Resizing uses INTER_AREA when either side
    shrinks (anti-aliasing) and INTER_LINEAR when both sides grow.
  """
  if window.ndim != 4 or window.dtype != np.uint8:
    raise ValueError(f"window must be uint8 [T, H, W, C], got {window.dtype} "
                     f"{window.shape}")
  num, height, width, channels = window.shape
  x1, y1, x2, y2 = clip_box(box, height, width, padding=padding, square=square)
  w, h = x2 - x1, y2 - y1
  if w <= 0 or h <= 0 or w < min_size or h < min_size:
    return None
  interp = cv2.INTER_AREA if (w > size or h > size) else cv2.INTER_LINEAR
  # Slicing is a view (no copy of the window); cv2 reads the strided rows
  # directly. One resize per frame: INTER_AREA only supports <= 4 channels, so
  # frames cannot be batched along the channel axis.
  crop = window[:, y1:y2, x1:x2]
  out = np.empty((num, size, size, channels), np.uint8)
  for t in range(num):
    # cv2 drops a trailing channel axis of 1, hence the reshape.
    out[t] = cv2.resize(crop[t], (size, size),
                        interpolation=interp).reshape(size, size, channels)
  return out
