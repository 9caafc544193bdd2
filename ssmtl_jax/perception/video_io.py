"""Reading raw videos: frame folders or video files.

Input layout (docs/DESIGN.md §4)::

    ROOT/<split>/<video_id>/            frames: jpg/jpeg/png/tif/tiff/bmp
    ROOT/<split>/<video_id>.<ext>       video file: avi/mp4/mkv/mov/mpg/...
    ROOT/gt_frame/<video_id>.npy        optional, per-frame 0/1 labels [T]
    ROOT/gt_pixel/<video_id>.npz        optional, key "mask": bool [T, H, W]

(the ground truth is read by ``ssmtl_jax.base.ground_truth``).

Frames inside a folder and videos inside a split are sorted *naturally*
("2.jpg" before "10.jpg"), because many data sets do not zero-pad their
numbers and a plain sort would silently scramble time.

Frames are streamed one at a time, so memory stays flat in video length. All
frames come out as uint8 [H, W, C] with C = 1 (grayscale, via cv2.cvtColor) or
C = 3 (RGB order, not OpenCV's BGR). Every problem with the input raises a
:class:`VideoInputError` whose message names the offending file or folder.

Paths may be local or remote (``gs://...``): listing and image reads go
through ``etils.epath``; a remote video *file* is first copied to a local
temporary file because OpenCV's decoders only read local files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from typing import Iterator, Literal, Optional, Tuple

import cv2
import numpy as np
from etils import epath

from ssmtl_jax.base import errors

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".webm", ".m4v"})


class VideoInputError(errors.DataError):
  """Bad input video or frames; the message names the file/folder."""


@dataclasses.dataclass(frozen=True)
class VideoSource:
  """One input video.

  Attributes:
    video_id: folder name, or file name without extension.
    split: "train", "test", ...
    path: the frame folder or the video file.
    kind: "frames" (a folder of images) or "file" (a video container).
  """
  video_id: str
  split: str
  path: str
  kind: Literal["frames", "file"]


def natural_key(name: str) -> Tuple:
  """Sort key that orders digit runs by value: "2.jpg" < "10.jpg".

  Text runs compare case-insensitively; the raw name breaks ties so the order
  is total (e.g. "1.jpg" vs "01.jpg").
  """
  parts = re.split(r"(\d+)", name)
  # Tag each run so ints and strs are never compared with each other: the
  # split alternates text/digits, so position i always holds the same type.
  return tuple(int(p) if i % 2 else p.lower()
               for i, p in enumerate(parts)), name


def _is_hidden(name: str) -> bool:
  # .DS_Store, ._foo.jpg (macOS resource forks), editor swap files...
  return name.startswith(".")


def list_videos(root: str, split: str) -> list[VideoSource]:
  """Lists the videos of ``ROOT/<split>/``, naturally sorted by id.

  Each sub-folder is a frame-folder video; each file with a video extension is
  a video file. Other files (README, hidden files) are ignored.

  Raises:
    VideoInputError: the split folder is missing, holds no video, or two
      entries share an id (e.g. ``01/`` and ``01.avi``).
  """
  split_dir = epath.Path(root) / split
  if not split_dir.is_dir():
    raise VideoInputError(f"split folder not found: {split_dir}")
  by_id: dict[str, VideoSource] = {}
  for entry in split_dir.iterdir():
    if _is_hidden(entry.name):
      continue
    if entry.is_dir():
      src = VideoSource(entry.name, split, os.fspath(entry), "frames")
    elif entry.suffix.lower() in VIDEO_EXTENSIONS:
      src = VideoSource(entry.stem, split, os.fspath(entry), "file")
    else:
      continue
    if src.video_id in by_id:
      raise VideoInputError(
          f"two videos with id {src.video_id!r} in {split_dir}: "
          f"{by_id[src.video_id].path} and {src.path}")
    by_id[src.video_id] = src
  if not by_id:
    raise VideoInputError(
        f"no videos in {split_dir} (expected frame sub-folders or files with "
        f"extension {', '.join(sorted(VIDEO_EXTENSIONS))})")
  return [by_id[k] for k in sorted(by_id, key=natural_key)]


def list_frame_files(folder: str) -> list[str]:
  """Image files of a frame folder, naturally sorted.

  Raises:
    VideoInputError: the folder is missing or holds no image file.
  """
  path = epath.Path(folder)
  if not path.is_dir():
    raise VideoInputError(f"frame folder not found: {folder}")
  names = [p.name for p in path.iterdir()
           if not _is_hidden(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS]
  if not names:
    exts = "/".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
    raise VideoInputError(f"empty frame folder (no {exts} files): {folder}")
  return [os.fspath(path / n) for n in sorted(names, key=natural_key)]


@contextlib.contextmanager
def _local_video(path: str) -> Iterator[str]:
  """Yields a local path for ``path``, copying remote files to a temp file."""
  if "://" not in path:
    yield path
    return
  suffix = os.path.splitext(path)[1]
  with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
    with epath.Path(path).open("rb") as f:
      shutil.copyfileobj(f, tmp, length=16 << 20)
    tmp.flush()
    yield tmp.name


@contextlib.contextmanager
def _open_capture(path: str) -> Iterator[cv2.VideoCapture]:
  with _local_video(path) as local:
    if not os.path.exists(local):
      raise VideoInputError(f"video file not found: {path}")
    cap = cv2.VideoCapture(local)
    try:
      if not cap.isOpened():
        raise VideoInputError(
            f"cannot open video file (corrupt or unsupported codec): {path}")
      yield cap
    finally:
      cap.release()


def count_frames(src: VideoSource) -> int:
  """Number of frames of ``src``.

  For video files this decodes the whole stream (``grab`` only, no colour
  conversion): CAP_PROP_FRAME_COUNT comes from container metadata and is
  often wrong (VFR, truncated files, some MPEG streams).

  Raises:
    VideoInputError: empty folder, unreadable video, or zero decodable frames.
  """
  if src.kind == "frames":
    return len(list_frame_files(src.path))
  with _open_capture(src.path) as cap:
    n = 0
    while cap.grab():
      n += 1
  if n == 0:
    raise VideoInputError(f"video file has no decodable frame: {src.path}")
  return n


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What :func:`probe` found: frame count and size (of the first frame)."""
  frames: int
  height: int
  width: int


