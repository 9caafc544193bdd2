"""Benchmark metrics: frame-level micro/macro AUC, RBDC and TBDC (docs/DESIGN.md §6).

Pure numpy/scipy/scikit-learn: no TensorFlow or JAX.

Frame level
-----------
:func:`micro_auc` pools all test frames; :func:`macro_auc` averages per-video
AUCs (see its docstring for videos with one class only).

Region and track level (Ramachandra & Jones, WACV 2020, "Street Scene: A new
dataset and evaluation protocol for video anomaly detection")
-------------------------------------------------------------------------
Inputs per video: predicted regions (:class:`Detections`: boxes with scores,
e.g. the scored objects themselves, or :func:`regions_from_maps`) and ground
truth regions (:class:`GroundTruth`: connected components of the pixel masks,
or boxes), optionally with a track id per GT region.

At a threshold theta the predicted regions with score >= theta are active.
With IoU measured on pixel sets (a box covers the pixels
``[y1:y2, x1:x2]`` after :func:`ssmtl_jax.evaluation.frame_scoring.rasterize_boxes` rounding;
a mask region its own pixels):

* a GT region is *detected* if some active predicted region in its frame has
  IoU >= beta (0.1) with it; detection rate RBDR = detected / all GT regions;
* an active predicted region is a *false positive* if its IoU with every GT
  region of its frame is < beta; FPR = false positives / all test frames
  (false-positive regions per frame, all frames of all videos);
* a GT track (all GT regions with one track id in one video) is detected if
  at least alpha (0.1) x its number of regions are detected (compared as
  ``hits >= alpha * n`` in floating point); TBDR = detected / all tracks.

Conventions (the same as py-ssvad-metrics 1.0.0, ``CurrentCriteriaAccumulator``,
unless noted):

* No one-to-one matching: one predicted region may detect several GT regions,
  and a predicted region that overlaps a GT region already detected by
  another is not a false positive. (The RBDC/TBDC script published with
  Georgescu et al.'s background-agnostic framework, by the SSMTL authors,
  instead matches greedily by descending score, each GT region at most once,
  so a prediction that only overlaps already-matched GT counts as neither;
  it also uses box IoU with inclusive (+1) pixel extents.)
* Counts are pooled over all videos before the rates are formed (one curve
  for the data set, not a mean of per-video curves).
* Thresholds: by default every distinct predicted score (the exact curve),
  plus +inf (nothing active: the point (0, 0)). py-ssvad-metrics instead uses
  103 fixed thresholds in [-0.01, 1.01] on scores it requires to lie in
  [0, 1]; on such scores both give the same curve whenever the grid separates
  all distinct scores. ``thresholds=`` takes any grid.
* Area: the operating points with FPR <= 1 are sorted by FPR (stable, ties
  stay in threshold order) and integrated with the trapezoid rule, then
  divided by the FPR range (1.0).
  **Difference 1:** by default (``extend_to_fpr_max=True``) when the last
  point with FPR <= 1 has FPR < 1 the curve is extended flat to FPR = 1 (the
  rate reachable with at most x false positives per frame does not drop as x
  grows); the SSMTL authors' script above extends the same way.
  py-ssvad-metrics does not extend; ``extend_to_fpr_max=False`` does the same
  here (then a detector without any false positive scores 0).
  **Difference 2:** the lowest thresholds of py-ssvad-metrics (0.0, -0.01)
  are at or below the zero background of its painted map, so there every
  frame is one frame-sized region. That adds a last operating point (FPR 1
  and detection rate ~0 when GT regions are small), joined to the real curve
  by the trapezoid rule. It is an artefact of the fixed grid and is not
  reproduced here (the tests add it explicitly to compare with the oracle).
* Regions: py-ssvad-metrics paints predicted boxes into a map (averaging
  overlaps) and thresholds it, so touching/overlapping boxes merge into one
  region; here each predicted region stays itself. They agree when the
  predicted boxes of a frame neither overlap nor touch (the components behind
  :func:`regions_from_maps` never touch, but their bounding boxes can
  overlap).
* GT regions are 8-connected components of the masks (as cv2 in
  py-ssvad-metrics). py-ssvad-metrics takes one track id per *frame*; here
  each region has its own id (``GroundTruth.from_masks(frame_track_ids=)``
  gives the per-frame form).
* Videos without track annotations: tracks are derived by
  :func:`link_tracks` (GT regions in consecutive frames whose pixels overlap
  belong to one track); :class:`DetectionCurves` reports how many videos
  needed it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from sklearn import metrics as sk_metrics

from ssmtl_jax.evaluation import frame_scoring

# --------------------------------------------------------------------------
# Frame-level AUC.


def _aligned(scores_by_video: Mapping[str, np.ndarray],
             labels_by_video: Mapping[str, np.ndarray]
             ) -> List[Tuple[str, np.ndarray, np.ndarray]]:
  """Checks keys, lengths and label values; returns (video, scores, labels)."""
  missing = [v for v in labels_by_video if v not in scores_by_video]
  extra = [v for v in scores_by_video if v not in labels_by_video]
  if missing or extra:
    raise ValueError(f"videos of scores and labels differ: no scores for "
                     f"{missing[:5]}{'...' if len(missing) > 5 else ''}, no "
                     f"labels for {extra[:5]}{'...' if len(extra) > 5 else ''}")
  if not labels_by_video:
    raise ValueError("no videos")
  out = []
  for vid, labels in labels_by_video.items():
    scores = np.asarray(scores_by_video[vid], dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
      raise ValueError(f"video {vid!r}: scores {scores.shape} and labels "
                       f"{labels.shape} must be 1-D [T]")
    if scores.shape[0] != labels.shape[0]:
      raise ValueError(f"video {vid!r}: {scores.shape[0]} scores but "
                       f"{labels.shape[0]} labels")
    if not np.all(np.isfinite(scores)):
      raise ValueError(f"video {vid!r}: scores hold non-finite values")
    if not np.all((labels == 0) | (labels == 1)):
      raise ValueError(f"video {vid!r}: labels must be 0/1, got values "
                       f"{np.unique(labels)[:5]}")
    out.append((vid, scores, labels.astype(np.int8)))
  return out


def micro_auc(scores_by_video: Mapping[str, np.ndarray],
              labels_by_video: Mapping[str, np.ndarray]) -> float:
  """Frame-level ROC AUC over all frames of all videos concatenated.

  Args:
    scores_by_video: {video: float [T_v]} frame scores (higher = anomalous).
    labels_by_video: {video: 0/1 or bool [T_v]} (1 = abnormal frame); same
      videos, same lengths (a mismatch raises, naming the video).
  Returns:
    AUC in [0, 1] (``sklearn.metrics.roc_auc_score``; ties count 1/2).
  """
  rows = _aligned(scores_by_video, labels_by_video)
  scores = np.concatenate([s for _, s, _ in rows])
  labels = np.concatenate([l for _, _, l in rows])
  if labels.size == 0 or labels.min() == labels.max():
    raise ValueError(f"micro AUC needs normal and abnormal frames; the "
                     f"{labels.size} frames have labels {np.unique(labels)}")
  return float(sk_metrics.roc_auc_score(labels, scores))


def macro_auc(
    scores_by_video: Mapping[str, np.ndarray],
    labels_by_video: Mapping[str, np.ndarray],
) -> Tuple[Optional[float], Dict[str, Optional[float]], int]:
  """Mean of per-video frame-level ROC AUCs.

  A video whose frames are all normal (or all abnormal) has no ROC curve.
  Choice here: such videos are **skipped** (their per-video AUC is None) and
  counted, so the report can say how many videos the mean covers. Other
  conventions seen in the literature and public code: padding every video
  with one extra normal and one extra abnormal frame (with extreme scores) so
  that each AUC is defined, which biases every per-video AUC toward the
  padding; or counting a single-class video as 1.0 (or 0.5). Scores from
  papers that do not say which they use are not strictly comparable when
  the test set holds single-class videos.

  Args:
    scores_by_video, labels_by_video: as :func:`micro_auc`.
  Returns:
    (macro, per_video, num_single_class): macro is the mean over videos with
    both classes (None if there are none); per_video maps every video to its
    AUC or None; num_single_class counts the skipped videos.
  """
  per_video: Dict[str, Optional[float]] = {}
  for vid, scores, labels in _aligned(scores_by_video, labels_by_video):
    if labels.size == 0 or labels.min() == labels.max():
      per_video[vid] = None
    else:
      per_video[vid] = float(sk_metrics.roc_auc_score(labels, scores))
  defined = [a for a in per_video.values() if a is not None]
  macro = float(np.mean(defined)) if defined else None
  return macro, per_video, len(per_video) - len(defined)


def macro_auc_single_as_one(per_video: Mapping[str, Optional[float]]
                            ) -> Optional[float]:
  """The other common macro convention: the mean over *all* videos, a
  single-class video (AUC None in :func:`macro_auc`'s ``per_video``) counted
  as 1.0. None when there are no videos."""
  if not per_video:
    return None
  return float(np.mean([1.0 if a is None else a for a in per_video.values()]))


# --------------------------------------------------------------------------
# Pixel-level AUC.


class PixelAUC:
  """Pixel-level ROC AUC of anomaly maps against pixel masks, accumulated one
  video at a time: every pixel of every frame is one sample (the
  detector-independent number anomaly-map methods report, as in MVTec AD and
  anomalib), at the masks' resolution (maps are resized bilinearly, per
  frame, with OpenCV).

  Exact AUC would sort every pixel of the data set (Ped2: 174 M); instead
  scores are counted in ``bins`` equal bins over [lo, hi], which must hold
  every map value (the maps of ``frame_scoring`` are convex combinations of
  the object scores and the background, so their min and max do), and pairs
  of a positive and a negative pixel in one bin count one half. The error
  against the exact AUC is at most :attr:`tie_bound` (such pairs / all
  pairs, halved); with 2**20 bins it was below 1e-6 on random maps and
  1.3e-4 on the synthetic job's maps, whose pixels crowd near the background.
  """

  def __init__(self, lo: float, hi: float, bins: int = 1 << 20):
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
      raise ValueError(f"bad score range [{lo}, {hi}]")
    self._lo, self._span, self._bins = float(lo), float(hi - lo), int(bins)
    self._pos = np.zeros(self._bins, np.int64)
    self._neg = np.zeros(self._bins, np.int64)

  def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
    """maps: float [T, h, w]; masks: bool [T, H, W] of the same video."""
    import cv2  # pylint: disable=g-import-not-at-top
    maps = np.asarray(maps, np.float32)
    masks = np.asarray(masks).astype(bool)
    if maps.ndim != 3 or masks.ndim != 3 or maps.shape[0] != masks.shape[0]:
      raise ValueError(f"maps {maps.shape} and masks {masks.shape} must be "
                       "[T, h, w] and [T, H, W] with the same T")
    height, width = masks.shape[1:]
    scale = (self._bins - 1) / self._span if self._span else 0.0
    for t in range(maps.shape[0]):
      m = maps[t]
      if m.shape != (height, width):
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
      idx = np.clip(((m - self._lo) * scale).astype(np.int64), 0,
                    self._bins - 1)
      pos = masks[t]
      self._pos += np.bincount(idx[pos], minlength=self._bins)
      self._neg += np.bincount(idx[~pos], minlength=self._bins)

  @property
  def tie_bound(self) -> float:
    p, n = int(self._pos.sum()), int(self._neg.sum())
    if not p or not n:
      return 0.0
    return float(np.dot(self._pos, self._neg)) / (2.0 * p * n)

  def value(self) -> Optional[float]:
    """The AUC, or None when the pixels seen are all of one class."""
    p, n = int(self._pos.sum()), int(self._neg.sum())
    if not p or not n:
      return None
    below = np.cumsum(self._neg) - self._neg  # negatives in lower bins
    wins = np.dot(self._pos.astype(np.float64), below + 0.5 * self._neg)
    return float(wins / (float(p) * float(n)))


# --------------------------------------------------------------------------
# Regions.


def _int_array(name: str, values, ndim: int) -> np.ndarray:
  arr = np.asarray(values)
  if arr.size == 0:
    arr = arr.astype(np.int64)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got {arr.dtype}")
  return arr.astype(np.int64).reshape((-1,) + (4,) * (ndim - 1))


@dataclasses.dataclass(frozen=True)
class Detections:
  """Predicted anomalous regions of one video.

  Attributes:
    frame_index: int [N] frame of each region.
    boxes: float [N, 4] (x1, y1, x2, y2) in pixels of the full frame, x2/y2
      exclusive; rasterised like ``ssmtl_jax.perception.cubes.clip_box`` (a box with no
      pixel inside the frame is ignored).
    scores: float [N] anomaly score (higher = more anomalous).
  """
  frame_index: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray

  def __post_init__(self):
    fi = _int_array("frame_index", self.frame_index, 1)
    boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
    if not fi.shape[0] == boxes.shape[0] == scores.shape[0]:
      raise ValueError(f"frame_index ({fi.shape[0]}), boxes "
                       f"({boxes.shape[0]}) and scores ({scores.shape[0]}) "
                       "must have the same length")
    if not np.all(np.isfinite(scores)):
      raise ValueError("detection scores hold non-finite values")
    object.__setattr__(self, "frame_index", fi)
    object.__setattr__(self, "boxes", boxes)
    object.__setattr__(self, "scores", scores)

  @classmethod
  def empty(cls) -> "Detections":
    return cls(np.zeros((0,), np.int64), np.zeros((0, 4)), np.zeros((0,)))


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """Ground-truth anomalous regions (and tracks) of one video.

  Attributes:
    num_frames, height, width: the video's length and frame size.
    frame_index: int [M] frame of each region.
    boxes: int [M, 4] (x1, y1, x2, y2) pixel bounding box, x2/y2 exclusive,
      inside the frame.
    masks: None (each region is its full box) or a tuple of M bool arrays,
      mask i of shape [y2 - y1, x2 - x1] marking region i's pixels in its box.
    track_ids: None (no track annotation) or int [M]; regions with the same
      id >= 0 form one track; -1 = the region is in no track.
  """
  num_frames: int
  height: int
  width: int
  frame_index: np.ndarray
  boxes: np.ndarray
  masks: Optional[Tuple[np.ndarray, ...]] = None
  track_ids: Optional[np.ndarray] = None

  def __post_init__(self):
    fi = _int_array("frame_index", self.frame_index, 1)
    boxes = _int_array("boxes", self.boxes, 2)
    m = fi.shape[0]
    if boxes.shape[0] != m:
      raise ValueError(f"frame_index ({m}) and boxes ({boxes.shape[0]}) must "
                       "have the same length")
    if m and (fi.min() < 0 or fi.max() >= self.num_frames):
      raise ValueError(f"GT frame_index must lie in [0, {self.num_frames})")
    if m and (np.any(boxes[:, 0] < 0) or np.any(boxes[:, 1] < 0)
              or np.any(boxes[:, 2] > self.width)
              or np.any(boxes[:, 3] > self.height)
              or np.any(boxes[:, 2] <= boxes[:, 0])
              or np.any(boxes[:, 3] <= boxes[:, 1])):
      raise ValueError(f"GT boxes must be non-empty and inside the "
                       f"{self.width}x{self.height} frame")
    masks = self.masks
    if masks is not None:
      masks = tuple(np.asarray(k, dtype=bool) for k in masks)
      if len(masks) != m:
        raise ValueError(f"{len(masks)} masks for {m} regions")
      for i, (k, (x1, y1, x2, y2)) in enumerate(zip(masks, boxes.tolist())):
        if k.shape != (y2 - y1, x2 - x1):
          raise ValueError(f"mask {i} has shape {k.shape}, its box needs "
                           f"{(y2 - y1, x2 - x1)}")
    tracks = self.track_ids
    if tracks is not None:
      tracks = _int_array("track_ids", tracks, 1)
      if tracks.shape[0] != m:
        raise ValueError(f"{tracks.shape[0]} track ids for {m} regions")
    object.__setattr__(self, "frame_index", fi)
    object.__setattr__(self, "boxes", boxes)
    object.__setattr__(self, "masks", masks)
    object.__setattr__(self, "track_ids", tracks)

  @property
  def num_regions(self) -> int:
    return int(self.frame_index.shape[0])

  @classmethod
  def from_boxes(cls, num_frames: int, height: int, width: int,
                 frame_index, boxes, track_ids=None) -> "GroundTruth":
    """Box-shaped GT regions; float boxes are rasterised (and clipped) like
    predictions, boxes left empty by that are dropped."""
    fi = _int_array("frame_index", frame_index, 1)
    px = frame_scoring.rasterize_boxes(boxes, height, width)
    keep = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
    if track_ids is not None:
      track_ids = _int_array("track_ids", track_ids, 1)[keep]
    return cls(num_frames, height, width, fi[keep], px[keep], None, track_ids)

  @classmethod
  def from_masks(cls, masks: np.ndarray,
                 frame_track_ids: Optional[np.ndarray] = None
                 ) -> "GroundTruth":
    """GT regions = 8-connected components of each frame's mask.

    Args:
      masks: bool [T, H, W] pixel-level ground truth (``gt_pixel``).
      frame_track_ids: optional int [T]: every region of frame t belongs to
        track frame_track_ids[t] (-1: none), the per-frame form used by
        py-ssvad-metrics / Street Scene style annotations.
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.ndim != 3:
      raise ValueError(f"masks must be [T, H, W], got shape {masks.shape}")
    t, h, w = masks.shape
    labels, _ = _label_per_frame(masks)
    fi, boxes, local = [], [], []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
      if sl is None:
        continue
      fi.append(sl[0].start)
      boxes.append((sl[2].start, sl[1].start, sl[2].stop, sl[1].stop))
      local.append(labels[sl][0] == k)
    tracks = None
    if frame_track_ids is not None:
      ft = _int_array("frame_track_ids", frame_track_ids, 1)
      if ft.shape[0] != t:
        raise ValueError(f"{ft.shape[0]} frame track ids for {t} frames")
      tracks = ft[np.asarray(fi, np.int64)]
    return cls(t, h, w, np.asarray(fi, np.int64),
               np.asarray(boxes, np.int64).reshape(-1, 4), tuple(local),
               tracks)

  def region_mask(self, i: int) -> np.ndarray:
    """bool [y2 - y1, x2 - x1] pixels of region i inside its box."""
    if self.masks is not None:
      return self.masks[i]
    x1, y1, x2, y2 = self.boxes[i].tolist()
    return np.ones((y2 - y1, x2 - x1), bool)


