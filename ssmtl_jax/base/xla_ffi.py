"""XLA's FFI C ABI through ctypes: the structs a custom-call handler reads and
writes, a handler made from a Python function, and its registration.

XLA calls a custom call's handler through a plain C ABI (the XLA FFI C API,
``xla/ffi/api/c_api.h`` in jaxlib's ``include/``), so a handler need not be
compiled C++: a ctypes callback will do. XLA calls it with a call frame: once
with a metadata extension (the handler reports the API version it speaks),
then per execution stage; only EXECUTE does work. Arguments and results are
XLA's own buffers, so the handler reads the inputs and writes the outputs in
place, no copy in either direction; the cost per call is a Python call
(microseconds) under the GIL.

This module knows XLA and nothing of what a handler computes (``onednn_conv``
is the one user: oneDNN's convolution). It is separate because the structs
below are XLA's ABI, hand-copied from c_api.h as far as a handler reads or
writes them: they are tied to the jaxlib versions setup.cfg allows (FFI API
0.x; jaxlib 0.10.2 speaks 0.3, 0.12.0.1 speaks 0.5, both accept handlers
from 0.1 up), while the
oneDNN binding follows oneDNN's headers. XLA changes them only by appending
fields within a major version, and checks at registration the version a
handler reports (``API_VERSION``): a jaxlib that speaks another major version
refuses the handlers, raised here as ``FfiAbiError`` instead of a crash.
``C_STRUCTS`` and ``C_ENUMS`` list what was copied by C name, and
tests/test_onednn_conv.py compares them with the installed jaxlib's header.
"""

from __future__ import annotations

import ctypes
from typing import Callable, Union

import jax

from ssmtl_jax.base import errors

# The FFI API version the handlers speak, reported to XLA in the metadata
# stage: they use nothing newer than 0.1.
API_VERSION = (0, 1)

_EXTENSION_METADATA = 1   # XLA_FFI_Extension_Metadata
_STAGE_EXECUTE = 3        # XLA_FFI_ExecutionStage_EXECUTE
_DATA_TYPE_F32 = 11       # XLA_FFI_DataType_F32
_ERROR_INTERNAL = 13      # XLA_FFI_Error_Code_INTERNAL


class FfiAbiError(errors.UserError, RuntimeError):
  """XLA refused a handler of ours: the installed jaxlib speaks an XLA FFI API
  version that these structs do not (a jax / jaxlib outside the range that
  setup.cfg allows). One line and exit status 2 from every binary."""


# --- The structs (field names as in c_api.h) ----------------------------------


class ExtensionBase(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
              ("next", ctypes.c_void_p)]


class ApiVersion(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p),
              ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class Metadata(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("api_version", ApiVersion), ("traits", ctypes.c_uint32),
              ("state_type_id", ctypes.c_int64)]


class MetadataExtension(ctypes.Structure):
  _fields_ = [("extension_base", ExtensionBase),
              ("metadata", ctypes.POINTER(Metadata))]


class Args(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
              ("types", ctypes.c_void_p),
              ("args", ctypes.POINTER(ctypes.c_void_p))]


class Rets(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
              ("types", ctypes.c_void_p),
              ("rets", ctypes.POINTER(ctypes.c_void_p))]


class Attrs(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
              ("types", ctypes.c_void_p), ("names", ctypes.c_void_p),
              ("attrs", ctypes.c_void_p)]


class CallFrame(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.POINTER(ExtensionBase)),
              ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
              ("stage", ctypes.c_int), ("args", Args), ("rets", Rets),
              ("attrs", Attrs), ("future", ctypes.c_void_p)]


class Buffer(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p), ("dtype", ctypes.c_int),
              ("data", ctypes.c_void_p), ("rank", ctypes.c_int64),
              ("dims", ctypes.POINTER(ctypes.c_int64))]


class ErrorCreateArgs(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p),
              ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


ErrorCreate = ctypes.CFUNCTYPE(ctypes.c_void_p,
                               ctypes.POINTER(ErrorCreateArgs))


class ApiHead(ctypes.Structure):  # XLA_FFI_Api up to XLA_FFI_Error_Create
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.c_void_p),
              ("api_version", ApiVersion),
              ("internal_api", ctypes.c_void_p),
              ("XLA_FFI_Error_Create", ErrorCreate)]


Handler = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(CallFrame))

