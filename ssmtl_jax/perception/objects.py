"""Frames + detections -> objects (cubes with teacher targets), streamed.

The one loop from a video's detections to its objects; callers reach it
through :func:`ssmtl_jax.perception.pipeline.frames_to_objects` (the record
builder, the streaming scorer and the end-to-end benchmark).

Memory is bounded whatever the video length: 2W+1 frames in the sliding
window, the detections of the frames still in it, and at most one classifier
batch of objects waiting for their logits.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from ssmtl_jax.perception import cubes

# Middle crops uint8 [n, S, S, C] -> logits float32 [n, K].
Classifier = Callable[[np.ndarray], np.ndarray]


def iter_objects(
    frames_and_detections: Iterable[tuple[np.ndarray, np.ndarray]], *,
    video_id: str, half_window: int, crop_size: int, padding: float,
    min_box_size: float, square: bool, context: Optional[int] = None,
    classifier: Optional[Classifier] = None, classifier_batch: int = 64,
    classifier_crop: Optional[int] = None, first_frame: int = 0,
    centres: Optional[tuple[int, int]] = None,
    motion: Optional[Callable[[np.ndarray, int, np.ndarray], np.ndarray]] = None,
) -> Iterator[dict]:
  """Yields the objects of one video in frame order, then detection order.

  Args:
    frames_and_detections: per frame, in order: (uint8 [H, W, C], float32
      [N, 6 + D] detection rows x1, y1, x2, y2 (frame px), score, class, then
      the class vector that becomes teacher_det); consumed lazily.
    video_id: stored in every object.
    half_window: W; cubes hold frames t-W..t+W.
    crop_size, padding, min_box_size, square: as ``cubes.crop_cube``.
    context: C <= W, real frames needed on each side of a centre (default W;
      ``cubes.sliding_windows``): the first and last C frames give no objects.
    classifier: the classifier teacher on middle crops; None = no classifier
      (teacher_cls has 0 logits).
    classifier_batch: objects are held back until at least this many wait
      (checked after each frame), then classified together.
    classifier_crop: side in px of the classifier's input, cut from the
      full-resolution middle frame with the object's box (same padding and
      rounding as the cube); None = the cube's stored middle crop (S px,
      stretched by the classifier to its input size).
    first_frame: the video's index of the first frame (frame_index counts
      from it).
    centres: (start, stop): objects only of frames start..stop-1 (video
      indices); default every frame.
    motion: (window, t, detection rows of frame t) -> the rows with the
      frame's motion proposals added (``pipeline.frames_to_objects`` makes
      it from ``build.proposals``; :mod:`ssmtl_jax.perception.motion`).
  Yields:
    {"video_id": str, "frame_index": int, "box": float32 [4],
    "det_score": float, "det_class": int, "crops": uint8 [2W+1, S, S, C],
    "teacher_det": float32 [D], "teacher_cls": float32 [K]}.
  """
  w = half_window
  dets_by_frame: dict[int, np.ndarray] = {}
  pending: list[dict] = []

  def frames_only():
    for t, (frame, dets) in enumerate(frames_and_detections):
      dets_by_frame[t] = dets
      yield frame

  def classified() -> list[dict]:
    """The pending objects with the classifier's logits of their middle crops."""
    if classifier is not None:
      logits = classifier(np.stack([o.pop("_teacher_input", None)
                                    if classifier_crop else o["crops"][w]
                                    for o in pending]))
    else:
      logits = np.zeros((len(pending), 0), np.float32)
    for obj, teacher_cls in zip(pending, logits):
      obj["teacher_cls"] = teacher_cls
    done = list(pending)
    pending.clear()
    return done

  for t, window in cubes.sliding_windows(frames_only(), w, context):
    rows = dets_by_frame.pop(t)
    if centres is not None and not (
        centres[0] <= first_frame + t < centres[1]):
      rows = ()
    elif motion is not None:
      rows = motion(window, t, rows)
    for row in rows:
      cube = cubes.crop_cube(window, row[:4], size=crop_size, padding=padding,
                             min_size=min_box_size, square=square)
      if cube is None:
        continue
      obj = {
          "video_id": video_id, "frame_index": first_frame + t,
          "box": row[:4].astype(np.float32), "det_score": float(row[4]),
          "det_class": int(row[5]), "crops": cube,
          "teacher_det": row[6:].astype(np.float32)}
      if classifier is not None and classifier_crop:
        # Same pixel box as the cube (non-empty: the cube exists).
        obj["_teacher_input"] = cubes.crop_cube(
            window[w:w + 1], row[:4], size=classifier_crop, padding=padding,
            square=square)[0]
      pending.append(obj)
    if len(pending) >= classifier_batch:
      yield from classified()
    # Frames before the window's start can no longer be centres.
    dets_by_frame.pop(t - w - 1, None)
  if pending:
    yield from classified()
