"""The end-to-end section of ``python -m benchmarks.compare``.

Frames/s of the whole JAX scoring pipeline on real frames (Ped2 test video
01 beside the repository, or ``--frames DIR``; synthetic frames otherwise):
Flax detector, cubes, Lite0 teacher, the model's task scores, maps,
smoothing; with each stage's seconds. JAX only (see ``end_to_end_section``).
"""

from __future__ import annotations

import dataclasses
import time
import types
from typing import Callable, Iterable, Iterator

import jax
import numpy as np

from benchmarks import harness
from ssmtl_jax.evaluation import inference
from ssmtl_jax.model import sharding

E2E_STAGES = ("detector", "cubes", "teacher", "model", "maps")


def _timed(fn: Callable, seconds: dict, stage: str) -> Callable:
  """fn, adding the time of each call to seconds[stage]."""

  def timed(*args, **kwargs):
    t0 = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      seconds[stage] += time.perf_counter() - t0

  return timed


def _timed_iter(items: Iterable, seconds: dict, stage: str) -> Iterator:
  """items, adding the time spent producing each to seconds[stage]."""
  it = iter(items)
  while True:
    t0 = time.perf_counter()
    try:
      item = next(it)
    except StopIteration:
      return
    finally:
      seconds[stage] += time.perf_counter() - t0
    yield item


def _perception(settings: harness.BenchSettings, config):
  """The perception settings of ``config`` (the builder's, at the bench's
  window, crop and detector input), its detector and its classifier teacher
  -- the ones the builder and the streaming scorer run."""
  from ssmtl_jax.data import builder  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import pipeline  # pylint: disable=g-import-not-at-top
  spec = dataclasses.replace(
      builder.BuildSettings.from_config(config),
      half_window=settings.half_window, crop_size=settings.crop,
      det_input_size=tuple(settings.det_input), det_batch=settings.det_batch)
  return spec, pipeline.detector(spec), pipeline.classifier(spec)


class _TimedDetector:
  """A detector whose detect_stream adds the time of each output to
  seconds['detector']."""

  def __init__(self, det, seconds: dict):
    self._det, self._seconds = det, seconds

  def detect_stream(self, frames):
    return _timed_iter(self._det.detect_stream(frames), self._seconds,
                       "detector")


def _measure_pipeline(pipeline: Callable[[], tuple[dict, int]],
                      settings: harness.BenchSettings, frames: int,
                      source: str, build) -> dict:
  """The section's entry: one untimed (compiling) pass, then the repeats;
  frames/s median and spread, the stage seconds of the median repeat."""
  t0 = time.perf_counter()
  pipeline()  # compiles the detector, teacher and model shapes
  first = time.perf_counter() - t0
  runs = [pipeline() for _ in range(max(1, settings.repeats - 2))]
  totals = [sum(t.values()) for t, _ in runs]
  med = int(np.argsort(totals)[len(totals) // 2])
  rates = np.asarray([frames / x for x in totals])
  return {"frames_per_s": float(np.median(rates)), "min": float(rates.min()),
          "max": float(rates.max()), "repeats": [float(x) for x in rates],
          "first_call_s": first, "frames": frames, "source": source,
          "objects": runs[med][1],
          "stage_seconds": {k: float(v) for k, v in runs[med][0].items()},
          "crop": settings.crop, "detector_input": list(settings.det_input),
          "teacher": f"{build.classifier.kind} @{build.classifier.input_size}",
          "settings": "configs/ped2_cpu.py"}


def end_to_end_section(settings: harness.BenchSettings,
                       m: harness.Models) -> dict:
  """Frames in, frame scores out, with this package's components.

  The detector, teacher, cube and eval settings of ``configs/ped2_cpu.py``
  (crop size and input size from ``settings``): the Flax detector streamed
  over the frames and the builder's frames -> objects path
  (``ssmtl_jax.perception.pipeline.frames_to_objects``: cubes of 2W+1 crops
  around each detection, the classifier teacher on batches of middle crops), the model's
  four task scores (``ssmtl_jax.evaluation.inference``, jitted, fixed batch),
  then ``ssmtl_jax.evaluation.frame_scoring``'s path to frame scores
  (normalisation, KD score, combination, anomaly maps, 3D Gaussian
  smoothing, frame maximum). Reports frames/s of the whole pipeline (median
  over repeats, compilation excluded) and the seconds of each stage in the
  median repeat; the stages interleave, so detector and teacher are timed
  around their calls, and cubes is the rest of the object stream's time.
  JAX only: the PyTorch twin covers the model, not a detector or teacher
  (the detector section compares the detector with OpenCV's).
  """
  from ssmtl_jax.perception import pipeline as perception  # pylint: disable=g-import-not-at-top
  from configs import ped2_cpu  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top
  config = ped2_cpu.get_config()
  build = config.build
  # Min-max normalisation (ped2_cpu's validated choice): z-scoring needs
  # statistics of scored training objects, which a benchmark does not have;
  # both cost the same.
  eval_settings = dataclasses.replace(
      frame_scoring.Settings.from_config(config), normalize="minmax")
  # Scoring context, as the builder's test split (ssmtl_jax.perception.cubes).
  context = int(build.test_context) or int(config.tasks.seq_half)
  spec, det, classifier = _perception(settings, config)
  frames, source = harness.detector_frames(settings.e2e_frames,
                                           settings.frames_dir)
  frames = [f[..., None] for f in frames]
  videos = {source: (len(frames),) + frames[0].shape[:2]}
  mesh = sharding.create_mesh()
  fn = inference.jit_score_fn(inference.make_score_fn(m.flax, m.cfg), mesh)
  variables = jax.device_put(m.variables, sharding.replicated(mesh))
  batch_size = inference.padded_batch_size(settings.batch, mesh)

  def pipeline() -> tuple[dict, int]:
    t = dict.fromkeys(E2E_STAGES, 0.0)
    objs = perception.frames_to_objects(
        spec, frames, video_id=source, context=context,
        det=_TimedDetector(det, t),
        teacher=types.SimpleNamespace(
            logits=_timed(classifier.logits, t, "teacher")))
    score = _timed(inference.score_batch, t, "model")
    geometry: dict[str, list] = {k: [] for k in inference.GEOMETRY_KEYS}
    parts: dict[str, list] = {}
    for batch in inference.stacked_batches(
        _timed_iter(objs, t, "cubes"), batch_size):
      for k in geometry:
        geometry[k].append(batch[k])
      for task, v in score(fn, variables, batch, batch_size=batch_size,
                           mesh=mesh).items():
        parts.setdefault(task, []).append(v)
    # The object stream's time holds the detector and teacher calls it made.
    t["cubes"] -= t["detector"] + t["teacher"]
    if not parts:
      raise ValueError(f"no objects detected in {source}")
    t0 = time.perf_counter()
    geometry = {k: np.concatenate(v) for k, v in geometry.items()}
    _, combined = frame_scoring.object_anomaly_scores(
        {k: np.concatenate(v) for k, v in parts.items()}, eval_settings)
    frame_scoring.frame_scores_by_video(
        geometry["video_id"], geometry["frame_index"], geometry["box"],
        combined, videos, eval_settings, context=context)
    t["maps"] = time.perf_counter() - t0
    return t, len(combined)

  return _measure_pipeline(pipeline, settings, len(frames), source, build)