def probe(src: VideoSource, *, count: bool = True) -> VideoInfo:
  """Checks that ``src`` can be read: a frame folder is non-empty and its
  first frame decodes; a video file opens, its first frame decodes and its
  frames are decoded and counted (``grab``, which decodes but converts no
  pixels: a few seconds per hour of SD video), and fewer decodable frames
  than the container declares names the file as damaged. Later frames of a
  folder are decoded only when built.

  ``count=False`` (the streaming scorer, which scores what a cut-short file
  holds) stops after the first frame; the count is then the container's.

  Raises:
    VideoInputError naming the file or folder.
  """
  if src.kind == "frames":
    files = list_frame_files(src.path)
    h, w = _decode_image(files[0]).shape[:2]
    return VideoInfo(len(files), h, w)
  with _open_capture(src.path) as cap:
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    ok, img = cap.read()
    if not ok or img is None:
      raise VideoInputError(f"video file has no decodable frame: {src.path}")
    if not count:
      return VideoInfo(declared, img.shape[0], img.shape[1])
    n = 1
    while cap.grab():  # FFmpeg decodes in grab(): a damaged frame ends it
      n += 1
  # The container's count can be an estimate (mkv/webm: from the duration,
  # a few % off); a file whose frames stop decoding well before it is
  # damaged.
  if declared > 0 and n < declared - max(2, declared // 20):
    raise VideoInputError(
        f"video file is damaged: only {n} of its {declared} frames decode: "
        f"{src.path}")
  return VideoInfo(n, img.shape[0], img.shape[1])


def _convert(bgr: np.ndarray, channels: int) -> np.ndarray:
  """BGR uint8 [H, W, 3] -> uint8 [H, W, channels] (RGB or gray)."""
  if channels == 3:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None]


