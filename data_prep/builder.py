"""Builds the object records of a data set: videos -> detections -> cubes -> shards.

One shard per video (``RECORDS/ssmtl_objects-<split>.tfrecord-<i>-of-<n>``, in
the natural order of video ids), written atomically, plus a per-video
completion record ``RECORDS/meta/<split>/<video_id>.json``. A rerun skips every
video whose shard and completion record exist with the same build settings, so
a killed build resumes without redoing finished videos and never exposes a
half-written shard. When every video of every split is done, the split summary
``RECORDS/meta/<split>.json`` and the TFDS metadata are written.

Teacher targets with pre-computed detections (``build.detector.kind='file'``):
a detections file carries one class and a score per box, so ``teacher_det`` is
the one-hot class vector scaled by the score. ``build.classifier.kind='none'``
stores no classifier logits (K = 0).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from typing import Optional

from absl import logging
import numpy as np
import tqdm

from data_prep import cubes
from data_prep import detections as detections_lib
from data_prep import video_io
from ssmtl_jax import errors
from ssmtl_jax import schema


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  """Everything that determines the content of a video's records."""
  root: str
  records: str
  half_window: int
  crop_size: int
  channels: int
  padding: float
  min_box_size: float
  square: bool
  num_det: int
  detector_kind: str
  detections_dir: str
  min_score: float
  classifier_kind: str

  @classmethod
  def from_config(cls, config) -> "BuildSettings":
    b = config.build
    if not config.data.root:
      raise errors.ConfigError("config.data.root is empty: point it at the "
                               "videos (ROOT/{train,test}/<video_id>/)")
    if not os.path.isdir(config.data.root):
      raise errors.ConfigError(
          f"config.data.root={config.data.root!r} is not a directory")
    if not config.data.records:
      raise errors.ConfigError("config.data.records is empty: where should "
                               "the records be written?")
    if b.half_window < 1 or b.crop_size < 8 or b.channels not in (1, 3):
      raise errors.ConfigError(
          "config.build: need half_window >= 1, crop_size >= 8, channels 1 or "
          f"3 (got {b.half_window}, {b.crop_size}, {b.channels})")
    if b.detector.kind != "file":
      raise errors.ConfigError(
          f"config.build.detector.kind={b.detector.kind!r}: only 'file' "
          "(pre-computed detections) is available in this version")
    if b.classifier.kind != "none":
      raise errors.ConfigError(
          f"config.build.classifier.kind={b.classifier.kind!r}: only 'none' "
          "is available in this version")
    return cls(root=config.data.root, records=config.data.records,
               half_window=int(b.half_window), crop_size=int(b.crop_size),
               channels=int(b.channels), padding=float(b.padding),
               min_box_size=float(b.min_box_size), square=bool(b.square),
               num_det=int(b.num_det_classes), detector_kind=b.detector.kind,
               detections_dir=b.detector.path or os.path.join(
                   config.data.root, "detections"),
               min_score=float(b.detector.min_score),
               classifier_kind=b.classifier.kind)

  @property
  def fingerprint(self) -> dict:
    """Settings that change record content (paths excluded)."""
    d = dataclasses.asdict(self)
    for k in ("root", "records", "detections_dir"):
      d.pop(k)
    return d

  def features(self):
    return schema.features(window=2 * self.half_window + 1,
                           crop_size=self.crop_size, channels=self.channels,
                           num_det=self.num_det, num_cls=0)


def _video_done_path(records: str, split: str, video_id: str) -> str:
  return os.path.join(records, "meta", split, f"{video_id}.json")


def _is_done(settings: BuildSettings, split: str, video_id: str,
             shard: str) -> bool:
  done = _video_done_path(settings.records, split, video_id)
  if not (os.path.exists(done) and os.path.exists(shard)):
    return False
  previous = schema.read_json(done)
  if previous.get("settings") != settings.fingerprint:
    raise errors.ConfigError(
        f"{settings.records} holds records of video {video_id!r} built with "
        f"other settings ({done}); use a new config.data.records directory "
        "or delete the old one")
  return True