def _label_per_frame(binary: np.ndarray) -> Tuple[np.ndarray, int]:
  """8-connected components inside each frame of a [T, H, W] volume.

  One ndimage.label call over the whole volume with a structure that has no
  temporal neighbours: labels are unique across frames, frame-major.
  """
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = True
  return ndimage.label(binary, structure=structure)


def regions_from_maps(maps: np.ndarray, threshold: float, *,
                      height: Optional[int] = None,
                      width: Optional[int] = None) -> Detections:
  """Predicted regions from (smoothed) anomaly maps.

  Each 8-connected component of ``maps[t] >= threshold`` becomes one region:
  its bounding box, scored by the map's maximum inside the component. The
  regions are fixed and the RBDC/TBDC sweep then runs over their scores.
  (py-ssvad-metrics instead re-thresholds the map at every level and takes
  the components' pixels, so its regions shrink and split as the level
  rises; the two agree for piecewise-constant maps of separated boxes.)

  Args:
    maps: float [T, h, w] one video's maps (e.g. ``frame_scoring.smooth`` output).
    threshold: binarisation level; pick it above the maps' background (e.g.
      between the background and the scores of the objects), otherwise the
      whole frame is one region.
    height, width: full frame size when the maps are at a reduced scale;
      boxes are mapped back to full-frame pixels (default: the map size).
  Returns:
    :class:`Detections` with boxes in full-frame pixels.
  """
  maps = np.asarray(maps, dtype=np.float32)
  if maps.ndim != 3:
    raise ValueError(f"maps must be [T, h, w], got shape {maps.shape}")
  _, h, w = maps.shape
  height = h if height is None else height
  width = w if width is None else width
  labels, n = _label_per_frame(maps >= threshold)
  if n == 0:
    return Detections.empty()
  slices = ndimage.find_objects(labels)
  fi = np.array([sl[0].start for sl in slices], np.int64)
  boxes = np.array([(sl[2].start, sl[1].start, sl[2].stop, sl[1].stop)
                    for sl in slices], np.float64)
  boxes *= np.array([width / w, height / h] * 2)
  scores = ndimage.maximum(maps, labels, index=np.arange(1, n + 1))
  return Detections(fi, boxes, np.asarray(scores, np.float64))