def bgr_to_channels(bgr: np.ndarray, channels: int) -> np.ndarray:
  """An OpenCV BGR frame as the builder reads frames: uint8 [H, W, 1]
  (gray) or [H, W, 3] (RGB)."""
  return _convert(bgr, channels)


def read_image_bgr(path: str) -> np.ndarray:
  """One image file as BGR uint8 [H, W, 3] (VideoInputError if unreadable)."""
  return _decode_image(path)


def _decode_image(path: str) -> np.ndarray:
  """Reads one image file as BGR uint8 [H, W, 3]."""
  try:
    data = epath.Path(path).read_bytes()
  except OSError as e:
    raise VideoInputError(f"cannot read frame file {path}: {e}") from None
  # IMREAD_COLOR also normalises gray/alpha/16-bit images to 8-bit BGR, so
  # every frame goes through the same cvtColor path as video files do.
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise VideoInputError(
        f"cannot decode frame file (corrupt or unsupported image): {path}")
  return img


def iter_frames(src: VideoSource, channels: int, start: int = 0,
                stop: Optional[int] = None) -> Iterator[np.ndarray]:
  """Streams the frames of ``src`` in order.

  Args:
    src: a video from :func:`list_videos`.
    channels: 1 (grayscale) or 3 (RGB).
    start, stop: only frames start..stop-1 (stop None: to the end), e.g. a
      chunk of a long video. A video file is decoded from its start (frames
      before ``start`` are grabbed, not converted): seeking is not
      frame-exact for every codec.
  Yields:
    uint8 [H, W, channels] per frame; one frame in memory at a time.
  Raises:
    ValueError (immediately): bad ``channels`` or ``src.kind``.
    VideoInputError (lazily, while iterating): corrupt/unreadable frame,
      frame size differing from the first frame, empty folder, or a video
      with no decodable frame.
  """
  # Not a generator itself, so argument errors surface at the call site.
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  if start < 0 or (stop is not None and stop < start):
    raise ValueError(f"bad frame range [{start}, {stop})")
  if src.kind == "frames":
    return _iter_folder(src.path, channels, start, stop)
  if src.kind == "file":
    return _iter_file(src.path, channels, start, stop)
  raise ValueError(f"unknown VideoSource kind {src.kind!r} for {src.path}")


def _iter_folder(folder: str, channels: int, start: int,
                 stop: Optional[int]) -> Iterator[np.ndarray]:
  shape = None
  first = None
  for path in list_frame_files(folder)[start:stop]:
    img = _decode_image(path)
    if shape is None:
      shape, first = img.shape[:2], path
    elif img.shape[:2] != shape:
      raise VideoInputError(
          f"frame {path} is {img.shape[1]}x{img.shape[0]} (WxH) but the "
          f"first frame {first} is {shape[1]}x{shape[0]}")
    yield _convert(img, channels)


def _iter_file(path: str, channels: int, start: int,
               stop: Optional[int]) -> Iterator[np.ndarray]:
  with _open_capture(path) as cap:
    shape = None
    index = 0
    while index < start and cap.grab():
      index += 1
    while stop is None or index < stop:
      ok, img = cap.read()
      if not ok:
        break
      if shape is None:
        shape = img.shape[:2]
      elif img.shape[:2] != shape:
        raise VideoInputError(
            f"{path}: frame {index} is {img.shape[1]}x{img.shape[0]} (WxH) "
            f"but frame {start} is {shape[1]}x{shape[0]}")
      yield _convert(img, channels)
      index += 1
  if shape is None:
    raise VideoInputError(f"video file has no decodable frame: {path}")
