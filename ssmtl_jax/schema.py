"""The object-record schema shared by the builder (writer) and the trainer/evaluator (readers).

One example per detected object (docs/DESIGN.md §4). The records directory is a TFDS
dataset (``tfds.builder_from_directory(RECORDS)`` / ``tfds.load`` read it):

    RECORDS/dataset_info.json, features.json     TFDS metadata
    RECORDS/ssmtl_objects-<split>.tfrecord-XXXXX-of-YYYYY
                                                  one shard per video, in video order
    RECORDS/meta/<split>.json                     videos, frame counts, sizes, config

This module imports TensorFlow (through TFDS); the model code never does.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

DATASET_NAME = "ssmtl_objects"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
VERSION = "1.0.0"

# Keys the trainer reads; the evaluator also reads the geometry keys.
TRAIN_KEYS = ("crops", "teacher_det", "teacher_cls")


def features(*, window: int, crop_size: int, channels: int, num_det: int,
             num_cls: int):
  """The tfds FeaturesDict of one object record.

  Args:
    window: 2W+1 crops per object (frames t-W..t+W).
    crop_size: crops are crop_size x crop_size.
    channels: 1 (grayscale) or 3 (RGB).
    num_det: detector classes (teacher_det width, 80 for COCO).
    num_cls: classifier logits (teacher_cls width, 0 when no classifier).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  f = tfds.features
  return f.FeaturesDict({
      "video_id": f.Text(),
      "frame_index": f.Scalar(dtype=np.int32),
      "box": f.Tensor(shape=(4,), dtype=np.float32),  # x1, y1, x2, y2 px
      "det_score": f.Scalar(dtype=np.float32),
      "det_class": f.Scalar(dtype=np.int32),
      "crops": f.Tensor(shape=(window, crop_size, crop_size, channels),
                        dtype=np.uint8, encoding=f.Encoding.ZLIB),
      "teacher_det": f.Tensor(shape=(num_det,), dtype=np.float32),
      "teacher_cls": f.Tensor(shape=(num_cls,), dtype=np.float32),
  })


def serialize(feats, example) -> bytes:
  """Serialises one example with a byte-stable encoding.

  tf.train.Example holds a protobuf map whose entry order follows Python's
  per-process string hashing, so the same example can serialise to different
  bytes in two processes; deterministic=True sorts the keys, which is what
  makes a resumed build byte-identical to an uninterrupted one.
  """
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  proto = example_pb2.Example.FromString(feats.serialize_example(example))
  return proto.SerializeToString(deterministic=True)


def shard_filename(split: str, index: int, num_shards: int) -> str:
  return (f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}")


def write_shard(path: str, serialized: Sequence[bytes]) -> None:
  """Writes serialized examples to `path` atomically (temp file + rename), so
  a killed build never leaves a half-written shard under the final name."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.incomplete"
  with tf.io.TFRecordWriter(tmp) as writer:
    for s in serialized:
      writer.write(s)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path: str, obj: Any) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = f"{path}.incomplete"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str) -> Any:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def finalize(records_dir: str, feats, shard_lengths: Mapping[str, Sequence[int]]) -> None:
  """Writes the TFDS metadata for the shards of each split (given per-shard
  example counts), making the directory loadable with tfds."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split_infos = [
      tfds.core.SplitInfo(name=split, shard_lengths=list(map(int, lengths)),
                          num_bytes=0)
      for split, lengths in shard_lengths.items()]
  tfds.folder_dataset.write_metadata(
      data_dir=records_dir, features=feats, split_infos=split_infos,
      version=VERSION, filename_template=FILENAME_TEMPLATE, check_data=False)


def meta_path(records_dir: str, split: str) -> str:
  return os.path.join(records_dir, "meta", f"{split}.json")
