"""A small synthetic surveillance data set with known anomalies (no downloads).

It is the embedded default demo and the CI data set. ``generate(root)`` writes,
in the builder's input layout (docs/DESIGN.md §4)::

    ROOT/train/<video_id>/0000.png ...   frames, uint8 PNG ([H, W] gray or RGB)
    ROOT/test/<video_id>/0000.png ...
    ROOT/gt_frame/<video_id>.npy         uint8 [T], 1 = abnormal frame (test)
    ROOT/gt_pixel/<video_id>.npz         key "mask": bool [T, H, W] (test)
    ROOT/gt_tracks/<video_id>.csv        frame,track_id,x1,y1,x2,y2,class,
                                         abnormal (all splits; the detection
                                         rows plus the object's identity, e.g.
                                         for track-based metrics such as TBDC)
    ROOT/detections/<split>/<video_id>.csv  ground-truth boxes of all objects
                                         (ssmtl_jax.perception.detections format, score 1)
    ROOT/synthetic.json                  parameters, per-video summary and the
                                         "complete": true marker (written last)

Video ids are ``train_00``, ``train_01``, ... and ``test_00``, ... (distinct
across splits because the gt files are keyed by id alone).

The scene: a static textured background (smoothed noise, a gentle gradient, a
tiled walkway, a few static props), different per video, plus mild per-frame
sensor noise. Normal objects are pedestrians (head, textured torso, swinging
arms and legs, a vertical bob in step with the gait) walking LEFT TO RIGHT at
1-2 px/frame (at 120 px frame height; sizes and speeds scale with the height),
entering and leaving the frame so that about ``objects_per_frame`` are in view.
Test videos add anomaly events, one type per video, cycling over
``ANOMALY_TYPES`` so that all three appear when ``num_test >= 3``:

* ``wrong_way``: a pedestrian walking right to left (same look and gait as a
  normal one: only its motion is abnormal, which the arrow-of-time task sees);
* ``running``: a pedestrian at 4-6 px/frame with a faster, wider gait and a
  forward lean;
* ``unusual_object``: a wide low push cart (COCO class 7, truck) or a bicycle
  with rider (class 1) moving left to right at walking speed.

Each event is a contiguous interval of frames; about 20-35% of every test video
is abnormal and every test video has normal-only frames. An object is *visible*
in a frame iff its box (the true extent of its drawn shape, clipped to the
frame) is at least 4 px on each side; only visible objects get a detection row,
and ``gt_frame[t] == 1`` iff an abnormal object is visible in frame ``t``, with
``gt_pixel[t]`` its drawn shape (abnormal objects are drawn on top, so the mask
is what the camera sees).

Generation is deterministic: the same parameters give byte-identical files
(each video has its own seed stream, so e.g. ``test_00`` does not depend on
``num_test``). Paths are local (``os``), like ``ssmtl_jax.perception.detections``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import time
import zipfile
from typing import Any, Callable

import cv2
import numpy as np

from ssmtl_jax.perception import detections as detections_lib

FORMAT_VERSION = 1
MARKER = "synthetic.json"
ANOMALY_TYPES = ("wrong_way", "running", "unusual_object")
PERSON, BICYCLE, TRUCK = 0, 1, 7  # MS-COCO class ids.
MIN_BOX = 4  # Boxes smaller than this (px, either side) are dropped.
TRACKS_HEADER = ("frame", "track_id", "x1", "y1", "x2", "y2", "class",
                 "abnormal")

DEFAULTS: dict[str, int] = dict(
    seed=0, num_train=4, num_test=3, num_frames=64, height=120, width=160,
    channels=1, objects_per_frame=3)

# cv2 fixed-point drawing: positions carry 4 fractional bits so that an object
# moving 1.3 px/frame moves smoothly instead of jumping by whole pixels.
_SHIFT = 4
_ONE = 1 << _SHIFT
_SPLIT_IDS = {"train": 0, "test": 1}
# Names this module writes; only these are ever deleted when (re)generating, so
# foreign files under ROOT survive.
_OWNED_DIRS = ("train", "test", "gt_frame", "gt_pixel", "gt_tracks",
               os.path.join("detections", "train"),
               os.path.join("detections", "test"))
_OWNED_NAME = re.compile(r"^(train|test)_\d+(\.(npy|npz|csv))?(\.tmp\d*)?$")


# ----------------------------------------------------------------------------
# Parameters and the completion marker.
# ----------------------------------------------------------------------------


def _params(**params: int) -> dict[str, int]:
  """Fills defaults, validates, and adds the format version."""
  unknown = set(params) - set(DEFAULTS)
  if unknown:
    raise TypeError(f"unknown synthetic parameters: {sorted(unknown)}")
  p = {**DEFAULTS, **{k: int(v) for k, v in params.items()}}
  if p["num_train"] < 0 or p["num_test"] < 0:
    raise ValueError("num_train and num_test must be >= 0")
  # Shorter/smaller videos cannot hold a normal stretch plus a visible event.
  if p["num_frames"] < 16:
    raise ValueError(f"num_frames must be >= 16, got {p['num_frames']}")
  if p["height"] < 48 or p["width"] < 64:
    raise ValueError(f"frames must be at least 48x64 (HxW), got "
                     f"{p['height']}x{p['width']}")
  if p["channels"] not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {p['channels']}")
  if p["objects_per_frame"] < 0:
    raise ValueError("objects_per_frame must be >= 0")
  p["format_version"] = FORMAT_VERSION
  return p


def _video_ids(p: dict[str, int]) -> dict[str, list[str]]:
  return {"train": [f"train_{i:02d}" for i in range(p["num_train"])],
          "test": [f"test_{i:02d}" for i in range(p["num_test"])]}


def _read_marker(root: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(root, MARKER)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_complete(root: str, **params: int) -> bool:
  """True iff ``root`` holds a finished generation with exactly these params.

  Checks the marker (complete, same parameters and format version) and,
  cheaply, that every video's directory and per-video files still exist.
  """
  p = _params(**params)
  marker = _read_marker(root)
  if not marker or marker.get("complete") is not True:
    return False
  if marker.get("params") != p:
    return False
  for split, ids in _video_ids(p).items():
    for vid in ids:
      needed = [os.path.join(root, split, vid, f"{0:0{_digits(p)}d}.png"),
                os.path.join(root, "detections", split, f"{vid}.csv"),
                os.path.join(root, "gt_tracks", f"{vid}.csv")]
      if split == "test":
        needed += [os.path.join(root, "gt_frame", f"{vid}.npy"),
                   os.path.join(root, "gt_pixel", f"{vid}.npz")]
      if not all(os.path.exists(n) for n in needed):
        return False
  return True


def _digits(p: dict[str, int]) -> int:
  return max(4, len(str(p["num_frames"] - 1)))


# ----------------------------------------------------------------------------
# Scene: background and actors.
# ----------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, c: int,
                  cell: float) -> np.ndarray:
  """Unit-std noise with features about ``cell`` px wide. float32 [h, w, c]."""
  gh, gw = max(2, round(h / cell)), max(2, round(w / cell))
  small = rng.standard_normal((gh, gw, c)).astype(np.float32)
  big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
  big = big.reshape(h, w, c)
  return big / max(float(big.std()), 1e-6)


def _background(rng: np.random.Generator, h: int, w: int, c: int,
                s: float) -> np.ndarray:
  """The static scene of one video. float32 [h, w, c] in [0, 255]."""
  base = rng.uniform(105.0, 140.0)
  tint = rng.uniform(-15.0, 15.0, size=c) if c == 3 else np.zeros(c)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  gx, gy = rng.uniform(-20.0, 20.0, size=2)
  bg = (base + gx * (xx / w - 0.5) + gy * (yy / h - 0.5))[..., None] + tint
  # Luminance texture, shared by the channels (colour noise looks unnatural).
  bg = bg + 10.0 * _smooth_noise(rng, h, w, 1, 18.0 * s)
  bg = bg + 4.0 * _smooth_noise(rng, h, w, 1, 3.0 * s)
  # A brighter tiled walkway where the feet are: static edges give the
  # background some structure that objects occlude.
  top = int(0.47 * h)
  bg[top:] += rng.uniform(8.0, 18.0)
  tile = max(4, round(rng.uniform(10.0, 16.0) * s))
  bg[top:, ::tile] -= 12.0
  bg[top::tile, :] -= 8.0
  bg[top:top + max(1, round(2 * s))] -= 25.0  # The kerb.
  # A few static props (poles, boxes, benches) above the walkway.
  for _ in range(int(rng.integers(2, 5))):
    pw = rng.uniform(3.0, 22.0) * s
    ph = rng.uniform(8.0, 30.0) * s
    x0 = rng.uniform(0, w - pw)
    y1 = rng.uniform(0.25 * h, top)
    val = rng.uniform(40.0, 200.0, size=c) if c == 3 else rng.uniform(
        40.0, 200.0, size=1)
    cv2.rectangle(bg, _pt(x0, y1 - ph), _pt(x0 + pw, y1),
                  tuple(float(v) for v in val), -1, cv2.LINE_8, _SHIFT)
  return np.clip(bg, 0.0, 255.0).astype(np.float32)


def _pt(x: float, y: float) -> tuple[int, int]:
  """A point in cv2 fixed-point coordinates."""
  return int(round(x * _ONE)), int(round(y * _ONE))


def _len(v: float) -> int:
  """A length (radius, axis) in cv2 fixed-point units."""
  return max(1, int(round(v * _ONE)))


@dataclasses.dataclass
class _Actor:
  """One moving object; position of its reference point is linear in time.

  The reference point is (horizontal centre, ground contact y). It is drawn
  as a label image (0 = background, 1.. = parts) on a local canvas, coloured by
  ``palette[label] + texture * tex_weight[label]``.
  """
  kind: str  # "pedestrian" | "cart" | "bike".
  cls: int  # COCO class id.
  anomaly: str | None  # None for normal objects, else one of ANOMALY_TYPES.
  x0: float  # Reference x at t = 0 (may be off-frame).
  y0: float
  vx: float  # px/frame.
  vy: float
  half_w: float  # Half of the body width (px).
  geom: dict[str, float]
  palette: np.ndarray  # float32 [num_labels, C].
  tex_weight: np.ndarray  # float32 [num_labels].
  texture: np.ndarray  # float32 [ch, cw, C], moves with the object.
  anchor: tuple[int, int]  # Canvas (x, y) pixel of the reference point.
  t_begin: int = 0  # First frame the object exists (spawn time).
  track_id: int = -1

  @property
  def direction(self) -> int:
    return 1 if self.vx >= 0 else -1

  def pos(self, t: int) -> tuple[float, float]:
    return self.x0 + self.vx * t, self.y0 + self.vy * t

  def draw(self, t: int) -> tuple[int, int, np.ndarray]:
    """Returns (ox, oy, labels uint8 [ch, cw]); canvas (0, 0) is at (ox, oy)."""
    return self.draw_at(*self.pos(t))

  def draw_at(self, x: float, y: float) -> tuple[int, int, np.ndarray]:
    """Like draw(), with the reference point at (x, y)."""
    ix, iy = math.floor(x), math.floor(y)
    ax, ay = self.anchor
    ch, cw = self.texture.shape[:2]
    labels = np.zeros((ch, cw), np.uint8)
    _DRAW[self.kind](self, labels, ax + (x - ix), ay + (y - iy), x)
    return ix - ax, iy - ay, labels


def _canvas(rng: np.random.Generator, ch: int, cw: int, c: int,
            kind: str, s: float) -> np.ndarray:
  """A texture fixed to the object (stripes, checks or blotches)."""
  yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
  if kind == "stripes":
    period = rng.uniform(3.0, 6.0) * s + 1.0
    tex = 28.0 * np.sign(np.sin(2 * np.pi * yy / period))
  elif kind == "checks":
    cell = max(2, round(rng.uniform(3.0, 5.0) * s))
    tex = 45.0 * (((yy // cell + xx // cell) % 2) * 2.0 - 1.0)
  else:
    tex = 22.0 * _smooth_noise(rng, ch, cw, 1, 3.0 * s + 1.0)[..., 0]
  tex = np.repeat(tex[..., None], c, axis=2)
  return tex.astype(np.float32)


def _color(rng: np.random.Generator, c: int, lo: float, hi: float,
           hue: tuple[float, float, float] | None = None) -> np.ndarray:
  """A colour of brightness in [lo, hi] (RGB, random or ``hue``-scaled).

  Returns float32 [c]; gray when c == 1.
  """
  level = rng.uniform(lo, hi)
  if c == 1:
    return np.array([level], np.float32)
  rgb = (level * np.asarray(hue) if hue is not None else
         level + rng.uniform(-50.0, 50.0, size=3))
  return np.clip(rgb, 0, 255).astype(np.float32)


_SKIN = (1.1, 0.9, 0.75)  # RGB scale of skin tones.


def _clothes(rng: np.random.Generator, c: int) -> np.ndarray:
  # Clearly darker or brighter than the background (~100-160) so objects are
  # findable, yet varied.
  return (_color(rng, c, 15.0, 65.0) if rng.random() < 0.5 else
          _color(rng, c, 185.0, 240.0))


def _pedestrian(rng: np.random.Generator, s: float, c: int, *, speed: float,
                direction: int, running: bool = False) -> _Actor:
  """A pedestrian walking (or running) at ``speed`` px/frame."""
  h = rng.uniform(24.0, 32.0) * s
  w = rng.uniform(12.0, 16.0) * s
  # Distance covered per gait cycle (two steps): longer strides when running,
  # but the cadence is still much faster.
  cycle = (1.7 if running else 1.0) * h
  geom = dict(
      h=h, w=w, k=2 * np.pi / cycle,
      phase0=rng.uniform(0, 2 * np.pi),
      swing=(0.26 if running else 0.14) * h,
      arm=(0.20 if running else 0.10) * h,
      bob=(0.07 if running else 0.03) * h,
      lean=(0.12 * h if running else 0.0) * direction)
  cw = int(math.ceil(max(w, 2 * geom["swing"]) + 2 * abs(geom["lean"])
                     + 0.6 * w + 8))
  ch = int(math.ceil(h + geom["bob"] + 6))
  shirt = _clothes(rng, c)
  sleeve = shirt + (35.0 if shirt.mean() < 128 else -35.0)
  palette = np.stack([np.zeros(c, np.float32),
                      _color(rng, c, 120.0, 200.0, _SKIN),  # 1: skin.
                      shirt,  # 2: shirt.
                      _color(rng, c, 15.0, 80.0),  # 3: trousers.
                      sleeve])  # 4: sleeves.
  tex_kind = "stripes" if rng.random() < 0.5 else "blotches"
  return _Actor(
      kind="pedestrian", cls=PERSON, anomaly=None, x0=0.0, y0=0.0,
      vx=speed * direction, vy=0.0, half_w=w / 2, geom=geom, palette=palette,
      tex_weight=np.array([0, 0.2, 1.0, 0.3, 0.3], np.float32),
      texture=_canvas(rng, ch, cw, c, tex_kind, s), anchor=(cw // 2, ch - 3))


def _draw_pedestrian(a: _Actor, lab: np.ndarray, cx: float, fy: float,
                     x: float) -> None:
  g = a.geom
  h, w = g["h"], g["w"]
  # The gait phase follows the distance walked, so the feet do not slide.
  p = g["phase0"] + g["k"] * x * a.direction
  sp = math.sin(p)
  top = fy - h - g["bob"] * abs(math.cos(p))  # Highest with legs together.
  lean = g["lean"]
  leg_t = max(2, int(round(0.22 * w)))
  for sgn in (1.0, -1.0):
    cv2.line(lab, _pt(cx + sgn * 0.2 * w + 0.3 * lean, top + 0.58 * h),
             _pt(cx + sgn * g["swing"] * sp, fy), 3, leg_t, cv2.LINE_8,
             _SHIFT)
  tx = cx + 0.6 * lean
  cv2.ellipse(lab, _pt(tx, top + 0.41 * h), (_len(w / 2), _len(0.2 * h)), 0,
              0, 360, 2, -1, cv2.LINE_8, _SHIFT)
  arm_t = max(1, int(round(0.18 * w)))
  for sgn in (1.0, -1.0):
    # Side view: each arm swings against the leg on the same side; sleeves are
    # a shade off the shirt so the swing shows over the torso.
    cv2.line(lab, _pt(tx + sgn * 0.1 * w, top + 0.3 * h),
             _pt(tx - sgn * g["arm"] * sp, top + 0.6 * h), 4, arm_t,
             cv2.LINE_8, _SHIFT)
  cv2.circle(lab, _pt(cx + lean, top + 0.12 * h), _len(0.12 * h), 1, -1,
             cv2.LINE_8, _SHIFT)


def _cart(rng: np.random.Generator, s: float, c: int, *,
          speed: float) -> _Actor:
  """A wide, low push cart with a checked load (COCO truck)."""
  length = rng.uniform(30.0, 38.0) * s
  body = rng.uniform(10.0, 13.0) * s
  r = rng.uniform(2.8, 3.6) * s
  geom = dict(length=length, body=body, r=r)
  cw = int(math.ceil(1.4 * length + 8))
  ch = int(math.ceil(body + 2 * r + 0.5 * body + 8))
  palette = np.stack([np.zeros(c, np.float32),
                      _color(rng, c, 90.0, 130.0),  # 1: handle.
                      _clothes(rng, c),  # 2: load.
                      _color(rng, c, 10.0, 35.0),  # 3: wheels.
                      _color(rng, c, 200.0, 250.0)])  # 4: hub / spoke.
  return _Actor(
      kind="cart", cls=TRUCK, anomaly="unusual_object", x0=0.0, y0=0.0,
      vx=speed, vy=0.0, half_w=length / 2, geom=geom, palette=palette,
      tex_weight=np.array([0, 0.2, 1.0, 0.0, 0.0], np.float32),
      texture=_canvas(rng, ch, cw, c, "checks", s), anchor=(cw // 2, ch - 3))


def _draw_cart(a: _Actor, lab: np.ndarray, cx: float, fy: float,
               x: float) -> None:
  g = a.geom
  length, body, r = g["length"], g["body"], g["r"]
  d = a.direction
  bottom = fy - 1.4 * r
  cv2.rectangle(lab, _pt(cx - length / 2, bottom - body),
                _pt(cx + length / 2, bottom), 2, -1, cv2.LINE_8, _SHIFT)
  # The push handle sticks out up and back.
  back = cx - d * length / 2
  cv2.line(lab, _pt(back, bottom - body),
           _pt(back - d * 0.14 * length, bottom - 1.5 * body), 1,
           max(1, int(round(1.5 * a.geom["r"] / 3))), cv2.LINE_8, _SHIFT)
  angle = x / r  # Rolling without slipping.
  for wx in (cx - 0.32 * length, cx + 0.32 * length):
    cv2.circle(lab, _pt(wx, fy - r), _len(r), 3, -1, cv2.LINE_8, _SHIFT)
    cv2.line(lab, _pt(wx, fy - r),
             _pt(wx + 0.9 * r * math.cos(angle), fy - r + 0.9 * r *
                 math.sin(angle)), 4, 1, cv2.LINE_8, _SHIFT)


def _bike(rng: np.random.Generator, s: float, c: int, *,
          speed: float) -> _Actor:
  """A bicycle with a seated rider (COCO bicycle)."""
  r = rng.uniform(4.5, 5.5) * s
  base = rng.uniform(3.4, 3.8) * r
  rider = rng.uniform(14.0, 17.0) * s
  geom = dict(r=r, base=base, rider=rider)
  cw = int(math.ceil(base + 2 * r + 10))
  ch = int(math.ceil(2 * r + 1.7 * r + rider + 8))
  palette = np.stack([np.zeros(c, np.float32),
                      _color(rng, c, 120.0, 200.0, _SKIN),  # 1: skin.
                      _clothes(rng, c),  # 2: rider's shirt.
                      _color(rng, c, 10.0, 45.0),  # 3: tyres, trousers.
                      _color(rng, c, 170.0, 240.0)])  # 4: frame.
  return _Actor(
      kind="bike", cls=BICYCLE, anomaly="unusual_object", x0=0.0, y0=0.0,
      vx=speed, vy=0.0, half_w=base / 2 + r, geom=geom, palette=palette,
      tex_weight=np.array([0, 0.2, 1.0, 0.0, 0.0], np.float32),
      texture=_canvas(rng, ch, cw, c, "stripes", s), anchor=(cw // 2, ch - 3))


def _draw_bike(a: _Actor, lab: np.ndarray, cx: float, fy: float,
               x: float) -> None:
  g = a.geom
  r, base, rider = g["r"], g["base"], g["rider"]
  d = a.direction
  hub_y = fy - r
  rear, front = (cx - d * base / 2, hub_y), (cx + d * base / 2, hub_y)
  angle = x / r
  tyre_t = max(1, int(round(r / 3)))
  for hx, hy in (rear, front):
    cv2.circle(lab, _pt(hx, hy), _len(r - tyre_t / 2), 3, tyre_t, cv2.LINE_8,
               _SHIFT)
    ca, sa = math.cos(angle), math.sin(angle)  # One spoke shows the rolling.
    cv2.line(lab, _pt(hx - r * ca, hy - r * sa), _pt(hx + r * ca, hy + r * sa),
             3, 1, cv2.LINE_8, _SHIFT)
  bb = (cx, hub_y)
  seat = (cx - d * 0.2 * base, hub_y - 1.5 * r)
  bar = (cx + d * 0.33 * base, hub_y - 1.7 * r)
  frame_t = max(1, int(round(r / 4)))
  for p1, p2 in ((rear, bb), (rear, seat), (seat, bb), (seat, bar),
                 (bar, front)):
    cv2.line(lab, _pt(*p1), _pt(*p2), 4, frame_t, cv2.LINE_8, _SHIFT)
  # Pedalling leg: seat -> pedal on a crank turning with the wheels.
  crank = 0.45 * r
  pedal = (bb[0] + crank * math.cos(angle), bb[1] + crank * math.sin(angle))
  cv2.line(lab, _pt(*seat), _pt(*pedal), 3, max(2, int(round(r / 2))),
           cv2.LINE_8, _SHIFT)
  # Rider leaning forward over the handlebar.
  torso_c = (seat[0] + d * 0.18 * rider, seat[1] - 0.32 * rider)
  cv2.ellipse(lab, _pt(*torso_c), (_len(0.17 * rider), _len(0.36 * rider)),
              d * 25.0, 0, 360, 2, -1, cv2.LINE_8, _SHIFT)
  cv2.line(lab, _pt(torso_c[0], torso_c[1] - 0.15 * rider), _pt(*bar), 2,
           max(1, int(round(r / 3))), cv2.LINE_8, _SHIFT)
  cv2.circle(lab, _pt(torso_c[0] + d * 0.22 * rider, seat[1] - 0.78 * rider),
             _len(0.17 * rider), 1, -1, cv2.LINE_8, _SHIFT)


_DRAW: dict[str, Callable[..., None]] = {
    "pedestrian": _draw_pedestrian, "cart": _draw_cart, "bike": _draw_bike}


# ----------------------------------------------------------------------------
# Planning: who is where, when.
# ----------------------------------------------------------------------------


def _extent(a: _Actor) -> float:
  """A horizontal half-extent beyond which the object is surely off-frame."""
  ax = a.anchor[0]
  return float(max(ax, a.texture.shape[1] - ax) + 1)


def _visible_edges(a: _Actor, width: int) -> tuple[float, float]:
  """Reference x where the object starts / stops being visible (entry, exit).

  Measured on the drawn shape (limbs, handles and lean included), as the
  median over a gait cycle, so planned event lengths match the labels.
  """
  left, right = [], []
  for k in range(8):
    x = k * 0.37 * a.half_w  # Different gait / wheel phases.
    ox, _, lab = a.draw_at(x, 0.0)
    cols = np.flatnonzero(lab.any(axis=0))
    left.append(x - (ox + cols[0]))
    right.append(ox + cols[-1] + 1 - x)
  lo = MIN_BOX - float(np.median(right))  # Right edge MIN_BOX px in.
  hi = width - MIN_BOX + float(np.median(left))
  return (lo, hi) if a.direction > 0 else (hi, lo)


def _place(rng: np.random.Generator, a: _Actor, p: dict[str, int], s: float,
           t_ref: float, x_ref: float) -> None:
  """Sets the trajectory so that x(t_ref) = x_ref, with a slight drift in y."""
  h = p["height"]
  lo, hi = 0.56 * h, 0.96 * h  # Ground contact stays on the walkway.
  life = (p["width"] + 2 * _extent(a)) / abs(a.vx)
  y_start, y_end = rng.uniform(lo, hi, size=2)
  a.vy = float(np.clip((y_end - y_start) / life, -0.08 * s, 0.08 * s))
  a.x0 = x_ref - a.vx * t_ref
  a.y0 = y_start - a.vy * t_ref


def _plan_traffic(rng: np.random.Generator, p: dict[str, int],
                  s: float) -> list[_Actor]:
  """Normal pedestrians walking left to right, about n in play at any time."""
  n, t_len, width = p["objects_per_frame"], p["num_frames"], p["width"]
  c = p["channels"]
  actors: list[_Actor] = []
  if n == 0:
    return actors

  def walker() -> _Actor:
    return _pedestrian(rng, s, c, speed=rng.uniform(1.0, 2.0) * s, direction=1)

  # Warm start: the video opens mid-scene with n walkers spread over the frame.
  for i in range(n):
    a = walker()
    _place(rng, a, p, s, 0, (i + rng.uniform(0.15, 0.85)) * width / n)
    actors.append(a)
  next_spawn = 0
  for t in range(t_len):
    in_play = sum(1 for a in actors
                  if a.t_begin <= t and a.pos(t)[0] - _extent(a) <= width)
    if in_play < n and t >= next_spawn:
      # Enter from just beyond the left border, so nothing pops into view.
      a = walker()
      a.t_begin = t
      _place(rng, a, p, s, t, -_extent(a))
      actors.append(a)
      next_spawn = t + int(rng.integers(3, 15))
  return actors


def _plan_anomalies(rng: np.random.Generator, p: dict[str, int], s: float,
                    anomaly: str) -> list[_Actor]:
  """Abnormal objects whose visible intervals cover ~22-34% of the video.

  A fast object (or a long video) gets whole crossings separated by normal
  stretches; otherwise a single object is in view either from the first frame
  until it leaves, or from its entry until the last frame.
  """
  t_len, width, c = p["num_frames"], p["width"], p["channels"]
  target = max(3, round(rng.uniform(0.22, 0.34) * t_len))

  def make() -> _Actor:
    if anomaly == "wrong_way":
      a = _pedestrian(rng, s, c, speed=rng.uniform(1.0, 2.0) * s, direction=-1)
    elif anomaly == "running":
      a = _pedestrian(rng, s, c, speed=rng.uniform(4.0, 6.0) * s, direction=1,
                      running=True)
    elif anomaly == "unusual_object":
      maker = _cart if rng.random() < 0.5 else _bike
      a = maker(rng, s, c, speed=rng.uniform(1.0, 2.0) * s)
    else:
      raise ValueError(f"unknown anomaly type {anomaly!r}")
    a.anomaly = anomaly
    return a

  first = make()
  entry, exit_ = _visible_edges(first, width)
  cross = abs(exit_ - entry) / abs(first.vx)  # Frames in view per crossing.
  if cross <= 1.2 * target:
    n = max(1, round(target / cross))
    dur = math.ceil(cross)
    while n > 1 and n * dur > 0.45 * t_len:
      n -= 1
    # Random normal gaps before, between and after the crossings.
    gaps = np.floor(rng.dirichlet(np.ones(n + 1)) * (t_len - n * dur))
    actors, t = [], float(gaps[0])
    for k in range(n):
      a = first if k == 0 else make()
      a.vx = first.vx  # Same speed, so every crossing fits its slot.
      _place(rng, a, p, s, t, _visible_edges(a, width)[0])
      actors.append(a)
      t += dur + float(gaps[k + 1])
    return actors
  if rng.random() < 0.5:
    _place(rng, first, p, s, target, exit_)  # Leaves at frame `target`.
  else:
    _place(rng, first, p, s, t_len - target, entry)  # Enters, still in view.
  return [first]


# ----------------------------------------------------------------------------
# Rendering and writing one video.
# ----------------------------------------------------------------------------


def _write_bytes(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _write_npz(path: str, **arrays: np.ndarray) -> None:
  """Like np.savez_compressed, but byte-reproducible (fixed zip timestamps)."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for name, arr in arrays.items():
      member = io.BytesIO()
      np.lib.format.write_array(member, np.ascontiguousarray(arr),
                                allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      zf.writestr(info, member.getvalue())
  _write_bytes(path, buf.getvalue())


def _write_npy(path: str, arr: np.ndarray) -> None:
  buf = io.BytesIO()
  np.save(buf, arr, allow_pickle=False)
  _write_bytes(path, buf.getvalue())


def _write_tracks(path: str, rows: list[tuple]) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(TRACKS_HEADER)
  for t, tid, x1, y1, x2, y2, cls, abnormal in rows:
    writer.writerow([t, tid, f"{x1:.2f}", f"{y1:.2f}", f"{x2:.2f}",
                     f"{y2:.2f}", cls, abnormal])
  _write_bytes(path, buf.getvalue().encode())


@dataclasses.dataclass
class _Scene:
  """What one video shows, planned before any frame is painted."""
  background: np.ndarray  # float32 [h, w, c], the static scene.
  normal: list[_Actor]
  abnormal: list[_Actor]
  anomaly: str | None  # The test video's anomaly type; None for train.
  rng_noise: np.random.Generator  # Draws the per-frame sensor noise.

  @property
  def actors(self) -> list[_Actor]:
    """Every object, in track-id order."""
    return self.normal + self.abnormal

  @property
  def paint_order(self) -> list[_Actor]:
    """Painter's order: farther (higher in the frame) first; abnormal objects
    on top, so their pixel masks are exactly what is visible."""
    return sorted(self.normal, key=lambda a: a.y0) + self.abnormal


def _plan_scene(p: dict[str, int], split: str, index: int) -> _Scene:
  """Draws the background and the objects of one video; numbers the tracks."""
  h, w, c = p["height"], p["width"], p["channels"]
  s = h / 120.0  # Sizes and speeds are specified for 120 px high frames.
  # One independent stream per video and purpose: a video does not depend on
  # how many other videos there are, nor the scene on the noise draws.
  seq = np.random.SeedSequence([p["seed"], _SPLIT_IDS[split], index])
  rng_bg, rng_plan, rng_noise = (np.random.default_rng(q) for q in seq.spawn(3))
  background = _background(rng_bg, h, w, c, s)
  normal = _plan_traffic(rng_plan, p, s)
  anomaly = (ANOMALY_TYPES[index % len(ANOMALY_TYPES)] if split == "test"
             else None)
  abnormal = _plan_anomalies(rng_plan, p, s, anomaly) if anomaly else []
  for tid, a in enumerate(normal + abnormal):
    a.track_id = tid
  return _Scene(background, normal, abnormal, anomaly, rng_noise)


def _paint(frame: np.ndarray, a: _Actor,
           t: int) -> tuple[int, int, np.ndarray] | None:
  """Paints object ``a`` as it is at frame ``t`` onto ``frame`` (in place).

  Returns:
    (fx0, fy0, mask): the painted pixels, bool [mh, mw] with its top-left
    corner at frame pixel (fx0, fy0); None when nothing of it is in view.
  """
  h, w = frame.shape[:2]
  if t < a.t_begin or abs(a.pos(t)[0] - w / 2) > w / 2 + _extent(a):
    return None
  ox, oy, lab = a.draw(t)
  fx0, fy0 = max(ox, 0), max(oy, 0)
  fx1, fy1 = min(ox + lab.shape[1], w), min(oy + lab.shape[0], h)
  if fx1 <= fx0 or fy1 <= fy0:
    return None
  crop = (slice(fy0 - oy, fy1 - oy), slice(fx0 - ox, fx1 - ox))
  lab = lab[crop]
  mask = lab > 0
  if not mask.any():
    return None
  colors = a.palette[lab] + a.texture[crop] * a.tex_weight[lab][..., None]
  region = frame[fy0:fy1, fx0:fx1]
  region[mask] = colors[mask]
  return fx0, fy0, mask


@dataclasses.dataclass
class _Annotations:
  """One video's labels, collected frame by frame as its objects are painted."""
  gt_pixel: np.ndarray  # bool [t, h, w]: the abnormal objects' pixels.
  det_rows: list[tuple] = dataclasses.field(default_factory=list)
  track_rows: list[tuple] = dataclasses.field(default_factory=list)
  seen: dict[int, list[int]] = dataclasses.field(default_factory=dict)

  def add(self, t: int, a: _Actor, fx0: int, fy0: int,
          mask: np.ndarray) -> None:
    """Records object ``a`` painted as ``mask`` at (fx0, fy0) in frame t."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(
        mask.any(axis=0))
    x1, x2 = fx0 + int(cols[0]), fx0 + int(cols[-1]) + 1
    y1, y2 = fy0 + int(rows[0]), fy0 + int(rows[-1]) + 1
    if x2 - x1 < MIN_BOX or y2 - y1 < MIN_BOX:
      return  # Too small to detect: drawn, but not an object of the data.
    self.det_rows.append((t, x1, y1, x2, y2, 1.0, a.cls))
    self.track_rows.append((t, a.track_id, x1, y1, x2, y2, a.cls,
                            int(a.anomaly is not None)))
    self.seen.setdefault(a.track_id, []).append(t)
    if a.anomaly is not None:
      fy1, fx1 = fy0 + mask.shape[0], fx0 + mask.shape[1]
      self.gt_pixel[t, fy0:fy1, fx0:fx1] |= mask


def _render_frame(scene: _Scene, t: int, notes: _Annotations) -> np.ndarray:
  """Paints frame t (float32 [h, w, c], no noise yet) and annotates it."""
  frame = scene.background.copy()
  for a in scene.paint_order:
    painted = _paint(frame, a, t)
    if painted is not None:
      notes.add(t, a, *painted)
  return frame


def _write_frame(path: str, frame: np.ndarray, rng: np.random.Generator,
                 vid: str, t: int) -> None:
  """Adds this frame's sensor noise to ``frame`` and writes it as a PNG."""
  # Mild sensor noise, different in every frame.
  frame += 2.0 * rng.standard_normal(frame.shape, dtype=np.float32)
  img = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
  img = img[..., 0] if frame.shape[2] == 1 else cv2.cvtColor(
      img, cv2.COLOR_RGB2BGR)
  ok, png = cv2.imencode(".png", img)
  if not ok:
    raise RuntimeError(f"PNG encoding failed for {vid} frame {t}")
  with open(path, "wb") as f:
    f.write(png.tobytes())


def _write_labels(root: str, split: str, vid: str,
                  notes: _Annotations) -> np.ndarray:
  """Writes the detections, the gt tracks and (test) the gt frame and pixel
  masks of one video.

  Returns:
    gt_frame: uint8 [t], 1 for frames with abnormal pixels.
  """
  detections_lib.write_detections(
      os.path.join(root, "detections", split, f"{vid}.csv"), notes.det_rows)
  os.makedirs(os.path.join(root, "gt_tracks"), exist_ok=True)
  _write_tracks(os.path.join(root, "gt_tracks", f"{vid}.csv"),
                notes.track_rows)
  gt_pixel = notes.gt_pixel
  gt_frame = gt_pixel.any(axis=(1, 2)).astype(np.uint8)
  if split == "test":
    assert np.array_equal(gt_frame.astype(bool), gt_pixel.any(axis=(1, 2)))
    if gt_frame.all() or not gt_frame.any():
      raise RuntimeError(f"{vid}: test video without both normal and abnormal "
                         f"frames ({int(gt_frame.sum())}/{gt_frame.size} "
                         "abnormal)")
    for sub in ("gt_frame", "gt_pixel"):
      os.makedirs(os.path.join(root, sub), exist_ok=True)
    _write_npy(os.path.join(root, "gt_frame", f"{vid}.npy"), gt_frame)
    _write_npz(os.path.join(root, "gt_pixel", f"{vid}.npz"), mask=gt_pixel)
  return gt_frame


def _video_summary(split: str, scene: _Scene, notes: _Annotations,
                   gt_frame: np.ndarray) -> dict[str, Any]:
  """The JSON-serialisable summary of one video: its tracks and events."""
  tracks = []
  for a in scene.actors:
    frames = notes.seen.get(a.track_id)
    tracks.append({
        "track_id": a.track_id, "kind": a.kind, "class": a.cls,
        "anomaly": a.anomaly, "vx": round(a.vx, 4), "vy": round(a.vy, 4),
        "frames": [frames[0], frames[-1] + 1] if frames else None})
  events = [{"type": tr["anomaly"], "track_id": tr["track_id"],
             "class": tr["class"], "frames": tr["frames"]}
            for tr in tracks if tr["anomaly"] and tr["frames"]]
  return {"split": split, "frames": int(gt_frame.size),
          "objects": len(notes.det_rows),
          "abnormal_frames": int(gt_frame.sum()) if split == "test" else 0,
          "anomaly": scene.anomaly, "events": events, "tracks": tracks}


def _make_video(root: str, p: dict[str, int], split: str,
                index: int) -> dict[str, Any]:
  """Renders one video and writes its frames, detections and gt files.

  Returns the video's summary (JSON-serialisable).
  """
  vid = f"{split}_{index:02d}"
  t_len, h, w = p["num_frames"], p["height"], p["width"]
  scene = _plan_scene(p, split, index)
  frame_dir = os.path.join(root, split, vid)
  os.makedirs(frame_dir, exist_ok=True)
  digits = _digits(p)
  notes = _Annotations(gt_pixel=np.zeros((t_len, h, w), bool))
  for t in range(t_len):
    frame = _render_frame(scene, t, notes)
    _write_frame(os.path.join(frame_dir, f"{t:0{digits}d}.png"), frame,
                 scene.rng_noise, vid, t)
  gt_frame = _write_labels(root, split, vid, notes)
  return _video_summary(split, scene, notes, gt_frame)


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def _clear(root: str) -> None:
  """Removes the marker, then everything a previous generation wrote.

  The marker goes first so that nobody mistakes a half-rewritten ROOT for a
  complete one; only names this module writes are touched.
  """
  marker = os.path.join(root, MARKER)
  if os.path.exists(marker):
    os.remove(marker)
  for sub in _OWNED_DIRS:
    d = os.path.join(root, sub)
    if not os.path.isdir(d):
      continue
    for name in os.listdir(d):
      if _OWNED_NAME.match(name):
        path = os.path.join(d, name)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)


