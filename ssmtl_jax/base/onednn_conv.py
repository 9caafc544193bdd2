"""oneDNN's convolutions (CPU) as JAX ops: the model's trainable 3x3x3 SAME
3-D convolution (``conv3d``) and the perception networks' 2-D inference
convolution with a fused bias and activation (``conv2d``, with
``fold_batch_norm``; used by ``ssmtl_jax/perception/convs.py``).

``conv3d(x, kernel)`` computes what ``network._conv3d_xla`` computes (x
``[B, T, H, W, C]`` NDHWC, kernel ``[3, 3, 3, C, O]`` DHWIO, stride 1,
padding 1 on each side of T, H and W, no bias) with oneDNN's convolution
primitives, and is differentiable: a ``jax.custom_vjp`` whose backward pass
runs oneDNN's backward-data and backward-weights primitives. It is
``model.conv_impl='onednn'`` (``network.Conv3x3x3``).

Design: no compiled code of ours, so installing needs no compiler. Two
foreign interfaces, each its own module, and this one joins them:

* ``onednn``: oneDNN through ctypes on its C API (``dnnl.h``), one CPU engine
  and stream per process, the primitives of each problem size made once and
  cached; the library's lookup, threads and memory layouts are described
  there.
* ``xla_ffi``: XLA's FFI C structs, so that the handler of an XLA custom call
  (``jax.ffi.ffi_call``) is a ctypes callback. The handler gets XLA's own
  buffers: oneDNN reads the inputs and writes the outputs in place, no copy
  either way; the cost per call is a Python call (microseconds) under the
  GIL. ``call='callback'`` uses ``jax.pure_callback`` instead (the portable
  route, kept for comparison): there XLA copies every input into a host
  array and every result back, ~0.3 ms per MB on the 2-core machine that
  measured it, which took 2-3x the time of the convolution itself for the
  narrow model's 16 -> 32 layer.
* The alternative, ``jax.ffi`` with a handler compiled from C++ against
  XLA's and oneDNN's headers, would save the microseconds but need g++ (and
  the headers) on every install.

XLA's threads wait while oneDNN runs: the custom call is one op of the
compiled program.

bfloat16 inputs are computed in float32 and the result cast back (the
gradients likewise).

Measured (``python -m benchmarks.onednn_step``, 2-core AMD EPYC VM, oneDNN
3.2 OpenMP): the narrow shallow train step at batch 64, crop 64 went from
5.0 s ('fast') to 2.26 s (2.2x; 3.1x at batch 256); the 16 -> 32 layer's
forward + backward from 785 ms to 98 ms (pure_callback: the forward alone
took 150 ms, the custom call 41 ms, oneDNN called from numpy 26 ms). Details
in that module's docstring.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Callable, Sequence, Union

from absl import logging
import jax
import jax.numpy as jnp

from ssmtl_jax.base import onednn
from ssmtl_jax.base import xla_ffi

# --- XLA FFI custom calls ---------------------------------------------------


def _ffi_forward(args, rets) -> None:
  (x, x_dims), (k, k_dims) = args
  (y, _), = rets
  onednn.library().conv_forward(onednn.conv_dims(x_dims, k_dims), x, k, y)


def _ffi_backward(args, rets) -> None:
  (x, x_dims), (k, k_dims), (g, _) = args
  (dx, _), (dk, _) = rets
  onednn.library().conv_backward(onednn.conv_dims(x_dims, k_dims), x, k, g,
                                 dx, dk)


# The 2-D inference convolution's settings travel as a small float32 operand
# (integers, exact in float32), read by the handler: the handler ABI of
# ``xla_ffi`` passes buffers only, not attributes. Order: that of the
# ``params`` array ``conv2d`` builds (strides, pads, groups, activation
# index, slope).
_NUM_PARAMS = 9
_ACTIVATIONS = tuple(onednn.ACTIVATIONS)


def _ffi_conv2d(args, rets) -> None:
  (x, x_dims), (k, k_dims), (b, _), (p, _) = args
  (y, _), = rets
  sh, sw, pt, pb, pl, pr, groups, act, slope = (
      ctypes.c_float * _NUM_PARAMS).from_address(p)
  spec = onednn.Conv2dSpec(
      *x_dims, o=k_dims[3], kh=k_dims[0], kw=k_dims[1],
      strides=(int(sh), int(sw)), pads=(int(pt), int(pb), int(pl), int(pr)),
      groups=int(groups), activation=_ACTIVATIONS[int(act)], slope=slope)
  onednn.library().conv2d_forward(spec, x, k, b, y)


_FFI_TARGETS = {"ssmtl_onednn_conv3d_fwd": _ffi_forward,
                "ssmtl_onednn_conv3d_bwd": _ffi_backward,
                "ssmtl_onednn_conv2d_inference": _ffi_conv2d}
_FFI_HANDLERS: dict[str, xla_ffi.Handler] = {}  # kept alive: XLA holds pointers
_FFI_LOCK = threading.Lock()


def _register_ffi_targets() -> None:
  """Registers the custom-call targets once per process (raises
  ``xla_ffi.FfiAbiError`` where XLA refuses them)."""
  with _FFI_LOCK:
    for name, body in _FFI_TARGETS.items():
      if name not in _FFI_HANDLERS:
        fn = xla_ffi.handler(body, "onednn_conv")
        xla_ffi.register(name, fn)
        _FFI_HANDLERS[name] = fn


def unusable_reason() -> str:
  """'' when the custom calls (``conv3d``, ``conv2d``) can run here
  (libdnnl loads and the installed jaxlib takes their handlers), else why
  not, in one line."""
  try:
    onednn.library()
    _register_ffi_targets()
  except (onednn.OneDnnUnavailableError, xla_ffi.FfiAbiError) as e:
    return str(e)
  return ""


@functools.lru_cache(maxsize=None)
def usable(fallback: str) -> bool:
  """Whether the custom calls can run here, for an 'auto' choice; where not,
  logs ``'{fallback}: {reason}'`` once (per ``fallback``: what the caller
  uses instead)."""
  reason = unusable_reason()
  if reason:
    logging.info("%s: %s", fallback, reason)
  return not reason


# --- JAX side -----------------------------------------------------------------

# How the compiled program reaches oneDNN: 'ffi' (the default; an XLA custom
# call whose buffers oneDNN reads and writes in place) or 'callback'
# (jax.pure_callback: the inputs and outputs are copied; kept for comparison).
CALLS = ("ffi", "callback")


def _invoke(call: str, target: str, host_fn: Callable, out_shapes, *args):
  if call == "ffi":
    _register_ffi_targets()
    return jax.ffi.ffi_call(target, out_shapes, vmap_method="sequential")(
        *args)
  return jax.pure_callback(host_fn, out_shapes, *args,
                           vmap_method="sequential")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3d_f32(x, kernel, call):
  return _invoke(
      call, "ssmtl_onednn_conv3d_fwd",
      lambda x, k: onednn.library().forward(x, k),
      jax.ShapeDtypeStruct(x.shape[:-1] + kernel.shape[-1:], jnp.float32),
      x, kernel)


def _conv3d_fwd(x, kernel, call):
  return _conv3d_f32(x, kernel, call), (x, kernel)


def _conv3d_bwd(call, res, g):
  x, kernel = res
  return tuple(_invoke(
      call, "ssmtl_onednn_conv3d_bwd",
      lambda x, k, g: onednn.library().backward(x, k, g),
      (jax.ShapeDtypeStruct(x.shape, jnp.float32),
       jax.ShapeDtypeStruct(kernel.shape, jnp.float32)),
      x, kernel, g.astype(jnp.float32)))


_conv3d_f32.defvjp(_conv3d_fwd, _conv3d_bwd)


def conv3d(x: jax.Array, kernel: jax.Array, *, call: str = "ffi") -> jax.Array:
  """3x3x3 SAME, stride-1, bias-free convolution on oneDNN (CPU).

  Args:
    x: [B, T, H, W, C] float32 or bfloat16 (bfloat16 is computed in float32).
    kernel: [3, 3, 3, C, O].
    call: 'ffi' (default) or 'callback', see ``CALLS``.
  Returns:
    [B, T, H, W, O] in the result dtype of (x, kernel): the same as
    ``lax.conv_general_dilated(x, kernel, (1, 1, 1), 'SAME',
    dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))`` up to float summation
    order, differentiable in both arguments.
  Raises:
    onednn.OneDnnUnavailableError: at trace time, when libdnnl cannot be
      loaded.
    xla_ffi.FfiAbiError: at trace time (call='ffi'), when the installed
      jaxlib refuses the custom call's handlers.
  """
  if (x.ndim != 5 or kernel.ndim != 5 or kernel.shape[:3] != (3, 3, 3) or
      kernel.shape[3] != x.shape[-1]):
    raise ValueError(f"conv3d: x {x.shape} must be [B, T, H, W, C] and "
                     f"kernel {kernel.shape} [3, 3, 3, C, O]")
  if call not in CALLS:
    raise ValueError(f"conv3d: call={call!r}, expected one of {CALLS}")
  onednn.library()
  dtype = jnp.result_type(x, kernel)
  y = _conv3d_f32(x.astype(jnp.float32), kernel.astype(jnp.float32), call)
  return y.astype(dtype)


# --- 2-D inference convolutions (the perception networks) ---------------------


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF / lax "SAME" padding of one spatial axis: (before, after), the extra
  pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, *,
           strides: Sequence[int] = (1, 1),
           padding: Union[str, Sequence[tuple[int, int]]] = "SAME",
           groups: int = 1, activation: str = "none",
           slope: float = 0.0) -> jax.Array:
  """activation(conv2d(x, kernel) + bias) as one oneDNN primitive (CPU,
  forward inference only: not differentiable).

  Args:
    x: [N, H, W, C] NHWC (computed in float32).
    kernel: [kh, kw, C / groups, O] HWIO, Flax's layout.
    bias: [O].
    strides: (sh, sw).
    padding: 'SAME' (TF's: the extra pixel after), 'VALID', or
      ((top, bottom), (left, right)).
    groups: ``feature_group_count`` (C for a depthwise convolution).
    activation: 'none', 'relu', 'relu6' or 'leaky_relu' (negative slope
      ``slope``), fused into the convolution as a oneDNN post-op.
  Returns:
    float32 [N, H', W', O]: what ``lax.conv_general_dilated(x, kernel,
    strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=groups) + bias`` and the activation give, up to
    float summation order.
  Raises:
    ValueError: shapes or settings that do not fit.
    onednn.OneDnnUnavailableError, xla_ffi.FfiAbiError: at trace time, as
      for ``conv3d``.
  """
  if x.ndim != 4 or kernel.ndim != 4 or bias.shape != kernel.shape[-1:]:
    raise ValueError(f"conv2d: x {x.shape} must be [N, H, W, C], kernel "
                     f"{kernel.shape} [kh, kw, C / groups, O], bias "
                     f"{bias.shape} [O]")
  if kernel.shape[2] * groups != x.shape[-1]:
    raise ValueError(f"conv2d: kernel {kernel.shape} with groups={groups} "
                     f"does not fit {x.shape[-1]} input channels")
  if activation not in _ACTIVATIONS:
    raise ValueError(f"conv2d: activation={activation!r}, expected one of "
                     f"{_ACTIVATIONS}")
  (kh, kw), (sh, sw) = kernel.shape[:2], tuple(strides)
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"conv2d: padding={padding!r}")
    pads = ((same_pads(x.shape[1], kh, sh), same_pads(x.shape[2], kw, sw))
            if padding == "SAME" else ((0, 0), (0, 0)))
  else:
    pads = tuple(tuple(int(v) for v in p) for p in padding)
  spec = onednn.Conv2dSpec(
      *x.shape, o=kernel.shape[3], kh=kh, kw=kw, strides=(sh, sw),
      pads=pads[0] + pads[1], groups=groups, activation=activation,
      slope=float(slope))  # checks the settings
  onednn.library()
  _register_ffi_targets()
  params = jnp.asarray(
      [sh, sw, *spec.pads, groups, _ACTIVATIONS.index(activation), slope],
      jnp.float32)
  out = jax.ShapeDtypeStruct((spec.n,) + spec.out_hw + (spec.o,), jnp.float32)
  return jax.ffi.ffi_call("ssmtl_onednn_conv2d_inference", out,
                          vmap_method="sequential")(
                              x.astype(jnp.float32),
                              kernel.astype(jnp.float32),
                              bias.astype(jnp.float32), params)


def fold_batch_norm(kernel: jax.Array, bias, scale, offset, mean, var,
                    epsilon: float) -> tuple[jax.Array, jax.Array]:
  """(kernel', bias') with conv(x, kernel') + bias' = batch_norm(conv(x,
  kernel) + bias) in inference mode (running statistics): the folding that
  lets a convolution and its batch norm run as one primitive. ``bias``
  None: a bias-free convolution; kernel [..., O], the rest [O]."""
  inv = scale * jax.lax.rsqrt(var + epsilon)
  b = -mean if bias is None else bias - mean
  return kernel * inv, b * inv + offset
