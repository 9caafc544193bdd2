"""Object scores -> per-frame anomaly maps -> frame scores (docs/DESIGN.md §2, §6).

Pure numpy/scipy: no TensorFlow or JAX, so the evaluator, notebooks and
tests can use it anywhere.

Pipeline for one video:

1. per task, an object score (``aot``: p(backward), ``mi``: p(intermittent),
   ``mbp``: reconstruction MAE, ``kd``: teacher discrepancy), float ``[N]``;
2. :func:`normalize_scores` puts the tasks on one scale (z-score with
   statistics of the *training* objects, :func:`fit_stats`; or min-max over
   the test set; or none), :func:`kd_score` makes the KD score from its
   detector and classifier parts, and :func:`combine` takes their weighted
   mean;
3. :func:`anomaly_maps` writes each object's score into its box of a per-frame
   map (max where boxes overlap), :func:`fill_borders` gives the first and
   last C frames (which cannot hold objects: ``ssmtl_jax.perception.cubes``) the map of
   the nearest frame that can, :func:`smooth` applies a 3D Gaussian;
4. :func:`frame_scores` takes each frame's maximum, optionally followed by
   :func:`temporal_smooth`.

:func:`video_frame_scores` runs steps 3-4 in one call; :class:`Settings`
(the ``config.eval`` keys), :func:`object_anomaly_scores` (step 2) and
:func:`frame_scores_by_video` (steps 3-4 for every video) are the one path
from per-task object scores to frame scores that the evaluator, the
benchmark and the streaming scorer share.

Conventions: boxes are ``(x1, y1, x2, y2)`` float pixels of the full-size
frame with x2/y2 exclusive; they are rasterised with the same rounding as
``ssmtl_jax.perception.cubes.clip_box`` (each edge to the nearest pixel boundary, then
clipped to the frame), so an object's map box is exactly the pixel box its
crops were cut from (without the crop padding).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from ssmtl_jax.base.schema import TASKS  # pylint: disable=unused-import

NORMALIZATIONS = ("zscore", "minmax", "none")

Sigma = Union[float, Sequence[float]]


# --------------------------------------------------------------------------
# Per-task normalisation and combination.


def _as_scores(name: str, values) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1:
    raise ValueError(f"scores of task {name!r} must be 1-D [N], got shape "
                     f"{arr.shape}")
  if not np.all(np.isfinite(arr)):
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    raise ValueError(f"scores of task {name!r} hold {bad} non-finite values")
  return arr


def fit_stats(
    train_scores: Mapping[str, np.ndarray],
) -> dict[str, Tuple[float, float]]:
  """Per-task (mean, std) of training-object scores, for z-scoring.

  Args:
    train_scores: {task: float [N_task]} scores of (normal) training objects.
  Returns:
    {task: (mean, std)}; std is the population std (ddof=0). A constant task
    gets std 1.0 (its z-score is then just ``s - mean``), because dividing by
    ~0 would turn float noise into huge test scores.
  """
  stats = {}
  for task, values in train_scores.items():
    arr = _as_scores(task, values)
    if arr.size == 0:
      raise ValueError(f"no training scores for task {task!r}")
    mean, std = float(arr.mean()), float(arr.std())
    stats[task] = (mean, std if std > 1e-12 else 1.0)
  return stats


def normalize_scores(
    scores: Mapping[str, np.ndarray],
    stats: Optional[Mapping[str, Tuple[float, float]]],
    method: str,
) -> dict[str, np.ndarray]:
  """Puts each task's object scores on a common scale.

  Args:
    scores: {task: float [N]} object scores (typically of the test set).
    stats: {task: (mean, std)} from :func:`fit_stats` on training objects;
      required by 'zscore', ignored otherwise.
    method: 'zscore': ``(s - mean) / std`` with the given statistics (the
      test set never leaks into its own normalisation); 'minmax':
      ``(s - min) / (max - min)`` over the given scores (i.e. over the test
      set; a constant task maps to 0); 'none': unchanged.
  Returns:
    {task: float64 [N]} (new arrays; the inputs are not modified).
  """
  if method not in NORMALIZATIONS:
    raise ValueError(f"normalisation method must be one of {NORMALIZATIONS}, "
                     f"got {method!r}")
  out = {}
  for task, values in scores.items():
    arr = _as_scores(task, values)
    if method == "zscore":
      if stats is None or task not in stats:
        raise ValueError(f"zscore normalisation needs statistics for task "
                         f"{task!r} (have: {sorted(stats or {})})")
      mean, std = stats[task]
      if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"bad statistics for task {task!r}: mean={mean}, "
                         f"std={std}")
      out[task] = (arr - mean) / std
    elif method == "minmax":
      if arr.size == 0:
        out[task] = arr.copy()
        continue
      lo, hi = arr.min(), arr.max()
      out[task] = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
      out[task] = arr.copy()
  return out


def combine(
    scores_by_task: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
) -> np.ndarray:
  """Weighted mean of the (normalised) task scores of each object.

  Args:
    scores_by_task: {task: float [N]}, all of the same length.
    weights: {task: weight >= 0}. A task with weight 0, or absent from
      ``weights``, is left out (its scores may be missing too); a task with a
      positive weight must be in ``scores_by_task``.
  Returns:
    float64 [N]: sum_k w_k s_k / sum_k w_k over the tasks used.
  """
  used = {}
  for task, w in weights.items():
    w = float(w)
    if not math.isfinite(w) or w < 0:
      raise ValueError(f"weight of task {task!r} must be finite and >= 0, "
                       f"got {w}")
    if w == 0:
      continue
    if task not in scores_by_task:
      raise ValueError(f"task {task!r} has weight {w} but no scores (have: "
                       f"{sorted(scores_by_task)})")
    used[task] = w
  if not used:
    raise ValueError(f"no task with a positive weight among {dict(weights)}")
  total = None
  length = None
  for task, w in used.items():
    arr = _as_scores(task, scores_by_task[task])
    if length is None:
      length = arr.shape[0]
    elif arr.shape[0] != length:
      raise ValueError(f"task {task!r} has {arr.shape[0]} scores, expected "
                       f"{length} (as the other tasks)")
    total = w * arr if total is None else total + w * arr
  return total / sum(used.values())


KD_SCORES = ("balanced", "sum", "det", "cls")
KD_PARTS = ("kd_det", "kd_cls")


def kd_score(normed: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
  """Sets the KD task's score from its (normalised) parts.

  Args:
    normed: {task: float [N]} after :func:`normalize_scores`, where 'kd' is
      the training-loss discrepancy (detector part + classifier part) and
      'kd_det' / 'kd_cls' are the two parts on their own (present when the
      scorer produced them; 'kd_cls' is absent without a classifier teacher).
    mode: 'balanced': the mean of the normalised parts, so each teacher
      counts equally (on raw scales the error on 1000 logits is ~100x the
      error on 80 probabilities and would decide the sum alone); 'sum': the
      normalised training-loss discrepancy; 'det' / 'cls': one part only.
  Returns:
    A new dict without the part entries, with 'kd' set per ``mode`` (or
    unchanged when there is no 'kd' task).
  """
  if mode not in KD_SCORES:
    raise ValueError(f"KD score must be one of {KD_SCORES}, got {mode!r}")
  out = {k: v for k, v in normed.items() if k not in KD_PARTS}
  if "kd" not in normed or mode == "sum":
    return out
  wanted = KD_PARTS if mode == "balanced" else (f"kd_{mode}",)
  parts = [normed[k] for k in wanted if k in normed]
  if not parts or (mode != "balanced" and len(parts) != len(wanted)):
    raise ValueError(f"KD score {mode!r} needs the part scores {wanted}, have "
                     f"{sorted(k for k in normed if k in KD_PARTS)} (scores "
                     f"cached by an older version? delete eval/object_scores_*.npz)")
  out["kd"] = np.mean(parts, axis=0)
  return out


# --------------------------------------------------------------------------
# Maps.


def map_shape(height: int, width: int, scale: float = 1.0) -> Tuple[int, int]:
  """(h, w) of a map at ``scale``: each side rounded, at least 1 pixel."""
  if not (scale > 0 and math.isfinite(scale)):
    raise ValueError(f"scale must be a positive number, got {scale}")
  return (max(1, int(math.floor(height * scale + 0.5))),
          max(1, int(math.floor(width * scale + 0.5))))


def rasterize_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Integer pixel boxes, rounded and clipped as ``ssmtl_jax.perception.cubes.clip_box``.

  Args:
    boxes: float [N, 4] (x1, y1, x2, y2) in pixels of a height x width image,
      x2/y2 exclusive.
    height, width: image size.
  Returns:
    int64 [N, 4] with 0 <= x1, x2 <= width and 0 <= y1, y2 <= height, for
    ``image[y1:y2, x1:x2]``; empty (x2 <= x1 or y2 <= y1) when the box has no
    pixel in the image.
  """
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  if not np.all(np.isfinite(boxes)):
    raise ValueError("boxes hold non-finite coordinates")
  # floor(v + 0.5), as clip_box (nearest pixel boundary, halves round up), so
  # a map box is exactly the pixel box the object's crops were cut from.
  out = np.floor(boxes + 0.5)
  hi = np.array([width, height, width, height], np.float64)
  return np.clip(out, 0, hi).astype(np.int64)


