"""Motion proposals: boxes of what moves and no detection covers.

A COCO detector misses objects it has no class for or sees badly (carts,
skaters, fast cyclists: on UCSD Ped2, YOLOv3-tiny boxes 86 % of the anomaly
regions). SSMTL++ (Barbalau et al., CVIU 2023) adds motion-based proposals to
the detector's boxes; this is our version, one implementation for the
builder, the streaming scorer and the recall tool (all make objects through
:func:`ssmtl_jax.perception.objects.iter_objects`, which calls
:func:`proposals` when ``build.proposals='detector+motion'``).

For the centre frame t of a cube window (frames t-W..t+W, which every object
already needs, so a chunked build and the streaming scorer see the same
frames):

1. the background is the per-pixel temporal median of the window (moving
   objects stay in a pixel for fewer than half of its 2W+1 frames);
2. foreground: pixels of frame t whose gray level differs from it by more
   than ``threshold``, closed (3x3, twice) to join an object's parts;
3. 8-connected components (OpenCV) with at least ``min_area`` pixels give
   boxes;
4. a box is dropped when detections cover more than ``max_cover`` of its
   area (one object per region: the detector's box wins).

Settings are a priori (not tuned on any test split): a 25-level difference
(of 255) is the usual frame-difference threshold, 100 px the size of a
10x10 object, and half-covered regions belong to the detection.
"""

from __future__ import annotations

import cv2
import numpy as np

_KERNEL = np.ones((3, 3), np.uint8)


def foreground(window: np.ndarray, center: int, threshold: float
               ) -> np.ndarray:
  """bool [H, W]: pixels of frame ``center`` of ``window`` (uint8
  [T, H, W, C]) that differ from the window's temporal median by more than
  ``threshold`` gray levels (the channel mean for RGB)."""
  frames = window.astype(np.float32).mean(axis=-1)   # [T, H, W] gray
  background = np.median(frames, axis=0)
  moving = np.abs(frames[center] - background) > threshold
  return cv2.morphologyEx(moving.astype(np.uint8), cv2.MORPH_CLOSE, _KERNEL,
                          iterations=2).astype(bool)


def _covered(box: np.ndarray, detections: np.ndarray) -> float:
  """Fraction of ``box``'s area inside the union of detection boxes
  (counted on the box's own pixel grid)."""
  x1, y1, x2, y2 = (int(v) for v in box)
  inside = np.zeros((y2 - y1, x2 - x1), bool)
  for dx1, dy1, dx2, dy2 in detections[:, :4]:
    ax1, ay1 = max(int(np.floor(dx1)), x1), max(int(np.floor(dy1)), y1)
    ax2, ay2 = min(int(np.ceil(dx2)), x2), min(int(np.ceil(dy2)), y2)
    if ax2 > ax1 and ay2 > ay1:
      inside[ay1 - y1:ay2 - y1, ax1 - x1:ax2 - x1] = True
  return float(inside.mean()) if inside.size else 1.0


def proposals(window: np.ndarray, center: int, detections: np.ndarray, *,
              num_det: int, threshold: float = 25.0, min_area: int = 100,
              max_cover: float = 0.5) -> np.ndarray:
  """Detection-shaped rows for the moving regions of frame ``center`` that
  ``detections`` do not cover.

  Args:
    window: uint8 [T, H, W, C], the cube window of the frame.
    center: the frame's index in ``window``.
    detections: float32 [N, 6 + num_det] rows of the frame (x1, y1, x2, y2,
      score, class, class vector).
    num_det: D, the detector's classes.
    threshold, min_area, max_cover: see the module docstring.
  Returns:
    float32 [M, 6 + num_det]: x1, y1, x2, y2 (pixels, exclusive ends),
    score 0, class -1 and a zero class vector -- the detector saw nothing
    there, which is the distillation target of a proposal.
  """
  mask = foreground(window, center, threshold)
  count, _, stats, _ = cv2.connectedComponentsWithStats(
      mask.astype(np.uint8), connectivity=8)
  rows = []
  for x, y, w, h, area in stats[1:count]:
    if area < min_area:
      continue
    box = np.array([x, y, x + w, y + h], np.float32)
    if len(detections) and _covered(box, detections) > max_cover:
      continue
    rows.append(np.concatenate([box, [0.0, -1.0],
                                np.zeros(num_det, np.float32)]))
  if not rows:
    return np.zeros((0, 6 + num_det), np.float32)
  return np.stack(rows).astype(np.float32)
