"""The streaming scorer's frame sources (:mod:`ssmtl_jax.serve.stream`).

A video file, a folder of frames, a camera index or a stream URL, opened and
checked (first frame decoded) before the bundle loads, then read on a thread
into a small queue; ``Source.frames`` yields :class:`Frame` until the source
ends, fails or stalls (``Source.reason`` says which).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
from typing import Iterator, Optional

import cv2
import numpy as np

from ssmtl_jax.base import errors


class ScoreInputError(errors.DataError):
  """The input source cannot be opened or read."""


@dataclasses.dataclass
class Frame:
  """One frame read from the source, in the bundle's channels."""
  index: int
  image: np.ndarray     # uint8 [H, W, C] in the bundle's channels
  rgb: Optional[np.ndarray]  # uint8 [H, W, 3] for the annotated video
  time_s: float         # the source's timestamp
  arrived: float        # time.perf_counter() when read


class Source:
  """Reads frames on a thread (so a stalled source can time out) into a
  small queue; ``frames()`` yields :class:`Frame` until the source ends,
  fails or stalls (``reason`` says which)."""

  def __init__(self, spec: str, *, fps: Optional[float],
               stall_timeout_s: float, keep_rgb: bool, max_frames: int = 0,
               realtime: bool = False):
    """Opens the source and, for a file or folder, decodes frames
    (video_io.probe) before anything else is loaded; ``start`` begins
    reading."""
    from ssmtl_jax.perception import video_io  # pylint: disable=g-import-not-at-top
    self._video_io = video_io
    self.spec, self.channels = spec, 1
    self.keep_rgb, self.max_frames = keep_rgb, max_frames
    self.stall_timeout_s = stall_timeout_s
    self.realtime = realtime
    self.corrupt_frames = self.resized_frames = 0
    self.reason = "end of input"
    self.live = False
    self._files: Optional[list[str]] = None
    self._cap = None
    if spec.isdigit() or ("://" in spec and not os.path.exists(spec)):
      self.live = True
      self._cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
      if not self._cap.isOpened():
        raise ScoreInputError(f"cannot open the live source {spec!r}")
    elif os.path.isdir(spec) or os.path.isfile(spec):
      kind = "frames" if os.path.isdir(spec) else "file"
      try:  # opens it and decodes frames (the builder's preflight)
        video_io.probe(video_io.VideoSource("input", "score", spec, kind),
                       count=False)
      except video_io.VideoInputError as e:
        raise ScoreInputError(f"--input: {e}") from None
      if kind == "frames":
        self._files = video_io.list_frame_files(spec)
      else:
        self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
          raise ScoreInputError(f"cannot open video file (corrupt or "
                                f"unsupported codec): {spec}")
    else:
      raise ScoreInputError(f"--input {spec!r}: no such file or folder (a "
                            "camera index or stream URL also work)")
    src_fps = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None else 0
    self.fps = float(fps or (src_fps if src_fps and src_fps > 0 else 25.0))
    self.declared_frames = (int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
                            if self._cap is not None and not self.live
                            else (len(self._files) if self._files else 0))
    self._queue: queue.Queue = queue.Queue(maxsize=8)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._read, daemon=True)

  def start(self, channels: int) -> None:
    """Starts reading frames, converted to ``channels`` (1 gray, 3 RGB)."""
    self.channels = channels
    self._thread.start()

  def _images(self) -> Iterator[tuple[Optional[np.ndarray], Optional[float]]]:
    """BGR images (None = unreadable) and source timestamps (or None)."""
    if self._files is not None:
      for path in self._files:
        try:
          yield self._video_io.read_image_bgr(path), None
        except self._video_io.VideoInputError:
          yield None, None
      return
    failures = 0
    while not self._stop.is_set():
      ok, img = self._cap.read()
      if not ok or img is None:
        # A damaged frame inside a file: a few more tries, then the end.
        failures += 1
        if self.live or failures > 3 or not self._more_frames():
          if failures > 1 or not self.live:
            self.reason = ("end of input" if not self._more_frames()
                           else "the decoder failed")
          return
        continue
      failures = 0
      msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
      yield img, (msec / 1000.0 if self.live and msec > 0 else None)

  def _more_frames(self) -> bool:
    pos = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
    return bool(self.declared_frames) and pos < self.declared_frames - 1

  def _read(self):
    shape, prev, index = None, None, 0
    t0 = None
    try:
      for img, stamp in self._images():
        if self._stop.is_set():
          break
        if img is None:
          if prev is None:
            self.corrupt_frames += 1
            continue   # nothing to repeat yet: skip
          img = prev
          self.corrupt_frames += 1
        if shape is None:
          shape = img.shape[:2]
        elif img.shape[:2] != shape:
          img = cv2.resize(img, (shape[1], shape[0]),
                           interpolation=cv2.INTER_AREA)
          self.resized_frames += 1
        prev = img
        now = time.perf_counter()
        t0 = now if t0 is None else t0
        if self.realtime and not self.live:
          # Frame i is due at t0 + i / fps.
          time.sleep(max(0.0, t0 + index / self.fps - now))
          now = time.perf_counter()
        time_s = stamp if stamp is not None else index / self.fps
        frame = Frame(index, self._video_io.bgr_to_channels(img, self.channels),
                      cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if self.keep_rgb
                      else None, time_s, now)
        while not self._stop.is_set():
          try:
            self._queue.put(frame, timeout=0.1)
            break
          except queue.Full:
            continue
        index += 1
        if self.max_frames and index >= self.max_frames:
          self.reason = f"--max_frames={self.max_frames}"
          break
    except Exception as e:  # pylint: disable=broad-except
      self.reason = f"read error: {type(e).__name__}: {e}"
    finally:
      while not self._stop.is_set():  # the end marker, unless closing
        try:
          self._queue.put(None, timeout=0.1)
          break
        except queue.Full:
          continue

  def frames(self) -> Iterator[Frame]:
    while True:
      try:
        item = self._queue.get(timeout=self.stall_timeout_s)
      except queue.Empty:
        self.reason = f"no frame for {self.stall_timeout_s:g} s (stalled)"
        return
      if item is None:
        return
      yield item

  def close(self, timeout_s: float = 5.0):
    """Stops the reader, then releases the capture. The reader is waited
    for first: releasing a cv2.VideoCapture while another thread is inside
    its read() frees FFmpeg's buffers under that thread (heap corruption,
    a 'double free' abort of the whole process). A reader still stuck in a
    stalled source after ``timeout_s`` keeps its capture (a daemon thread,
    gone with the process)."""
    self._stop.set()
    deadline = time.monotonic() + timeout_s
    while True:
      with contextlib.suppress(queue.Empty):  # unblock a put() on a full queue
        while True:
          self._queue.get_nowait()
      if not self._thread.is_alive() or time.monotonic() > deadline:
        break
      self._thread.join(timeout=0.05)
    if self._cap is not None and not self._thread.is_alive():
      self._cap.release()
      self._cap = None