# What was copied from c_api.h, by C name (a struct may be a prefix of C's).
C_STRUCTS = {
    "XLA_FFI_Extension_Base": ExtensionBase,
    "XLA_FFI_Api_Version": ApiVersion,
    "XLA_FFI_Metadata": Metadata,
    "XLA_FFI_Metadata_Extension": MetadataExtension,
    "XLA_FFI_Args": Args,
    "XLA_FFI_Rets": Rets,
    "XLA_FFI_Attrs": Attrs,
    "XLA_FFI_CallFrame": CallFrame,
    "XLA_FFI_Buffer": Buffer,
    "XLA_FFI_Error_Create_Args": ErrorCreateArgs,
    "XLA_FFI_Api": ApiHead,
}
# Other names a copied struct has in some allowed jaxlib's c_api.h, with the
# same fields: jaxlib 0.12 (FFI API 0.5) renamed the extension header.
C_STRUCT_ALIASES = {"XLA_FFI_Extension_Base": ("XLA_FFI_InternalExtension",)}
C_ENUMS = {
    "XLA_FFI_Extension_Metadata": _EXTENSION_METADATA,
    "XLA_FFI_ExecutionStage_EXECUTE": _STAGE_EXECUTE,
    "XLA_FFI_DataType_F32": _DATA_TYPE_F32,
    "XLA_FFI_Error_Code_INTERNAL": _ERROR_INTERNAL,
}

# (data address, dims) of one buffer.
BufferRef = tuple[int, tuple[int, ...]]
Body = Callable[[list[BufferRef], list[BufferRef]], None]

# --- Reading a call frame, making errors --------------------------------------


def buffers(bufs: Union[Args, Rets]) -> list[BufferRef]:
  """[(data address, dims)] of an argument or result list; F32 only."""
  items = bufs.args if isinstance(bufs, Args) else bufs.rets
  out = []
  for i in range(bufs.size):
    b = ctypes.cast(items[i], ctypes.POINTER(Buffer)).contents
    if b.dtype != _DATA_TYPE_F32:
      raise TypeError(f"buffer {i} has XLA dtype {b.dtype}, not F32")
    out.append((b.data, tuple(b.dims[j] for j in range(b.rank))))
  return out


def error(frame: CallFrame, message: str) -> int:
  """A new XLA_FFI_Error (code INTERNAL) with ``message``, made by XLA's API
  of ``frame``: what a handler returns to fail the call."""
  api = ctypes.cast(frame.api, ctypes.POINTER(ApiHead)).contents
  args = ErrorCreateArgs(ctypes.sizeof(ErrorCreateArgs), None,
                         message.encode(), _ERROR_INTERNAL)
  return api.XLA_FFI_Error_Create(ctypes.byref(args))


def handler(body: Body, prefix: str) -> Handler:
  """An XLA FFI handler that calls ``body(args, rets)`` (``buffers`` of the
  call frame) at the EXECUTE stage. An exception becomes an XLA error,
  ``'{prefix}: {type}: {message}'``. Keep the result alive as long as XLA may
  call it."""

  def call(frame_p):
    frame = frame_p.contents
    ext = frame.extension_start
    if ext and ext.contents.type == _EXTENSION_METADATA:
      meta = ctypes.cast(ext, ctypes.POINTER(
          MetadataExtension)).contents.metadata.contents
      meta.api_version.major_version = API_VERSION[0]
      meta.api_version.minor_version = API_VERSION[1]
      meta.traits = 0
      return None
    if frame.stage != _STAGE_EXECUTE:
      return None
    try:
      body(buffers(frame.args), buffers(frame.rets))
      return None
    except Exception as e:  # pylint: disable=broad-except
      return error(frame, f"{prefix}: {type(e).__name__}: {e}")

  return Handler(call)


# --- Registration -------------------------------------------------------------


def register(name: str, fn: Handler, platform: str = "cpu") -> None:
  """Registers ``fn`` as the FFI target ``name`` (for ``jax.ffi.ffi_call``).

  XLA asks the handler for its API version here and refuses one it does not
  support.

  Raises:
    FfiAbiError: XLA refused the handler.
  """
  # With the backend up, XLA registers (and checks) at once; otherwise it
  # would do so when the backend starts, and a refusal would fail that.
  jax.devices(platform)
  try:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(fn),
                                platform=platform)
  except jax.errors.JaxRuntimeError as e:
    reason = " ".join(str(e).split()).rstrip(".")
    raise FfiAbiError(
        f"XLA refused the FFI handler {name!r} of ssmtl_jax/base/xla_ffi.py "
        f"(XLA FFI API {API_VERSION[0]}.{API_VERSION[1]}) under jax "
        f"{jax.__version__}: {reason}; install a jax / jaxlib that setup.cfg "
        "allows") from e