def _overlaps(gt: GroundTruth, i: int, j: int) -> bool:
  """Whether GT regions i and j share at least one pixel position."""
  a, b = gt.boxes[i], gt.boxes[j]
  x1, y1 = max(a[0], b[0]), max(a[1], b[1])
  x2, y2 = min(a[2], b[2]), min(a[3], b[3])
  if x2 <= x1 or y2 <= y1:
    return False
  ma = gt.region_mask(i)[y1 - a[1]:y2 - a[1], x1 - a[0]:x2 - a[0]]
  mb = gt.region_mask(j)[y1 - b[1]:y2 - b[1], x1 - b[0]:x2 - b[0]]
  return bool(np.any(ma & mb))


def link_tracks(gt: GroundTruth) -> GroundTruth:
  """Derives tracks for GT without track annotations.

  Two GT regions are linked when they are in consecutive frames (t, t+1) and
  share at least one pixel position; tracks are the connected components of
  these links (so a track may branch or merge, and a missing annotation in
  one frame starts a new track). Equivalent to 3D connected components of
  the pixel masks with temporal neighbours at the same (y, x) only.

  Returns:
    A copy of ``gt`` with ``track_ids`` 0..K-1 in order of first appearance.
  """
  m = gt.num_regions
  parent = list(range(m))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  by_frame: Dict[int, List[int]] = {}
  for i, t in enumerate(gt.frame_index.tolist()):
    by_frame.setdefault(t, []).append(i)
  for t, regions in by_frame.items():
    for i in regions:
      for j in by_frame.get(t + 1, ()):
        if _overlaps(gt, i, j):
          parent[find(i)] = find(j)
  ids: Dict[int, int] = {}
  tracks = np.empty((m,), np.int64)
  for i in range(m):
    tracks[i] = ids.setdefault(find(i), len(ids))
  return dataclasses.replace(gt, track_ids=tracks)