def build_video(settings: BuildSettings, src: video_io.VideoSource,
                shard_path: str) -> dict:
  """Writes the shard of one video; returns its summary (frames, objects, ...)."""
  t0 = time.perf_counter()
  det_path = os.path.join(settings.detections_dir, src.split,
                          f"{src.video_id}.csv")
  dets = detections_lib.read_detections(det_path)
  feats = settings.features()
  serialized, height, width, num_frames = [], None, None, 0

  def counted(frames):
    nonlocal num_frames, height, width
    for frame in frames:
      if height is None:
        height, width = frame.shape[:2]
      num_frames += 1
      yield frame

  frames = counted(video_io.iter_frames(src, settings.channels))
  for t, window in cubes.sliding_windows(frames, settings.half_window):
    for x1, y1, x2, y2, score, cls in dets.get(t, ()):
      if score < settings.min_score:
        continue
      if not 0 <= int(cls) < settings.num_det:
        raise detections_lib.DetectionFileError(
            f"{det_path}: class {int(cls)} outside [0, {settings.num_det})")
      cube = cubes.crop_cube(window, (x1, y1, x2, y2), size=settings.crop_size,
                             padding=settings.padding,
                             min_size=settings.min_box_size,
                             square=settings.square)
      if cube is None:
        continue
      teacher_det = np.zeros(settings.num_det, np.float32)
      teacher_det[int(cls)] = score
      serialized.append(schema.serialize(feats, {
          "video_id": src.video_id, "frame_index": t,
          "box": np.asarray([x1, y1, x2, y2], np.float32),
          "det_score": score, "det_class": int(cls), "crops": cube,
          "teacher_det": teacher_det,
          "teacher_cls": np.zeros((0,), np.float32)}))
  if num_frames == 0:
    raise video_io.VideoInputError(f"video has no frames: {src.path}")
  late = [t for t in dets if t >= num_frames]
  if late:
    raise detections_lib.DetectionFileError(
        f"{det_path}: detections for frame {max(late)} but the video "
        f"{src.path} has {num_frames} frames")
  labels, _ = video_io.load_ground_truth(settings.root, src.video_id,
                                         num_frames, height, width,
                                         load_masks=False)
  schema.write_shard(shard_path, serialized)
  summary = {"frames": num_frames, "objects": len(serialized),
             "height": int(height), "width": int(width),
             "abnormal_frames": None if labels is None else int(labels.sum()),
             "seconds": time.perf_counter() - t0}
  schema.write_json_atomic(
      _video_done_path(settings.records, src.split, src.video_id),
      {"settings": settings.fingerprint, "summary": summary,
       "shard": os.path.basename(shard_path)})
  return summary


def _build_video_job(args):
  settings, src, shard = args
  return src.video_id, build_video(settings, src, shard)


def build(config, splits: Optional[tuple[str, ...]] = None) -> dict:
  """Builds (or resumes) the records of every split; returns the meta per split."""
  settings = BuildSettings.from_config(config)
  splits = splits or (config.data.train_split, config.data.test_split)
  os.makedirs(settings.records, exist_ok=True)
  jobs, shards, videos = [], {}, {}
  for split in splits:
    videos[split] = video_io.list_videos(settings.root, split)
    n = len(videos[split])
    shards[split] = [os.path.join(settings.records,
                                  schema.shard_filename(split, i, n))
                     for i in range(n)]
    for src, shard in zip(videos[split], shards[split]):
      if not _is_done(settings, split, src.video_id, shard):
        jobs.append((settings, src, shard))
  total = sum(len(v) for v in videos.values())
  logging.info("Building %s: %d of %d videos to do.", settings.records,
               len(jobs), total)
  workers = max(1, min(int(config.build.workers), len(jobs)))
  with tqdm.tqdm(total=len(jobs), unit="video", desc="build",
                 dynamic_ncols=True) as bar:
    frames = objects = 0
    t0 = time.perf_counter()

    def done(summary):
      nonlocal frames, objects
      frames += summary["frames"]
      objects += summary["objects"]
      dt = max(time.perf_counter() - t0, 1e-9)
      bar.set_postfix(frames_s=f"{frames / dt:.0f}", objects_s=f"{objects / dt:.0f}")
      bar.update(1)

    if workers == 1:
      for job in jobs:
        done(_build_video_job(job)[1])
    else:
      # spawn: TensorFlow (used to serialise) is not fork-safe.
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        for _, summary in ex.map(_build_video_job, jobs):
          done(summary)

  metas = {}
  for split in splits:
    per_video = {}
    for src in videos[split]:
      rec = schema.read_json(_video_done_path(settings.records, split,
                                              src.video_id))
      per_video[src.video_id] = {k: rec["summary"][k] for k in
                                 ("frames", "objects", "height", "width",
                                  "abnormal_frames")}
    metas[split] = {
        "videos": per_video,
        "num_videos": len(per_video),
        "num_frames": sum(v["frames"] for v in per_video.values()),
        "num_objects": sum(v["objects"] for v in per_video.values()),
        "half_window": settings.half_window,
        "settings": settings.fingerprint,
        "root": os.path.abspath(settings.root),
    }
    schema.write_json_atomic(schema.meta_path(settings.records, split),
                             metas[split])
  schema.finalize(settings.records, settings.features(),
                  {split: [metas[split]["videos"][s.video_id]["objects"]
                           for s in videos[split]] for split in splits})
  return metas


def records_complete(records: str, splits) -> bool:
  return (os.path.exists(os.path.join(records, "dataset_info.json")) and
          all(os.path.exists(schema.meta_path(records, s)) for s in splits))
