"""YOLOv3 / YOLOv3-tiny in Flax Linen, built from a darknet cfg, and a detector.

Pipeline of :class:`Detector` (every step is also a public function, so tests
and the OpenCV comparison can use them separately):

1. :func:`preprocess`: each frame (gray ``[H, W]`` / ``[H, W, 1]`` or RGB
   ``[H, W, 3]``, uint8 or float in [0, 1]) is scaled to [0, 1], resized with
   ``cv2.INTER_LINEAR`` keeping its aspect ratio and centred on a gray (0.5)
   canvas of the network input size (darknet's ``letterbox_image``); gray
   frames become 3 equal channels. The result is one NHWC float32 RGB blob.
   (``cv2.dnn.blobFromImage`` would stretch instead of letterboxing; the
   OpenCV comparison feeds it this same blob, transposed to NCHW.)
2. :class:`YOLO`: the network; returns the raw head tensors.
3. :func:`decode_heads`: darknet/OpenCV box decoding, one row per anchor and
   cell: ``cx, cy, w, h`` (fractions of the network input), objectness, and
   per-class scores = objectness * sigmoid(class logit). Rows are ordered
   (head, y, x, anchor), exactly like the rows of OpenCV's ``[yolo]`` outputs.
4. :func:`postprocess` (host, numpy): best class per row, confidence
   threshold (score > threshold), class-aware NMS (``cv2.dnn.NMSBoxesBatched``),
   boxes mapped back to frame pixels (letterbox undone) and clipped to the
   frame.

Steps 2-3 run jitted, on a fixed batch size (the last batch is padded, so there
is only one compilation per input size); the next batch is pre-processed while
the previous one runs on the device (JAX dispatches asynchronously).

Detections come out as float32 ``[N, 6 + num_classes]`` per frame, sorted by
score: ``x1, y1, x2, y2`` (frame pixels, x right, y down), ``score``,
``class`` (0-based COCO id for the COCO models), then the class probability
vector P(class | object) = sigmoid(class logits) -- the distillation teacher's
target. ``score == objectness * probs[class]``, so the joint per-class scores
are ``probs * score / probs[class]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterable, Iterator, Optional, Sequence

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssmtl_jax.perception import convs
from ssmtl_jax.perception.detector import darknet

# Darknet letterbox canvas value (image.c: letterbox_image fills with 0.5).
PAD_VALUE = 0.5


class YOLO(nn.Module):
  """A YOLO network from a parsed darknet cfg (YOLOv3, YOLOv3-tiny, ...).

  Variables are those of :func:`darknet.read_weights`.

  Attributes:
    net: the parsed cfg.
    precision: conv precision (None = JAX default; ``lax.Precision.HIGHEST``
      avoids TF32 on GPUs when bit-closeness to OpenCV matters).
    conv_impl: 'xla' or 'onednn' (convolution, batch norm and activation as
      one oneDNN primitive on the CPU; ``convs.resolve`` picks one).
  """
  net: darknet.Network
  precision: Any = None
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    """Runs the network.

    Args:
      x: float32 [B, H, W, 3] RGB in [0, 1]; H, W multiples of 32.
    Returns:
      one raw head tensor per ``[yolo]`` layer, in cfg order:
      [B, H / s, W / s, anchors * (5 + classes)] with s the head's stride
      (32, 16, 8 for YOLOv3). Channel layout per anchor: tx, ty, tw, th,
      objectness logit, class logits.
    """
    outputs: list[jax.Array] = []
    heads: list[jax.Array] = []
    for i, layer in enumerate(self.net.layers):
      if isinstance(layer, darknet.Conv):
        pad = (layer.padding, layer.padding)
        y = convs.conv_bn_act(
            self, x, conv=f"conv_{i}",
            bn=f"bn_{i}" if layer.batch_normalize else None,
            features=layer.filters, kernel=layer.size, stride=layer.stride,
            padding=(pad, pad), use_bias=not layer.batch_normalize,
            bn_epsilon=darknet.BN_EPSILON,
            activation=_ACTIVATIONS[layer.activation],
            slope=darknet.LEAKY_SLOPE, impl=self.conv_impl,
            precision=self.precision)
      elif isinstance(layer, darknet.MaxPool):
        # Darknet pads padding // 2 before and the rest after; padded cells
        # are ignored, which max_pool's -inf padding reproduces.
        lo = layer.padding // 2
        pad = (lo, layer.padding - lo)
        y = nn.max_pool(x, (layer.size, layer.size),
                        strides=(layer.stride, layer.stride),
                        padding=(pad, pad))
      elif isinstance(layer, darknet.Upsample):
        b, h, w, c = x.shape
        s = layer.stride
        y = jnp.broadcast_to(x[:, :, None, :, None, :],
                             (b, h, s, w, s, c)).reshape(b, h * s, w * s, c)
      elif isinstance(layer, darknet.Route):
        parts = [outputs[j] for j in layer.layers]
        y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
      elif isinstance(layer, darknet.Shortcut):
        y = _activate(x + outputs[layer.source], layer.activation)
      elif isinstance(layer, darknet.Yolo):
        heads.append(x)
        y = x
      else:  # parse_cfg only produces the types above.
        raise TypeError(f"unexpected layer {layer!r}")
      outputs.append(y)
      x = y
    return tuple(heads)


# darknet activation -> convs' name (parse_cfg admits these two).
_ACTIVATIONS = {"leaky": "leaky_relu", "linear": "none"}


def _activate(x: jax.Array, activation: str) -> jax.Array:
  return convs.activate(x, _ACTIVATIONS[activation], darknet.LEAKY_SLOPE)


def decode_heads(net: darknet.Network, heads: Sequence[jax.Array],
                 input_size: tuple[int, int]) -> jax.Array:
  """Decodes raw heads into darknet/OpenCV detection rows.

  Args:
    net: the parsed cfg (anchors, classes).
    heads: the output of :class:`YOLO`.
    input_size: network input (width, height) in pixels; anchors are divided
      by it.
  Returns:
    float32 [B, N, 5 + C], N = sum over heads of h * w * anchors, rows ordered
    (head, y, x, anchor): cx, cy, w, h as fractions of the input size,
    objectness, then objectness * sigmoid(class logit) per class.
  """
  in_w, in_h = input_size
  rows = []
  for index, raw in zip(net.yolo_indices, heads):
    yolo = net.layers[index]
    b, h, w, _ = raw.shape
    a = len(yolo.mask)
    t = raw.astype(jnp.float32).reshape(b, h, w, a, 5 + yolo.classes)
    s = yolo.scale_x_y
    gx = jnp.arange(w, dtype=jnp.float32)[None, None, :, None]
    gy = jnp.arange(h, dtype=jnp.float32)[None, :, None, None]
    cx = (gx + jax.nn.sigmoid(t[..., 0]) * s - (s - 1) / 2) / w
    cy = (gy + jax.nn.sigmoid(t[..., 1]) * s - (s - 1) / 2) / h
    anchors = jnp.asarray(yolo.head_anchors, jnp.float32)  # [A, 2] (w, h)
    bw = jnp.exp(t[..., 2]) * anchors[:, 0] / in_w
    bh = jnp.exp(t[..., 3]) * anchors[:, 1] / in_h
    obj = jax.nn.sigmoid(t[..., 4])
    cls = jax.nn.sigmoid(t[..., 5:]) * obj[..., None]
    box = jnp.stack([cx, cy, bw, bh, obj], axis=-1)
    rows.append(jnp.concatenate([box, cls], axis=-1)
                .reshape(b, h * w * a, 5 + yolo.classes))
  return jnp.concatenate(rows, axis=1)


@dataclasses.dataclass(frozen=True)
class Letterbox:
  """How one frame sits in the network input (aspect ratio kept, centred).

  Attributes:
    frame_size: (width, height) of the original frame in pixels.
    input_size: (width, height) of the network input in pixels.
  """
  frame_size: tuple[int, int]
  input_size: tuple[int, int]

  @property
  def resized(self) -> tuple[int, int]:
    """(width, height) of the frame inside the input."""
    (fw, fh), (iw, ih) = self.frame_size, self.input_size
    scale = min(iw / fw, ih / fh)
    return (min(iw, max(1, round(fw * scale))),
            min(ih, max(1, round(fh * scale))))

  @property
  def offset(self) -> tuple[int, int]:
    """(x, y) of the resized frame's top-left corner in the input."""
    (rw, rh), (iw, ih) = self.resized, self.input_size
    return (iw - rw) // 2, (ih - rh) // 2

  def _affine(self) -> tuple[np.ndarray, np.ndarray]:
    # Per-axis factors of the actual (rounded) resize, so that the mapping is
    # exactly what cv2.resize did to the pixels.
    (rw, rh), (fw, fh) = self.resized, self.frame_size
    scale = np.array([rw / fw, rh / fh] * 2)
    shift = np.array(self.offset * 2, dtype=np.float64)
    return scale, shift

  def to_input(self, boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 in frame pixels -> network-input pixels."""
    scale, shift = self._affine()
    return np.asarray(boxes, np.float64) * scale + shift

  def to_frame(self, boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 in network-input pixels -> frame pixels."""
    scale, shift = self._affine()
    return (np.asarray(boxes, np.float64) - shift) / scale

  def apply(self, frame: np.ndarray) -> np.ndarray:
    """Letterboxes one frame.

    Args:
      frame: float32 [H, W] or [H, W, 3] in [0, 1], (W, H) == frame_size.
    Returns:
      float32 [input_h, input_w, 3]; gray frames are replicated to 3 channels.
    """
    (rw, rh), (dx, dy) = self.resized, self.offset
    iw, ih = self.input_size
    resized = cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
    out = np.full((ih, iw, 3), PAD_VALUE, np.float32)
    out[dy:dy + rh, dx:dx + rw] = (resized[..., None] if resized.ndim == 2
                                   else resized)
    return out


def _as_float_frame(frame: np.ndarray, index: int) -> np.ndarray:
  """uint8/float gray or RGB frame -> float32 [H, W] or [H, W, 3] in [0, 1]."""
  frame = np.asarray(frame)
  if frame.ndim == 3 and frame.shape[2] == 1:
    frame = frame[..., 0]
  if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
    raise ValueError(f"frame {index}: expected [H, W], [H, W, 1] or "
                     f"[H, W, 3], got shape {frame.shape}")
  if frame.dtype == np.uint8:
    return frame.astype(np.float32) * np.float32(1 / 255)
  if np.issubdtype(frame.dtype, np.floating):
    return frame.astype(np.float32, copy=False)
  raise ValueError(f"frame {index}: dtype {frame.dtype} (need uint8 or "
                   "float in [0, 1])")


def preprocess(frames: Sequence[np.ndarray], input_size: tuple[int, int],
               ) -> tuple[np.ndarray, list[Letterbox]]:
  """Letterboxes frames into one network input blob.

  Args:
    frames: gray [H, W] / [H, W, 1] or RGB [H, W, 3] frames, uint8 or float
      in [0, 1]; sizes may differ.
    input_size: network input (width, height).
  Returns:
    (float32 blob [B, input_h, input_w, 3], one Letterbox per frame).
  """
  iw, ih = input_size
  blob = np.empty((len(frames), ih, iw, 3), np.float32)
  boxes = []
  for i, frame in enumerate(frames):
    frame = _as_float_frame(frame, i)
    lb = Letterbox((frame.shape[1], frame.shape[0]), (iw, ih))
    blob[i] = lb.apply(frame)
    boxes.append(lb)
  return blob, boxes


def postprocess(rows: np.ndarray, letterbox: Letterbox, *,
                conf_threshold: float, nms_threshold: float) -> np.ndarray:
  """Turns one frame's decoded rows into final detections.

  Args:
    rows: float32 [N, 5 + C] from :func:`decode_heads` (or OpenCV's
      ``[yolo]`` outputs, which have the same layout).
    letterbox: the frame's letterbox geometry.
    conf_threshold: keep rows whose best class score is > this.
    nms_threshold: IoU above which a lower-scored box of the same class is
      suppressed.
  Returns:
    float32 [M, 6 + C] sorted by score: x1, y1, x2, y2 (frame pixels, clipped
    to the frame), score, class, P(class | object) for every class.
  """
  num_classes = rows.shape[1] - 5
  # A class score is objectness * probability <= objectness: filtering on
  # objectness first is exact and skips the argmax over most rows.
  rows = rows[rows[:, 4] > conf_threshold]
  joint = rows[:, 5:]
  cls = np.argmax(joint, axis=1)
  score = joint[np.arange(len(rows)), cls]
  keep = score > conf_threshold
  rows, cls, score = rows[keep], cls[keep], score[keep]
  if not len(rows):
    return np.zeros((0, 6 + num_classes), np.float32)
  iw, ih = letterbox.input_size
  cx, cy = rows[:, 0] * iw, rows[:, 1] * ih
  hw, hh = rows[:, 2] * iw / 2, rows[:, 3] * ih / 2
  xyxy = letterbox.to_frame(np.stack([cx - hw, cy - hh, cx + hw, cy + hh], 1))
  xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
  order = np.asarray(cv2.dnn.NMSBoxesBatched(
      xywh, score.astype(np.float32), cls.astype(np.int32),
      float(conf_threshold), float(nms_threshold)), np.int64).reshape(-1)
  order = order[np.argsort(-score[order], kind="stable")]
  fw, fh = letterbox.frame_size
  xyxy = np.clip(xyxy[order], 0, [fw, fh, fw, fh])
  probs = rows[order, 5:] / rows[order, 4:5]
  out = np.concatenate([xyxy, score[order, None], cls[order, None], probs],
                       axis=1).astype(np.float32)
  # Boxes entirely outside the frame vanish when clipped.
  return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  it = iter(items)
  while batch := list(itertools.islice(it, size)):
    yield batch


class Detector:
  """Batched, jitted YOLO detector from darknet cfg + weights.

  Example::

      det = Detector("yolov3-tiny.cfg", "yolov3-tiny.weights",
                     input_size=(736, 480), conf_threshold=0.1)
      for dets in det.detect_stream(frames):  # dets: [N, 6 + 80]
        ...
  """

  def __init__(self, cfg_path: str, weights_path: str, *,
               input_size: tuple[int, int] = (416, 416),
               conf_threshold: float = 0.25, nms_threshold: float = 0.45,
               batch_size: int = 8, precision: Any = None,
               conv_impl: str = "auto"):
    """Loads the network.

    Args:
      cfg_path: darknet ``.cfg``.
      weights_path: darknet ``.weights`` matching the cfg.
      input_size: network input (width, height), multiples of 32; e.g.
        (736, 480) fits 360x240 Ped2 frames with little padding.
      conf_threshold: keep boxes with score > this.
      nms_threshold: class-aware NMS IoU threshold.
      batch_size: frames per jitted call (the last batch is padded).
      precision: conv precision for :class:`YOLO` (its XLA path).
      conv_impl: 'auto' (oneDNN on the CPU where it is installed, else XLA),
        'xla' or 'onednn'; see ``perception/convs.py``.
    Raises:
      DarknetError naming the file for bad cfg/weights; ValueError for bad
      arguments.
    """
    width, height = (int(v) for v in input_size)
    if width <= 0 or height <= 0 or width % 32 or height % 32:
      raise ValueError(f"input_size={input_size}: (width, height) must be "
                       "positive multiples of 32")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.net = darknet.parse_cfg(cfg_path)
    if self.net.channels != 3:
      raise darknet.DarknetError(f"{cfg_path}: channels={self.net.channels}; "
                                 "only 3-channel (RGB) networks are supported")
    self.input_size = (width, height)
    self.conf_threshold = float(conf_threshold)
    self.nms_threshold = float(nms_threshold)
    self.batch_size = int(batch_size)
    self.num_classes = self.net.num_classes
    self.conv_impl = convs.resolve(conv_impl)
    self.model = YOLO(self.net, precision=precision,
                      conv_impl=self.conv_impl)
    variables = darknet.read_weights(self.net, weights_path)
    _check_variables(self.model, variables, (height, width),
                     os.fspath(weights_path))
    self.variables = jax.device_put(variables)
    self._heads = jax.jit(self.model.apply)
    self._rows = jax.jit(self._decoded_rows)

  def _decoded_rows(self, variables, blob: jax.Array) -> jax.Array:
    return decode_heads(self.net, self.model.apply(variables, blob),
                        self.input_size)

  def heads(self, blob: np.ndarray) -> list[np.ndarray]:
    """Raw head tensors for a pre-processed blob [B, H, W, 3] (see YOLO)."""
    return [np.asarray(h) for h in self._heads(self.variables, blob)]

  def decoded_rows(self, blob: np.ndarray) -> np.ndarray:
    """Decoded rows [B, N, 5 + C] for a pre-processed blob (decode_heads)."""
    return np.asarray(self._rows(self.variables, blob))

  def _dispatch(self, frames: list[np.ndarray]):
    blob, boxes = preprocess(frames, self.input_size)
    n = len(frames)
    if n < self.batch_size:  # One compiled shape for every batch.
      blob = np.concatenate([blob, np.full(
          (self.batch_size - n,) + blob.shape[1:], PAD_VALUE, np.float32)])
    return self._rows(self.variables, blob), boxes

  def _finish(self, rows: jax.Array, boxes: list[Letterbox],
              ) -> Iterator[np.ndarray]:
    rows = np.asarray(rows)
    for i, lb in enumerate(boxes):
      yield postprocess(rows[i], lb, conf_threshold=self.conf_threshold,
                        nms_threshold=self.nms_threshold)

  def detect_stream(self, frames: Iterable[np.ndarray]
                    ) -> Iterator[np.ndarray]:
    """Detects objects in a stream of frames, one result per frame, in order.

    Memory stays flat in the stream length: at most two batches are alive.

    Args:
      frames: gray [H, W] / [H, W, 1] or RGB [H, W, 3], uint8 or float in
        [0, 1].
    Yields:
      float32 [N, 6 + C] per frame (layout in the module docstring).
    """
    pending: Optional[tuple] = None
    for batch in _batches(frames, self.batch_size):
      # Dispatch is asynchronous: this batch runs while the previous one is
      # post-processed on the host.
      current = self._dispatch(batch)
      if pending is not None:
        yield from self._finish(*pending)
      pending = current
    if pending is not None:
      yield from self._finish(*pending)

  def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """List version of :meth:`detect_stream`."""
    return list(self.detect_stream(frames))


def _check_variables(model: YOLO, variables: dict, input_hw: tuple[int, int],
                     weights_path: str) -> None:
  """Raises DarknetError unless the loaded variables fit the module exactly."""
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *input_hw, 3), jnp.float32))
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(shapes)}
  got = {jax.tree_util.keystr(k): v.shape
         for k, v in jax.tree_util.tree_leaves_with_path(variables)}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:5]
    raise darknet.DarknetError(
        f"{weights_path}: loaded variables do not fit {model.net.path}: "
        f"first differences {diff}")