def _summed_area(mask: np.ndarray) -> np.ndarray:
  sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
  np.cumsum(np.cumsum(mask, axis=0), axis=1, out=sat[1:, 1:])
  return sat


def _iou_matrix(pred_px: np.ndarray, gt: GroundTruth,
                gt_idx: Sequence[int]) -> np.ndarray:
  """Pixel IoU [P, G] of integer pred boxes with GT regions (one frame)."""
  out = np.zeros((pred_px.shape[0], len(gt_idx)))
  if pred_px.shape[0] == 0:
    return out
  area_p = ((pred_px[:, 2] - pred_px[:, 0]) *
            (pred_px[:, 3] - pred_px[:, 1]))
  for col, g in enumerate(gt_idx):
    gx1, gy1, gx2, gy2 = gt.boxes[g].tolist()
    sat = _summed_area(gt.region_mask(g))
    # The pred box in the GT box's local coordinates, clipped to it; pred
    # boxes are non-empty so x2 >= x1 still holds after clipping.
    lx1 = np.clip(pred_px[:, 0] - gx1, 0, gx2 - gx1)
    lx2 = np.clip(pred_px[:, 2] - gx1, 0, gx2 - gx1)
    ly1 = np.clip(pred_px[:, 1] - gy1, 0, gy2 - gy1)
    ly2 = np.clip(pred_px[:, 3] - gy1, 0, gy2 - gy1)
    inter = sat[ly2, lx2] - sat[ly1, lx2] - sat[ly2, lx1] + sat[ly1, lx1]
    union = area_p + sat[-1, -1] - inter
    out[:, col] = inter / union
  return out


