"""The streaming scorer's library (entry: ``python -m ssmtl_jax.score``).

Scores a video as it arrives, with a model bundle (ssmtl_jax/serve/bundle.py).

  python -m ssmtl_jax.score --bundle BUNDLE --input SRC --out DIR \
      [--threshold X] [--max_latency_frames N] [--video] [--detections F.csv]

SRC: a video file (mp4, avi, ...), a folder of frames, a camera index (``0``)
or a stream URL that OpenCV opens (``rtsp://...``). Frames go through the
same code as the builder and the evaluator -- the detector (or a detections
file), the cubes and the classifier teacher
(``ssmtl_jax.perception.pipeline.frames_to_objects``), the model
(``inference.ObjectScorer.score_arrays``), the calibrated object score
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

The frame sources are in :mod:`ssmtl_jax.serve.sources`, the output files in
:mod:`ssmtl_jax.serve.stream_outputs`; this module holds the options, the
scorer of one stream (:class:`StreamScorer`) and :func:`run`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import sys
import time
from typing import Iterator, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top

from ssmtl_jax.base import errors
from ssmtl_jax.base import files
from ssmtl_jax.serve import sources
from ssmtl_jax.serve import stream_outputs


@dataclasses.dataclass
class Options:
  """The scorer's settings: one per flag of ``python -m ssmtl_jax.score``."""
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
# The pipeline.


def _components(bundle, options: Options):
  """(BuildSettings, detections path or None, classifier or None)."""
  from ssmtl_jax.data import builder  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import pipeline  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import teachers  # pylint: disable=g-import-not-at-top
  b = bundle.build
  # The convolutions' implementation is this machine's choice, not the
  # bundle's: 'auto' unless the bundle's config pinned one.
  conv_impl = str(bundle.config.build.get("conv_impl", "auto"))
  det_cfg = det_weights = ""
  detections = None
  if b["detector_kind"] == "yolov3":
    det_cfg, det_weights = pipeline.detector_files(
        options.detector_cfg, options.detector_weights,
        cfg_name="--detector_cfg", weights_name="--detector_weights")
    bundle.check_weights("detector", det_weights, det_cfg)
  else:
    if not options.detections:
      raise sources.ScoreInputError(
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
        input_size=int(b["classifier_input"]), conv_impl=conv_impl)
  settings = builder.BuildSettings.from_fingerprint(
      b, det_cfg=det_cfg or "", det_weights=det_weights or "",
      det_batch=int(bundle.config.build.detector.batch_size),
      conv_impl=conv_impl)
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
  src = sources.Source(source, fps=options.fps,
                       stall_timeout_s=options.stall_timeout_s,
                       keep_rgb=options.video, max_frames=options.max_frames,
                       realtime=options.realtime)
  try:
    return _run(bundle_path, src, out, options)
  finally:
    src.close()


def _run(bundle_path: str, src: sources.Source, out: str,
         options: Options) -> dict:
  """Loads the bundle, scores ``src``, writes summary.json and scores.png."""
  # Imported here, not at the top: the input is checked before JAX loads.
  from ssmtl_jax.base import schema  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.serve import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  t_load = time.perf_counter()
  bundle = bundle_lib.load(bundle_path)
  settings, detections_path, classifier = _components(bundle, options)
  object_scorer = bundle_lib.scorer(bundle)
  shapes = batch_shapes(options.batch_size, object_scorer.mesh.size)
  _warm_up(object_scorer, bundle, shapes)
  startup_s = time.perf_counter() - t_load
  scorer = StreamScorer(bundle, object_scorer, shapes, settings, src, out,
                        options)
  scorer.score(detections_path, classifier)
  summary = scorer.summary(bundle_path, startup_s)
  total = summary["frames"]
  schema.write_json_atomic(os.path.join(out, "summary.json"), summary)
  if options.plot and total:
    _plot(out, scorer.threshold)
  if src.reason != "end of input":
    print(f"score: stream ended after {total} frames: {src.reason}; outputs "
          f"in {out} are complete up to there", file=sys.stderr)
  return summary


