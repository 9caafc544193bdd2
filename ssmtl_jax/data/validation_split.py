r"""A validation set of pseudo-anomalies of known extent, from training video.

Evaluation settings (score normalisation, smoothing, task weights, ...) must
not be chosen by looking at the test labels. This module holds out a few
*training* videos (normal by definition), turns each into validation videos
that contain a synthetic anomalous segment whose frames are known by
construction, and lays the result out as a data root the builder reads like
any other (docs/DESIGN.md §4)::

  python -m data_prep.validation --root ../shared/data/ped2 --out DIR/ped2_val \
      --holdout 08,16 [--seed 0] [--fast_stride 3] [--segment 0.3333] \
      [--kinds fast,reverse,paste] [--paste_size 0.2]

Output layout (``OUT``; ``ROOT`` is never modified or copied)::

  OUT/train/<id>            symlink -> ROOT/train/<id> (folder or video file,
                            absolute) for every training video NOT held out:
                            the model trains on these
  OUT/test                  symlink -> ROOT/test (absolute), when ROOT has it
  OUT/gt_frame/<test_id>.npy  symlinks -> ROOT's ground truth of each test
  OUT/gt_pixel/<test_id>.npz  video (only the files that exist)
  OUT/val/<val_id>/0000.png ...  the validation videos: PNG frames (lossless;
                            grayscale when a frame's three channels are equal,
                            as for Ped2, else colour), natural-sorted names
  OUT/gt_frame/<val_id>.npy   uint8 [T] 0/1 labels of each written frame
  OUT/gt_pixel/<val_id>.npz   the pasted object's masks ("paste" videos
                            only; "fast" and "reverse" have none)
  OUT/detections/...        only when ROOT/detections/ exists (pre-computed
                            detections, ssmtl_jax/perception/detections.py): train/<id>.csv
                            and test/ are symlinked, and val/<val_id>.csv holds
                            the source rows re-indexed to the output frames
  OUT/validation.json       what was made (below); written atomically

Validation ids are ``<prefix><source_id>_<kind>`` (``val08_fast``), so they
never collide with test ids (Ped2's train and test ids are both 01, 02, ...),
which share OUT/gt_frame/. To train on OUT/train and choose settings on the
validation videos, use ``config.data.root=OUT`` with
``config.data.val_split='val'`` (or ``test_split='val'``); the real test set
under the same root (``test_split='test'``) is then evaluated by the same
model, trained without the held-out videos.

Construction. A held-out source video has N frames ``s[0..N-1]``; each kind
writes one validation video of T frames: a normal lead-in of ``start`` frames,
the anomalous segment of ``length`` frames, and a normal lead-out. ``src(t)``
is the source frame written as output frame t:

* ``fast`` (stride k = ``fast_stride``, default 3): inside the segment the
  source is sampled every k-th frame, so every object moves k times faster
  (Ped2's anomalies are bicycles, skaters and carts among walkers)::

    src(t) = t                                  t < start
    src(t) = start - 1 + (t - start + 1) * k     start <= t < start + length
    src(t) = src(t - 1) + 1                     t >= start + length

  The first segment frame is already k source frames after the last lead-in
  frame, and the lead-out continues from where the source reached (no
  frame is repeated, no backwards jump). T is the largest length with
  ``T + length * (k - 1) <= N``.

* ``reverse``: the video turns around and plays backwards (people walk
  backwards), then turns around again and plays forwards; every step is
  exactly one source frame, so the only abnormal thing is the direction of
  time (no jump, no teleporting object)::

    src(t) = t                                  t < start
    src(t) = start - 2 - (t - start)            start <= t < start + length
    src(t) = src(t - 1) + 1                     t >= start + length

  The segment is the source frames ``s[start-1-length .. start-2]`` reversed;
  the lead-out replays (forwards) frames the lead-in has shown. T = N.

* ``paste`` (size ``paste_size``, default 0.2): the source plays unchanged
  (``src(t) = t``, T = N) and on the segment frames a *foreign object* is
  drawn over it: a box ``paste_size`` of the frame height tall (at least
  4 px), width/height drawn from [0.7, 1.5], filled with a checkerboard of
  2-4 x 2-4 dark and light cells (random levels; random tints in colour
  video, gray in gray video) and a dark outline, crossing the frame on a
  straight line at constant speed from one outer third of the width to the
  other (centre heights in the middle half; in Ped2's 360 x 240 frames and
  40-50-frame segments about 2-7 px per frame). Nothing like it is in any
  scene, and it is not a COCO class, so it stands for what a detector does
  not know (Ped2's carts) and measures what boxes the anomaly at all
  (detector threshold, motion proposals). Its pixel masks are known by
  construction and written to ``gt_pixel``, so region recall, RBDC/TBDC and
  pixel AUC can be measured on validation data, never on the test split.

Labels: ``gt_frame[t] = 1`` exactly for the segment frames
``start <= t < start + length`` and 0 elsewhere; equivalently, frame t is
abnormal iff the source step into it, ``src(t) - src(t-1)``, is k (fast) or
-1 (reverse), the normal step being +1 (paste: the frames showing the
object, which is whole inside the frame on each of them). So for ``fast``
the jump at the segment start (last lead-in frame -> first segment frame,
k source frames) is part of the anomaly and labelled 1, while the first
lead-out frame (a step of +1) is normal; for ``reverse`` the turning-point
frame ``start - 1`` and the first lead-out frame ``start + length`` are
normal.
Frames whose temporal window merely overlaps the segment are labelled by
their own step, as in real ground truth.

Segment length and position: ``length = round(segment * T)`` (``segment``
default 1/3, at least :data:`MIN_SEGMENT` frames); ``start`` is drawn
uniformly from ``[lo, T - length - min_normal]`` with ``lo = min_normal``
(fast) or ``max(min_normal, length + 1)`` (reverse, which needs ``length``
frames of history to play back), by a generator seeded with ``seed`` and a
CRC of ``"<source_id>:<kind>"``: the same arguments give the same videos,
and one video's segment does not depend on which other videos are held out.
A source too short for a kind is an error that says how many frames it needs.

``validation.json``: ``format_version``, ``complete`` (false while a run is
under way), ``arguments`` (absolute root, holdout ids, seed, segment,
fast_stride, min_normal, kinds, prefix: a rerun with the same arguments is a
no-op, other arguments on a non-empty OUT are an error), ``train``/``test``/
``val`` id lists, and per validation video: ``source``, ``source_frames``,
``kind``, ``stride`` (source step inside the segment: k, or -1 for reverse),
``segment`` [start, end) in output frames, ``frames``, ``abnormal_frames``,
``seed``, ``source_runs`` (``[start, stop, step]`` Python ranges whose
concatenation is ``src(0), src(1), ...``) and, for "paste", ``object``
(:class:`PastedObject`'s fields: size, aspect, start and end centre as
fractions of the frame, texture seed).

Each validation video is written into ``OUT/val/.tmp-<val_id>/`` (hidden, so
``video_io.list_videos`` skips it) and renamed into place after its labels;
an interrupted run resumes (same arguments) and never leaves a partial
``OUT/val/<val_id>``. Paths are local (``os``): symlinks need a file system.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import zlib
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import tqdm

from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.perception import detections as detections_lib
from ssmtl_jax.perception import video_io

FORMAT_VERSION = 1
MARKER = "validation.json"
KINDS = ("fast", "reverse", "paste")
MIN_SEGMENT = 4  # Fewer abnormal frames than this make no useful segment.
PASTE_SIZE = 0.2  # A pasted object's height, as a fraction of the frame's.
MIN_OBJECT_PX = 4  # Smallest side of a pasted object, in pixels.
_MAX_FRAMES = 1 << 20  # Search bound for the minimum source length.


@dataclasses.dataclass(frozen=True)
class PastedObject:
  """The foreign object of a ``paste`` video, in fractions of the frame.

  Attributes:
    size: its height, as a fraction of the frame height.
    aspect: width / height.
    start: its centre (x / width, y / height) on the first segment frame.
    end: its centre on the last segment frame; it moves on a straight line
      at constant speed in between.
    texture_seed: seeds its texture (:meth:`texture`).
  """
  size: float
  aspect: float
  start: tuple[float, float]
  end: tuple[float, float]
  texture_seed: int

  def shape(self, height: int, width: int) -> tuple[int, int]:
    """(h, w) in pixels in a height x width frame (at least
    :data:`MIN_OBJECT_PX`, at most the frame less a pixel on each side)."""
    h = min(max(MIN_OBJECT_PX, _round(self.size * height)), height - 2)
    w = min(max(MIN_OBJECT_PX, _round(self.size * self.aspect * height)),
            width - 2)
    return h, w

  def box(self, i: int, n: int, height: int, width: int
          ) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, on segment frame i of n; always
    inside the frame."""
    h, w = self.shape(height, width)
    f = i / (n - 1) if n > 1 else 0.0
    cx = (self.start[0] + (self.end[0] - self.start[0]) * f) * width
    cy = (self.start[1] + (self.end[1] - self.start[1]) * f) * height
    x0 = min(max(_round(cx - w / 2), 0), width - w)
    y0 = min(max(_round(cy - h / 2), 0), height - h)
    return x0, y0, x0 + w, y0 + h

  def texture(self, h: int, w: int, gray: bool) -> np.ndarray:
    """uint8 [h, w, 3]: a checkerboard of 2-4 x 2-4 cells alternating dark
    and light (random levels and tints), with a dark outline: sharp edges
    and a look no scene object has. Equal channels when ``gray``."""
    rng = np.random.default_rng(self.texture_seed)
    rows, cols = (int(v) for v in rng.integers(2, 5, size=2))
    levels = np.where((np.arange(rows)[:, None] + np.arange(cols)) % 2 == 0,
                      rng.uniform(20, 70, (rows, cols)),
                      rng.uniform(170, 235, (rows, cols)))
    tint = rng.uniform(0.55, 1.0, (rows, cols, 3))
    cells = levels[..., None] * (np.ones_like(tint) if gray else tint)
    y = np.minimum(np.arange(h) * rows // h, rows - 1)
    x = np.minimum(np.arange(w) * cols // w, cols - 1)
    tex = cells[y[:, None], x[None, :]]
    tex[[0, -1], :] = 10
    tex[:, [0, -1]] = 10
    return np.clip(np.round(tex), 0, 255).astype(np.uint8)


def _draw_object(rng: np.random.Generator, size: float) -> PastedObject:
  """A foreign object crossing the frame: left to right or back, starting
  in one outer third of the width and ending in the other, at heights in
  the middle half."""
  sx, ex = rng.uniform(0.1, 0.35), rng.uniform(0.65, 0.9)
  if rng.integers(2):
    sx, ex = 1 - sx, 1 - ex
  sy, ey = rng.uniform(0.25, 0.75, size=2)
  return PastedObject(size=float(size), aspect=float(rng.uniform(0.7, 1.5)),
                      start=(float(sx), float(sy)), end=(float(ex), float(ey)),
                      texture_seed=int(rng.integers(2**31)))


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one validation video is made from its source.

  Attributes:
    val_id: the validation video's id.
    source: the held-out training video.
    source_frames: number of frames of the source.
    kind: "fast", "reverse" or "paste".
    stride: source step inside the segment (k for fast, -1 for reverse, 1
      for paste).
    frames: number of frames written (T).
    start: first frame of the anomalous segment.
    length: number of frames of the segment.
    runs: (start, stop, step) ranges whose concatenation is src(0..T-1).
    seed: the ``seed`` argument it was drawn with.
    paste: the pasted object (kind "paste" only).
  """
  val_id: str
  source: video_io.VideoSource
  source_frames: int
  kind: str
  stride: int
  frames: int
  start: int
  length: int
  runs: tuple[tuple[int, int, int], ...]
  seed: int
  paste: Optional[PastedObject] = None

  def source_index(self) -> np.ndarray:
    """int64 [T]: the source frame of each output frame."""
    return np.concatenate([np.arange(*r, dtype=np.int64) for r in self.runs])

  def labels(self) -> np.ndarray:
    """uint8 [T]: 1 on the segment [start, start + length), else 0."""
    labels = np.zeros(self.frames, np.uint8)
    labels[self.start:self.start + self.length] = 1
    return labels

  def summary(self) -> dict[str, Any]:
    out = {"source": self.source.video_id,
           "source_frames": self.source_frames, "kind": self.kind,
           "stride": self.stride,
           "segment": [self.start, self.start + self.length],
           "frames": self.frames, "abnormal_frames": self.length,
           "seed": self.seed, "source_runs": [list(r) for r in self.runs]}
    if self.paste is not None:
      out["object"] = {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(self.paste).items()}
    return out

  def paste_into(self, t: int, frame: np.ndarray
                 ) -> tuple[np.ndarray, Optional[tuple[int, int, int, int]]]:
    """(output frame t, the pasted box or None): the object drawn over the
    source frame on the segment frames of a "paste" plan."""
    i = t - self.start
    if self.paste is None or not 0 <= i < self.length:
      return frame, None
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = box = self.paste.box(i, self.length, height, width)
    gray = _is_gray(frame)
    frame = frame.copy()
    frame[y0:y1, x0:x1] = self.paste.texture(y1 - y0, x1 - x0, gray)
    return frame, box


def _round(x: float) -> int:
  return int(math.floor(x + 0.5))


def _geometry(kind: str, n: int, segment: float, stride: int,
              min_normal: int) -> Optional[tuple[int, int, int, int]]:
  """(frames T, segment length, lowest start, highest start) for a source of
  n frames, or None when the construction does not fit."""
  if kind == "fast":
    frames = int(n / (1 + segment * (stride - 1))) + 2
    while frames > 0 and frames + _round(segment * frames) * (stride - 1) > n:
      frames -= 1
  else:
    frames = n
  length = _round(segment * frames)
  lo = max(min_normal, length + 1 if kind == "reverse" else 1)
  hi = frames - length - min_normal
  if length < MIN_SEGMENT or hi < lo:
    return None
  return frames, length, lo, hi


def min_source_frames(kind: str, *, segment: float = 1 / 3,
                      fast_stride: int = 3, min_normal: int = 8) -> int:
  """The fewest source frames the construction of ``kind`` needs.

  Raises:
    ConfigError: no source length fits (e.g. segment >= 1/2 for reverse).
  """
  if _geometry(kind, _MAX_FRAMES, segment, fast_stride, min_normal) is None:
    hint = (" (reverse also needs as many lead-in frames as it plays back: "
            "use --segment < 0.5)" if kind == "reverse" else "")
    raise errors.ConfigError(
        f"--segment={segment} leaves no room for {min_normal} normal frames "
        f"before and after the {kind!r} segment{hint}")
  n = 1
  while _geometry(kind, n, segment, fast_stride, min_normal) is None:
    n += 1
  return n


def plan_video(source: video_io.VideoSource, source_frames: int, kind: str, *,
               val_id: str, seed: int = 0, segment: float = 1 / 3,
               fast_stride: int = 3, min_normal: int = 8,
               paste_size: float = PASTE_SIZE) -> Plan:
  """The deterministic construction of one validation video (module doc).

  Raises:
    DataError: the source is too short; names it and the frames needed.
  """
  geometry = _geometry(kind, source_frames, segment, fast_stride, min_normal)
  if geometry is None:
    need = min_source_frames(kind, segment=segment, fast_stride=fast_stride,
                             min_normal=min_normal)
    raise errors.DataError(
        f"--holdout: training video {source.path} has {source_frames} frames "
        f"but its {kind!r} validation video needs at least {need} "
        f"(--segment={segment:g}, --fast_stride={fast_stride}, "
        f"min_normal={min_normal}); hold out a longer video")
  frames, length, lo, hi = geometry
  key = zlib.crc32(f"{source.video_id}:{kind}".encode())
  rng = np.random.default_rng([seed, key])
  a = lo + int(rng.integers(hi - lo + 1))
  rest = frames - a - length
  paste = None
  if kind == "paste":
    runs = ((0, frames, 1),)
    stride = 1
    paste = _draw_object(rng, paste_size)
  elif kind == "fast":
    k = fast_stride
    end = a + length * k  # First source frame after the segment.
    runs = ((0, a, 1), (a - 1 + k, end, k), (end, end + rest, 1))
    stride = k
  else:
    back = a - 1 - length  # Oldest frame played back.
    runs = ((0, a, 1), (a - 2, back - 1, -1), (back + 1, back + 1 + rest, 1))
    stride = -1
  return Plan(val_id=val_id, source=source, source_frames=source_frames,
              kind=kind, stride=stride, frames=frames, start=a, length=length,
              runs=runs, seed=seed, paste=paste)


# ----------------------------------------------------------------------------
# Arguments, the marker and the state of OUT.
# ----------------------------------------------------------------------------


def _arguments(root: str, holdout: Sequence[str] | str, seed: int,
               segment: float, fast_stride: int, min_normal: int,
               kinds: Sequence[str], prefix: str,
               paste_size: float = PASTE_SIZE) -> dict[str, Any]:
  """Validated, normalised arguments (what validation.json compares;
  ``paste_size`` only when "paste" is among the kinds, so roots made before
  that kind existed stay valid)."""
  if "://" in root:
    raise errors.ConfigError(f"--root={root}: only local paths are supported")
  if isinstance(holdout, str):
    holdout = holdout.split(",")
  ids = sorted({str(h).strip() for h in holdout if str(h).strip()},
               key=video_io.natural_key)
  if not ids:
    raise errors.ConfigError(
        "--holdout is empty: name the training videos to hold out, e.g. "
        "--holdout=08,16")
  if fast_stride < 2:
    raise errors.ConfigError(f"--fast_stride={fast_stride}: must be >= 2")
  if not 0 < segment < 1:
    raise errors.ConfigError(f"--segment={segment}: must be in (0, 1)")
  if min_normal < 1:
    raise errors.ConfigError(f"--min_normal={min_normal}: must be >= 1")
  kinds = list(kinds)
  bad = [k for k in kinds if k not in KINDS]
  if bad or not kinds or len(set(kinds)) != len(kinds):
    raise errors.ConfigError(
        f"--kinds={','.join(kinds)}: give distinct kinds among "
        f"{', '.join(KINDS)}")
  if not prefix or os.sep in prefix or prefix.startswith("."):
    raise errors.ConfigError(
        f"--prefix={prefix!r}: must be a non-empty file name part not "
        "starting with '.'")
  if "paste" in kinds and not 0 < paste_size < 1:
    raise errors.ConfigError(
        f"--paste_size={paste_size}: must be in (0, 1) (the pasted object's "
        "height as a fraction of the frame height)")
  for kind in kinds:  # Raises when no source could ever be long enough.
    min_source_frames(kind, segment=segment, fast_stride=fast_stride,
                      min_normal=min_normal)
  args = {"root": os.path.abspath(root), "holdout": ids, "seed": int(seed),
          "segment": float(segment), "fast_stride": int(fast_stride),
          "min_normal": int(min_normal), "kinds": kinds, "prefix": prefix}
  if "paste" in kinds:
    args["paste_size"] = float(paste_size)
  return args


def read_marker(out: str) -> Optional[dict[str, Any]]:
  """OUT/validation.json, or None when missing or unreadable."""
  try:
    with open(os.path.join(out, MARKER)) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) else None


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _check_out(out: str, args: dict[str, Any]) -> Optional[dict[str, Any]]:
  """The marker of a previous run with the same arguments (None for a new or
  empty OUT); raises ConfigError for any other non-empty OUT."""
  if not os.path.lexists(out):
    return None
  if not os.path.isdir(out):
    raise errors.ConfigError(f"--out={out} exists and is not a folder")
  if not os.listdir(out):
    return None
  marker = read_marker(out)
  if marker is None or "arguments" not in marker:
    raise errors.ConfigError(
        f"--out={out} exists, is not empty and is not a validation root (no "
        f"readable {MARKER}); give a new or empty folder")
  old = marker["arguments"]
  if marker.get("format_version") != FORMAT_VERSION or old != args:
    diff = ", ".join(f"{k}: {old.get(k)!r} there, {v!r} now"
                     for k, v in args.items() if old.get(k) != v)
    raise errors.ConfigError(
        f"--out={out} is a validation root made with other arguments "
        f"({diff or 'format version ' + repr(marker.get('format_version'))})"
        "; give another --out or delete it")
  return marker


def _val_done(out: str, val_id: str) -> bool:
  return (os.path.isdir(os.path.join(out, "val", val_id)) and
          os.path.isfile(os.path.join(out, "gt_frame", f"{val_id}.npy")))


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------


def _link(target: str, link: str) -> None:
  """Symlink link -> target; an existing correct link is kept."""
  if os.path.islink(link):
    if os.readlink(link) == target:
      return
    os.remove(link)
  elif os.path.lexists(link):
    raise errors.DataError(
        f"{link} exists and is not a symlink; cannot link it to {target}")
  os.makedirs(os.path.dirname(link), exist_ok=True)
  os.symlink(target, link)


def _is_gray(frame: np.ndarray) -> bool:
  """Whether an RGB frame's three channels are equal (Ped2's are)."""
  return (np.array_equal(frame[..., 0], frame[..., 1]) and
          np.array_equal(frame[..., 1], frame[..., 2]))


def _encode_png(frame: np.ndarray) -> bytes:
  """RGB uint8 [H, W, 3] -> PNG bytes (gray when the channels are equal)."""
  if _is_gray(frame):
    img = frame[..., 0]
  else:
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode(".png", img)
  if not ok:
    raise errors.DataError(f"cannot encode a {frame.shape} frame as PNG")
  return buf.tobytes()


def _write_frames(plan: Plan, folder: str, bar: tqdm.tqdm
                  ) -> Optional[np.ndarray]:
  """Streams the source once, writing each frame to every output position
  that shows it (the output order never needs the source in memory).
  Returns the pasted object's masks, bool [T, H, W], for a "paste" plan,
  else None."""
  index = plan.source_index()
  positions: dict[int, list[int]] = {}
  for t, j in enumerate(index.tolist()):
    positions.setdefault(j, []).append(t)
  last = int(index.max())
  width = max(4, len(str(plan.frames - 1)))
  written = 0
  masks = None
  frames = video_io.iter_frames(plan.source, 3)
  try:
    for j, frame in enumerate(frames):
      if plan.paste is not None and masks is None:
        masks = np.zeros((plan.frames, *frame.shape[:2]), bool)
      for t in positions.get(j, ()):
        if plan.paste is not None:  # Identity mapping: one position each.
          out, box = plan.paste_into(t, frame)
          if box is not None:
            masks[t, box[1]:box[3], box[0]:box[2]] = True
          data = _encode_png(out)
        elif t == positions[j][0]:
          data = _encode_png(frame)
        with open(os.path.join(folder, f"{t:0{width}d}.png"), "wb") as f:
          f.write(data)
        written += 1
        bar.update(1)
      if j >= last:
        break
  finally:
    frames.close()
  if written != plan.frames:
    raise video_io.VideoInputError(
        f"{plan.source.path}: ended before frame {last} while writing "
        f"{plan.val_id} (it was counted as {plan.source_frames} frames)")
  return masks


def _write_val_video(plan: Plan, root: str, out: str, bar: tqdm.tqdm) -> None:
  """Writes OUT/val/<val_id>, its labels and (if any) its detections; on any
  error removes what it wrote, so no partial video is left."""
  val_dir = os.path.join(out, "val", plan.val_id)
  tmp = os.path.join(out, "val", f".tmp-{plan.val_id}")
  labels_path = os.path.join(out, "gt_frame", f"{plan.val_id}.npy")
  masks_path = ground_truth.pixel_masks_path(out, plan.val_id).as_posix()
  dets_src = os.path.join(root, "detections", "train",
                          f"{plan.source.video_id}.csv")
  dets_out = os.path.join(out, "detections", "val", f"{plan.val_id}.csv")
  for path in (tmp, val_dir):  # Stale or labels lost: redo from scratch.
    if os.path.lexists(path):
      shutil.rmtree(path)
  os.makedirs(tmp)
  try:
    masks = _write_frames(plan, tmp, bar)
    if masks is not None:
      os.makedirs(os.path.dirname(masks_path), exist_ok=True)
      masks_tmp = os.path.join(os.path.dirname(masks_path),
                               f".{plan.val_id}.npz.tmp{os.getpid()}")
      with open(masks_tmp, "wb") as f:
        np.savez_compressed(f, **{ground_truth.MASK_KEY: masks})
      os.replace(masks_tmp, masks_path)
    labels_tmp = os.path.join(out, "gt_frame",
                              f".{plan.val_id}.npy.tmp{os.getpid()}")
    with open(labels_tmp, "wb") as f:
      np.save(f, plan.labels(), allow_pickle=False)
    os.replace(labels_tmp, labels_path)
    if os.path.isfile(dets_src):
      per_frame = detections_lib.read_detections(dets_src)
      rows = [(t, *row) for t, j in enumerate(plan.source_index().tolist())
              for row in per_frame.get(j, ())]
      detections_lib.write_detections(dets_out, rows)
    os.rename(tmp, val_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for path in (labels_path, masks_path, dets_out):
      if os.path.lexists(path):
        os.remove(path)
    raise


def _link_inputs(root: str, out: str, train: Sequence[video_io.VideoSource],
                 test: Sequence[video_io.VideoSource]) -> None:
  for src in train:
    name = os.path.basename(src.path)
    _link(os.path.abspath(src.path), os.path.join(out, "train", name))
    det = os.path.join(root, "detections", "train", f"{src.video_id}.csv")
    if os.path.isfile(det):
      _link(det, os.path.join(out, "detections", "train",
                              f"{src.video_id}.csv"))
  if test:
    _link(os.path.join(root, "test"), os.path.join(out, "test"))
    if os.path.isdir(os.path.join(root, "detections", "test")):
      _link(os.path.join(root, "detections", "test"),
            os.path.join(out, "detections", "test"))
  for src in test:
    for folder, ext in (("gt_frame", "npy"), ("gt_pixel", "npz")):
      gt = os.path.join(root, folder, f"{src.video_id}.{ext}")
      if os.path.isfile(gt):
        _link(gt, os.path.join(out, folder, f"{src.video_id}.{ext}"))


def _split_train(root: str, holdout: Sequence[str]
                 ) -> tuple[dict[str, video_io.VideoSource],
                            list[video_io.VideoSource]]:
  """ROOT's training videos: ({id: video}, the videos not held out).

  Raises ConfigError for an unknown holdout id, or when every training video
  is held out.
  """
  train = video_io.list_videos(root, "train")
  by_id = {src.video_id: src for src in train}
  unknown = [h for h in holdout if h not in by_id]
  if unknown:
    raise errors.ConfigError(
        f"--holdout: no training video {', '.join(unknown)} in "
        f"{os.path.join(root, 'train')} (available: {', '.join(by_id)})")
  keep = [src for src in train if src.video_id not in holdout]
  if not keep:
    raise errors.ConfigError(
        f"--holdout={','.join(holdout)} holds out every training "
        f"video of {os.path.join(root, 'train')}: nothing is left to train "
        "on; keep at least one")
  return by_id, keep


def _list_test(root: str, val_ids: Sequence[str],
               prefix: str) -> list[video_io.VideoSource]:
  """ROOT's test videos (none without ROOT/test); raises ConfigError when a
  validation id is also a test id (they would share gt_frame/)."""
  test = (video_io.list_videos(root, "test")
          if os.path.isdir(os.path.join(root, "test")) else [])
  clash = sorted(set(val_ids) & {src.video_id for src in test})
  if clash:
    raise errors.ConfigError(
        f"--prefix={prefix!r}: validation ids {', '.join(clash)} are also "
        "test video ids (they share gt_frame/); choose another prefix")
  return test


def _plan_videos(by_id: dict[str, video_io.VideoSource],
                 args: dict[str, Any]) -> list[Plan]:
  """One plan per held-out video and kind, in that order (each source's
  frames are counted once)."""
  plans = []
  for h in args["holdout"]:
    src = by_id[h]
    n = video_io.count_frames(src)
    for kind in args["kinds"]:
      plans.append(plan_video(
          src, n, kind, val_id=f"{args['prefix']}{h}_{kind}",
          seed=args["seed"], segment=args["segment"],
          fast_stride=args["fast_stride"], min_normal=args["min_normal"],
          paste_size=args.get("paste_size", PASTE_SIZE)))
  return plans


def _write_val_videos(plans: Sequence[Plan], root: str, out: str,
                      progress: bool) -> list[Plan]:
  """Writes the validation videos not already done; returns their plans."""
  todo = [p for p in plans if not _val_done(out, p.val_id)]
  with tqdm.tqdm(total=sum(p.frames for p in todo), unit="frame",
                 desc="validation", disable=not progress,
                 dynamic_ncols=True) as bar:
    for plan in todo:
      _write_val_video(plan, root, out, bar)
  return todo


def make_validation_root(root: str, out: str, *,
                         holdout: Sequence[str] | str, seed: int = 0,
                         segment: float = 1 / 3, fast_stride: int = 3,
                         min_normal: int = 8,
                         kinds: Sequence[str] = KINDS, prefix: str = "val",
                         paste_size: float = PASTE_SIZE,
                         progress: bool = False) -> dict[str, Any]:
  """Makes (or finishes, or finds done) the validation root OUT (module doc).

  Args:
    root: the data set (ROOT/train, ROOT/test, ROOT/gt_frame, ...); local.
    out: the validation root to make; new, empty, or made earlier with the
      same arguments (then nothing is rewritten).
    holdout: training video ids to hold out (a list or "08,16").
    seed: seeds where each segment starts.
    segment: fraction of each validation video that is anomalous.
    fast_stride: source step k inside a "fast" segment (>= 2).
    min_normal: fewest normal frames before and after each segment.
    kinds: which pseudo-anomalies to make, among :data:`KINDS`.
    prefix: validation ids are ``<prefix><source_id>_<kind>``.
    paste_size: the height of a "paste" object, as a fraction of the frame.
    progress: show a tqdm bar over the frames written.
  Returns:
    The contents of OUT/validation.json, plus "made": the validation ids
    written by this call (empty for a rerun that found everything done).
  Raises:
    ConfigError: bad arguments, an unknown holdout id, every training video
      held out, an id collision, or a non-empty OUT that is not a validation
      root made with the same arguments.
    DataError: unreadable input, or a held-out video too short.
  """
  args = _arguments(root, holdout, seed, segment, fast_stride, min_normal,
                    kinds, prefix, paste_size)
  if "://" in out:
    raise errors.ConfigError(f"--out={out}: only local paths are supported")
  root, out = args["root"], os.path.abspath(out)
  if out == root:
    raise errors.ConfigError(f"--out={out} is --root itself")
  marker = _check_out(out, args)
  val_ids = [f"{prefix}{h}_{kind}" for h in args["holdout"]
             for kind in args["kinds"]]
  if (marker is not None and marker.get("complete") and
      all(_val_done(out, v) for v in val_ids)):
    return {**marker, "made": []}

  by_id, keep = _split_train(root, args["holdout"])
  test = _list_test(root, val_ids, prefix)
  plans = _plan_videos(by_id, args)
  summary = {"format_version": FORMAT_VERSION, "complete": False,
             "arguments": args, "train": [src.video_id for src in keep],
             "test": [src.video_id for src in test],
             "val": [p.val_id for p in plans],
             "videos": {p.val_id: p.summary() for p in plans}}
  for folder in ("train", "val", "gt_frame"):
    os.makedirs(os.path.join(out, folder), exist_ok=True)
  _write_json_atomic(os.path.join(out, MARKER), summary)
  _link_inputs(root, out, keep, test)
  todo = _write_val_videos(plans, root, out, progress)
  summary["complete"] = True
  _write_json_atomic(os.path.join(out, MARKER), summary)
  return {**summary, "made": [p.val_id for p in todo]}


def describe(val_id: str, video: dict[str, Any]) -> str:
  """One line about one validation video of validation.json."""
  start, end = video["segment"]
  how = {"fast": f"fast x{video['stride']}", "reverse": "reversed",
         "paste": "a foreign object pasted on"}[video["kind"]]
  return (f"{val_id}: {video['frames']} frames from train/{video['source']} "
          f"({video['source_frames']}), {how} frames [{start}, {end}) = "
          f"{video['abnormal_frames']} abnormal")