@dataclasses.dataclass(frozen=True)
class DetectionCurves:
  """RBDR/TBDR vs false-positive regions per frame, and their areas.

  Attributes:
    thresholds: float [K], descending (the first is +inf by default).
    fpr: float [K] false-positive regions per frame at each threshold.
    rbdr: float [K] region-based detection rate.
    tbdr: float [K] track-based detection rate (None without GT tracks).
    rbdc, tbdc: areas under the curves for FPR in [0, fpr_max], divided by
      fpr_max, in [0, 1] (tbdc None without GT tracks).
    num_frames, num_gt_regions, num_gt_tracks, num_detections: totals.
    num_videos_tracks_derived: videos whose tracks came from link_tracks.
  """
  thresholds: np.ndarray
  fpr: np.ndarray
  rbdr: np.ndarray
  tbdr: Optional[np.ndarray]
  rbdc: float
  tbdc: Optional[float]
  num_frames: int
  num_gt_regions: int
  num_gt_tracks: int
  num_detections: int
  num_videos_tracks_derived: int


def curve_area(fpr: np.ndarray, rate: np.ndarray, *, fpr_max: float = 1.0,
               extend_to_fpr_max: bool = True) -> float:
  """Normalised area under a detection-rate vs FPR curve (see module doc).

  Args:
    fpr, rate: [K] operating points in order of decreasing threshold. They
      are sorted by FPR with a stable sort, so points with equal FPR stay in
      threshold order (as in py-ssvad-metrics; for nested thresholds that is
      also increasing rate).
    fpr_max: upper end of the FPR range; points beyond it are dropped.
    extend_to_fpr_max: extend the curve flat from its last point to fpr_max
      (False: py-ssvad-metrics, which integrates only up to the last point).
  Returns:
    trapezoid area over [0, fpr_max] / fpr_max.
  """
  fpr = np.asarray(fpr, np.float64)
  rate = np.asarray(rate, np.float64)
  keep = (fpr >= 0) & (fpr <= fpr_max)
  x, y = fpr[keep], rate[keep]
  order = np.argsort(x, kind="stable")
  x, y = x[order], y[order]
  if extend_to_fpr_max and (x.size == 0 or x[-1] < fpr_max):
    x = np.append(x, fpr_max)
    y = np.append(y, y[-1] if y.size else 0.0)
  if x.size < 2:
    return 0.0
  return float(np.trapezoid(y, x) / fpr_max)


