"""oneDNN's C API through ctypes: the library, its CPU engine, the 3-D
convolution primitives (forward, backward-data, backward-weights) of the
model, and the 2-D forward-inference convolution with a fused bias and
activation (``Conv2dSpec``) of the perception networks.

This module knows oneDNN and numpy only, neither JAX nor XLA: it takes the
addresses of float32 buffers and runs primitives on them. The convolution as
a JAX op (``model.conv_impl='onednn'``) is ``onednn_conv``, which hands it
XLA's buffers through ``xla_ffi``. Kept apart so that the binding could serve
other primitives (pooling, matmul) or another caller, and because its
constants and signatures follow oneDNN's headers (``dnnl.h``), which change
on oneDNN's schedule, not XLA's. No compiled code of ours: installing needs
no compiler.

One CPU engine and stream per process (``library()``); the primitives of each
problem size are made once and cached (``_OneDnn.plan``).

Memory layout: oneDNN's logical dims are (N, C, D, H, W) for data and
(O, I, D, H, W) for weights; the format tags ``ndhwc`` and ``dhwio`` describe
exactly row-major NDHWC / DHWIO buffers (what XLA hands over), so activations
and their gradients are used in place, without reorders. The weights (and
their gradient) take the blocked layout that oneDNN's fastest kernel asks for
(``format_tag_any``): a reorder of the small ``27 C O`` tensor from / to
DHWIO around each call (oneDNN 3.2 and 3.13 pick 'brgconv' / 'brg_conv_*'
kernels for AVX-512 this way).

Threads: the library's own (OpenMP for ``onednn-cpu-gomp``: every core,
``OMP_NUM_THREADS`` to change; idle threads sleep, see ``_OneDnn``). Calls
are serialised with a lock.

Library: ``libdnnl.so.3`` from the installed distribution
``onednn-cpu-gomp`` (oneDNN 3.2, GNU OpenMP, CPU only, a 39 MB wheel, no
dependencies; needs the system's ``libgomp.so.1``), ``onednn-cpu-iomp``,
``onednn-cpu-tbb`` or ``onednn`` (oneDNN 3.13, a SYCL build: it pulls in about
2 GB of Intel runtimes and runs CPU work on the OpenCL CPU device, see
``_OneDnn``), in that order, or the file named by ``SSMTL_DNNL_LIB``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import os
import re
import threading
from typing import Callable, Optional

import numpy as np

from ssmtl_jax.base import errors

ENV_VAR = "SSMTL_DNNL_LIB"
# pip distributions that ship libdnnl.so.3, most preferred first.
DISTRIBUTIONS = ("onednn-cpu-gomp", "onednn-cpu-iomp", "onednn-cpu-tbb",
                 "onednn")

# --- C API constants ----------------------------------------------------------
# Values of the enums and macros of oneDNN 3.x's dnnl_types.h and
# dnnl_common_types.h, read off the headers of onednn-devel 2026.1.0 (oneDNN
# 3.13) and onednn-devel-cpu-gomp 2023.2.0 (oneDNN 3.2) by compiling a program
# that prints them: identical in both. Those the 2-D convolution added
# (_TAG_A, _TAG_NHWC, _FORWARD_INFERENCE, _ELTWISE_*, _ARG_BIAS) were read the
# same way off the oneDNN 3.7 and 3.12 headers that TensorFlow's and torch's
# wheels ship: identical too.
_SUCCESS = 0                  # dnnl_success
_STATUS = {1: "out_of_memory", 2: "invalid_arguments", 3: "unimplemented",
           4: "last_impl_reached", 5: "runtime_error", 6: "not_required"}
_ENGINE_CPU = 1               # dnnl_cpu
_STREAM_DEFAULT_FLAGS = 1     # dnnl_stream_default_flags
_F32 = 3                      # dnnl_f32
_TAG_ANY = 1                  # dnnl_format_tag_any
_TAG_NDHWC = 33               # dnnl_ndhwc (= dnnl_acdeb)
_TAG_DHWIO = 38               # dnnl_dhwio (= dnnl_cdeba)
_TAG_A = 2                    # dnnl_a (1-D: the bias)
_TAG_NHWC = 22                # dnnl_nhwc (= dnnl_acdb)
_FORWARD_TRAINING = 64        # dnnl_forward_training
_FORWARD_INFERENCE = 96       # dnnl_forward_inference
_ELTWISE_RELU = 0x20          # dnnl_eltwise_relu (alpha: negative slope)
_ELTWISE_CLIP = 46            # dnnl_eltwise_clip (alpha <= y <= beta)
_CONVOLUTION_DIRECT = 1       # dnnl_convolution_direct
_QUERY_IMPL_INFO_STR = 8      # dnnl_query_impl_info_str
_QUERY_WEIGHTS_MD = 131       # dnnl_query_weights_md
_QUERY_DIFF_WEIGHTS_MD = 132  # dnnl_query_diff_weights_md
_ARG_SRC = 1                  # DNNL_ARG_SRC (= DNNL_ARG_FROM)
_ARG_DST = 17                 # DNNL_ARG_DST (= DNNL_ARG_TO)
_ARG_WEIGHTS = 33             # DNNL_ARG_WEIGHTS
_ARG_BIAS = 41                # DNNL_ARG_BIAS
_ARG_DIFF_SRC = 129           # DNNL_ARG_DIFF_SRC
_ARG_DIFF_DST = 145           # DNNL_ARG_DIFF_DST
_ARG_DIFF_WEIGHTS = 161       # DNNL_ARG_DIFF_WEIGHTS
_ALLOCATE = -1                # DNNL_MEMORY_ALLOCATE: ((void *)-1)
_MAX_NDIMS = 12               # DNNL_MAX_NDIMS: dnnl_dims_t is int64_t[12]
_RUNTIMES = {1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool",
             512: "SYCL"}     # DNNL_RUNTIME_*

_Dims = ctypes.c_int64 * _MAX_NDIMS


class _Version(ctypes.Structure):
  _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int),
              ("patch", ctypes.c_int), ("hash", ctypes.c_char_p),
              ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class _ExecArg(ctypes.Structure):
  _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


# Signatures of the functions used (dnnl.h, dnnl_common.h). Every handle is a
# pointer: declaring them keeps ctypes from truncating one to a C int.
_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_I = ctypes.c_int
_SIGNATURES = {
    "dnnl_version": (ctypes.POINTER(_Version), []),
    "dnnl_engine_get_count": (ctypes.c_size_t, [_I]),
    "dnnl_engine_create": (_I, [_PP, _I, ctypes.c_size_t]),
    "dnnl_stream_create": (_I, [_PP, _P, ctypes.c_uint]),
    "dnnl_stream_wait": (_I, [_P]),
    "dnnl_memory_desc_create_with_tag": (_I, [_PP, _I, _Dims, _I, _I]),
    "dnnl_memory_desc_create_with_strides": (_I, [_PP, _I, _Dims, _I, _Dims]),
    "dnnl_memory_desc_destroy": (_I, [_P]),
    "dnnl_memory_desc_equal": (_I, [_P, _P]),
    "dnnl_memory_create": (_I, [_PP, _P, _P, _P]),
    "dnnl_memory_destroy": (_I, [_P]),
    # (pd*, engine, prop_kind, alg_kind, src, weights, bias, dst, strides,
    #  dilates, padding_l, padding_r, attr)
    "dnnl_convolution_forward_primitive_desc_create": (
        _I, [_PP, _P, _I, _I, _P, _P, _P, _P, _Dims, _Dims, _Dims, _Dims,
             _P]),
    # (pd*, engine, alg_kind, diff_src, weights, diff_dst, strides, dilates,
    #  padding_l, padding_r, hint_fwd_pd, attr)
    "dnnl_convolution_backward_data_primitive_desc_create": (
        _I, [_PP, _P, _I, _P, _P, _P, _Dims, _Dims, _Dims, _Dims, _P, _P]),
    # (pd*, engine, alg_kind, src, diff_weights, diff_bias, diff_dst, strides,
    #  dilates, padding_l, padding_r, hint_fwd_pd, attr)
    "dnnl_convolution_backward_weights_primitive_desc_create": (
        _I, [_PP, _P, _I, _P, _P, _P, _P, _Dims, _Dims, _Dims, _Dims, _P,
             _P]),
    # (pd*, src_md, src_engine, dst_md, dst_engine, attr)
    "dnnl_reorder_primitive_desc_create": (_I, [_PP, _P, _P, _P, _P, _P]),
    "dnnl_primitive_desc_query": (_I, [_P, _I, _I, _P]),
    "dnnl_primitive_desc_query_md": (_P, [_P, _I, _I]),
    "dnnl_primitive_create": (_I, [_PP, _P]),
    "dnnl_primitive_attr_create": (_I, [_PP]),
    "dnnl_primitive_attr_destroy": (_I, [_P]),
    "dnnl_primitive_attr_set_post_ops": (_I, [_P, _P]),
    "dnnl_post_ops_create": (_I, [_PP]),
    "dnnl_post_ops_destroy": (_I, [_P]),
    "dnnl_post_ops_append_eltwise": (_I, [_P, _I, ctypes.c_float,
                                          ctypes.c_float]),
    "dnnl_primitive_execute": (_I, [_P, _P, _I, ctypes.POINTER(_ExecArg)]),
}


class OneDnnUnavailableError(errors.UserError, RuntimeError):
  """libdnnl could not be found or loaded (model.conv_impl='onednn' without
  the [onednn] extra, or SSMTL_DNNL_LIB naming no library): a user error, one
  line and exit status 2 from every binary."""


# --- Loading ------------------------------------------------------------------


def find_library() -> str:
  """Path of libdnnl.so.3: $SSMTL_DNNL_LIB, else the first installed
  distribution of ``DISTRIBUTIONS`` that ships it."""
  path = os.environ.get(ENV_VAR)
  if path:
    return path
  for dist in DISTRIBUTIONS:
    try:
      files = importlib.metadata.distribution(dist).files or ()
    except importlib.metadata.PackageNotFoundError:
      continue
    for f in files:
      if re.fullmatch(r"libdnnl\.so\.3", f.name):
        located = os.path.realpath(f.locate())
        if os.path.exists(located):
          return located
  raise OneDnnUnavailableError(
      "oneDNN not found: conv_impl='onednn' needs `pip install "
      f"onednn-cpu-gomp` (or `onednn`), or {ENV_VAR}=/path/to/libdnnl.so.3")


def _cdll(path: str) -> ctypes.CDLL:
  """Loads ``path``; a missing dependency that sits in the same folder (the
  Intel runtimes of the ``onednn`` wheel land beside it in <venv>/lib, which
  is not on the loader's search path) is loaded first, recursively."""
  folder = os.path.dirname(path)
  for _ in range(64):
    try:
      return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
      m = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object", str(e))
      dep = m and os.path.join(folder, m.group(1))
      if not dep or dep == path or not os.path.exists(dep):
        raise
      _cdll(dep)
  raise OSError(f"{path}: too many missing dependencies")


def _check(status: int, what: str) -> None:
  if status != _SUCCESS:
    raise RuntimeError(f"oneDNN {what} failed: dnnl_"
                       f"{_STATUS.get(status, status)}")


def _dims(*values: int) -> _Dims:
  return _Dims(*values)


@dataclasses.dataclass
class _Primitive:
  """A primitive, its descriptor and oneDNN's name for the implementation
  it chose (e.g. 'brgconv:avx512_core')."""
  pd: ctypes.c_void_p
  prim: ctypes.c_void_p
  impl: str


@dataclasses.dataclass
class _ConvPlan:
  """The primitives for one (N, C, D, H, W, O) problem."""
  fwd: _Primitive
  bwd_data: _Primitive
  bwd_weights: _Primitive
  user_w: ctypes.c_void_p            # DHWIO memory desc
  fwd_w: ctypes.c_void_p             # weights md the forward wants (pd-owned)
  bwd_data_w: ctypes.c_void_p        # ... the backward-data wants
  bwd_w_dw: ctypes.c_void_p          # diff-weights md backward-weights writes
  reorder_fwd_w: Optional[_Primitive]      # DHWIO -> fwd_w (None: same)
  reorder_bwd_data_w: Optional[_Primitive]  # DHWIO -> bwd_data_w
  reorder_dw: Optional[_Primitive]         # bwd_w_dw -> DHWIO
  src: ctypes.c_void_p               # NDHWC memory descs
  dst: ctypes.c_void_p


# Activations a 2-D inference convolution can end in, fused into the
# convolution as a oneDNN eltwise post-op: name -> (algorithm, alpha, beta).
# 'leaky_relu' takes its negative slope as alpha (Conv2dSpec.slope).
ACTIVATIONS = {"none": None, "relu": (_ELTWISE_RELU, 0.0, 0.0),
               "leaky_relu": (_ELTWISE_RELU, None, 0.0),
               "relu6": (_ELTWISE_CLIP, 0.0, 6.0)}


@dataclasses.dataclass(frozen=True)
class Conv2dSpec:
  """One 2-D inference convolution: x [n, h, w, c] NHWC, kernel
  [kh, kw, c / groups, o] HWIO (Flax's layout, ``feature_group_count``
  grouping: output channel ``j`` reads input group ``j // (o / groups)``),
  bias [o], then ``activation`` (a key of ``ACTIVATIONS``; ``slope`` for
  'leaky_relu'). ``pads``: (top, bottom, left, right)."""
  n: int
  h: int
  w: int
  c: int
  o: int
  kh: int
  kw: int
  strides: tuple[int, int] = (1, 1)
  pads: tuple[int, int, int, int] = (0, 0, 0, 0)
  groups: int = 1
  activation: str = "none"
  slope: float = 0.0

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r}: expected one of "
                       f"{tuple(ACTIVATIONS)}")
    if self.c % self.groups or self.o % self.groups:
      raise ValueError(f"groups={self.groups} must divide c={self.c} and "
                       f"o={self.o}")

  @property
  def out_hw(self) -> tuple[int, int]:
    pt, pb, pl, pr = self.pads
    return ((self.h + pt + pb - self.kh) // self.strides[0] + 1,
            (self.w + pl + pr - self.kw) // self.strides[1] + 1)


@dataclasses.dataclass
class _Conv2dPlan:
  """The forward-inference primitive of one ``Conv2dSpec``."""
  fwd: _Primitive
  user_w: ctypes.c_void_p            # Flax HWIO, as strides
  reorder_w: Optional[_Primitive]    # HWIO -> the kernel's layout (None: same)
  fwd_w: ctypes.c_void_p             # weights md the forward wants
  src: ctypes.c_void_p               # NHWC memory descs
  dst: ctypes.c_void_p
  bias: ctypes.c_void_p


class _OneDnn:
  """The loaded library, one CPU engine and stream, and the plans by shape."""

  def __init__(self, path: str):
    # Idle OpenMP threads sleep instead of spinning: XLA's threads run the
    # rest of the step on the same cores between two convolutions, and with
    # spinning (libgomp's default) the step was ~1.5x slower on 2 cores. Read
    # by the OpenMP runtime when it loads; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
      lib = _cdll(path)
    except OSError as e:
      raise OneDnnUnavailableError(
          f"oneDNN library {path} could not be loaded ({e}); install "
          f"`onednn-cpu-gomp` or point {ENV_VAR} at libdnnl.so.3") from e
    self.lib, self.path = lib, path
    for name, (restype, argtypes) in _SIGNATURES.items():
      fn = getattr(lib, name)
      fn.restype, fn.argtypes = restype, argtypes
    v = lib.dnnl_version().contents
    self.version = f"{v.major}.{v.minor}.{v.patch}"
    self.runtime = _RUNTIMES.get(v.cpu_runtime, str(v.cpu_runtime))
    if v.major != 3:
      raise OneDnnUnavailableError(
          f"{path} is oneDNN {self.version}; this binding needs oneDNN 3.x")
    if self.runtime == "SYCL":
      # The `onednn` wheel's CPU engine is a SYCL device served by Intel's
      # OpenCL CPU runtime, which the OpenCL loader only finds when told.
      icd = os.path.join(os.path.dirname(path), "libintelocl.so")
      if os.path.exists(icd):
        os.environ.setdefault("OCL_ICD_FILENAMES", icd)
    if lib.dnnl_engine_get_count(_ENGINE_CPU) < 1:
      raise OneDnnUnavailableError(f"{path} (oneDNN {self.version}, "
                                   f"{self.runtime}) sees no CPU engine")
    self.engine = ctypes.c_void_p()
    _check(lib.dnnl_engine_create(ctypes.byref(self.engine), _ENGINE_CPU,
                                  ctypes.c_size_t(0)), "engine_create")
    self.stream = ctypes.c_void_p()
    _check(lib.dnnl_stream_create(ctypes.byref(self.stream), self.engine,
                                  _STREAM_DEFAULT_FLAGS), "stream_create")
    self.plans: dict[tuple[int, ...], _ConvPlan] = {}
    self.plans_2d: dict[Conv2dSpec, _Conv2dPlan] = {}
    self.lock = threading.Lock()

  # --- descriptors and primitives ---------------------------------------------

  def _md(self, dims: tuple[int, ...], tag: int) -> ctypes.c_void_p:
    md = ctypes.c_void_p()
    _check(self.lib.dnnl_memory_desc_create_with_tag(
        ctypes.byref(md), len(dims), _dims(*dims), _F32, tag),
           "memory_desc_create_with_tag")
    return md

  def _primitive(self, pd: ctypes.c_void_p) -> _Primitive:
    prim = ctypes.c_void_p()
    _check(self.lib.dnnl_primitive_create(ctypes.byref(prim), pd),
           "primitive_create")
    info = ctypes.c_char_p()
    self.lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0,
                                       ctypes.byref(info))
    return _Primitive(pd, prim, (info.value or b"?").decode())

  def _reorder(self, src_md, dst_md) -> Optional[_Primitive]:
    """A reorder primitive src_md -> dst_md, or None when they are equal."""
    if self.lib.dnnl_memory_desc_equal(src_md, dst_md):
      return None
    pd = ctypes.c_void_p()
    _check(self.lib.dnnl_reorder_primitive_desc_create(
        ctypes.byref(pd), src_md, self.engine, dst_md, self.engine, None),
           "reorder_primitive_desc_create")
    return self._primitive(pd)

  def plan(self, n: int, d: int, h: int, w: int, c: int, o: int) -> _ConvPlan:
    """The primitives of one problem size, made on first use (a few ms:
    oneDNN generates its kernels) and cached for the process."""
    key = (n, d, h, w, c, o)
    if key in self.plans:
      return self.plans[key]
    lib = self.lib
    src = self._md((n, c, d, h, w), _TAG_NDHWC)
    dst = self._md((n, o, d, h, w), _TAG_NDHWC)
    user_w = self._md((o, c, 3, 3, 3), _TAG_DHWIO)
    any_w = self._md((o, c, 3, 3, 3), _TAG_ANY)
    ones, zeros = _dims(1, 1, 1), _dims(0, 0, 0)

    pd = ctypes.c_void_p()
    _check(lib.dnnl_convolution_forward_primitive_desc_create(
        ctypes.byref(pd), self.engine, _FORWARD_TRAINING,
        _CONVOLUTION_DIRECT, src, any_w, None, dst, ones, zeros, ones, ones,
        None), "convolution_forward_primitive_desc_create")
    fwd = self._primitive(pd)
    pd = ctypes.c_void_p()
    _check(lib.dnnl_convolution_backward_data_primitive_desc_create(
        ctypes.byref(pd), self.engine, _CONVOLUTION_DIRECT, src, any_w, dst,
        ones, zeros, ones, ones, fwd.pd, None),
           "convolution_backward_data_primitive_desc_create")
    bwd_data = self._primitive(pd)
    pd = ctypes.c_void_p()
    _check(lib.dnnl_convolution_backward_weights_primitive_desc_create(
        ctypes.byref(pd), self.engine, _CONVOLUTION_DIRECT, src, any_w, None,
        dst, ones, zeros, ones, ones, fwd.pd, None),
           "convolution_backward_weights_primitive_desc_create")
    bwd_weights = self._primitive(pd)
    lib.dnnl_memory_desc_destroy(any_w)

    fwd_w = lib.dnnl_primitive_desc_query_md(fwd.pd, _QUERY_WEIGHTS_MD, 0)
    bwd_data_w = lib.dnnl_primitive_desc_query_md(bwd_data.pd,
                                                  _QUERY_WEIGHTS_MD, 0)
    dw = lib.dnnl_primitive_desc_query_md(bwd_weights.pd,
                                          _QUERY_DIFF_WEIGHTS_MD, 0)
    plan = _ConvPlan(
        fwd=fwd, bwd_data=bwd_data, bwd_weights=bwd_weights, user_w=user_w,
        fwd_w=fwd_w, bwd_data_w=bwd_data_w, bwd_w_dw=dw,
        reorder_fwd_w=self._reorder(user_w, fwd_w),
        reorder_bwd_data_w=self._reorder(user_w, bwd_data_w),
        reorder_dw=self._reorder(dw, user_w), src=src, dst=dst)
    self.plans[key] = plan
    return plan

  def plan_2d(self, spec: Conv2dSpec) -> _Conv2dPlan:
    """The forward-inference primitive of ``spec`` with its activation as a
    post-op, made on first use and cached for the process."""
    if spec in self.plans_2d:
      return self.plans_2d[spec]
    lib, g = self.lib, spec.groups
    oh, ow = spec.out_hw
    src = self._md((spec.n, spec.c, spec.h, spec.w), _TAG_NHWC)
    dst = self._md((spec.n, spec.o, oh, ow), _TAG_NHWC)
    bias = self._md((spec.o,), _TAG_A)
    # Flax's [kh, kw, c / g, o] buffer described in oneDNN's logical order,
    # (o, i, kh, kw) or, grouped, (g, o / g, i, kh, kw), by its strides.
    i, og = spec.c // g, spec.o // g
    hw_dims, hw_strides = (spec.kh, spec.kw), (spec.kw * i * spec.o, i * spec.o)
    if g == 1:
      dims, strides = (spec.o, i) + hw_dims, (1, spec.o) + hw_strides
    else:
      dims, strides = (g, og, i) + hw_dims, (og, 1, spec.o) + hw_strides
    user_w = ctypes.c_void_p()
    _check(lib.dnnl_memory_desc_create_with_strides(
        ctypes.byref(user_w), len(dims), _dims(*dims), _F32,
        _dims(*strides)), "memory_desc_create_with_strides")
    any_w = self._md(dims, _TAG_ANY)
    attr = ctypes.c_void_p()
    _check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)),
           "primitive_attr_create")
    post = ACTIVATIONS[spec.activation]
    if post is not None:
      alg, alpha, beta = post
      ops = ctypes.c_void_p()
      _check(lib.dnnl_post_ops_create(ctypes.byref(ops)), "post_ops_create")
      _check(lib.dnnl_post_ops_append_eltwise(
          ops, alg, spec.slope if alpha is None else alpha, beta),
             "post_ops_append_eltwise")
      _check(lib.dnnl_primitive_attr_set_post_ops(attr, ops),
             "primitive_attr_set_post_ops")
      lib.dnnl_post_ops_destroy(ops)
    pt, pb, pl, pr = spec.pads
    pd = ctypes.c_void_p()
    try:
      _check(lib.dnnl_convolution_forward_primitive_desc_create(
          ctypes.byref(pd), self.engine, _FORWARD_INFERENCE,
          _CONVOLUTION_DIRECT, src, any_w, bias, dst, _dims(*spec.strides),
          _dims(0, 0), _dims(pt, pl), _dims(pb, pr), attr),
             "convolution_forward_primitive_desc_create")
    finally:
      lib.dnnl_primitive_attr_destroy(attr)
      lib.dnnl_memory_desc_destroy(any_w)
    fwd = self._primitive(pd)
    fwd_w = lib.dnnl_primitive_desc_query_md(fwd.pd, _QUERY_WEIGHTS_MD, 0)
    plan = _Conv2dPlan(fwd=fwd, user_w=user_w,
                       reorder_w=self._reorder(user_w, fwd_w), fwd_w=fwd_w,
                       src=src, dst=dst, bias=bias)
    self.plans_2d[spec] = plan
    return plan

  # --- execution -------------------------------------------------------------

  def _memory(self, md, handle: int) -> ctypes.c_void_p:
    """A memory object over the buffer at address ``handle`` (no copy);
    ``_ALLOCATE``: one that owns a buffer of its own."""
    mem = ctypes.c_void_p()
    _check(self.lib.dnnl_memory_create(ctypes.byref(mem), md, self.engine,
                                       ctypes.c_void_p(handle)),
           "memory_create")
    return mem

  def _execute(self, prim: _Primitive, args: dict[int, ctypes.c_void_p]):
    arr = (_ExecArg * len(args))(*[_ExecArg(k, v) for k, v in args.items()])
    _check(self.lib.dnnl_primitive_execute(prim.prim, self.stream, len(args),
                                           arr), f"execute ({prim.impl})")

  def _reordered(self, reorder: Optional[_Primitive], md, mem,
                 owned: list) -> ctypes.c_void_p:
    """``mem`` (the user's weights) in the layout ``md`` a primitive wants:
    queues ``reorder`` into a new memory object (appended to ``owned``), or
    returns ``mem`` itself where the plan needs no reorder (None)."""
    if reorder is None:
      return mem
    out = self._memory(md, _ALLOCATE)
    owned.append(out)
    self._execute(reorder, {_ARG_SRC: mem, _ARG_DST: out})
    return out

  def _run(self, dims, steps: Callable[..., None]) -> None:
    """Runs ``steps(plan, owned)`` -- ``plan`` that of the 3-D ``dims`` or of
    a ``Conv2dSpec``; ``steps`` queues primitives and appends the memory
    objects it makes to ``owned`` -- under the lock, waits for the stream,
    frees those objects. One convolution at a time: each primitive
    already runs on every core, and the plans and the stream are shared."""
    owned: list = []
    with self.lock:
      try:
        steps(self.plan_2d(dims) if isinstance(dims, Conv2dSpec) else
              self.plan(*dims), owned)
        _check(self.lib.dnnl_stream_wait(self.stream), "stream_wait")
      finally:
        for mem in owned:
          self.lib.dnnl_memory_destroy(mem)

  def conv_forward(self, dims: tuple[int, ...], x: int, k: int,
                   y: int) -> None:
    """y = conv(x, k) for dims (N, D, H, W, C, O); x, k, y: addresses of
    float32 NDHWC / DHWIO / NDHWC buffers."""

    def steps(plan, owned):
      mx, mk, my = (self._memory(plan.src, x), self._memory(plan.user_w, k),
                    self._memory(plan.dst, y))
      owned.extend((mx, mk, my))
      mk = self._reordered(plan.reorder_fwd_w, plan.fwd_w, mk, owned)
      self._execute(plan.fwd, {_ARG_SRC: mx, _ARG_WEIGHTS: mk, _ARG_DST: my})

    self._run(dims, steps)

  def conv_backward(self, dims: tuple[int, ...], x: int, k: int, g: int,
                    dx: int, dk: int) -> None:
    """dx, dk = the gradients of sum(g * conv(x, k)); addresses as in
    ``conv_forward`` (g like y, dx like x, dk like k)."""

    def steps(plan, owned):
      mx, mk, mg, mdx, mdk = (
          self._memory(plan.src, x), self._memory(plan.user_w, k),
          self._memory(plan.dst, g), self._memory(plan.src, dx),
          self._memory(plan.user_w, dk))
      owned.extend((mx, mk, mg, mdx, mdk))
      mk = self._reordered(plan.reorder_bwd_data_w, plan.bwd_data_w, mk,
                           owned)
      self._execute(plan.bwd_data, {_ARG_DIFF_DST: mg, _ARG_WEIGHTS: mk,
                                    _ARG_DIFF_SRC: mdx})
      mdw = mdk
      if plan.reorder_dw is not None:  # the kernel's layout -> DHWIO
        mdw = self._memory(plan.bwd_w_dw, _ALLOCATE)
        owned.append(mdw)
      self._execute(plan.bwd_weights, {_ARG_SRC: mx, _ARG_DIFF_DST: mg,
                                       _ARG_DIFF_WEIGHTS: mdw})
      if plan.reorder_dw is not None:
        self._execute(plan.reorder_dw, {_ARG_SRC: mdw, _ARG_DST: mdk})

    self._run(dims, steps)

  def conv2d_forward(self, spec: Conv2dSpec, x: int, k: int, b: int,
                     y: int) -> None:
    """y = activation(conv(x, k) + b) for ``spec``; x, k, b, y: addresses of
    float32 NHWC / HWIO / [o] / NHWC buffers."""

    def steps(plan, owned):
      mx, mk, mb, my = (self._memory(plan.src, x),
                        self._memory(plan.user_w, k),
                        self._memory(plan.bias, b), self._memory(plan.dst, y))
      owned.extend((mx, mk, mb, my))
      mk = self._reordered(plan.reorder_w, plan.fwd_w, mk, owned)
      self._execute(plan.fwd, {_ARG_SRC: mx, _ARG_WEIGHTS: mk,
                               _ARG_BIAS: mb, _ARG_DST: my})

    self._run(spec, steps)

  # --- numpy front end (tests, benchmarks, the pure_callback path) ------------

  def forward_2d(self, spec: Conv2dSpec, x: np.ndarray, k: np.ndarray,
                 b: np.ndarray) -> np.ndarray:
    x, k, b = _f32(x), _f32(k), _f32(b)
    y = np.empty((spec.n,) + spec.out_hw + (spec.o,), np.float32)
    self.conv2d_forward(spec, x.ctypes.data, k.ctypes.data, b.ctypes.data,
                        y.ctypes.data)
    return y

  def forward(self, x: np.ndarray, k: np.ndarray) -> np.ndarray:
    x, k = _f32(x), _f32(k)
    y = np.empty(x.shape[:-1] + k.shape[-1:], np.float32)
    self.conv_forward(conv_dims(x.shape, k.shape), x.ctypes.data,
                      k.ctypes.data, y.ctypes.data)
    return y

  def backward(self, x: np.ndarray, k: np.ndarray,
               g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, k, g = _f32(x), _f32(k), _f32(g)
    dx, dk = np.empty_like(x), np.empty_like(k)
    self.conv_backward(conv_dims(x.shape, k.shape), x.ctypes.data,
                       k.ctypes.data, g.ctypes.data, dx.ctypes.data,
                       dk.ctypes.data)
    return dx, dk


def _f32(a) -> np.ndarray:
  return np.ascontiguousarray(a, np.float32)


def conv_dims(x_shape, k_shape) -> tuple[int, ...]:
  """(N, D, H, W, C, O), the ``dims`` of ``conv_forward`` / ``conv_backward``,
  from the shapes of x [N, D, H, W, C] and kernel [3, 3, 3, C, O]."""
  return tuple(int(v) for v in x_shape) + (int(k_shape[-1]),)


_LIB: Optional[_OneDnn] = None
_LIB_LOCK = threading.Lock()


def library() -> _OneDnn:
  """The process-wide binding (loaded on first use; raises
  ``OneDnnUnavailableError`` with an install hint when absent)."""
  global _LIB
  with _LIB_LOCK:
    if _LIB is None:
      _LIB = _OneDnn(find_library())
    return _LIB


def available() -> bool:
  """Whether ``library()`` loads."""
  try:
    library()
    return True
  except OneDnnUnavailableError:
    return False
