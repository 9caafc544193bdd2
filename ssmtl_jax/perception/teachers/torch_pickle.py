"""Reads PyTorch ``.pth`` state dicts into numpy arrays without importing torch.

Both on-disk formats that ``torch.save`` has written are understood:

* the zip format (torch >= 1.6, the default today): ``<prefix>/data.pkl`` plus
  one raw little/big-endian record per storage, ``<prefix>/data/<key>``;
* the legacy stream format (torch < 1.6, e.g. the ``efficientnet-lite0``
  weights): a magic-number pickle, a protocol-version pickle, a system-info
  pickle, the main pickle, a pickle listing the storage keys, then each
  storage as ``int64 numel`` followed by its raw bytes.

The main pickle is read with a restricted unpickler: only the handful of
globals a tensor state dict needs (``collections.OrderedDict``, the
``torch._utils._rebuild_*`` functions, ``torch.*Storage`` types and
``torch.<dtype>``) are resolved, each to a harmless stand-in defined here.
Anything else (``os.system``, arbitrary classes) raises
``pickle.UnpicklingError``, so loading an untrusted file cannot run code.

Tensors come back as C-contiguous numpy copies (views that shared a storage in
torch no longer share memory); ``bfloat16`` uses ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Mapping, Optional

import numpy as np

from ssmtl_jax.base import errors

try:  # Ships with jax; only needed for bfloat16 tensors.
  import ml_dtypes
  _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
  _BFLOAT16 = None

# torch.serialization constants of the legacy stream format.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# Element dtypes of torch's typed storage classes (``torch.FloatStorage``...).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    # Untyped storages count bytes; _rebuild_tensor_v3 names the real dtype.
    "UntypedStorage": np.dtype(np.uint8),
}

# ``torch.<name>`` dtype globals (pickled by _rebuild_tensor_v3) -> numpy.
_TORCH_DTYPES = {
    "float64": np.dtype(np.float64), "double": np.dtype(np.float64),
    "float32": np.dtype(np.float32), "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16), "half": np.dtype(np.float16),
    "bfloat16": _BFLOAT16,
    "int64": np.dtype(np.int64), "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32), "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16), "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64), "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64), "complex128": np.dtype(np.complex128),
}


class TorchPickleError(errors.DataError):
  """The file is not a readable torch state dict; the message names the file."""


class _StorageType:
  """Stand-in for a ``torch.*Storage`` class: just its element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]
    if self.dtype is None:
      raise pickle.UnpicklingError(f"{name} needs the ml_dtypes package")


class _TorchDtype:
  """Stand-in for a ``torch.<dtype>`` object."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _TORCH_DTYPES[name]
    if self.dtype is None:
      raise pickle.UnpicklingError(f"torch.{name} needs the ml_dtypes package")


class _Storage:
  """A flat storage: 1-D numpy array of its elements (or bytes if untyped)."""

  def __init__(self, data: np.ndarray):
    self.data = data


def _as_tensor(storage: _Storage, offset: int, size, stride,
               dtype: Optional[np.dtype] = None) -> np.ndarray:
  """Materialises ``storage[offset + sum(i_k * stride_k)]`` as a numpy array.

  Args:
    storage: the flat storage (elements of the storage dtype).
    offset: storage offset, in elements of ``dtype``.
    size: tensor shape.
    stride: tensor strides, in elements (may be non-contiguous or zero).
    dtype: reinterpret the storage bytes as this dtype (``_rebuild_tensor_v3``
      over an untyped storage); None keeps the storage dtype.
  Returns:
    A C-contiguous copy, shape ``size``.
  """
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}")
  flat = storage.data
  if dtype is not None and dtype != flat.dtype:
    flat = flat.view(np.uint8)
    usable = flat.size - flat.size % dtype.itemsize
    flat = flat[:usable].view(dtype)
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(offset)
  if len(size) != len(stride) or offset < 0 or any(
      s < 0 for s in size + stride):
    raise pickle.UnpicklingError(
        f"bad tensor geometry: offset {offset}, size {size}, stride {stride}")
  if 0 in size:
    return np.empty(size, flat.dtype)
  # as_strided trusts its arguments; bounds-check so a corrupt file cannot
  # read past the storage.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise pickle.UnpicklingError(
        f"tensor (offset {offset}, size {size}, stride {stride}) runs past "
        f"its storage of {flat.size} elements")
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size,
      strides=tuple(s * flat.itemsize for s in stride), writeable=False)
  # Copy: the storage may be a read-only buffer shared by several tensors.
  return np.array(view, order="C", copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  # torch._utils._rebuild_tensor(_v2): v2 adds requires_grad, backward_hooks
  # and metadata, none of which matter for inference weights.
  return _as_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, *unused):
  if not isinstance(dtype, _TorchDtype):
    raise pickle.UnpicklingError(f"_rebuild_tensor_v3 dtype {dtype!r}")
  return _as_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  # nn.Parameter wraps a tensor; _rebuild_parameter_with_state adds a state.
  return data


def _ordered_dict(*args):
  return collections.OrderedDict(*args)


_ALLOWED_FUNCTIONS: Mapping[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only the allow-listed globals; storages come from a callback."""

  def __init__(self, file: BinaryIO,
               load_storage: Callable[[tuple], _Storage]):
    super().__init__(file, encoding="utf-8")
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED_FUNCTIONS:
      return _ALLOWED_FUNCTIONS[(module, name)]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name in _TORCH_DTYPES:
      return _TorchDtype(name)
    raise pickle.UnpicklingError(
        f"global {module}.{name} is not allowed in a torch state dict")

  def persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and pid and _text(pid[0]) == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    return self._load_storage(pid)