def generate(root: str, *, seed: int = 0, num_train: int = 4, num_test: int = 3,
             num_frames: int = 64, height: int = 120, width: int = 160,
             channels: int = 1, objects_per_frame: int = 3) -> dict[str, Any]:
  """Generates the data set under ``root`` unless it is already complete.

  Args:
    root: output directory (created if missing). Foreign files are kept.
    seed: everything is a deterministic function of the parameters.
    num_train, num_test: number of videos per split.
    num_frames: frames per video (>= 16).
    height, width: frame size (>= 48x64); object sizes/speeds scale with height.
    channels: 1 (gray PNG) or 3 (RGB PNG).
    objects_per_frame: normal pedestrians in play at a time (about).

  Returns:
    Summary dict: ``videos`` ({split: [ids]}), ``num_videos``, ``frames``,
    ``objects`` (boxes), ``abnormal_frames`` (all totals), ``per_video``
    ({id: {split, frames, objects, abnormal_frames, anomaly, events, tracks}}),
    plus ``root``, ``generated`` (False if it was already complete) and
    ``seconds``.
  """
  given = dict(seed=seed, num_train=num_train, num_test=num_test,
               num_frames=num_frames, height=height, width=width,
               channels=channels, objects_per_frame=objects_per_frame)
  p = _params(**given)
  if is_complete(root, **given):
    return {**_read_marker(root)["summary"], "root": root, "generated": False,
            "seconds": 0.0}
  start = time.perf_counter()
  os.makedirs(root, exist_ok=True)
  _clear(root)
  ids = _video_ids(p)
  per_video = {}
  for split, split_ids in ids.items():
    for i, vid in enumerate(split_ids):
      per_video[vid] = _make_video(root, p, split, i)
  summary = {
      "videos": ids, "num_videos": len(per_video),
      "frames": sum(v["frames"] for v in per_video.values()),
      "objects": sum(v["objects"] for v in per_video.values()),
      "abnormal_frames": sum(v["abnormal_frames"] for v in per_video.values()),
      "per_video": per_video}
  # The marker is written last (temp file + os.replace): it exists with
  # complete=true only once every file above is in place.
  marker = {"format_version": FORMAT_VERSION, "params": p, "summary": summary,
            "complete": True}
  _write_bytes(os.path.join(root, MARKER),
               json.dumps(marker, indent=1, sort_keys=True).encode())
  return {**summary, "root": root, "generated": True,
          "seconds": round(time.perf_counter() - start, 3)}
