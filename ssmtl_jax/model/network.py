"""The SSMTL 3D CNN: a shared Conv3D backbone and four task heads.

Shapes: object sequences are ``[B, T, H, W, C]`` floats in [0, 1] (T = 7 for
the arrow-of-time, motion-irregularity and distillation views, T = 6 for the
middle-box view whose middle frame is removed).

No TensorFlow here: the model is pure JAX/Flax (Linen).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmtl_jax.base import errors
from ssmtl_jax.base.schema import TASKS

VARIANT_WIDTHS = {"narrow": (16, 32, 32), "wide": (32, 64, 64)}
DEPTH_CONVS = {"shallow": 1, "deep": 2}


def _norm(train: bool, axis_name: Optional[str], dtype,
          groups: int = 1) -> nn.Module:
  # Under jax.jit over a data mesh the batch axis is global, so statistics are
  # already synchronised; under pmap they are averaged over `axis_name`.
  if groups > 1:
    return GroupedBatchNorm(groups, use_running_average=not train,
                            axis_name=axis_name, dtype=dtype,
                            name="BatchNorm_0")
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, axis_name=axis_name, dtype=dtype)


class GroupedBatchNorm(nn.Module):
  """``nn.BatchNorm`` over a batch that interleaves ``groups`` views.

  The batch is ``[B * G, ...]`` with example b's view g at row ``b * G + g``
  (what :meth:`SSMTL.__call__` makes when it fuses the views, so that a
  batch-sharded input stays sharded the same way). Each view is normalised
  with its own batch statistics and the running averages are updated once
  per view, in group order: the same function, gradient and running averages
  as G separate ``nn.BatchNorm`` calls, one per view (up to float summation
  order). Same variables (``scale``, ``bias``; ``mean``, ``var``) and the
  same formulas as ``nn.BatchNorm``: statistics in float32,
  ``var = E[x^2] - E[x]^2`` clipped at 0, momentum 0.9, epsilon 1e-5.
  """
  groups: int
  use_running_average: bool
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    g = self.groups
    xg = x.reshape((x.shape[0] // g, g) + x.shape[1:])   # [B, G, ..., C]
    stat_shape = (1, g) + (1,) * (x.ndim - 2) + (c,)
    if self.use_running_average:
      mean = jnp.broadcast_to(ra_mean.value, (g, c))
      var = jnp.broadcast_to(ra_var.value, (g, c))
    else:
      axes = (0,) + tuple(range(2, xg.ndim - 1))
      x32 = xg.astype(jnp.float32)
      mean, mean2 = x32.mean(axes), jnp.square(x32).mean(axes)  # [G, C]
      if self.axis_name is not None and not self.is_initializing():
        mean, mean2 = jax.lax.pmean(jnp.stack([mean, mean2]), self.axis_name)
      var = jnp.maximum(0.0, mean2 - jnp.square(mean))
      if not self.is_initializing():
        new_mean, new_var = ra_mean.value, ra_var.value
        for i in range(g):
          new_mean = self.momentum * new_mean + (1 - self.momentum) * mean[i]
          new_var = self.momentum * new_var + (1 - self.momentum) * var[i]
        ra_mean.value, ra_var.value = new_mean, new_var
    y = xg - mean.reshape(stat_shape)
    y = y * (jax.lax.rsqrt(var + self.epsilon) * scale).reshape(stat_shape)
    y = y + bias
    return jnp.asarray(y, self.dtype).reshape(x.shape)


def _conv3d_xla(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _conv3d_as_2d(x, kernel):
  """3x3x3 SAME conv as one 2D conv over (batch x time) with 3x the output
  channels (one block per temporal tap) plus two shifted sums over time.

  XLA:CPU runs 2D convolutions several times faster than 3D ones; the result
  is the same convolution (up to float summation order).
  """
  b, t, h, w, c = x.shape
  o = kernel.shape[-1]
  k2 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, c, 3 * o)
  y = jax.lax.conv_general_dilated(
      x.reshape(b * t, h, w, c), k2, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")).reshape(b, t, h, w, 3, o)
  y = jnp.pad(y, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0), (0, 0)))
  return (y[:, 0:t, ..., 0, :] + y[:, 1:t + 1, ..., 1, :] +
          y[:, 2:t + 2, ..., 2, :])


def _conv3d_im2col(x, kernel):
  """3x3x3 SAME conv as patches [B, T, H, W, 27 C] times [27 C, O]: for the
  thin first layer (C = 1 or 3), where a convolution kernel runs at a few
  GFLOP/s on CPU but a matmul is fast."""
  b, t, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, dt:dt + t, dy:dy + h, dx:dx + w] for dt in range(3)
       for dy in range(3) for dx in range(3)], axis=-1)
  return jnp.einsum("bthwk,ko->bthwo", patches,
                    kernel.reshape(27 * c, kernel.shape[-1]))


CONV_IMPLS = ("auto", "xla", "fast", "onednn")


POOL_IMPLS = ("auto", "argmax", "reduce_window")


def resolve_conv_impl(impl: str, platform: Optional[str] = None) -> str:
  """The convolution ``Conv3x3x3`` runs for ``model.conv_impl``: 'auto' is
  'xla' on GPU/TPU; on the CPU 'onednn' where oneDNN is installed and usable
  and the process has one device, else 'fast' (said once in the log).

  platform: the backend the step is compiled for ('cpu', 'gpu', 'tpu');
  None = ``jax.default_backend()``. A plan compiled on the CPU for a TPU
  (``benchmarks.pod_plan``) passes 'tpu'.

  One device: the custom call has no sharding rule, so under a mesh of
  several CPU devices XLA's partitioner may gather its operands onto every
  device (correct, tested; its speed there is unmeasured); 'fast' stays the
  default there, ``conv_impl='onednn'`` still runs.
  """
  if impl != "auto":
    return impl
  if (platform or jax.default_backend()) != "cpu":
    return "xla"
  if jax.device_count() > 1:
    return "fast"
  from ssmtl_jax.base import onednn_conv  # pylint: disable=g-import-not-at-top
  return "onednn" if onednn_conv.usable(
      "model.conv_impl='auto' uses XLA's convolutions ('fast'), not "
      "oneDNN") else "fast"


def resolve_pool_impl(impl: str, platform: Optional[str] = None) -> str:
  """``model.pool_impl`` for ``platform`` (None = ``jax.default_backend()``):
  'auto' is 'argmax' on the CPU, 'reduce_window' elsewhere."""
  if impl == "auto":
    return ("argmax" if (platform or jax.default_backend()) == "cpu"
            else "reduce_window")
  return impl


def max_pool_hw(x, padding: str = "VALID", impl: str = "argmax"):
  """Max-pooling (1, 2, 2) with stride (1, 2, 2) of [..., H, W, C].

  The same function and gradient as ``nn.max_pool(x, (1, 2, 2),
  strides=(1, 2, 2), padding=padding)``: the gradient goes to the first
  maximum of each window (in row-major window order), as XLA's
  select-and-scatter routes it. Written as the maximum of the four strided
  window elements, which also records the index (0-3) of the first maximum,
  and a custom gradient that puts the output gradient at that index: one
  pass each way, elementwise, where XLA:CPU's select-and-scatter runs 3-7x
  slower. (A plain ``max`` over the window axes would split the gradient
  between tied elements, and whether elements tie can then depend on how
  XLA fuses the producer -- on some CPUs that made 1-device and 8-device
  training disagree. The index comes from the same chain of selects as the
  maximum, in the forward pass; the backward pass never compares values.)

  impl='reduce_window' is that ``nn.max_pool`` itself (XLA's reduce-window
  forward and select-and-scatter gradient; one pass, no stacked windows).
  """
  with jax.named_scope("max_pool_hw"):  # names the ops in profiles
    return _max_pool_hw(x, padding, impl)


def _max_pool_hw(x, padding: str, impl: str):
  if resolve_pool_impl(impl) == "reduce_window":
    lead = x.shape[:-3]
    y = nn.max_pool(x.reshape((-1,) + x.shape[-3:]), (2, 2), strides=(2, 2),
                    padding=padding)
    return y.reshape(lead + y.shape[1:])
  *lead, h, w, c = x.shape
  if padding == "SAME":
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, h % 2), (0, w % 2), (0, 0)],
                constant_values=-jnp.inf)
  else:
    x = x[..., :h - h % 2, :w - w % 2, :]
  return _first_max_pool(x)


def _window_elements(x):
  """The four elements of each 2x2 window of even-sized [..., H, W, C], in
  row-major window order."""
  return [x[..., dy::2, dx::2, :] for dy in (0, 1) for dx in (0, 1)]


def _first_max(x):
  """(maximum, index of its first occurrence) of each window, as one chain
  of selects: a later element wins only when strictly greater (or NaN, which
  propagates as in ``max``). The index is not found by comparing elements
  with a separately computed maximum: XLA may recompute the elements in
  another fusion, rounded differently, and then no element would equal it.
  """
  y, *rest = _window_elements(x)
  index = jnp.zeros(y.shape, jnp.uint8)
  for k, v in enumerate(rest, start=1):
    wins = (v > y) | jnp.isnan(v)
    y = jnp.where(wins, v, y)
    index = jnp.where(wins, jnp.uint8(k), index)
  return y, index


@jax.custom_vjp
def _first_max_pool(x):
  return _first_max(x)[0]


def _first_max_pool_bwd(index, g):
  parts = [jnp.where(index == k, g, jnp.zeros_like(g)) for k in range(4)]
  *lead, h2, w2, c = g.shape
  dx = jnp.stack(parts, axis=-2).reshape(*lead, h2, w2, 2, 2, c)
  n = len(lead)
  dx = jnp.transpose(dx, tuple(range(n)) + (n, n + 2, n + 1, n + 3, n + 4))
  return (dx.reshape(*lead, 2 * h2, 2 * w2, c),)


# The forward rule is _first_max itself: (output, residual = the index).
_first_max_pool.defvjp(_first_max, _first_max_pool_bwd)


class Conv3x3x3(nn.Module):
  """A 3x3x3 SAME, bias-free 3D convolution with a selectable implementation.

  The parameter (``kernel`` [3, 3, 3, C, O], LeCun normal like nn.Conv) is the
  same for every implementation, so checkpoints are interchangeable.
  impl: 'xla' = XLA's 3D convolution (best on GPU/TPU); 'fast' = im2col for
  thin inputs and conv2d + temporal shifts otherwise (2-3x faster than 'xla'
  on CPU); 'onednn' = oneDNN's 3D convolution through an XLA custom call
  (``onednn_conv``; faster still on CPU); 'auto' = :func:`resolve_conv_impl`.
  """
  features: int
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, 3, x.shape[-1], self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = resolve_conv_impl(self.impl)
    if impl == "xla":
      return _conv3d_xla(x, kernel)
    if impl == "onednn":
      from ssmtl_jax.base import onednn_conv  # pylint: disable=g-import-not-at-top
      return onednn_conv.conv3d(x, kernel)
    if x.shape[-1] <= 4:
      return _conv3d_im2col(x, kernel)
    return _conv3d_as_2d(x, kernel)


def upsample2x_nearest(x):
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2: the same as
  ``jax.image.resize(..., method='nearest')``, as a broadcast + reshape whose
  gradient is a sum (resize's is a scatter-add, slow on CPU)."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :],
                          (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class ConvBNReLU(nn.Module):
  """Conv (2D or 3D, from len(kernel)) + batch norm + ReLU."""
  features: int
  kernel: Sequence[int]
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool, groups: int = 1):
    if tuple(self.kernel) == (3, 3, 3):
      x = Conv3x3x3(self.features, self.conv_impl, self.dtype, name="conv")(x)
    else:
      x = nn.Conv(self.features, tuple(self.kernel), padding="SAME",
                  use_bias=False, dtype=self.dtype, name="conv")(x)
    x = _norm(train, self.bn_axis_name, self.dtype, groups)(x)
    return nn.relu(x)


class Backbone(nn.Module):
  """Shared 3D CNN: stages of Conv3D 3x3x3 + BN + ReLU, spatial max-pool (1,2,2).

  [B, T, H, W, C] -> [B, T, H/2^S, W/2^S, widths[-1]] for S = len(widths).
  ``groups`` > 1: the batch interleaves that many views, each batch-normalised
  on its own (:class:`GroupedBatchNorm`).
  """
  widths: Sequence[int]
  convs_per_stage: int = 1
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  pool_impl: str = "argmax"

  @nn.compact
  def __call__(self, x, train: bool, groups: int = 1):
    for width in self.widths:
      for _ in range(self.convs_per_stage):
        x = ConvBNReLU(width, (3, 3, 3), self.bn_axis_name, self.dtype,
                       self.conv_impl)(x, train, groups)
      x = max_pool_hw(x, impl=self.pool_impl)
    return x


class ClassHead(nn.Module):
  """Conv3D + BN + ReLU, spatial max-pool, global average pool, dense.

  Used by the arrow-of-time and motion-irregularity tasks (2 classes) and by
  knowledge distillation (teacher width outputs).
  """
  width: int
  num_outputs: int
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  pool_impl: str = "argmax"

  @nn.compact
  def __call__(self, x, train: bool):
    x = ConvBNReLU(self.width, (3, 3, 3), self.bn_axis_name, self.dtype,
                   self.conv_impl)(x, train)
    x = max_pool_hw(x, padding="SAME", impl=self.pool_impl)
    x = jnp.mean(x, axis=(1, 2, 3))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(x).astype(jnp.float32)


class MiddleBoxHead(nn.Module):
  """Decoder from the backbone features of the 2k-frame sequence to the middle crop.

  Time is folded into channels (the sequence length is fixed), then each stage
  upsamples x2 and applies Conv2D + BN + ReLU until the crop size is reached; a
  final Conv2D + sigmoid gives the crop in [0, 1]: [B, S, S, C].
  """
  widths: Sequence[int]
  out_channels: int
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, t, h, w, c = x.shape
    x = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, h, w, t * c)
    x = ConvBNReLU(self.widths[-1], (3, 3), self.bn_axis_name, self.dtype)(x, train)
    for width in reversed(self.widths):
      x = upsample2x_nearest(x)
      x = ConvBNReLU(width, (3, 3), self.bn_axis_name, self.dtype)(x, train)
    x = nn.Conv(self.out_channels, (3, 3), padding="SAME", dtype=self.dtype)(x)
    return nn.sigmoid(x.astype(jnp.float32))


class SSMTL(nn.Module):
  """Shared backbone + the heads of the enabled tasks.

  Attributes:
    widths: backbone stage widths (narrow 16/32/32, wide 32/64/64).
    convs_per_stage: 1 (shallow) or 2 (deep).
    tasks: names of the enabled tasks (subset of TASKS); only their heads exist.
    kd_outputs: width of the distillation head (detector classes + classifier logits).
    out_channels: crop channels for the middle-box decoder.
    head_width: width of the head convolutions (0 = widths[-1]).
    conv_impl: see :class:`Conv3x3x3`.
    pool_impl: max-pooling, 'argmax' | 'reduce_window' | 'auto' (see
      :func:`max_pool_hw`).
    fuse_views: training runs the 7-frame views (aot, mi, kd) through the
      backbone as one interleaved batch (:class:`GroupedBatchNorm`) instead of
      one call each; the same maths.
  """
  widths: Sequence[int]
  convs_per_stage: int
  tasks: Sequence[str]
  kd_outputs: int
  out_channels: int
  head_width: int = 0
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  pool_impl: str = "auto"
  fuse_views: bool = False

  def setup(self):
    norm_kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    conv_kw = dict(norm_kw, conv_impl=self.conv_impl,
                   pool_impl=resolve_pool_impl(self.pool_impl))
    hw = self.head_width or self.widths[-1]
    self.backbone = Backbone(self.widths, self.convs_per_stage, **conv_kw)
    heads = {}
    if "aot" in self.tasks:
      heads["aot"] = ClassHead(hw, 2, **conv_kw)
    if "mi" in self.tasks:
      heads["mi"] = ClassHead(hw, 2, **conv_kw)
    if "mbp" in self.tasks:
      heads["mbp"] = MiddleBoxHead(self.widths, self.out_channels, **norm_kw)
    if "kd" in self.tasks:
      heads["kd"] = ClassHead(hw, self.kd_outputs, **conv_kw)
    self.heads = heads

  def features(self, x, train: bool, groups: int = 1):
    return self.backbone(x.astype(self.dtype), train, groups)

  def _fused_features(self, views, group, train: bool):
    """One backbone call on the views of ``group`` interleaved along the
    batch (example b's view i at row b * G + i: a batch-sharded input stays
    sharded the same way, no data moves between devices)."""
    x = jnp.stack([views[t] for t in group], axis=1)       # [B, G, T, ...]
    f = self.features(x.reshape((-1,) + x.shape[2:]), train, len(group))
    f = f.reshape((x.shape[0], len(group)) + f.shape[1:])
    return {t: f[:, i] for i, t in enumerate(group)}

  def __call__(self, views: Mapping[str, jax.Array], train: bool):
    """Runs each enabled task's head on its own view.

    The backbone sees the 7-frame views first (in the order of ``views``),
    then the middle-removed one: that order fixes the order of the running
    batch-norm updates, and is the same with and without ``fuse_views``.

    Args:
      views: {task: [B, T, H, W, C] float} for a subset of the enabled tasks.
      train: batch statistics (True) or running averages (False).
    Returns:
      {task: output}: logits [B, 2] for aot/mi, crop [B, H, W, C] for mbp,
      [B, kd_outputs] for kd.
    """
    order = sorted(views, key=lambda t: t == "mbp")
    feats = {}
    if self.fuse_views:
      for group in ([t for t in order if t != "mbp"],
                    [t for t in order if t == "mbp"]):
        if len(group) > 1:
          feats.update(self._fused_features(views, group, train))
        elif group:
          feats[group[0]] = self.features(views[group[0]], train)
    else:
      for task in order:
        feats[task] = self.features(views[task], train)
    return {task: self.heads[task](feats[task], train) for task in views}

  def score_heads(self, consecutive, middle_removed, train: bool = False):
    """Inference: the consecutive sequence goes through the backbone once and
    feeds the aot, mi and kd heads; the middle-removed one feeds mbp."""
    out = {}
    if any(t in self.tasks for t in ("aot", "mi", "kd")):
      feats = self.features(consecutive, train)
      for task in ("aot", "mi", "kd"):
        if task in self.tasks:
          out[task] = self.heads[task](feats, train)
    if "mbp" in self.tasks:
      out["mbp"] = self.heads["mbp"](self.features(middle_removed, train), train)
    return out


def enabled_tasks(config) -> tuple[str, ...]:
  tasks = tuple(t for t in TASKS if float(config.tasks[t].weight) > 0)
  if not tasks:
    raise errors.ConfigError("config.tasks: every task weight is 0; enable at least one "
                     "of tasks.{aot,mi,mbp,kd}.weight")
  return tasks


def init_views(tasks: Sequence[str], *, seq_half: int, crop_size: int,
               channels: int) -> dict[str, jax.Array]:
  """Zero views of one example for ``model.init``: {task: float32 [1, T, S,
  S, C]} with T = 2*seq_half+1 (2*seq_half for mbp, its middle removed)."""
  t = 2 * seq_half + 1
  shape = (1, t, crop_size, crop_size, channels)
  views = {task: jnp.zeros(shape, jnp.float32) for task in tasks}
  if "mbp" in views:
    views["mbp"] = jnp.zeros((1, t - 1) + shape[2:], jnp.float32)
  return views


def backbone_widths(config) -> tuple[int, ...]:
  if config.model.widths:
    return tuple(int(w) for w in config.model.widths)
  if config.model.variant not in VARIANT_WIDTHS:
    raise errors.ConfigError(f"config.model.variant={config.model.variant!r}: expected "
                     f"one of {sorted(VARIANT_WIDTHS)}")
  return VARIANT_WIDTHS[config.model.variant]


def create_model(config, *, kd_outputs: int, channels: int,
                 bn_axis_name: Optional[str] = None,
                 platform: Optional[str] = None) -> SSMTL:
  """Builds the model described by config.model / config.tasks.

  platform: where the model will be compiled ('cpu', 'gpu', 'tpu'): the
  'auto' convolution and pooling are resolved for it here. None = resolve at
  trace time for ``jax.default_backend()`` (what a process runs on).
  """
  if config.model.depth not in DEPTH_CONVS:
    raise errors.ConfigError(f"config.model.depth={config.model.depth!r}: expected one "
                     f"of {sorted(DEPTH_CONVS)}")
  if config.model.conv_impl not in CONV_IMPLS:
    raise errors.ConfigError(f"config.model.conv_impl={config.model.conv_impl!r}:"
                             f" expected one of {CONV_IMPLS}")
  if config.model.pool_impl not in POOL_IMPLS:
    raise errors.ConfigError(f"config.model.pool_impl={config.model.pool_impl!r}:"
                             f" expected one of {POOL_IMPLS}")
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if config.model.dtype not in dtypes:
    raise errors.ConfigError(f"config.model.dtype={config.model.dtype!r}: expected one "
                     f"of {sorted(dtypes)}")
  return SSMTL(widths=backbone_widths(config),
               convs_per_stage=DEPTH_CONVS[config.model.depth],
               tasks=enabled_tasks(config), kd_outputs=kd_outputs,
               out_channels=channels, head_width=int(config.model.head_width),
               bn_axis_name=bn_axis_name, dtype=dtypes[config.model.dtype],
               conv_impl=(resolve_conv_impl(config.model.conv_impl, platform)
                          if platform else config.model.conv_impl),
               pool_impl=(resolve_pool_impl(config.model.pool_impl, platform)
                          if platform else config.model.pool_impl),
               fuse_views=bool(config.model.fuse_views))
