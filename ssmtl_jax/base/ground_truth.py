"""Ground truth of the test videos: frame labels and pixel masks.

Layout (docs/DESIGN.md §4), both optional per video::

    ROOT/gt_frame/<video_id>.npy   0/1 frame labels [T] (1 = abnormal)
    ROOT/gt_pixel/<video_id>.npz   key "mask": bool (or 0/255) [T, H, W]

The one reader of these files: the builder checks them against the videos,
the evaluator scores against them (a video without labels is scored, not
measured) and ``data_prep.recall`` measures detector recall on them. numpy +
etils.epath only (no TensorFlow, no JAX): a base module every floor can
import, and ``gs://`` roots work.

Every problem raises :class:`GroundTruthError` (an ``errors.DataError``)
whose message names the file.
"""

from __future__ import annotations

import dataclasses
import zipfile
from typing import Mapping, Optional, Tuple

import numpy as np
from etils import epath

from ssmtl_jax.base import errors

MASK_KEY = "mask"


class GroundTruthError(errors.DataError):
  """Missing, unreadable or inconsistent ground truth; names the file."""


def frame_labels_path(root, video_id: str) -> epath.Path:
  return epath.Path(root) / "gt_frame" / f"{video_id}.npy"


def pixel_masks_path(root, video_id: str) -> epath.Path:
  return epath.Path(root) / "gt_pixel" / f"{video_id}.npz"


def load_frame_labels(root, video_id: str, num_frames: int
                      ) -> Optional[np.ndarray]:
  """The frame labels of one video: uint8 [num_frames] of 0/1, or None if the
  video has no ``gt_frame`` file.

  Raises GroundTruthError naming the file: unreadable, a length other than
  ``num_frames`` (both numbers given), values other than 0/1.
  """
  path = frame_labels_path(root, video_id)
  if not path.exists():
    return None
  try:
    with path.open("rb") as f:
      raw = np.load(f, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise GroundTruthError(f"cannot read {path}: {e}") from None
  if raw.ndim != 1 or raw.shape[0] != num_frames:
    raise GroundTruthError(
        f"{path} has {raw.shape[0] if raw.ndim else 0} labels (shape "
        f"{raw.shape}) but video {video_id!r} has {num_frames} frames")
  if not np.isin(raw, (0, 1)).all():
    raise GroundTruthError(
        f"{path}: frame labels must be 0/1, got values "
        f"{np.unique(raw)[:10].tolist()}")
  return raw.astype(np.uint8)


def _npz_member_shape(path: epath.Path, key: str) -> Tuple[int, ...]:
  """Shape of array ``key`` in an .npz, read from its header only."""
  with path.open("rb") as f, zipfile.ZipFile(f) as zf:
    member = f"{key}.npy"
    if member not in zf.namelist():
      keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
      raise GroundTruthError(f"{path}: no key {key!r} (keys: {keys})")
    with zf.open(member) as m:
      version = np.lib.format.read_magic(m)
      if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(m)
      else:
        shape, _, _ = np.lib.format.read_array_header_2_0(m)
  return tuple(shape)


def check_pixel_masks(root, video_id: str, shape: Tuple[int, int, int]
                      ) -> Optional[epath.Path]:
  """Checks the mask file's shape (from its header, without loading it).

  Args:
    root: data root; video_id: the video.
    shape: the video's (T, H, W).
  Returns:
    The ``gt_pixel`` file, or None if the video has none.
  Raises:
    GroundTruthError naming the file: unreadable, no "mask" key, another shape.
  """
  path = pixel_masks_path(root, video_id)
  if not path.exists():
    return None
  expected = tuple(int(s) for s in shape)
  try:
    got = _npz_member_shape(path, MASK_KEY)
  except GroundTruthError:
    raise
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise GroundTruthError(f"cannot read {path}: {e}") from None
  if got != expected:
    raise GroundTruthError(
        f"{path} mask has shape {got} (T, H, W) but video {video_id!r} is "
        f"{expected}")
  return path


def read_masks(path) -> np.ndarray:
  """bool [T, H, W] from a (checked) ``gt_pixel`` file; non-bool masks (0/255
  uint8 from image exports) count as set where != 0."""
  with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
    m = z[MASK_KEY]
  return m if m.dtype == np.bool_ else m != 0


def load_pixel_masks(root, video_id: str, shape: Tuple[int, int, int]
                     ) -> Optional[np.ndarray]:
  """bool [T, H, W] pixel masks of one video, or None if it has none; checked
  as :func:`check_pixel_masks`."""
  path = check_pixel_masks(root, video_id, shape)
  return None if path is None else read_masks(path)


def load(root, video_id: str, num_frames: int, height: int, width: int, *,
         load_masks: bool = True
         ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """Loads the optional ground truth of one video.

  Args:
    root: data root holding ``gt_frame/`` and/or ``gt_pixel/``.
    video_id: the video's id.
    num_frames, height, width: the video's T, H, W, checked against the files.
    load_masks: when False the pixel masks are not loaded (they can be large)
      but their shape is still checked from the .npz header.
  Returns:
    (frame_labels uint8 [T] of 0/1 or None if absent,
     pixel_masks bool [T, H, W] or None if absent or not loaded).
  Raises:
    GroundTruthError naming the gt file: unreadable file, length/shape
      disagreeing with the video (both numbers given), labels not 0/1.
  """
  labels = load_frame_labels(root, video_id, num_frames)
  path = check_pixel_masks(root, video_id, (num_frames, height, width))
  masks = read_masks(path) if path is not None and load_masks else None
  return labels, masks


@dataclasses.dataclass
class VideoGT:
  """The ground truth of one test video (masks stay on disk until asked)."""
  frames: int
  height: int
  width: int
  labels: Optional[np.ndarray]      # uint8 [T] of 0/1; None: no gt_frame
  mask_path: Optional[epath.Path]   # gt_pixel/<id>.npz, if present

  def masks(self) -> np.ndarray:
    """bool [T, H, W]; requires ``mask_path``."""
    if self.mask_path is None:
      raise GroundTruthError("this video has no gt_pixel masks")
    return read_masks(self.mask_path)


def load_split(root, videos: Mapping[str, Mapping[str, int]], *,
               require_labels: bool = True) -> dict[str, VideoGT]:
  """Frame labels and checked mask files (both optional per video unless
  ``require_labels``) of every video of a split.

  Args:
    root: data root.
    videos: {video_id: {"frames": T, "height": H, "width": W, ...}} (the
      ``videos`` of a split's records metadata).
    require_labels: when True a video without frame labels is an error;
      when False its ``VideoGT.labels`` is None (scored, not measured).
  Returns:
    {video_id: VideoGT}, in the order of ``videos``.
  Raises:
    GroundTruthError: bad ground truth, or (``require_labels``) a video
      without frame labels.
  """
  out = {}
  for vid, v in videos.items():
    frames, height, width = int(v["frames"]), int(v["height"]), int(v["width"])
    labels = load_frame_labels(root, vid, frames)
    if labels is None and require_labels:
      raise GroundTruthError(
          f"video {vid!r} has no frame labels "
          f"({frame_labels_path(root, vid)}): every video of this split "
          "needs ROOT/gt_frame/<video_id>.npy (config.data.root)")
    out[vid] = VideoGT(frames, height, width, labels,
                       check_pixel_masks(root, vid, (frames, height, width)))
  return out
