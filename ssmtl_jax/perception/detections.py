"""Pre-computed detections: one CSV file per video.

Format (``<detections_dir>/<split>/<video_id>.csv``), with a header line::

    frame,x1,y1,x2,y2,score,class

* ``frame``: 0-based frame index in the video (frames sorted naturally).
* ``x1,y1,x2,y2``: box corners in pixels of the original frame (x right, y down;
  ``x2``/``y2`` exclusive, floats allowed).
* ``score``: detector confidence in (0, 1].
* ``class``: 0-based MS-COCO class id (0 = person, 1 = bicycle, 7 = truck, ...).

Rows may appear in any order; frames with no row have no detection. This is how
users bring their own detector, and how the synthetic data set feeds its
ground-truth boxes through the builder.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, Mapping

from etils import epath
import numpy as np

from ssmtl_jax.base import errors

HEADER = ("frame", "x1", "y1", "x2", "y2", "score", "class")


class DetectionFileError(errors.DataError):
  """A detections file is missing or malformed; the message names the file."""


def write_detections(path: str, rows: Iterable[Iterable[float]]) -> None:
  """Writes ``rows`` of (frame, x1, y1, x2, y2, score, class) atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(HEADER)
    for frame, x1, y1, x2, y2, score, cls in rows:
      writer.writerow([int(frame), f"{x1:.2f}", f"{y1:.2f}", f"{x2:.2f}",
                       f"{y2:.2f}", f"{score:.4f}", int(cls)])
  os.replace(tmp, path)


def read_detections(path: str) -> Mapping[int, np.ndarray]:
  """Reads a detections CSV.

  Returns:
    {frame_index: float32 array [N, 6] of (x1, y1, x2, y2, score, class)}.
  Raises:
    DetectionFileError naming the file and line on any malformed content.
  """
  if not epath.Path(path).exists():
    raise DetectionFileError(f"detections file not found: {path}")
  per_frame: dict[int, list[list[float]]] = {}
  # A whole detections file is small; epath reads local and gs:// alike.
  reader = csv.reader(epath.Path(path).read_text().splitlines())
  header = next(reader, None)
  if header is None or tuple(h.strip() for h in header) != HEADER:
    raise DetectionFileError(
        f"{path}: expected header {','.join(HEADER)!r}, got {header!r}")
  for lineno, row in enumerate(reader, start=2):
    if not row:
      continue
    try:
      if len(row) != len(HEADER):
        raise ValueError(f"{len(row)} fields instead of {len(HEADER)}")
      frame = int(row[0])
      x1, y1, x2, y2, score = (float(v) for v in row[1:6])
      cls = int(row[6])
      if frame < 0 or cls < 0:
        raise ValueError("negative frame or class")
      if not (x2 > x1 and y2 > y1):
        raise ValueError("empty box (need x2 > x1 and y2 > y1)")
      if not 0.0 < score <= 1.0:
        raise ValueError("score outside (0, 1]")
    except ValueError as e:
      raise DetectionFileError(f"{path}:{lineno}: {e}: {row!r}") from None
    per_frame.setdefault(frame, []).append([x1, y1, x2, y2, score, cls])
  return {k: np.asarray(v, np.float32) for k, v in per_frame.items()}