def _text(value: Any) -> Any:
  return value.decode("ascii") if isinstance(value, bytes) else value


def _read_zip(path: str, f: BinaryIO) -> Any:
  with zipfile.ZipFile(f) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")
               and n.count("/") <= 1]
    if len(pickles) != 1:
      raise TorchPickleError(
          f"{path}: expected one <prefix>/data.pkl in the zip, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode("ascii").strip()
    order = "<" if byteorder == "little" else ">"
    cache: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
      # ('storage', storage_type, key, location, numel)
      _, storage_type, key, _, numel = pid
      key = _text(key)
      if key not in cache:
        if not isinstance(storage_type, _StorageType):
          raise pickle.UnpicklingError(f"storage type {storage_type!r}")
        dtype = storage_type.dtype.newbyteorder(order)
        raw = archive.read(f"{prefix}data/{key}")
        count = int(numel)
        if len(raw) < count * dtype.itemsize:
          raise pickle.UnpicklingError(
              f"storage {key}: {len(raw)} bytes for {count} x {dtype}")
        data = np.frombuffer(raw, dtype, count=count)
        cache[key] = _Storage(data.astype(dtype.newbyteorder("="), copy=False))
      return cache[key]

    with archive.open(pickles[0]) as pkl:
      return _Unpickler(io.BytesIO(pkl.read()), load_storage).load()


def _small_pickle(f: BinaryIO) -> Any:
  """The next header pickle of a legacy file."""
  # The header pickles hold only ints and a dict of ints and bools.
  return _Unpickler(f, _no_storage).load()


def _legacy_header(path: str, f: BinaryIO) -> str:
  """Reads the magic-number, protocol and system-info pickles of a legacy
  file; returns the byte order of its storages, "<" or ">"."""
  if _small_pickle(f) != _LEGACY_MAGIC:
    raise TorchPickleError(f"{path}: not a torch file (bad magic number)")
  if _small_pickle(f) != _LEGACY_PROTOCOL:
    raise TorchPickleError(f"{path}: unsupported legacy protocol version")
  sys_info = _small_pickle(f)
  return "<" if sys_info.get("little_endian", True) else ">"


class _LazyStorage(_Storage):
  """A storage the main pickle declares: only its key, no bytes yet."""

  def __init__(self, key: str):
    super().__init__(np.empty(0))
    self.key = key


class _Deferred:
  """A tensor rebuild call put off until its storage's bytes are read."""

  def __init__(self, fn, args):
    self.fn, self.args = fn, args


def _defer(fn):
  """``fn`` made to return a :class:`_Deferred` call instead of running."""
  return lambda *args: _Deferred(fn, args)


class _LegacyUnpickler(_Unpickler):
  """The main pickle of a legacy file: the rebuild functions defer until the
  bytes have been read (they return placeholders patched in afterwards)."""

  def find_class(self, module: str, name: str) -> Any:
    obj = super().find_class(module, name)
    if obj in (_rebuild_tensor, _rebuild_tensor_v3):
      return _defer(obj)
    if obj is _rebuild_parameter:
      return lambda data, *rest: data
    return obj


class _LegacyStorages:
  """The storages of one legacy file.

  Storages are only declared in the main pickle; their bytes come after it.
  Tensors are therefore built lazily: :meth:`declare` records declarations
  while the main pickle loads, :meth:`read` reads the bytes after it and
  :meth:`resolve` gives each placeholder its data.
  """

  def __init__(self, path: str):
    self.path = path
    self.declared: dict[str, tuple[np.dtype, int]] = {}
    self.storages: dict[str, _Storage] = {}
    self.views: dict[str, tuple[str, int, int]] = {}

  def declare(self, pid: tuple) -> _Storage:
    """The unpickler's storage callback: a placeholder for storage ``pid``."""
    # ('storage', storage_type, root_key, location, numel, view_metadata)
    _, storage_type, root_key, _, numel, view = pid
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage type {storage_type!r}")
    root_key = _text(root_key)
    self.declared.setdefault(root_key, (storage_type.dtype, int(numel)))
    if view is None:
      return _LazyStorage(root_key)
    view_key, view_offset, view_size = view
    self.views[_text(view_key)] = (root_key, int(view_offset), int(view_size))
    return _LazyStorage(_text(view_key))

  def read(self, f: BinaryIO, order: str) -> None:
    """Reads the storage-key pickle and then each storage's bytes."""
    keys = [_text(k) for k in _Unpickler(f, _no_storage).load()]
    for key in keys:
      if key not in self.declared:
        raise TorchPickleError(f"{self.path}: undeclared storage {key}")
      self.storages[key] = self._read_one(f, order, key)

  def _read_one(self, f: BinaryIO, order: str, key: str) -> _Storage:
    """One storage: its int64 element count, then its raw elements."""
    path = self.path
    dtype, numel = self.declared[key]
    header = f.read(8)
    if len(header) != 8:
      raise TorchPickleError(f"{path}: truncated before storage {key}")
    count = struct.unpack(f"{order}q", header)[0]
    if count != numel:
      raise TorchPickleError(
          f"{path}: storage {key} holds {count} elements, declared {numel}")
    raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
      raise TorchPickleError(f"{path}: truncated in storage {key}")
    data = np.frombuffer(raw, dtype.newbyteorder(order))
    return _Storage(data.astype(dtype, copy=False))

  def resolve(self, storage: _Storage) -> _Storage:
    """The storage (with its data) that placeholder ``storage`` stands for."""
    key = storage.key
    if key in self.storages:
      return self.storages[key]
    if key in self.views:
      root, offset, size = self.views[key]
      return _Storage(self.storages[root].data[offset:offset + size])
    raise TorchPickleError(f"{self.path}: storage {key} has no data")


def _finish(obj: Any, resolve: Callable[[_Storage], _Storage]) -> Any:
  """``obj`` with every deferred tensor in it built (dicts, lists and tuples
  are rebuilt; OrderedDicts stay OrderedDicts)."""
  if isinstance(obj, _Deferred):
    storage, *rest = obj.args
    return obj.fn(resolve(storage), *rest)
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _finish(v, resolve))
                                   for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _finish(v, resolve) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_finish(v, resolve) for v in obj)
  return obj