def anomaly_maps(
    boxes: np.ndarray,
    frame_index: np.ndarray,
    scores: np.ndarray,
    num_frames: int,
    height: int,
    width: int,
    *,
    scale: float = 1.0,
    background: Optional[float] = None,
) -> np.ndarray:
  """Writes each object's score into its box of a per-frame map.

  Args:
    boxes: float [N, 4] (x1, y1, x2, y2) in pixels of the full-size frame,
      x2/y2 exclusive.
    frame_index: int [N] frame of each object, in [0, num_frames).
    scores: float [N] object anomaly scores.
    num_frames, height, width: video length and full frame size.
    scale: map resolution relative to the frame (< 1 for speed/memory). The
      map is ``map_shape(height, width, scale)`` and boxes are scaled by
      h/height and w/width (so a box touching the frame edge still touches
      the map edge), then rounded like ``cubes.clip_box``.
    background: value of pixels (and whole frames) covered by no object;
      default the minimum of ``scores`` (0.0 when there are none), i.e. "as
      normal as the most normal object".
  Returns:
    float32 [T, h, w]. Where boxes overlap the map holds the largest score.
    A box is written even when its score is below ``background``.
  """
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  frame_index = np.asarray(frame_index).reshape(-1)
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  n = boxes.shape[0]
  if frame_index.shape[0] != n or scores.shape[0] != n:
    raise ValueError(f"boxes ({n}), frame_index ({frame_index.shape[0]}) and "
                     f"scores ({scores.shape[0]}) must have the same length")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores hold non-finite values")
  if n and not np.issubdtype(frame_index.dtype, np.integer):
    raise ValueError(f"frame_index must be integers, got {frame_index.dtype}")
  if n and (frame_index.min() < 0 or frame_index.max() >= num_frames):
    raise ValueError(f"frame_index must lie in [0, {num_frames}), got "
                     f"[{frame_index.min()}, {frame_index.max()}]")
  if background is None:
    background = float(scores.min()) if n else 0.0
  h, w = map_shape(height, width, scale)
  px = rasterize_boxes(boxes * np.array([w / width, h / height] * 2), h, w)
  # -inf first, background last: a max against the background itself would
  # hide objects scored below it.
  maps = np.full((num_frames, h, w), -np.inf, np.float32)
  # One slice write per object: objects are few per frame and each write is
  # a small contiguous block; per-pixel work stays in numpy.
  for (x1, y1, x2, y2), t, s in zip(px.tolist(), frame_index.tolist(),
                                    scores.astype(np.float32).tolist()):
    if x2 > x1 and y2 > y1:
      view = maps[t, y1:y2, x1:x2]
      np.maximum(view, s, out=view)
  maps[np.isneginf(maps)] = background
  return maps


