"""TFRecord files of tf.train.Example protos in TFDS's encoding, without TensorFlow.

Everything the record format needs (docs/DESIGN.md §4.3-§4.4), in plain Python,
numpy, protobuf and google-crc32c, byte-identical to what TFDS and
``tf.io.TFRecordWriter`` write (tests/test_records.py checks it against them):

* ``Feature``: one TFDS feature (``Text``, ``Scalar``, ``Tensor`` with encoding
  ``none`` or ``zlib``) and its encoding into / decoding from a
  ``tf.train.Feature``, as in tfds' ``example_serializer`` and
  ``Tensor.encode_example`` / ``decode_example_np``;
* ``encode_example`` / ``decode_example``: one example <-> serialized
  ``tf.train.Example`` (deterministic serialization: map keys sorted);
* TFRecord framing: ``write_tfrecord`` (atomic), ``iter_tfrecord`` (sequential)
  and ``TFRecordFile`` (indexed random access), crcs verified on every read;
* ``features_json`` / ``dataset_info_json``: the TFDS metadata files, so that
  ``tfds.builder_from_directory`` keeps reading the directory.

The Example messages come from a private descriptor pool (same package, names
and field numbers as tensorflow/core/example/{example,feature}.proto), so this
module coexists with TensorFlow's own copy when TF is installed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import threading
import zlib
import uuid
from typing import Any, Iterator, Mapping, Sequence

from etils import epath
import google_crc32c
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
import numpy as np

from ssmtl_jax.base import errors


class RecordError(errors.DataError):
  """A TFRecord file or Example that is corrupt or does not match its schema."""


# -- tf.train.Example without TensorFlow ------------------------------------


def _example_classes():
  """Builds tensorflow.Example & co. (proto3, packed repeated numbers)."""
  f = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(
      name="ssmtl_jax/tf_example.proto", package="tensorflow", syntax="proto3")

  def message(name, *fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name, oneof in fields:
      field = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        field.type_name = type_name
      if oneof is not None:
        field.oneof_index = oneof
      if ftype in (f.TYPE_FLOAT, f.TYPE_INT64) and label == f.LABEL_REPEATED:
        field.options.packed = True
    return m

  rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
  message("BytesList", ("value", 1, f.TYPE_BYTES, rep, None, None))
  message("FloatList", ("value", 1, f.TYPE_FLOAT, rep, None, None))
  message("Int64List", ("value", 1, f.TYPE_INT64, rep, None, None))
  feature = message(
      "Feature",
      ("bytes_list", 1, f.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
      ("float_list", 2, f.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
      ("int64_list", 3, f.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0))
  feature.oneof_decl.add(name="kind")
  features = message("Features", ("feature", 1, f.TYPE_MESSAGE, rep,
                                  ".tensorflow.Features.FeatureEntry", None))
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=opt)
  entry.field.add(name="value", number=2, type=f.TYPE_MESSAGE, label=opt,
                  type_name=".tensorflow.Feature")
  message("Example", ("features", 1, f.TYPE_MESSAGE, opt,
                      ".tensorflow.Features", None))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f"tensorflow.{name}"))
          for name in ("Example", "Feature")}


_CLASSES = _example_classes()
Example = _CLASSES["Example"]
_Feature = _CLASSES["Feature"]


# -- TFDS features -----------------------------------------------------------

_TFDS_CLASS = {
    "text": "tensorflow_datasets.core.features.text_feature.Text",
    "scalar": "tensorflow_datasets.core.features.scalar.Scalar",
    "tensor": "tensorflow_datasets.core.features.tensor_feature.Tensor",
}
_DICT_CLASS = "tensorflow_datasets.core.features.features_dict.FeaturesDict"


@dataclasses.dataclass(frozen=True)
class Feature:
  """One TFDS feature: ``kind`` text | scalar | tensor; encoding none | zlib.

  Text decodes to bytes (as tfds does); numbers to numpy of ``dtype``/``shape``.
  """
  kind: str
  dtype: str = "string"
  shape: tuple[int, ...] = ()
  encoding: str = "none"

  def __post_init__(self):
    if self.kind not in _TFDS_CLASS or self.encoding not in ("none", "zlib"):
      raise ValueError(f"unsupported feature {self}")
    if (self.kind == "text") != (self.dtype == "string"):
      raise ValueError(f"unsupported feature {self}")
    if self.encoding != "none" and self.kind != "tensor":
      raise ValueError(f"only tensors can be encoded: {self}")

  @property
  def np_dtype(self) -> np.dtype:
    return np.dtype(self.dtype)

  def encode(self, value) -> Any:
    """value -> a tf.train.Feature message (tfds' _item_to_tf_feature)."""
    if self.kind == "text":
      if isinstance(value, str):
        value = value.encode("utf-8")
      if not isinstance(value, (bytes, bytearray)):
        raise RecordError(f"text feature needs str or bytes, got {value!r}")
      return _Feature(bytes_list={"value": [bytes(value)]})
    dtype = self.np_dtype
    # As tfds' Tensor.encode_example: arrays must have the dtype already,
    # Python and numpy scalars are converted.
    array = (value if isinstance(value, np.ndarray)
             else np.array(value, dtype=dtype))
    if array.dtype != dtype:
      raise RecordError(f"dtype {array.dtype} does not match {dtype}")
    if array.shape != self.shape:
      raise RecordError(f"shape {array.shape} does not match {self.shape}")
    if self.encoding != "none":
      raw = array.tobytes()
      if self.encoding == "zlib":
        raw = zlib.compress(raw)
      return _Feature(bytes_list={"value": [raw]})
    if dtype.kind in "iub":
      return _Feature(int64_list={"value": array.astype(np.int64).ravel()})
    if dtype.kind == "f":
      return _Feature(float_list={"value": array.ravel()})
    raise RecordError(f"unsupported dtype {dtype}")

  def decode(self, feature) -> Any:
    """A parsed tf.train.Feature -> bytes (text) or a numpy array."""
    if self.kind == "text":
      (value,) = feature.bytes_list.value
      return value
    dtype = self.np_dtype
    if self.encoding != "none":
      (raw,) = feature.bytes_list.value
      if self.encoding == "zlib":
        raw = zlib.decompress(raw)
      return np.frombuffer(raw, dtype=dtype).reshape(self.shape)
    values = (feature.int64_list.value if dtype.kind in "iub"
              else feature.float_list.value)
    size = int(np.prod(self.shape, dtype=np.int64))
    if len(values) != size:
      raise RecordError(f"{len(values)} values, expected shape {self.shape}")
    return np.array(values, dtype=dtype).reshape(self.shape)

  def to_json(self) -> dict:
    """This feature's entry in TFDS's features.json."""
    if self.kind == "text":
      return {"pythonClassName": _TFDS_CLASS["text"], "text": {}}
    shape = {"dimensions": [str(d) for d in self.shape]} if self.shape else {}
    return {"pythonClassName": _TFDS_CLASS[self.kind],
            "tensor": {"dtype": self.dtype, "encoding": self.encoding,
                       "shape": shape}}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Feature":
    kind = {v: k for k, v in _TFDS_CLASS.items()}.get(d.get("pythonClassName"))
    if kind is None:
      raise RecordError(f"unsupported TFDS feature {d.get('pythonClassName')}")
    if kind == "text":
      return cls("text")
    t = d["tensor"]
    return cls(kind, dtype=t["dtype"], encoding=t.get("encoding", "none"),
               shape=tuple(int(x) for x in
                           t.get("shape", {}).get("dimensions", [])))


def encode_example(features: Mapping[str, Feature],
                   example: Mapping[str, Any]) -> bytes:
  """A serialized tf.train.Example, bytes stable across processes (map keys
  sorted; TFDS + ``SerializeToString(deterministic=True)`` give the same)."""
  missing = set(features) - set(example)
  if missing:
    raise RecordError(f"example lacks features {sorted(missing)}")
  proto = Example()
  entries = proto.features.feature
  for name, feature in features.items():
    try:
      entries[name].CopyFrom(feature.encode(example[name]))
    except (RecordError, ValueError, TypeError) as e:
      raise RecordError(f"feature {name!r}: {e}") from e
  return proto.SerializeToString(deterministic=True)


def decode_example(features: Mapping[str, Feature], data: bytes,
                   keys: Sequence[str] | None = None) -> dict[str, Any]:
  """Serialized tf.train.Example -> {key: value} for `keys` (default: all)."""
  entries = Example.FromString(data).features.feature
  out = {}
  for key in (features if keys is None else keys):
    if key not in entries:
      raise RecordError(f"example has no feature {key!r}")
    out[key] = features[key].decode(entries[key])
  return out


def features_json(features: Mapping[str, Feature]) -> str:
  """TFDS's features.json for a FeaturesDict of `features`."""
  obj = {"featuresDict": {"features": {k: f.to_json()
                                       for k, f in features.items()}},
         "pythonClassName": _DICT_CLASS}
  return json.dumps(obj, indent=4, sort_keys=True)


def features_from_json(text: str) -> dict[str, Feature]:
  obj = json.loads(text)
  if obj.get("pythonClassName") != _DICT_CLASS:
    raise RecordError("features.json does not hold a FeaturesDict")
  return {k: Feature.from_json(v)
          for k, v in obj["featuresDict"]["features"].items()}


def dataset_info_json(*, name: str, version: str, filename_template: str,
                      shard_lengths: Mapping[str, Sequence[int]]) -> str:
  """TFDS's dataset_info.json (as tfds.folder_dataset.write_metadata writes
  it: proto JSON, int64 as strings, splits in the given order)."""
  obj = {"fileFormat": "tfrecord", "name": name, "version": version,
         "splits": [{"filepathTemplate": filename_template, "name": split,
                     "shardLengths": [str(int(n)) for n in lengths]}
                    for split, lengths in shard_lengths.items()]}
  return json.dumps(obj, indent=2, sort_keys=True)


def temporary_name(path: epath.Path) -> epath.Path:
  """Where `path` is written before its rename: ``<name>.<random>.incomplete``
  (random, so two writers of one file -- a Beam bundle retried while the
  first attempt still runs -- never write into each other's file)."""
  return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.incomplete")


def write_text_atomic(path: str, text: str) -> None:
  """Writes `path` through a temporary name + rename (never half-written)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temporary_name(path)
  tmp.write_text(text)
  tmp.replace(path)


# -- TFRecord framing ---------------------------------------------------------
# Each record: uint64 length, uint32 masked crc32c(length), data,
# uint32 masked crc32c(data); little endian.

_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return b"".join((length, _CRC.pack(masked_crc(length)), data,
                   _CRC.pack(masked_crc(data))))


def write_tfrecord(path: str, serialized: Sequence[bytes]) -> None:
  """Writes records to `path` atomically (temp file + rename), so a killed
  writer never leaves a half-written file under the final name."""
  path = epath.Path(path)
  tmp = temporary_name(path)
  with tmp.open("wb") as f:
    for data in serialized:
      f.write(frame(data))
  tmp.replace(path)


def _check_data(path, index, data: bytes, crc_bytes: bytes) -> bytes:
  if len(crc_bytes) != 4 or _CRC.unpack(crc_bytes)[0] != masked_crc(data):
    raise RecordError(f"{path}: record {index}: data crc mismatch (corrupt "
                      "or truncated file)")
  return data


def _read_header(f, path, index) -> int | None:
  """Length of the next record, None at the end of the file."""
  header = f.read(12)
  if not header:
    return None
  if len(header) != 12:
    raise RecordError(f"{path}: truncated record header at record {index}")
  length, crc = _HEADER.unpack(header)
  if crc != masked_crc(header[:8]):
    raise RecordError(f"{path}: record {index}: length crc mismatch")
  return length


def iter_tfrecord(path: str) -> Iterator[bytes]:
  """The records of `path` in order, crcs verified."""
  with epath.Path(path).open("rb") as f:
    for index in range(np.iinfo(np.int64).max):
      length = _read_header(f, path, index)
      if length is None:
        return
      data = f.read(length)
      if len(data) != length:
        raise RecordError(f"{path}: record {index} truncated")
      yield _check_data(path, index, data, f.read(4))


class TFRecordFile:
  """Random access to the records of one file: the headers are scanned once
  (length crcs checked) into offsets; ``read(i)`` seeks there and checks the
  data crc. Thread-safe (one open file, reads under a lock)."""

  def __init__(self, path: str):
    self.path = path
    self._file = epath.Path(path).open("rb")
    self._lock = threading.Lock()
    offsets, lengths, pos = [], [], 0
    f = self._file
    size = f.seek(0, 2)
    while pos < size:
      f.seek(pos)
      length = _read_header(f, path, len(offsets))
      offsets.append(pos + 12)
      lengths.append(length)
      pos += 12 + length + 4
    if pos != size:  # the last record runs past the end of the file
      raise RecordError(f"{path}: record {len(offsets) - 1} truncated")
    self.offsets = np.asarray(offsets, np.int64)
    self.lengths = np.asarray(lengths, np.int64)

  def __len__(self) -> int:
    return len(self.offsets)

  def read(self, index: int) -> bytes:
    offset, length = int(self.offsets[index]), int(self.lengths[index])
    with self._lock:
      self._file.seek(offset)
      blob = self._file.read(length + 4)
    if len(blob) != length + 4:
      raise RecordError(f"{self.path}: record {index} truncated")
    return _check_data(self.path, index, blob[:length], blob[length:])

  def close(self) -> None:
    self._file.close()
