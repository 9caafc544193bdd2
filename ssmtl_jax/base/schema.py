"""The object-record schema shared by the builder (writer) and the trainer/evaluator (readers).

One example per detected object (docs/DESIGN.md §4). The records directory is a TFDS
dataset (``tfds.builder_from_directory(RECORDS)`` / ``tfds.load`` read it):

    RECORDS/dataset_info.json, features.json     TFDS metadata
    RECORDS/ssmtl_objects-<split>.tfrecord-XXXXX-of-YYYYY
                                                  one shard per video, in video order
    RECORDS/meta/<split>.json                     videos, frame counts, sizes, config

Everything here is plain Python (ssmtl_jax/base/records.py does the TFRecord and
Example I/O); TensorFlow is not needed to write or read the records.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from etils import epath

from ssmtl_jax.base import errors
from ssmtl_jax.base import records

DATASET_NAME = "ssmtl_objects"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
VERSION = "1.0.0"

# The four proxy tasks (DESIGN §2), in the order of the model's heads, the
# loss terms and the score columns; every floor shares this one definition.
TASKS = ("aot", "mi", "mbp", "kd")

# Keys the trainer reads; the evaluator also reads the geometry keys.
TRAIN_KEYS = ("crops", "teacher_det", "teacher_cls")

Features = Mapping[str, records.Feature]


def features(*, window: int, crop_size: int, channels: int, num_det: int,
             num_cls: int) -> Features:
  """The features of one object record (tfds' FeaturesDict of Text, Scalar
  and Tensor features, in our own records.Feature form).

  Args:
    window: 2W+1 crops per object (frames t-W..t+W).
    crop_size: crops are crop_size x crop_size.
    channels: 1 (grayscale) or 3 (RGB).
    num_det: detector classes (teacher_det width, 80 for COCO).
    num_cls: classifier logits (teacher_cls width, 0 when no classifier).
  """
  f = records.Feature
  return {
      "video_id": f("text"),
      "frame_index": f("scalar", "int32"),
      "box": f("tensor", "float32", (4,)),  # x1, y1, x2, y2 px
      "det_score": f("scalar", "float32"),
      "det_class": f("scalar", "int32"),
      "crops": f("tensor", "uint8", (window, crop_size, crop_size, channels),
                 encoding="zlib"),
      "teacher_det": f("tensor", "float32", (num_det,)),
      "teacher_cls": f("tensor", "float32", (num_cls,)),
  }


def serialize(feats: Features, example: Mapping[str, Any]) -> bytes:
  """Serialises one example with a byte-stable encoding.

  tf.train.Example holds a protobuf map whose entry order may differ between
  processes; deterministic serialisation sorts the keys, which is what makes
  a resumed build byte-identical to an uninterrupted one.
  """
  return records.encode_example(feats, example)


def deserialize(feats: Features, data: bytes, keys=None) -> dict[str, Any]:
  """One serialized example -> {key: bytes (text) or numpy array}."""
  return records.decode_example(feats, data, keys)


def shard_filename(split: str, index: int, num_shards: int) -> str:
  return (f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}")


def write_shard(path: str, serialized: Sequence[bytes]) -> None:
  """Writes serialized examples to `path` atomically (temp file + rename), so
  a killed build never leaves a half-written shard under the final name."""
  records.write_tfrecord(path, serialized)


def write_json_atomic(path: str, obj: Any) -> None:
  records.write_text_atomic(
      path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False))


def read_json(path: str) -> Any:
  """A JSON file we wrote (metadata, bundle, summaries); a truncated or
  otherwise unparsable one is a DataError naming it, not a traceback."""
  text = epath.Path(path).read_text()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.DataError(
        f"{path}: not valid JSON (truncated or damaged?): {e.msg} at line "
        f"{e.lineno} column {e.colno}") from None


def finalize(records_dir: str, feats: Features,
             shard_lengths: Mapping[str, Sequence[int]]) -> None:
  """Writes the TFDS metadata (features.json, then dataset_info.json, which
  marks the directory complete) for the shards of each split, given per-shard
  example counts; the files are those tfds.folder_dataset.write_metadata
  writes, so tfds.builder_from_directory reads the directory."""
  records.write_text_atomic(os.path.join(records_dir, "features.json"),
                            records.features_json(feats))
  records.write_text_atomic(
      os.path.join(records_dir, "dataset_info.json"),
      records.dataset_info_json(name=DATASET_NAME, version=VERSION,
                                filename_template=FILENAME_TEMPLATE,
                                shard_lengths=shard_lengths))


def read_features(records_dir: str) -> dict[str, records.Feature]:
  """The features declared in RECORDS/features.json."""
  return records.features_from_json(
      (epath.Path(records_dir) / "features.json").read_text())


def meta_path(records_dir: str, split: str) -> str:
  return os.path.join(records_dir, "meta", f"{split}.json")