def _sigma3(sigma: Sigma) -> Tuple[float, float, float]:
  if np.ndim(sigma) == 0:
    sigma = (float(sigma),) * 3
  sigma = tuple(float(s) for s in sigma)
  if len(sigma) != 3 or not all(s >= 0 and math.isfinite(s) for s in sigma):
    raise ValueError(f"sigma must be 3 finite numbers >= 0 (t, y, x), got "
                     f"{sigma}")
  return sigma


def smooth(maps: np.ndarray, sigma: Sigma, *, truncate: float = 4.0
           ) -> np.ndarray:
  """3D Gaussian smoothing of a video's maps.

  Args:
    maps: float [T, h, w].
    sigma: (t, y, x) standard deviations in frames / map pixels (a scalar is
      used for all three); 0 leaves that axis unsmoothed.
    truncate: kernel radius in sigmas (scipy's default).
  Returns:
    float32 [T, h, w] = ``scipy.ndimage.gaussian_filter(maps, sigma,
    mode='nearest')``. 'nearest' repeats the edge value, so a box at the
    frame border (or an anomaly in the first/last frame) is not diluted by a
    zero/mirrored outside as it would be with 'constant'/'reflect'.
  """
  maps = np.asarray(maps, dtype=np.float32)
  if maps.ndim != 3:
    raise ValueError(f"maps must be [T, h, w], got shape {maps.shape}")
  sigma = _sigma3(sigma)
  if not any(sigma):
    return maps.copy()
  return ndimage.gaussian_filter(maps, sigma, mode="nearest",
                                 truncate=truncate)


