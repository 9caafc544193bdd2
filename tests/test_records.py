"""ssmtl_jax.base.records against the TensorFlow/TFDS path it replaces (the oracle,
test-only): byte-identical shards and metadata, same decoded values."""

import os

import numpy as np
import pytest
from tests import optional

# The oracle is the test extra's TensorFlow; images without it skip this file.
tf = optional.import_or_skip("tensorflow", ("tensorflow", "tensorflow-cpu"))
tfds = optional.import_or_skip("tensorflow_datasets", "tensorflow-datasets")
example_pb2 = optional.import_or_skip("tensorflow.core.example.example_pb2",
                                      ("tensorflow", "tensorflow-cpu"))

from ssmtl_jax.base import records
from ssmtl_jax.base import schema
from tests import record_helpers


def _tfds_features(window, crop_size, channels, num_det, num_cls):
  """The tfds FeaturesDict the builder used before (schema.features)."""
  f = tfds.features
  return f.FeaturesDict({
      "video_id": f.Text(),
      "frame_index": f.Scalar(dtype=np.int32),
      "box": f.Tensor(shape=(4,), dtype=np.float32),
      "det_score": f.Scalar(dtype=np.float32),
      "det_class": f.Scalar(dtype=np.int32),
      "crops": f.Tensor(shape=(window, crop_size, crop_size, channels),
                        dtype=np.uint8, encoding=f.Encoding.ZLIB),
      "teacher_det": f.Tensor(shape=(num_det,), dtype=np.float32),
      "teacher_cls": f.Tensor(shape=(num_cls,), dtype=np.float32),
  })


def _examples(n, *, window, crop_size, channels, num_det, num_cls, seed=0):
  rng = np.random.default_rng(seed)
  return [{
      "video_id": f"vid_{i % 3}é", "frame_index": np.int32(i * 7),
      "box": rng.random(4, dtype=np.float32) * 100,
      "det_score": float(rng.random()), "det_class": int(rng.integers(80)),
      "crops": rng.integers(0, 256, (window, crop_size, crop_size, channels),
                            dtype=np.uint8),
      "teacher_det": rng.random(num_det, dtype=np.float32),
      "teacher_cls": rng.normal(size=num_cls).astype(np.float32),
  } for i in range(n)]


SHAPES = [dict(window=3, crop_size=8, channels=1, num_det=4, num_cls=3),
          dict(window=5, crop_size=6, channels=3, num_det=80, num_cls=0)]