def _read_legacy(path: str, f: BinaryIO) -> Any:
  """Reads a legacy stream-format file (module doc) from ``f``."""
  order = _legacy_header(path, f)
  storages = _LegacyStorages(path)
  result = _LegacyUnpickler(f, storages.declare).load()
  storages.read(f, order)
  return _finish(result, storages.resolve)


def _no_storage(pid: tuple) -> _Storage:
  raise pickle.UnpicklingError(f"unexpected storage reference {pid!r}")


def load(path: str) -> Any:
  """Unpickles a ``torch.save`` file with tensors as numpy arrays.

  Args:
    path: a ``.pth``/``.pt`` file written by ``torch.save`` (zip or legacy).
  Returns:
    The saved object (typically an OrderedDict) with every tensor replaced by
    a numpy array of the same shape and dtype.
  Raises:
    TorchPickleError: not a torch file, an unsupported variant (the pre-0.4
      tar format), or a disallowed global inside (``pickle.UnpicklingError``
      is wrapped with the file name).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"torch weights file not found: {path}")
  try:
    with open(path, "rb") as f:
      if zipfile.is_zipfile(f):
        f.seek(0)
        return _read_zip(path, f)
      f.seek(0)
      head = f.read(2)
      f.seek(0)
      if head[:1] != b"\x80":
        raise TorchPickleError(
            f"{path}: neither a torch zip file nor a legacy torch pickle "
            "(the pre-0.4 tar format is not supported)")
      return _read_legacy(path, f)
  except (pickle.UnpicklingError, EOFError, KeyError, struct.error) as e:
    raise TorchPickleError(f"{path}: {e}") from e


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a flat ``{name: tensor}`` state dict as ``{name: np.ndarray}``.

  Raises:
    TorchPickleError: the file does not hold a flat mapping of tensors (e.g. a
      training checkpoint that nests the state dict under some key).
  """
  obj = load(path)
  if not isinstance(obj, Mapping):
    raise TorchPickleError(
        f"{path}: holds a {type(obj).__name__}, not a state dict")
  bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise TorchPickleError(
        f"{path}: not a flat state dict of tensors; non-tensor entries: "
        f"{bad[:5]}")
  return dict(obj)