def fill_borders(maps: np.ndarray, context: int) -> np.ndarray:
  """Gives frames that cannot hold objects the map of the nearest that can.

  Args:
    maps: float [T, h, w] (modified in place and returned).
    context: C: objects exist only for frames C <= t < T-C (the records'
      ``context``, ``ssmtl_jax.perception.cubes``); frames t < C copy frame C's map and
      frames t >= T-C copy frame T-C-1's. Without this, they would hold the
      background (the most normal score there is) whatever happens in them.
      Nothing changes when C = 0 or the video has no frame that can hold
      objects (T <= 2C).
  Returns:
    maps.
  """
  num = maps.shape[0]
  if context <= 0 or num <= 2 * context:
    return maps
  maps[:context] = maps[context]
  maps[num - context:] = maps[num - context - 1]
  return maps


def frame_scores(maps: np.ndarray) -> np.ndarray:
  """Per-frame maximum of the maps: float32 [T] from [T, h, w]."""
  maps = np.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f"maps must be [T, h, w], got shape {maps.shape}")
  if maps.shape[0] == 0:
    return np.zeros((0,), np.float32)
  return maps.reshape(maps.shape[0], -1).max(axis=1).astype(np.float32)


def temporal_smooth(scores: np.ndarray, sigma: float) -> np.ndarray:
  """1D Gaussian over frame scores (mode 'nearest'); sigma in frames, 0 = off.

  Returns float32 [T].
  """
  scores = np.asarray(scores, dtype=np.float32)
  if scores.ndim != 1:
    raise ValueError(f"scores must be [T], got shape {scores.shape}")
  if not (sigma >= 0 and math.isfinite(sigma)):
    raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
  if sigma == 0 or scores.size == 0:
    return scores.copy()
  return ndimage.gaussian_filter1d(scores, sigma, mode="nearest")


def video_frame_scores(
    boxes: np.ndarray,
    frame_index: np.ndarray,
    scores: np.ndarray,
    num_frames: int,
    height: int,
    width: int,
    *,
    sigma: Sigma = (0.0, 3.0, 3.0),
    scale: float = 1.0,
    background: Optional[float] = None,
    temporal_sigma: float = 0.0,
    context: int = 0,
    return_maps: bool = False,
):
  """Object scores of one video -> frame scores (maps, smoothing, max).

  Args:
    boxes, frame_index, scores, num_frames, height, width, scale, background:
      as :func:`anomaly_maps`.
    sigma: (t, y, x) Gaussian sigma in frames and *full-resolution* pixels
      (the spatial sigmas are multiplied by the map scale, so the result
      barely depends on ``scale``); a scalar is used for all three axes.
    temporal_sigma: optional extra 1D smoothing of the frame scores (frames).
    context: the first and last ``context`` frames take the maps of the
      nearest frames that can hold objects (:func:`fill_borders`).
    return_maps: also return the smoothed maps.
  Returns:
    float32 [T] frame scores, or (scores, maps float32 [T, h, w]).
  """
  st, sy, sx = _sigma3(sigma)
  h, w = map_shape(height, width, scale)
  maps = anomaly_maps(boxes, frame_index, scores, num_frames, height, width,
                      scale=scale, background=background)
  maps = fill_borders(maps, context)
  maps = smooth(maps, (st, sy * h / height, sx * w / width))
  out = temporal_smooth(frame_scores(maps), temporal_sigma)
  return (out, maps) if return_maps else out


