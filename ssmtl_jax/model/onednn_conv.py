"""The 3x3x3 SAME convolution on oneDNN (CPU), callable from JAX.

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

import functools
import threading
from typing import Callable

import jax
import jax.numpy as jnp

from ssmtl_jax.model import onednn
from ssmtl_jax.model import xla_ffi

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


_FFI_TARGETS = {"ssmtl_onednn_conv3d_fwd": _ffi_forward,
                "ssmtl_onednn_conv3d_bwd": _ffi_backward}
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
  """'' when ``conv3d`` can run here (libdnnl loads and the installed
  jaxlib takes the custom call's handlers), else why not, in one line."""
  try:
    onednn.library()
    _register_ffi_targets()
  except (onednn.OneDnnUnavailableError, xla_ffi.FfiAbiError) as e:
    return str(e)
  return ""


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