def _check_same_videos(detections: Mapping[str, Detections],
                       ground_truth: Mapping[str, GroundTruth]) -> None:
  """Raises ValueError unless both name the same videos."""
  missing = sorted(set(ground_truth) - set(detections))
  extra = sorted(set(detections) - set(ground_truth))
  if missing or extra:
    raise ValueError(f"videos of detections and ground truth differ: no "
                     f"detections for {missing[:5]}, no ground truth for "
                     f"{extra[:5]}")


def _pixel_detections(vid: str, det: Detections, gt: GroundTruth
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One video's predicted regions as pixel boxes, empty ones dropped.

  Returns:
    (px int [N, 4], frame_index int [N], scores float [N]). Raises
    ValueError for a frame index outside the video.
  """
  if det.frame_index.size and (det.frame_index.min() < 0 or
                               det.frame_index.max() >= gt.num_frames):
    raise ValueError(f"video {vid!r}: detection frame_index outside "
                     f"[0, {gt.num_frames})")
  px = frame_scoring.rasterize_boxes(det.boxes, gt.height, gt.width)
  nonempty = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
  return px[nonempty], det.frame_index[nonempty], det.scores[nonempty]


def _match_regions(px: np.ndarray, d_frames: np.ndarray, d_scores: np.ndarray,
                   gt: GroundTruth, beta: float
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Matches one video's predicted regions with its GT regions, per frame.

  Args:
    px, d_frames, d_scores: the predictions, as from :func:`_pixel_detections`.
    gt: the video's ground truth.
    beta: IoU needed for a predicted region to hit a GT region.
  Returns:
    (is_fp bool [N]: the prediction hits no GT region, hits float [M]: the
    best score of a prediction hitting each GT region, -inf for none).
  """
  is_fp = np.ones(d_scores.shape[0], bool)
  hits = np.full(gt.num_regions, -np.inf)
  d_order = np.argsort(d_frames, kind="stable")
  d_sorted = d_frames[d_order]
  gt_by_frame: Dict[int, List[int]] = {}
  for g, t in enumerate(gt.frame_index.tolist()):
    gt_by_frame.setdefault(t, []).append(g)
  for t, g_idx in gt_by_frame.items():
    lo, hi = np.searchsorted(d_sorted, [t, t + 1])
    p_idx = d_order[lo:hi]
    if p_idx.size == 0:
      continue
    match = _iou_matrix(px[p_idx], gt, g_idx) >= beta  # [P, G]
    is_fp[p_idx] = ~match.any(axis=1)
    # A GT region is detected from the highest threshold at which any
    # matching prediction is active, i.e. its best matching score.
    best = np.where(match, d_scores[p_idx][:, None], -np.inf).max(axis=0)
    hits[g_idx] = best
  return is_fp, hits


def _track_scores(hits: np.ndarray, tracks: np.ndarray,
                  alpha: float) -> List[float]:
  """The highest threshold at which each GT track counts as detected.

  Args:
    hits: float [M] per GT region, as from :func:`_match_regions`.
    tracks: int [M] track id per GT region (-1: in no track).
    alpha: fraction of a track's regions that must be detected.
  Returns:
    One score per track, in increasing track id order.
  """
  scores = []
  for k in np.unique(tracks[tracks >= 0]):
    member = np.sort(hits[tracks == k])[::-1]
    # Detected at theta iff #(hits >= theta) >= alpha * n, i.e. theta <=
    # the c-th best hit score, c = ceil(alpha * n) (same float product as
    # the reference's comparison).
    c = math.ceil(alpha * member.size)
    scores.append(np.inf if c <= 0 else
                  (member[c - 1] if c <= member.size else -np.inf))
  return scores


def _curve_thresholds(thresholds: Optional[np.ndarray],
                      all_scores: List[np.ndarray]) -> np.ndarray:
  """The given thresholds sorted descending, or by default +inf followed by
  every distinct predicted score (the exact curve)."""
  if thresholds is None:
    scores = np.concatenate(all_scores)
    return np.concatenate([[np.inf], np.unique(scores)[::-1]])
  return np.sort(np.asarray(thresholds, np.float64).reshape(-1))[::-1]


def _count_at_least(values: np.ndarray,
                    thresholds: np.ndarray) -> np.ndarray:
  """int [K]: how many of ``values`` are >= each threshold."""
  values = np.sort(values)
  return values.size - np.searchsorted(values, thresholds, side="left")


def detection_curves(
    detections: Mapping[str, Detections],
    ground_truth: Mapping[str, GroundTruth],
    *,
    alpha: float = 0.1,
    beta: float = 0.1,
    thresholds: Optional[np.ndarray] = None,
    fpr_max: float = 1.0,
    extend_to_fpr_max: bool = True,
    derive_tracks: bool = True,
) -> DetectionCurves:
  """RBDR and TBDR curves over all videos and their areas (RBDC, TBDC).

  Args:
    detections: {video: Detections}; same videos as ``ground_truth`` (use
      ``Detections.empty()`` for a video without predicted regions).
    ground_truth: {video: GroundTruth}; videos without GT regions still
      count their frames.
    alpha: fraction of a track's regions that must be detected.
    beta: IoU needed for a predicted region to hit a GT region.
    thresholds: score thresholds (default: all distinct predicted scores and
      +inf, i.e. the exact curve).
    fpr_max, extend_to_fpr_max: see :func:`curve_area`.
    derive_tracks: for videos whose GT has no track ids, derive them with
      :func:`link_tracks` (False: TBDC is None unless all videos have
      tracks).
  Returns:
    :class:`DetectionCurves`. Raises ValueError when there is no GT region.
  """
  _check_same_videos(detections, ground_truth)
  fp_scores, hit_scores, track_scores = [], [], []
  all_scores = []
  total_frames = total_gt = total_det = derived = 0
  have_tracks = True
  for vid, gt in ground_truth.items():
    total_frames += gt.num_frames
    total_gt += gt.num_regions
    px, d_frames, d_scores = _pixel_detections(vid, detections[vid], gt)
    total_det += d_scores.shape[0]
    all_scores.append(d_scores)
    is_fp, hits = _match_regions(px, d_frames, d_scores, gt, beta)
    fp_scores.append(d_scores[is_fp])
    hit_scores.append(hits)

    tracks = gt.track_ids
    if tracks is None and derive_tracks:
      tracks = link_tracks(gt).track_ids
      derived += 1
    if tracks is None:
      have_tracks = False
      continue
    track_scores.extend(_track_scores(hits, tracks, alpha))

  if total_gt == 0:
    raise ValueError("no ground-truth anomalous regions: RBDC/TBDC undefined")
  thresholds = _curve_thresholds(thresholds, all_scores)
  fpr = _count_at_least(np.concatenate(fp_scores), thresholds) / total_frames
  rbdr = _count_at_least(np.concatenate(hit_scores), thresholds) / total_gt
  area = dict(fpr_max=fpr_max, extend_to_fpr_max=extend_to_fpr_max)
  rbdc = curve_area(fpr, rbdr, **area)
  tbdr = tbdc = None
  if have_tracks and track_scores:
    tbdr = (_count_at_least(np.asarray(track_scores), thresholds)
            / len(track_scores))
    tbdc = curve_area(fpr, tbdr, **area)
  return DetectionCurves(
      thresholds=thresholds, fpr=fpr, rbdr=rbdr, tbdr=tbdr, rbdc=rbdc,
      tbdc=tbdc, num_frames=total_frames, num_gt_regions=total_gt,
      num_gt_tracks=len(track_scores) if have_tracks else 0,
      num_detections=total_det, num_videos_tracks_derived=derived)


def rbdc(detections: Mapping[str, Detections],
         ground_truth: Mapping[str, GroundTruth], **kwargs) -> float:
  """Region-based detection criterion; kwargs as :func:`detection_curves`."""
  return detection_curves(detections, ground_truth, **kwargs).rbdc


def tbdc(detections: Mapping[str, Detections],
         ground_truth: Mapping[str, GroundTruth], **kwargs) -> Optional[float]:
  """Track-based detection criterion; kwargs as :func:`detection_curves`.

  None when the ground truth has no tracks (and derive_tracks=False).
  """
  return detection_curves(detections, ground_truth, **kwargs).tbdc