# --------------------------------------------------------------------------
# The whole path: per-task object scores -> combined object scores -> frame
# scores, with the settings of config.eval.


@dataclasses.dataclass(frozen=True)
class Settings:
  """How object scores become frame scores (the ``config.eval`` keys)."""
  normalize: str = "zscore"
  kd_score: str = "balanced"
  task_weights: Tuple[Tuple[str, float], ...] = tuple((t, 1.0) for t in TASKS)
  sigma: Tuple[float, float, float] = (3.0, 3.0, 3.0)
  map_scale: float = 0.5
  temporal_sigma: float = 0.0

  @classmethod
  def from_config(cls, config) -> "Settings":
    ev = config.eval
    return cls(normalize=str(ev.normalize), kd_score=str(ev.kd_score),
               task_weights=tuple((str(t), float(w))
                                  for t, w in dict(ev.task_weights).items()),
               sigma=_sigma3(tuple(ev.sigma)), map_scale=float(ev.map_scale),
               temporal_sigma=float(ev.temporal_sigma))

  def weights_for(self, tasks: Sequence[str]) -> dict[str, float]:
    """The weight of each of ``tasks`` (0 for a task the settings omit)."""
    given = dict(self.task_weights)
    return {t: float(given.get(t, 0.0)) for t in tasks}


def object_anomaly_scores(
    raw: Mapping[str, np.ndarray],
    settings: Settings,
    stats: Optional[Mapping[str, Tuple[float, float]]] = None,
) -> Tuple[dict[str, np.ndarray], np.ndarray]:
  """Per-task raw object scores -> (normalised task scores, combined score).

  Args:
    raw: {task or KD part: float [N]} as the model scores them.
    settings: normalisation, KD score mode and task weights.
    stats: training-object statistics, required by ``normalize='zscore'``.
  Returns:
    ({task: float64 [N]} normalised, KD set per ``settings.kd_score``;
    float64 [N] their weighted mean over the tasks in ``TASKS``).
  """
  normed = kd_score(normalize_scores(raw, stats, settings.normalize),
                    settings.kd_score)
  tasks = tuple(t for t in TASKS if t in normed)
  weights = settings.weights_for(tasks)
  if not any(weights.values()):
    raise ValueError(f"the task weights give weight 0 to every scored task "
                     f"{tasks}")
  return normed, combine(normed, weights)


def frame_scores_by_video(
    video_id: np.ndarray,
    frame_index: np.ndarray,
    boxes: np.ndarray,
    values: np.ndarray,
    videos: Mapping[str, Tuple[int, int, int]],
    settings: Settings,
    context: int = 0,
    on_maps: Optional[Callable[[str, np.ndarray], None]] = None,
) -> dict[str, np.ndarray]:
  """Object scores -> frame scores of every video (maps, smoothing, max).

  Args:
    video_id: str [N], frame_index: int [N], boxes: float [N, 4], values:
      float [N] (one score per object, e.g. the combined score).
    videos: {video_id: (num_frames, height, width)}, every video to score
      (a video with no object gets the background value in every frame).
    settings: the map scale and smoothing.
    context: the records' context C: the first and last C frames of each
      video, which cannot hold objects, take the maps of the nearest frames
      that can (:func:`fill_borders`).
    on_maps: called with (video_id, smoothed maps float32 [T, h, w]) of each
      video (e.g. the pixel-level AUC); the maps are not kept.
  Returns:
    {video_id: float32 [num_frames]}. Other frames covered by no object get
    the lowest object score of *all* videos, so that micro AUC compares like
    with like.
  """
  video_id = np.asarray(video_id)
  values = np.asarray(values, dtype=np.float64)
  unknown = sorted(set(video_id.tolist()) - set(videos))
  if unknown:
    raise ValueError(f"objects of videos {unknown[:5]} that are not among "
                     f"the videos to score")
  background = float(values.min()) if values.size else 0.0
  out = {}
  for vid, (frames, height, width) in videos.items():
    idx = np.flatnonzero(video_id == vid)
    got = video_frame_scores(
        boxes[idx], frame_index[idx], values[idx], frames, height, width,
        sigma=settings.sigma, scale=settings.map_scale, background=background,
        temporal_sigma=settings.temporal_sigma, context=context,
        return_maps=on_maps is not None)
    if on_maps is not None:
      got, maps = got
      on_maps(vid, maps)
    out[vid] = got
  return out


