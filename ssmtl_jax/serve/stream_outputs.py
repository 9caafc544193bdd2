"""The streaming scorer's output files (:mod:`ssmtl_jax.serve.stream`).

``scores.csv``, ``events.jsonl`` and ``annotated.mp4`` in the output folder,
written as frames become final, one line flushed at a time.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import time
from typing import Optional

import cv2
import numpy as np

# Boxes listed per event (the most anomalous objects of the peak frame).
EVENT_BOXES = 3


class StreamOutputs:
  """scores.csv, events.jsonl and the annotated video, written as frames
  become final; each line flushed (valid files at every moment)."""

  HEADER = ("frame", "time_s", "score", "objects", "alert", "latency_ms")

  def __init__(self, out: str, threshold: float, *, video: bool, fps: float):
    os.makedirs(out, exist_ok=True)
    self.out, self.threshold, self.fps = out, threshold, fps
    self._csv_file = open(os.path.join(out, "scores.csv"), "w", newline="",
                          encoding="utf-8")
    self._csv = csv.writer(self._csv_file)
    self._csv.writerow(self.HEADER)
    self._csv_file.flush()
    self._events = open(os.path.join(out, "events.jsonl"), "w",
                        encoding="utf-8")
    self._event: Optional[dict] = None
    self.num_events = 0
    self._video = video
    self._writer = None
    self._history: collections.deque = collections.deque(maxlen=300)
    self.latencies_ms: list[float] = []

  def frame(self, t: int, time_s: float, score: float, boxes: np.ndarray,
            obj_scores: np.ndarray, arrived: float,
            rgb: Optional[np.ndarray], heat: Optional[np.ndarray],
            num_objects: int) -> None:
    """One final frame; ``boxes``/``obj_scores`` are the objects whose map
    the frame has (a border frame: those of frame C or T-C-1), for events
    and the video; ``num_objects`` its own."""
    latency = (time.perf_counter() - arrived) * 1000.0
    self.latencies_ms.append(latency)
    alert = score > self.threshold
    self._csv.writerow((t, f"{time_s:.3f}", f"{score:.9g}", num_objects,
                        int(alert), f"{latency:.1f}"))
    self._csv_file.flush()
    self._track_event(t, time_s, score, boxes, obj_scores, alert)
    self._history.append(score)
    if self._video and rgb is not None:
      self._write_video_frame(rgb, score, boxes, obj_scores, heat)

  def _track_event(self, t, time_s, score, boxes, obj_scores, alert):
    if alert:
      if self._event is None:
        self._event = {"start_frame": t, "start_time_s": time_s,
                       "peak_score": -np.inf}
      ev = self._event
      ev["end_frame"], ev["end_time_s"] = t, time_s
      if score > ev["peak_score"]:
        order = np.argsort(-np.asarray(obj_scores))[:EVENT_BOXES]
        ev.update(peak_frame=t, peak_score=score, peak_time_s=time_s,
                  boxes=[{"box": [round(float(v), 1) for v in boxes[i]],
                          "score": float(obj_scores[i])} for i in order])
    elif self._event is not None:
      self._flush_event()

  def _flush_event(self):
    ev = self._event
    ev["frames"] = ev["end_frame"] - ev["start_frame"] + 1
    self._events.write(json.dumps(ev) + "\n")
    self._events.flush()
    self.num_events += 1
    self._event = None

  def _write_video_frame(self, rgb, score, boxes, obj_scores, heat):
    h, w = rgb.shape[:2]
    strip = 60
    if self._writer is None:
      path = os.path.join(self.out, "annotated.mp4")
      self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"),
                                     self.fps, (w, h + strip))
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if heat is not None:
      # The smoothed map as a heat map, invisible 2 below the threshold,
      # opaque-ish and red above it (alpha grows with the score).
      z = np.clip((heat - (self.threshold - 2.0)) / 3.0, 0, 1)
      z = cv2.resize(z.astype(np.float32), (w, h),
                     interpolation=cv2.INTER_LINEAR)
      color = cv2.applyColorMap((z * 255).astype(np.uint8),
                                cv2.COLORMAP_JET).astype(np.float32)
      alpha = (0.6 * z)[..., None]
      img = (img * (1 - alpha) + color * alpha).astype(np.uint8)
    for box, s in zip(boxes, obj_scores):
      color = (0, 0, 255) if s > self.threshold else (0, 200, 0)
      x1, y1, x2, y2 = (int(round(v)) for v in box)
      cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
    panel = np.full((strip, w, 3), 255, np.uint8)
    hist = np.asarray(self._history, np.float32)
    lo = min(float(hist.min()), self.threshold - 1.0)
    hi = max(float(hist.max()), self.threshold + 1.0)
    ys = (strip - 5 - (hist - lo) / (hi - lo) * (strip - 10)).astype(np.int32)
    xs = np.linspace(0, w - 1, num=len(hist)).astype(np.int32) if len(
        hist) > 1 else np.zeros(1, np.int32)
    ty = int(strip - 5 - (self.threshold - lo) / (hi - lo) * (strip - 10))
    cv2.line(panel, (0, ty), (w - 1, ty), (0, 0, 255), 1)
    cv2.polylines(panel, [np.stack([xs, ys], 1)], False, (0, 0, 0), 1)
    cv2.putText(panel, f"{score:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX,
                0.4, (0, 0, 255) if score > self.threshold else (0, 0, 0), 1)
    self._writer.write(np.concatenate([img, panel], axis=0))

  def close(self):
    if self._event is not None:
      self._flush_event()
    self._csv_file.close()
    self._events.close()
    if self._writer is not None:
      self._writer.release()

