"""The streaming scorer's library (entry: ``python -m ssmtl_jax.score``).

Scores a video as it arrives, with a model bundle (ssmtl_jax/serve/bundle.py).

  python -m ssmtl_jax.score --bundle BUNDLE --input SRC --out DIR \
      [--threshold X] [--max_latency_frames N] [--video] [--detections F.csv]

SRC: a video file (mp4, avi, ...), a folder of frames, a camera index (``0``)
or a stream URL that OpenCV opens (``rtsp://...``). Frames go through the
same code as the builder and the evaluator -- the detector (or a detections
file), the object cubes (``ssmtl_jax.perception.objects.iter_objects``), the classifier
teacher, the model (``inference.score_batch``), the calibrated object score
(``bundle.object_scores``: z-scores with training statistics) and the frame
scores (``frame_scoring.FrameScoreStream``, equal bit for bit to
``frame_scoring.video_frame_scores`` over the whole video) -- on a sliding window,
so memory stays flat in the video's length.

Outputs in DIR, each valid at every moment (one line written and flushed per
final frame or event):

* ``scores.csv``: frame, time_s (the source's timestamp, or frame / fps),
  score, objects (in that frame), alert (score > threshold), latency_ms
  (from the frame's arrival to its score being final);
* ``events.jsonl``: one JSON line per run of alert frames, written when it
  ends: start/end frame and time, peak frame and score, the boxes and scores
  of the most anomalous objects of the peak frame;
* ``annotated.mp4`` (``--video``): each frame with the smoothed anomaly map as
  a heat map, the object boxes coloured by score, and the score curve;
* ``scores.png`` (the frame scores and the threshold) and ``summary.json``
  (frames, objects, frames/s, latency p50/p99, events, why the stream
  ended), at the end; also after Ctrl-C or a stalled source.

Latency: a frame's score is final once the frames its cubes need (the half
window W) and its smoothing kernels reach (``FrameScoreStream.latency_frames``)
have arrived, plus the detector's batch and ``--max_latency_frames`` of
batching (frames whose objects are scored together): stated in frames in
``summary.json`` and measured in ms per frame in ``scores.csv``.

Robustness: an unreadable frame of a folder repeats the previous frame
(counted as ``corrupt_frames``); a frame whose size differs from the first
is resized to it (``resized_frames``); a video file or stream that ends,
fails to decode further, or stalls for ``--stall_timeout_s`` ends the scoring
there (the frames read so far are scored to the end, the reason is in
``summary.json`` and on stderr); Ctrl-C does the same. Grayscale and colour
sources alike are converted to the bundle's channels; frames of any size are
letterboxed for the detector and cropped like the training data.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import json
import math
import os
import queue
import sys
import threading
import time
from typing import Iterator, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # pylint: disable=g-import-not-at-top
import numpy as np

from ssmtl_jax.base import errors
from ssmtl_jax.base import files

# Boxes listed per event (the most anomalous objects of the peak frame).
EVENT_BOXES = 3


class ScoreInputError(errors.DataError):
  """The input source cannot be opened or read."""


@dataclasses.dataclass
class Options:
  threshold: Optional[float] = None
  max_latency_frames: int = 1
  batch_size: int = 64
  video: bool = False
  plot: bool = True
  detections: Optional[str] = None
  detector_cfg: Optional[str] = None
  detector_weights: Optional[str] = None
  classifier_weights: Optional[str] = None
  fps: Optional[float] = None
  stall_timeout_s: float = 10.0
  max_frames: int = 0
  progress: bool = True
  realtime: bool = False

  def check(self) -> None:
    """Refuses values that make no sense before any work (ConfigError
    naming the flag)."""
    bad = []
    if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
      bad.append(f"--fps={self.fps:g}: must be a positive number of frames/s")
    if self.threshold is not None and not math.isfinite(self.threshold):
      bad.append(f"--threshold={self.threshold:g}: must be a finite score")
    if not (math.isfinite(self.stall_timeout_s) and self.stall_timeout_s > 0):
      bad.append(f"--stall_timeout_s={self.stall_timeout_s:g}: must be > 0")
    if self.batch_size < 1:
      bad.append(f"--batch_size={self.batch_size}: must be >= 1")
    if self.max_latency_frames < 1:
      bad.append(f"--max_latency_frames={self.max_latency_frames}: must be >= 1")
    if self.max_frames < 0:
      bad.append(f"--max_frames={self.max_frames}: must be >= 0 (0 = all)")
    if bad:
      raise errors.ConfigError("; ".join(bad))


# --------------------------------------------------------------------------
# Sources.


@dataclasses.dataclass
class Frame:
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


# --------------------------------------------------------------------------
# Outputs.


class Outputs:
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


# --------------------------------------------------------------------------
# The pipeline.


def _components(bundle, options: Options):
  """(BuildSettings, detections path or None, classifier or None)."""
  from ssmtl_jax.data import builder  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import pipeline  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import teachers  # pylint: disable=g-import-not-at-top
  b = bundle.build
  det_cfg = det_weights = ""
  detections = None
  if b["detector_kind"] == "yolov3":
    det_cfg, det_weights = pipeline.detector_files(
        options.detector_cfg, options.detector_weights,
        cfg_name="--detector_cfg", weights_name="--detector_weights")
    bundle.check_weights("detector", det_weights, det_cfg)
  else:
    if not options.detections:
      raise ScoreInputError(
          "this bundle was trained on pre-computed detections "
          "(build.detector.kind='file'): pass --detections F.csv for the "
          "input (ssmtl_jax/perception/detections.py format)")
    detections = options.detections
  classifier = None
  if b["classifier_kind"] != "none":
    weights = pipeline.classifier_weights(
        b["classifier_kind"], options.classifier_weights,
        name="--classifier_weights")
    bundle.check_weights("classifier", weights)
    classifier = teachers.load_classifier(
        b["classifier_kind"], weights, batch_size=64,
        input_size=int(b["classifier_input"]))
  settings = builder.BuildSettings.from_fingerprint(
      b, det_cfg=det_cfg or "", det_weights=det_weights or "",
      det_batch=int(bundle.config.build.detector.batch_size))
  return settings, detections, classifier


def run(bundle_path: str, source: str, out: str,
        options: Optional[Options] = None) -> dict:
  """Scores ``source`` with the bundle; writes DIR's files; returns the
  summary (also written to ``summary.json``)."""
  options = options or Options()
  # Everything the user gave is checked before the bundle loads and the
  # model compiles (tens of seconds): values, the output folder, the input.
  options.check()
  files.check_writable_dir(out, "--out")
  src = Source(source, fps=options.fps,
               stall_timeout_s=options.stall_timeout_s,
               keep_rgb=options.video, max_frames=options.max_frames,
               realtime=options.realtime)
  try:
    return _run(bundle_path, src, out, options)
  finally:
    src.close()


def _run(bundle_path: str, src: Source, out: str, options: Options) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import pipeline  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.serve import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import inference  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.base import schema  # pylint: disable=g-import-not-at-top

  t_load = time.perf_counter()
  bundle = bundle_lib.load(bundle_path)
  settings, detections_path, classifier = _components(bundle, options)
  scorer = bundle_lib.scorer(bundle)
  shapes = batch_shapes(options.batch_size, scorer.mesh.size)
  _warm_up(scorer, bundle, shapes)
  startup_s = time.perf_counter() - t_load
  threshold = (bundle.threshold if options.threshold is None
               else float(options.threshold))
  w, c = settings.half_window, settings.context("test", "train")
  src.start(settings.channels)
  outputs = Outputs(out, threshold, video=options.video, fps=src.fps)
  s = bundle.settings
  stream: Optional[frame_scoring.FrameScoreStream] = None
  frames: dict[int, Frame] = {}      # read, not yet final
  objs_by_frame: dict[int, list] = collections.defaultdict(list)
  results: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # scored objects
  # The first C and last C frames take the maps of frames C and T-C-1
  # (frame_scoring.fill_borders); their events list those frames' objects.
  border: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  state = {"read": 0, "complete": 0, "objects": 0, "final": 0,
           "model_s": 0.0, "interrupted": False}
  waiting: list[int] = []   # complete frames whose objects await the model
  bar = tqdm.tqdm(unit="frame", desc="score", dynamic_ncols=True,
                  disable=not options.progress, file=sys.stderr,
                  total=src.declared_frames or None)
  t_start = time.perf_counter()

  def emit(pairs):
    for t, score in pairs:
      fr = frames.pop(t)
      boxes, obj_scores = results.pop(t, (np.zeros((0, 4)), np.zeros(0)))
      own = len(boxes)
      total = stream.num_frames
      if t < c and "first" in border:
        boxes, obj_scores = border["first"]
      elif total is not None and total > 2 * c and t >= total - c:
        boxes, obj_scores = border.get("last", (boxes, obj_scores))
      heat = stream.pop_map(t) if options.video else None
      outputs.frame(t, fr.time_s, score, boxes, obj_scores, fr.arrived,
                    fr.rgb, heat, own)
      state["final"] += 1
    if pairs:
      bar.update(len(pairs))
      lat = outputs.latencies_ms[-1]
      dt = max(time.perf_counter() - t_start, 1e-9)
      bar.set_postfix(fps=f"{state['final'] / dt:.1f}",
                      latency_ms=f"{lat:.0f}",
                      obj_per_frame=f"{state['objects'] / max(1, state['read']):.1f}",
                      refresh=False)

  def score_waiting():
    """Scores the objects of the waiting frames, pushes them in order."""
    objs = [o for t in waiting for o in objs_by_frame.get(t, [])]
    combined = np.zeros(0)
    if objs:
      t0 = time.perf_counter()
      raws = []
      for i in range(0, len(objs), shapes[-1]):
        chunk = objs[i:i + shapes[-1]]
        batch = {k: np.stack([o[k] for o in chunk])
                 for k in inference.MODEL_KEYS}
        # The smallest compiled batch that holds them.
        size = next(n for n in shapes if n >= len(chunk))
        raws.append(scorer.score_arrays(batch, size))
      raw = {k: np.concatenate([r[k] for r in raws]) for k in raws[0]}
      combined = bundle.object_scores(raw)
      state["model_s"] += time.perf_counter() - t0
    i = 0
    for t in waiting:
      group = objs_by_frame.pop(t, [])
      boxes = (np.stack([o["box"] for o in group]) if group
               else np.zeros((0, 4), np.float32))
      vals = combined[i:i + len(group)]
      i += len(group)
      results[t] = (boxes, vals)
      if t == c:
        border["first"] = (boxes, vals)
      border["last"] = (boxes, vals)
      emit(stream.push(boxes, vals))
    waiting.clear()

  def complete_through(last: int):
    """Frames up to `last` hold all their objects."""
    while state["complete"] <= last:
      waiting.append(state["complete"])
      state["complete"] += 1
      if len(waiting) >= options.max_latency_frames:
        score_waiting()

  def feed():
    nonlocal stream
    for fr in src.frames():
      if stream is None:
        h, w_ = fr.image.shape[:2]
        stream = frame_scoring.FrameScoreStream(
            h, w_, sigma=s.sigma, scale=s.map_scale,
            background=bundle.background, temporal_sigma=s.temporal_sigma,
            context=c, keep_maps=options.video)
      frames[fr.index] = fr
      state["read"] = fr.index + 1
      yield fr.image

  def on_frame(t: int, frame) -> None:
    # Frame t enters the cube window once every centre up to t - W - 1 has
    # been cut, classified (classifier_batch 1) and yielded to us. (The
    # detector reads a batch ahead of this point, not behind it.)
    del frame
    complete_through(t - w - 1)

  try:
    for obj in pipeline.frames_to_objects(
        settings, feed(), video_id="stream", context=c,
        detections_file=detections_path, video_name=src.spec,
        teacher=classifier, classifier_batch=1, on_frame=on_frame):
      objs_by_frame[obj["frame_index"]].append(obj)
      state["objects"] += 1
  except KeyboardInterrupt:
    state["interrupted"] = True
    src.reason = "interrupted (Ctrl-C)"
  except errors.UserError as e:
    # E.g. a detections file with rows past a stream that ended early: the
    # source's own reason (decoder failure, stall) is the one to report.
    if src.reason == "end of input":
      src.reason = f"stopped: {e}"
  finally:
    src.close()
    total = state["read"]
    if stream is not None:
      # Every frame that can hold objects is complete now; the last C frames
      # take frame T-C-1's map (frame_scoring.fill_borders).
      complete_through(total - c - 1 if total > 2 * c else -1)
      score_waiting()
      emit(stream.close(total))
    outputs.close()
    bar.close()
  wall = time.perf_counter() - t_start
  lat = np.asarray(outputs.latencies_ms) if outputs.latencies_ms else None
  summary = {
      "input": src.spec, "bundle": bundle_path, "frames": total,
      "declared_frames": src.declared_frames or None,
      "objects": state["objects"], "events": outputs.num_events,
      "threshold": threshold,
      "threshold_source": ("--threshold" if options.threshold is not None
                           else bundle.meta["calibration"]["threshold_rule"]),
      "ended": src.reason, "corrupt_frames": src.corrupt_frames,
      "resized_frames": src.resized_frames,
      "startup_s": startup_s,
      "wall_s": wall, "frames_per_s": total / wall if wall > 0 else None,
      "model_s": state["model_s"],
      "latency_frames": {
          "half_window": w, "smoothing": (stream.latency_frames
                                          if stream is not None else None),
          "detector_batch": (settings.det_batch
                             if settings.detector_kind == "yolov3" else 0),
          "batching": options.max_latency_frames - 1},
      "latency_ms": (None if lat is None else {
          "p50": float(np.percentile(lat, 50)),
          "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}),
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "fps_source": src.fps,
      "realtime": bool(options.realtime or src.live),
  }
  schema.write_json_atomic(os.path.join(out, "summary.json"), summary)
  if options.plot and total:
    _plot(out, threshold)
  if src.reason != "end of input":
    print(f"score: stream ended after {total} frames: {src.reason}; outputs "
          f"in {out} are complete up to there", file=sys.stderr)
  return summary


def batch_shapes(batch_size: int, devices: int) -> list[int]:
  """The compiled batch sizes: powers of two from the device count up to
  batch_size (each a multiple of the device count), so a frame with 3
  objects runs a batch of 4, not of batch_size."""
  top = -(-batch_size // devices) * devices
  shapes, n = [], devices
  while n < top:
    shapes.append(n)
    n *= 2
  return shapes + [top]


def _warm_up(scorer, bundle, shapes: list[int]) -> None:
  """Compiles every batch shape before the first frame is read, so that no
  frame waits for a compilation."""
  m = bundle.meta["model"]
  for n in shapes:
    scorer.score_arrays({
        "crops": np.zeros((n, int(m["window"]), int(m["crop_size"]),
                           int(m["crop_size"]), int(m["channels"])), np.uint8),
        "teacher_det": np.zeros((n, int(m["num_det"])), np.float32),
        "teacher_cls": np.zeros((n, int(m["num_cls"])), np.float32)}, n)


def _plot(out: str, threshold: float) -> None:
  """scores.png from scores.csv (read back: nothing kept in memory)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with open(os.path.join(out, "scores.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  t = np.asarray([float(r["time_s"]) for r in rows])
  scores = np.asarray([float(r["score"]) for r in rows])
  fig, ax = plt.subplots(figsize=(10, 3))
  ax.plot(t, scores, lw=1, color="black", label="frame score")
  ax.axhline(threshold, color="red", lw=1, ls="--", label="threshold")
  ax.fill_between(t, scores.min(), scores, where=scores > threshold,
                  color="red", alpha=0.2, step="mid")
  ax.set_xlabel("time (s)")
  ax.set_ylabel("anomaly score")
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  tmp = os.path.join(out, ".scores.png.tmp.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, os.path.join(out, "scores.png"))
