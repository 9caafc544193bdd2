"""Darknet ``.cfg`` parser and ``.weights`` reader/writer (YOLOv3, YOLOv3-tiny).

Only what YOLOv3-style networks use is supported: ``[net]``,
``[convolutional]``, ``[maxpool]``, ``[upsample]``, ``[route]``, ``[shortcut]``
and ``[yolo]``. Anything else (another section, grouped/dilated convolutions,
activations other than leaky/linear, ``new_coords`` heads, ...) raises a
:class:`DarknetError` naming the file and line instead of silently building a
different network.

Layer indices follow darknet: the first section after ``[net]`` is layer 0,
and ``[route] layers`` / ``[shortcut] from`` are resolved to absolute indices
at parse time (negative values count back from the layer itself).

Weights file layout (darknet ``load_weights``, little endian):

* header: ``int32 major, minor, revision``, then ``seen`` as ``int64`` when
  ``major * 10 + minor >= 2`` (and both < 1000), else ``int32``;
* then, for every ``[convolutional]`` in cfg order, float32 arrays:
  ``beta (bias), gamma (scale), rolling mean, rolling variance`` (each
  ``[filters]``) with batch norm, or ``bias [filters]`` without; followed by
  the kernel ``[filters, in_channels, size, size]``.

Flax variables produced here (names match OpenCV's darknet importer, which
helps when comparing against it)::

    {"params": {"conv_<i>": {"kernel": [k, k, in, out], ("bias": [out])},
                "bn_<i>": {"scale": [out], "bias": [out]}},
     "batch_stats": {"bn_<i>": {"mean": [out], "var": [out]}}}
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator, Mapping, Optional, Union

import numpy as np

from ssmtl_jax.base import errors

# Darknet's leaky ReLU slope (activations.h: leaky_activate).
LEAKY_SLOPE = 0.1
# Batch-norm epsilon inside the variance square root. Darknet itself divides by
# sqrt(var) + 1e-6; OpenCV's importer (our reference) and Flax's BatchNorm use
# sqrt(var + 1e-6). The two agree to ~1e-6 relative for trained weights.
BN_EPSILON = 1e-6

ACTIVATIONS = ("leaky", "linear")


class DarknetError(errors.DataError):
  """A darknet cfg/weights file is missing, malformed or unsupported.

  The message always names the file (and the cfg line where it helps).
  """


@dataclasses.dataclass(frozen=True)
class Conv:
  """``[convolutional]``: conv (+ batch norm) + activation.

  Attributes:
    filters: output channels.
    size: square kernel size.
    stride: spatial stride.
    padding: zero padding in pixels on every side (``pad=1`` means size // 2).
    batch_normalize: batch norm after the conv (and then no conv bias).
    activation: "leaky" (slope 0.1) or "linear".
    in_channels: input channels, inferred from the layers before.
  """
  filters: int
  size: int
  stride: int
  padding: int
  batch_normalize: bool
  activation: str
  in_channels: int

  @property
  def num_weights(self) -> int:
    """float32 values this layer takes in the weights file."""
    per_filter = 4 if self.batch_normalize else 1
    return self.filters * (per_filter + self.in_channels * self.size ** 2)


@dataclasses.dataclass(frozen=True)
class MaxPool:
  """``[maxpool]``.

  Attributes:
    size: square window.
    stride: spatial stride.
    padding: total padding per axis (darknet default ``size - 1``): ``padding
      // 2`` before, the rest after, padded cells never win the max. Output
      size is ``(in + padding - size) // stride + 1``, so YOLOv3-tiny's
      size=2 stride=1 pool keeps the size.
  """
  size: int
  stride: int
  padding: int


@dataclasses.dataclass(frozen=True)
class Upsample:
  """``[upsample]``: nearest-neighbour, ``stride`` times in both axes."""
  stride: int


@dataclasses.dataclass(frozen=True)
class Route:
  """``[route]``: channel concatenation of earlier outputs (absolute ids)."""
  layers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Shortcut:
  """``[shortcut]``: previous output + output of layer ``source`` (absolute)."""
  source: int
  activation: str


@dataclasses.dataclass(frozen=True)
class Yolo:
  """``[yolo]``: a detection head on the previous layer's output.

  Attributes:
    mask: which anchors this head uses.
    anchors: all anchors of the network, (w, h) in network-input pixels.
    classes: number of classes.
    scale_x_y: centre scaling (YOLOv4 heads; 1.0 for YOLOv3).
  """
  mask: tuple[int, ...]
  anchors: tuple[tuple[float, float], ...]
  classes: int
  scale_x_y: float = 1.0

  @property
  def head_anchors(self) -> tuple[tuple[float, float], ...]:
    """The (w, h) anchors of this head, in mask order."""
    return tuple(self.anchors[m] for m in self.mask)


Layer = Union[Conv, MaxPool, Upsample, Route, Shortcut, Yolo]


@dataclasses.dataclass(frozen=True)
class Network:
  """A parsed cfg. Hashable, so it can be a Flax module attribute.

  Attributes:
    path: the cfg file (for messages).
    width, height, channels: the ``[net]`` input size (a default only: any
      multiple of 32 works for YOLOv3 networks).
    layers: the layers, darknet index = position.
    out_channels: output channels of each layer.
  """
  path: str
  width: int
  height: int
  channels: int
  layers: tuple[Layer, ...]
  out_channels: tuple[int, ...]

  @property
  def yolo_indices(self) -> tuple[int, ...]:
    """Indices of the ``[yolo]`` layers, in output order."""
    return tuple(i for i, l in enumerate(self.layers) if isinstance(l, Yolo))

  @property
  def num_classes(self) -> int:
    classes = {self.layers[i].classes for i in self.yolo_indices}
    if len(classes) != 1:
      raise DarknetError(f"{self.path}: [yolo] heads disagree on classes: "
                         f"{sorted(classes)}")
    return classes.pop()

  def convs(self) -> Iterator[tuple[int, Conv]]:
    """(index, layer) for every ``[convolutional]``, in weights-file order."""
    for i, layer in enumerate(self.layers):
      if isinstance(layer, Conv):
        yield i, layer

  @property
  def num_weights(self) -> int:
    """float32 values the weights file must hold after its header."""
    return sum(c.num_weights for _, c in self.convs())


@dataclasses.dataclass
class _Section:
  name: str
  lineno: int
  path: str
  options: dict[str, str]
  used: set[str] = dataclasses.field(default_factory=set)

  def _error(self, msg: str) -> DarknetError:
    return DarknetError(f"{self.path}:{self.lineno}: [{self.name}] {msg}")

  def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
    return self.options.get(key, default)

  def get_int(self, key: str, default: Optional[int] = None) -> int:
    value = self.options.get(key)
    if value is None:
      if default is None:
        raise self._error(f"missing required option {key!r}")
      return default
    try:
      return int(value)
    except ValueError:
      raise self._error(f"{key}={value!r} is not an integer") from None

  def get_float(self, key: str, default: float) -> float:
    value = self.options.get(key)
    if value is None:
      return default
    try:
      return float(value)
    except ValueError:
      raise self._error(f"{key}={value!r} is not a number") from None

  def get_ints(self, key: str) -> list[int]:
    value = self.options.get(key)
    if not value:
      raise self._error(f"missing required option {key!r}")
    try:
      return [int(v) for v in value.split(",") if v]
    except ValueError:
      raise self._error(f"{key}={value!r} is not a list of integers") from None

  def require(self, key: str, allowed, default) -> None:
    """Raises unless option ``key`` (parsed like ``default``) is allowed."""
    value = self.options.get(key)
    if value is None:
      return
    try:
      parsed = (type(default)(float(value))
                if isinstance(default, (int, float)) else value)
    except ValueError:
      raise self._error(f"{key}={value!r} is not a number") from None
    if parsed not in allowed:
      raise self._error(f"{key}={value} is not supported (only "
                        f"{', '.join(map(str, allowed))})")


def _read_sections(path: str) -> list[_Section]:
  if not os.path.isfile(path):
    raise DarknetError(f"darknet cfg not found: {path}")
  sections: list[_Section] = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, raw in enumerate(f, start=1):
      # Like darknet's strip(): all whitespace goes, anywhere in the line.
      line = re.sub(r"\s+", "", raw)
      if not line or line[0] in "#;":
        continue
      if line[0] == "[":
        if not line.endswith("]"):
          raise DarknetError(f"{path}:{lineno}: bad section header {raw!r}")
        sections.append(_Section(line[1:-1].lower(), lineno, path, {}))
        continue
      if "=" not in line:
        raise DarknetError(f"{path}:{lineno}: expected key=value, got {raw!r}")
      if not sections:
        raise DarknetError(f"{path}:{lineno}: option outside any section")
      key, value = line.split("=", 1)
      sections[-1].options[key] = value
  if not sections or sections[0].name not in ("net", "network"):
    raise DarknetError(f"{path}: the first section must be [net]")
  return sections


def _absolute(section: _Section, index: int, rel: int) -> int:
  target = index + rel if rel < 0 else rel
  if not 0 <= target < index:
    raise section._error(f"refers to layer {rel} (absolute {target}), "
                         f"which is not an earlier layer of layer {index}")
  return target


def _parse_conv(s: _Section, prev: int) -> tuple[Conv, int]:
  """A [convolutional] section over ``prev`` input channels -> (layer, out
  channels)."""
  s.require("groups", (1,), 1)
  s.require("dilation", (1,), 1)
  s.require("binary", (0,), 0)
  s.require("xnor", (0,), 0)
  s.require("stride_x", (s.get_int("stride", 1),), 1)
  s.require("stride_y", (s.get_int("stride", 1),), 1)
  size = s.get_int("size", 1)
  activation = s.get("activation", "logistic")
  if activation not in ACTIVATIONS:
    raise s._error(f"activation={activation} is not supported (only "
                   f"{', '.join(ACTIVATIONS)})")
  # darknet parse_convolutional: pad=1 overrides padding with size/2.
  padding = size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
  layer = Conv(filters=s.get_int("filters", 1), size=size,
               stride=s.get_int("stride", 1), padding=padding,
               batch_normalize=bool(s.get_int("batch_normalize", 0)),
               activation=activation, in_channels=prev)
  return layer, layer.filters


def _parse_maxpool(s: _Section, prev: int) -> tuple[MaxPool, int]:
  """A [maxpool] section -> (layer, out channels = ``prev``)."""
  s.require("maxpool_depth", (0,), 0)
  size = s.get_int("size", 1)
  stride = s.get_int("stride", 1)
  s.require("stride_x", (stride,), 1)
  s.require("stride_y", (stride,), 1)
  layer = MaxPool(size=size, stride=stride,
                  padding=s.get_int("padding", size - 1))
  return layer, prev


def _parse_upsample(s: _Section, prev: int) -> tuple[Upsample, int]:
  """An [upsample] section -> (layer, out channels = ``prev``)."""
  s.require("scale", (1.0,), 1.0)
  layer = Upsample(stride=s.get_int("stride", 2))
  if layer.stride < 1:
    raise s._error("only positive (up-sampling) strides are supported")
  return layer, prev


def _parse_route(s: _Section, index: int,
                 out_channels: list[int]) -> tuple[Route, int]:
  """A [route] section, layer ``index`` -> (layer, the summed channels of
  the layers it concatenates)."""
  s.require("groups", (1,), 1)
  targets = tuple(_absolute(s, index, v) for v in s.get_ints("layers"))
  return Route(layers=targets), sum(out_channels[t] for t in targets)


def _parse_shortcut(s: _Section, index: int, prev: int,
                    out_channels: list[int]) -> tuple[Shortcut, int]:
  """A [shortcut] section, layer ``index`` -> (layer, out channels =
  ``prev``); the layer it adds must have ``prev`` channels too."""
  source = _absolute(s, index, s.get_int("from"))
  activation = s.get("activation", "linear")
  if activation not in ACTIVATIONS:
    raise s._error(f"activation={activation} is not supported")
  s.require("weights_type", ("none",), "none")
  if out_channels[source] != prev:
    raise s._error(f"adds layer {source} ({out_channels[source]} "
                   f"channels) to {prev} channels; only equal shapes are "
                   "supported")
  return Shortcut(source=source, activation=activation), prev


def _parse_yolo(s: _Section, prev: int) -> tuple[Yolo, int]:
  """A [yolo] section -> (layer, out channels = ``prev``); ``prev`` must be
  (mask anchors) x (classes + 5)."""
  s.require("new_coords", (0,), 0)
  anchors_flat = [float(v) for v in (s.get("anchors") or "").split(",")
                  if v]
  if not anchors_flat or len(anchors_flat) % 2:
    raise s._error("anchors must be a non-empty list of w,h pairs")
  anchors = tuple(zip(anchors_flat[0::2], anchors_flat[1::2]))
  num = s.get_int("num", len(anchors))
  if num != len(anchors):
    raise s._error(f"num={num} but {len(anchors)} anchors given")
  mask = (tuple(s.get_ints("mask")) if s.get("mask")
          else tuple(range(num)))
  if any(not 0 <= m < num for m in mask):
    raise s._error(f"mask {mask} out of range for {num} anchors")
  layer = Yolo(mask=mask, anchors=anchors, classes=s.get_int("classes", 20),
               scale_x_y=s.get_float("scale_x_y", 1.0))
  want = len(mask) * (layer.classes + 5)
  if prev != want:
    raise s._error(f"input has {prev} channels, expected {want} = "
                   f"{len(mask)} anchors x ({layer.classes} classes + 5)")
  return layer, prev


def _parse_layer(s: _Section, index: int, prev: int,
                 out_channels: list[int]) -> tuple[Layer, int]:
  """Section ``s`` as layer ``index`` over ``prev`` input channels, after
  layers with ``out_channels`` -> (layer, its output channels)."""
  if s.name in ("convolutional", "conv"):
    return _parse_conv(s, prev)
  if s.name in ("maxpool", "max"):
    return _parse_maxpool(s, prev)
  if s.name == "upsample":
    return _parse_upsample(s, prev)
  if s.name == "route":
    return _parse_route(s, index, out_channels)
  if s.name == "shortcut":
    return _parse_shortcut(s, index, prev, out_channels)
  if s.name in ("yolo",):
    return _parse_yolo(s, prev)
  raise s._error("unsupported section (supported: convolutional, "
                 "maxpool, upsample, route, shortcut, yolo)")


def parse_cfg(path: str) -> Network:
  """Parses a darknet cfg file.

  Args:
    path: the ``.cfg`` file.
  Returns:
    the :class:`Network`, with channels inferred and indices made absolute.
  Raises:
    DarknetError naming the file (and line) if it is missing, malformed or
    uses a section/option this implementation does not support.
  """
  path = os.fspath(path)
  net_section, *sections = _read_sections(path)
  channels = net_section.get_int("channels", 3)
  layers: list[Layer] = []
  out_channels: list[int] = []
  for index, s in enumerate(sections):
    prev = out_channels[-1] if out_channels else channels
    layer, out = _parse_layer(s, index, prev, out_channels)
    layers.append(layer)
    out_channels.append(out)
  net = Network(path=path, width=net_section.get_int("width", 416),
                height=net_section.get_int("height", 416), channels=channels,
                layers=tuple(layers), out_channels=tuple(out_channels))
  if not net.yolo_indices:
    raise DarknetError(f"{path}: no [yolo] section; not a YOLO detector cfg")
  _ = net.num_classes  # Raises if the heads disagree.
  return net


def _header_size(major: int, minor: int) -> int:
  # Darknet (parser.c load_weights) stores `seen` as size_t from format 0.2 on.
  wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
  return 12 + (8 if wide else 4)


def read_weights(net: Network, path: str) -> dict:
  """Reads a darknet ``.weights`` file into Flax variables.

  Args:
    net: the parsed cfg the weights belong to.
    path: the ``.weights`` file.
  Returns:
    ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays (layout
    in the module docstring).
  Raises:
    DarknetError naming the file if it is missing, truncated or longer than
    the cfg needs (a longer file almost always means a different cfg).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DarknetError(f"darknet weights not found: {path}")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12:
      raise DarknetError(f"{path}: truncated weights file ({size} bytes, "
                         "shorter than the header)")
    major, minor, _ = np.frombuffer(head, "<i4")
    offset = _header_size(int(major), int(minor))
  body = size - offset
  want = net.num_weights
  if body != 4 * want:
    what = "truncated" if body < 4 * want else "oversized"
    raise DarknetError(
        f"{path}: {what} weights file for {net.path}: {body} bytes of "
        f"weights after the {offset}-byte header, the cfg needs {4 * want} "
        f"({want} float32)")
  flat = np.fromfile(path, dtype="<f4", offset=offset).astype(np.float32,
                                                               copy=False)
  params: dict = {}
  batch_stats: dict = {}
  pos = 0

  def take(n: int) -> np.ndarray:
    nonlocal pos
    pos += n
    return flat[pos - n:pos]

  for i, c in net.convs():
    if c.batch_normalize:
      bias, scale, mean, var = (take(c.filters) for _ in range(4))
      params[f"bn_{i}"] = {"scale": scale, "bias": bias}
      batch_stats[f"bn_{i}"] = {"mean": mean, "var": var}
      conv = {}
    else:
      conv = {"bias": take(c.filters)}
    kernel = take(c.filters * c.in_channels * c.size ** 2)
    # darknet [out, in, kh, kw] -> Flax [kh, kw, in, out] (a view; copied
    # once when put on the device).
    conv["kernel"] = kernel.reshape(
        c.filters, c.in_channels, c.size, c.size).transpose(2, 3, 1, 0)
    params[f"conv_{i}"] = conv
  return {"params": params, "batch_stats": batch_stats}


def write_weights(net: Network, variables: Mapping, path: str, *,
                  seen: int = 0) -> None:
  """Writes Flax variables (layout of :func:`read_weights`) as darknet weights.

  Format 0.2.0 (64-bit ``seen``). Written to a temporary file and renamed, so
  a reader never sees a half-written file.
  """
  path = os.fspath(path)
  params, stats = variables["params"], variables.get("batch_stats", {})
  chunks = [np.array([0, 2, 0], "<i4").tobytes(),
            np.array([seen], "<i8").tobytes()]
  for i, c in net.convs():
    conv = params[f"conv_{i}"]
    if c.batch_normalize:
      bn, st = params[f"bn_{i}"], stats[f"bn_{i}"]
      arrays = [bn["bias"], bn["scale"], st["mean"], st["var"]]
    else:
      arrays = [conv["bias"]]
    arrays.append(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1))
    chunks.extend(np.asarray(a, "<f4").tobytes() for a in arrays)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    for chunk in chunks:
      f.write(chunk)
  os.replace(tmp, path)