# --------------------------------------------------------------------------
# The same frame scores, one frame at a time (the streaming scorer).


def _radius(sigma: float, truncate: float) -> int:
  """Kernel radius of scipy's gaussian_filter1d (0 when the axis is off)."""
  return int(truncate * float(sigma) + 0.5) if sigma > 1e-15 else 0


class FrameScoreStream:
  """:func:`video_frame_scores` of one video, computed as frames arrive.

  ``push(boxes, scores)`` gives the objects of the next frame (in frame
  order; every frame, also those without objects); it returns the frames
  whose score became final, as (t, score) pairs in order. ``close(T)`` ends
  the video (T frames in all) and returns the rest. A frame's score is final
  once the maps its smoothing kernels reach have arrived: ``latency_frames``
  = r(sigma_t) + r(temporal_sigma) pushes after its own (r = int(4 sigma +
  0.5), scipy's radius). Memory holds about 2 r(sigma_t) + 2 maps, whatever
  the video length.

  The result equals ``video_frame_scores`` over the whole video with the same
  arguments, bit for bit: each frame is computed by the same scipy filters
  on a window holding exactly the frames its kernel reaches (mode 'nearest'
  repeats the edge frames, which is what the window's clipped indices do),
  then the spatial filters on that frame alone (scipy filters one axis at a
  time, each line independently).

  Contract: the caller pushes frame t only when it holds all of frame t's
  objects and frame t can hold objects or lies before them (t < T - C, known
  because frames up to t + C have been read); the first C frames then take
  frame C's map (so they become final with frame C) and the frames from the
  last push to T - 1 take the map of frame T - C - 1 (:func:`fill_borders`).
  With ``keep_maps``, :meth:`pop_map` gives each final frame's smoothed map
  (``video_frame_scores(..., return_maps=True)``'s), for heat-map overlays.
  """

  def __init__(self, height: int, width: int, *, sigma: Sigma,
               scale: float, background: float, temporal_sigma: float = 0.0,
               context: int = 0, truncate: float = 4.0,
               keep_maps: bool = False):
    st, sy, sx = _sigma3(sigma)
    if not (temporal_sigma >= 0 and math.isfinite(temporal_sigma)):
      raise ValueError(f"temporal_sigma must be finite and >= 0, got "
                       f"{temporal_sigma}")
    self.height, self.width = int(height), int(width)
    self.map_hw = map_shape(height, width, scale)
    h, w = self.map_hw
    self._scale = scale
    self._st, self._sy, self._sx = st, sy * h / height, sx * w / width
    self._ts = float(temporal_sigma)
    self._truncate = truncate
    self._r1 = _radius(st, truncate)
    self._r2 = _radius(self._ts, truncate)
    self.latency_frames = self._r1 + self._r2
    self.background = float(background)
    self.context = int(context)
    self.keep_maps = keep_maps
    self._raw: dict[int, np.ndarray] = {}   # pushed raw maps still needed
    self._fill_first: Optional[np.ndarray] = None   # raw map of frame C
    self._pushed = 0
    self._total: Optional[int] = None        # T, once closed
    self._next1 = 0                          # next frame of stage 1 (maps)
    self._s1: dict[int, float] = {}          # stage-1 scores still needed
    self._maps: dict[int, np.ndarray] = {}   # smoothed maps (keep_maps)
    self._next2 = 0                          # next frame of stage 2 (output)

  @property
  def num_frames(self) -> Optional[int]:
    """T once closed, else None."""
    return self._total

  def pop_map(self, t: int) -> np.ndarray:
    """keep_maps: the smoothed map float32 [h, w] of final frame t (once)."""
    return self._maps.pop(t)

  def _background_map(self) -> np.ndarray:
    return np.full(self.map_hw, self.background, np.float32)

  def push(self, boxes: np.ndarray, scores: np.ndarray
           ) -> list[tuple[int, float]]:
    if self._total is not None:
      raise ValueError("push after close")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    t = self._pushed
    raw = anomaly_maps(boxes, np.zeros(len(boxes), np.int64),
                       np.asarray(scores, np.float64).reshape(-1), 1,
                       self.height, self.width, scale=self._scale,
                       background=self.background)[0]
    self._raw[t] = raw
    if t == self.context:
      self._fill_first = raw
    self._pushed += 1
    return self._advance()

  def close(self, num_frames: int) -> list[tuple[int, float]]:
    """Ends the video at ``num_frames`` (>= the frames pushed)."""
    if num_frames < self._pushed:
      raise ValueError(f"num_frames={num_frames} < {self._pushed} frames "
                       "pushed")
    self._total = int(num_frames)
    return self._advance()

  # --- internals

  def _fill_active(self) -> bool:
    c, total = self.context, self._total
    return c > 0 and (total is None or total > 2 * c)

  def _raw_map(self, j: int) -> np.ndarray:
    """The map frame j has after fill_borders (j already clipped to [0, T))."""
    c, total = self.context, self._total
    if self._fill_active():
      if j < c:
        return (self._fill_first if self._fill_first is not None
                else self._background_map())
      if total is not None and j >= total - c:
        j = total - c - 1
    if j in self._raw:
      return self._raw[j]
    return self._background_map()   # never pushed: no objects

  def _stage1_ready(self, t: int) -> bool:
    if self._total is not None:
      return t < self._total
    hi = t + self._r1
    if hi >= self._pushed:
      return False
    return not (self._fill_active() and t - self._r1 < self.context
                and self._fill_first is None)

  def _stage1(self, t: int) -> float:
    r = self._r1
    last = (self._total if self._total is not None else self._pushed) - 1
    idx = np.clip(np.arange(t - r, t + r + 1), 0, last)
    if r:
      window = np.stack([self._raw_map(int(j)) for j in idx])
      m = ndimage.gaussian_filter1d(window, self._st, axis=0, mode="nearest",
                                    truncate=self._truncate)[r]
    else:
      m = np.array(self._raw_map(int(idx[0])), np.float32, copy=True)
    for axis, s in ((0, self._sy), (1, self._sx)):
      if s > 1e-15:
        m = ndimage.gaussian_filter1d(m, s, axis=axis, mode="nearest",
                                      truncate=self._truncate)
    if self.keep_maps:
      self._maps[t] = m
    return float(frame_scores(m[None])[0])

  def _advance(self) -> list[tuple[int, float]]:
    while self._stage1_ready(self._next1):
      self._s1[self._next1] = self._stage1(self._next1)
      self._next1 += 1
    out = []
    r = self._r2
    while True:
      t = self._next2
      if self._total is not None and t >= self._total:
        break
      last = None if self._total is None else self._total - 1
      if (t + r if last is None else min(t + r, last)) >= self._next1:
        break   # stage-1 scores its kernel reaches are not all there yet
      if r:
        idx = np.clip(np.arange(t - r, t + r + 1), 0,
                      t + r if last is None else last)
        window = np.asarray([self._s1[int(j)] for j in idx], np.float32)
        score = float(ndimage.gaussian_filter1d(
            window, self._ts, mode="nearest", truncate=self._truncate)[r])
      else:
        score = float(np.float32(self._s1[t]))
      out.append((t, score))
      self._next2 += 1
      self._forget()
    return out

  def _forget(self) -> None:
    """Drops maps and scores no later frame can reach."""
    # The last pushed map may be frame T-C-1, whose map the final C frames
    # take at close.
    keep_from = min(self._next1 - self._r1, self._pushed - 1)
    for j in [j for j in self._raw if j < keep_from]:
      del self._raw[j]
    for j in [j for j in self._s1 if j < self._next2 - self._r2]:
      del self._s1[j]