class StreamScorer:
  """The scoring of one source, frame by frame as it arrives.

  Frames go through ``pipeline.frames_to_objects``; a frame becomes complete
  (holds all its objects) through its ``on_frame`` hook, once the cube
  window has moved W + 1 frames past it. Every ``max_latency_frames``
  complete frames, their objects are scored together and pushed, frame by
  frame, into a ``frame_scoring.FrameScoreStream``, whose final frame
  scores go to the outputs at once. Constructing it starts the source and
  opens the output files; ``score`` runs to the end of the source, then
  ``summary`` gives summary.json's contents.
  """

  def __init__(self, bundle, object_scorer, shapes: list[int], settings,
               src: sources.Source, out: str, options: Options):
    """Starts reading ``src``; opens the outputs in ``out`` and the bar.

    Args:
      bundle: the loaded bundle (``bundle.Bundle``).
      object_scorer: its compiled model (``inference.ObjectScorer``).
      shapes: the compiled batch sizes (``batch_shapes``), all warmed up.
      settings: the build settings (``builder.BuildSettings``).
      src: the source, opened but not started.
      out: the output folder.
      options: the scorer's options.
    """
    import tqdm  # pylint: disable=g-import-not-at-top
    self.bundle, self.object_scorer = bundle, object_scorer
    self.shapes = shapes
    self.settings, self.src, self.options = settings, src, options
    self.threshold = (bundle.threshold if options.threshold is None
                      else float(options.threshold))
    self.half_window = settings.half_window
    self.context = settings.context("test", "train")
    src.start(settings.channels)
    self.outputs = stream_outputs.StreamOutputs(
        out, self.threshold, video=options.video, fps=src.fps)
    self.map_settings = bundle.settings
    self.stream = None   # frame_scoring.FrameScoreStream, at the first frame
    self.frames: dict[int, sources.Frame] = {}   # read, not yet final
    self.objs_by_frame: dict[int, list] = collections.defaultdict(list)
    # Scored objects: (boxes, scores) of each frame, until it is final.
    self.results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    # The first C and last C frames take the maps of frames C and T-C-1
    # (frame_scoring.fill_borders); their events list those frames' objects.
    self.border: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # Complete frames whose objects await the model.
    self.waiting: list[int] = []
    self.num_read = self.num_complete = self.num_final = 0
    self.num_objects = 0
    self.model_s = 0.0
    self.interrupted = False
    self.bar = tqdm.tqdm(unit="frame", desc="score", dynamic_ncols=True,
                         disable=not options.progress, file=sys.stderr,
                         total=src.declared_frames or None)
    self.t_start = time.perf_counter()

  def score(self, detections_path: Optional[str], classifier) -> None:
    """Runs the source through the object pipeline to its end (or Ctrl-C,
    or a user error such as a detections file longer than the stream),
    then scores the frames still pending and closes the outputs."""
    from ssmtl_jax.perception import pipeline  # pylint: disable=g-import-not-at-top
    try:
      for obj in pipeline.frames_to_objects(
          self.settings, self._feed(), video_id="stream",
          context=self.context, detections_file=detections_path,
          video_name=self.src.spec, teacher=classifier, classifier_batch=1,
          on_frame=self._on_frame):
        self.objs_by_frame[obj["frame_index"]].append(obj)
        self.num_objects += 1
    except KeyboardInterrupt:
      self.interrupted = True
      self.src.reason = "interrupted (Ctrl-C)"
    except errors.UserError as e:
      # E.g. a detections file with rows past a stream that ended early: the
      # source's own reason (decoder failure, stall) is the one to report.
      if self.src.reason == "end of input":
        self.src.reason = f"stopped: {e}"
    finally:
      self._finish()

  def _finish(self) -> None:
    """Closes the source, makes every read frame final, closes the outputs."""
    self.src.close()
    total, c = self.num_read, self.context
    if self.stream is not None:
      # Every frame that can hold objects is complete now; the last C frames
      # take frame T-C-1's map (frame_scoring.fill_borders).
      self._complete_through(total - c - 1 if total > 2 * c else -1)
      self._score_waiting()
      self._emit(self.stream.close(total))
    self.outputs.close()
    self.bar.close()

  def _feed(self) -> Iterator[np.ndarray]:
    """The source's images, for the object pipeline; each frame is kept
    until its score is final, the frame score stream made at the first."""
    for fr in self.src.frames():
      if self.stream is None:
        self.stream = self._new_stream(*fr.image.shape[:2])
      self.frames[fr.index] = fr
      self.num_read = fr.index + 1
      yield fr.image

  def _new_stream(self, height: int, width: int):
    """The FrameScoreStream of frames of ``height`` x ``width`` pixels."""
    from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top
    s = self.map_settings
    return frame_scoring.FrameScoreStream(
        height, width, sigma=s.sigma, scale=s.map_scale,
        background=self.bundle.background, temporal_sigma=s.temporal_sigma,
        context=self.context, keep_maps=self.options.video)

  def _on_frame(self, t: int, frame) -> None:
    """``frames_to_objects``' hook, called as frame t enters the pipeline."""
    # Frame t enters the cube window once every centre up to t - W - 1 has
    # been cut, classified (classifier_batch 1) and yielded to us. (The
    # detector reads a batch ahead of this point, not behind it.)
    del frame
    self._complete_through(t - self.half_window - 1)

  def _complete_through(self, last: int) -> None:
    """Frames up to ``last`` hold all their objects."""
    while self.num_complete <= last:
      self.waiting.append(self.num_complete)
      self.num_complete += 1
      if len(self.waiting) >= self.options.max_latency_frames:
        self._score_waiting()

  def _score_waiting(self) -> None:
    """Scores the objects of the waiting frames, pushes them in order."""
    combined = self._object_scores(
        [o for t in self.waiting for o in self.objs_by_frame.get(t, [])])
    i = 0
    for t in self.waiting:
      group = self.objs_by_frame.pop(t, [])
      boxes = (np.stack([o["box"] for o in group]) if group
               else np.zeros((0, 4), np.float32))
      vals = combined[i:i + len(group)]
      i += len(group)
      self.results[t] = (boxes, vals)
      if t == self.context:
        self.border["first"] = (boxes, vals)
      self.border["last"] = (boxes, vals)
      self._emit(self.stream.push(boxes, vals))
    self.waiting.clear()

  def _object_scores(self, objs: list[dict]) -> np.ndarray:
    """The calibrated scores of ``objs`` [N], in batches of the compiled
    sizes; the time spent counts as model time."""
    from ssmtl_jax.evaluation import inference  # pylint: disable=g-import-not-at-top
    if not objs:
      return np.zeros(0)
    t0 = time.perf_counter()
    raws = []
    for i in range(0, len(objs), self.shapes[-1]):
      chunk = objs[i:i + self.shapes[-1]]
      batch = {k: np.stack([o[k] for o in chunk])
               for k in inference.MODEL_KEYS}
      # The smallest compiled batch that holds them.
      size = next(n for n in self.shapes if n >= len(chunk))
      raws.append(self.object_scorer.score_arrays(batch, size))
    raw = {k: np.concatenate([r[k] for r in raws]) for k in raws[0]}
    combined = self.bundle.object_scores(raw)
    self.model_s += time.perf_counter() - t0
    return combined

  def _emit(self, pairs: list[tuple[int, float]]) -> None:
    """Writes the frames whose scores became final, (frame, score) pairs."""
    for t, score in pairs:
      self._emit_frame(t, score)
    if pairs:
      self._show_progress(len(pairs))

  def _emit_frame(self, t: int, score: float) -> None:
    """Writes final frame t; a border frame gets the objects of the frame
    whose map it takes."""
    fr = self.frames.pop(t)
    boxes, obj_scores = self.results.pop(t, (np.zeros((0, 4)), np.zeros(0)))
    own = len(boxes)
    total, c = self.stream.num_frames, self.context
    if t < c and "first" in self.border:
      boxes, obj_scores = self.border["first"]
    elif total is not None and total > 2 * c and t >= total - c:
      boxes, obj_scores = self.border.get("last", (boxes, obj_scores))
    heat = self.stream.pop_map(t) if self.options.video else None
    self.outputs.frame(t, fr.time_s, score, boxes, obj_scores, fr.arrived,
                       fr.rgb, heat, own)
    self.num_final += 1

  def _show_progress(self, n: int) -> None:
    """Advances the bar by ``n`` final frames; frames/s, the last latency
    and objects per frame beside it."""
    self.bar.update(n)
    lat = self.outputs.latencies_ms[-1]
    dt = max(time.perf_counter() - self.t_start, 1e-9)
    self.bar.set_postfix(
        fps=f"{self.num_final / dt:.1f}", latency_ms=f"{lat:.0f}",
        obj_per_frame=f"{self.num_objects / max(1, self.num_read):.1f}",
        refresh=False)

  def summary(self, bundle_path: str, startup_s: float) -> dict:
    """summary.json's contents, once ``score`` has returned."""
    import jax  # pylint: disable=g-import-not-at-top
    wall = time.perf_counter() - self.t_start
    src, options, total = self.src, self.options, self.num_read
    latencies = self.outputs.latencies_ms
    lat = np.asarray(latencies) if latencies else None
    return {
        "input": src.spec, "bundle": bundle_path, "frames": total,
        "declared_frames": src.declared_frames or None,
        "objects": self.num_objects, "events": self.outputs.num_events,
        "threshold": self.threshold,
        "threshold_source": (
            "--threshold" if options.threshold is not None
            else self.bundle.meta["calibration"]["threshold_rule"]),
        "ended": src.reason, "corrupt_frames": src.corrupt_frames,
        "resized_frames": src.resized_frames,
        "startup_s": startup_s,
        "wall_s": wall, "frames_per_s": total / wall if wall > 0 else None,
        "model_s": self.model_s,
        "latency_frames": self._latency_frames(),
        "latency_ms": (None if lat is None else {
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "fps_source": src.fps,
        "realtime": bool(options.realtime or src.live),
    }

  def _latency_frames(self) -> dict:
    """The latency in frames, by cause (summary.json's latency_frames)."""
    settings = self.settings
    return {
        "half_window": self.half_window,
        "smoothing": (self.stream.latency_frames
                      if self.stream is not None else None),
        "detector_batch": (settings.det_batch
                           if settings.detector_kind == "yolov3" else 0),
        "batching": self.options.max_latency_frames - 1}


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