@pytest.mark.parametrize("shape", SHAPES, ids=["gray", "rgb_no_cls"])
def test_examples_and_shards_byte_identical_to_tf(tmp_path, shape):
  ours_f, tf_f = schema.features(**shape), _tfds_features(**shape)
  examples = _examples(6, **shape)
  ours = [schema.serialize(ours_f, e) for e in examples]
  theirs = [example_pb2.Example.FromString(tf_f.serialize_example(e))
            .SerializeToString(deterministic=True) for e in examples]
  assert ours == theirs
  schema.write_shard(str(tmp_path / "ours"), ours)
  with tf.io.TFRecordWriter(str(tmp_path / "tf")) as w:
    for s in theirs:
      w.write(s)
  assert (tmp_path / "ours").read_bytes() == (tmp_path / "tf").read_bytes()
  assert not list(tmp_path.glob("*.incomplete"))
  # Reading: our sequential and indexed readers give what tf.data gives.
  tf_read = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "tf"))]
  assert list(records.iter_tfrecord(str(tmp_path / "ours"))) == tf_read
  indexed = records.TFRecordFile(str(tmp_path / "ours"))
  assert [indexed.read(i) for i in (5, 0, 3, 1, 4, 2)] == [
      tf_read[i] for i in (5, 0, 3, 1, 4, 2)]
  indexed.close()
  # Decoding: ours equals tfds' decoding of the same bytes.
  for data, e in zip(ours, examples):
    mine = schema.deserialize(ours_f, data)
    want = tfds.as_numpy(tf_f.deserialize_example(data))
    assert mine.keys() == want.keys()
    for k in want:
      if isinstance(want[k], bytes):
        assert mine[k] == want[k] == e[k].encode()
      else:
        assert mine[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(mine[k], want[k], err_msg=k)


def test_empty_shard_and_empty_record(tmp_path):
  schema.write_shard(str(tmp_path / "empty"), [])
  with tf.io.TFRecordWriter(str(tmp_path / "tf")) as w:
    pass
  assert (tmp_path / "empty").read_bytes() == (tmp_path / "tf").read_bytes()
  assert len(records.TFRecordFile(str(tmp_path / "empty"))) == 0
  schema.write_shard(str(tmp_path / "one"), [b""])
  with tf.io.TFRecordWriter(str(tmp_path / "tf1")) as w:
    w.write(b"")
  assert (tmp_path / "one").read_bytes() == (tmp_path / "tf1").read_bytes()
  assert list(records.iter_tfrecord(str(tmp_path / "one"))) == [b""]


@pytest.mark.parametrize("splits", [("train", "test"), ("test", "train")])
def test_metadata_byte_identical_to_tfds_write_metadata(tmp_path, splits):
  shape = SHAPES[0]
  lengths = {"train": [3, 0, 2], "test": [4]}
  for split in splits:
    n = len(lengths[split])
    for i, count in enumerate(lengths[split]):
      data = [schema.serialize(schema.features(**shape), e)
              for e in _examples(count, **shape)]
      for d in ("ours", "tfds"):
        os.makedirs(tmp_path / d, exist_ok=True)
        schema.write_shard(
            str(tmp_path / d / schema.shard_filename(split, i, n)), data)
  ordered = {s: lengths[s] for s in splits}
  schema.finalize(str(tmp_path / "ours"), schema.features(**shape), ordered)
  tfds.folder_dataset.write_metadata(
      data_dir=str(tmp_path / "tfds"), features=_tfds_features(**shape),
      split_infos=[tfds.core.SplitInfo(name=s, shard_lengths=n, num_bytes=0)
                   for s, n in ordered.items()],
      version=schema.VERSION, filename_template=schema.FILENAME_TEMPLATE,
      check_data=False)
  assert sorted(os.listdir(tmp_path / "ours")) == sorted(
      os.listdir(tmp_path / "tfds"))
  for name in ("dataset_info.json", "features.json"):
    assert ((tmp_path / "ours" / name).read_bytes() ==
            (tmp_path / "tfds" / name).read_bytes()), name
  builder = tfds.builder_from_directory(str(tmp_path / "ours"))
  assert builder.info.splits["train"].shard_lengths == [3, 0, 2]
  assert sum(1 for _ in builder.as_dataset(split="test")) == 4
  # And features.json reads back into the same features.
  assert schema.read_features(str(tmp_path / "ours")) == schema.features(**shape)


def test_records_helper_set_reads_with_tfds(tmp_path):
  """The builder's path (schema.serialize -> write_shard -> finalize) gives a
  directory tfds loads with the values we wrote."""
  record_helpers.write_records(str(tmp_path), num_videos=2,
                               objects_per_video=4, half_window=1,
                               crop_size=8)
  feats = schema.read_features(str(tmp_path))
  ours = [schema.deserialize(feats, r) for i in range(2)
          for r in records.iter_tfrecord(
              str(tmp_path / schema.shard_filename("train", i, 2)))]
  ds = tfds.builder_from_directory(str(tmp_path)).as_dataset(
      split="train", shuffle_files=False)
  theirs = list(tfds.as_numpy(ds))
  assert len(theirs) == len(ours) == 8
  for mine, want in zip(ours, theirs):
    for k in want:
      np.testing.assert_array_equal(np.asarray(mine[k]), want[k], err_msg=k)


def test_schema_mismatch_is_an_error():
  feats = schema.features(**SHAPES[0])
  e = _examples(1, **SHAPES[0])[0]
  with pytest.raises(records.RecordError, match="crops.*shape"):
    schema.serialize(feats, dict(e, crops=e["crops"][:1]))
  with pytest.raises(records.RecordError, match="box.*dtype"):
    schema.serialize(feats, dict(e, box=e["box"].astype(np.float64)))
  with pytest.raises(records.RecordError, match="lacks"):
    schema.serialize(feats, {k: v for k, v in e.items() if k != "box"})
