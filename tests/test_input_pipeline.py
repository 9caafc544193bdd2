"""Records round trip, seeded order, exact resume, host-count-independent order,
reading without TensorFlow."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.data import input_pipeline
from tests import record_helpers
from tests import optional


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("records"))
  # 4 shards x 10 objects; frame_index identifies every example.
  record_helpers.write_records(path, num_videos=4, objects_per_video=10,
                               half_window=3, crop_size=8)
  return path


def _ids(batch):
  return [f"{v.decode()}:{f}" for v, f in zip(batch["video_id"],
                                              batch["frame_index"])]


def _iter(records, **kw):
  info = input_pipeline.records_info(records, "train")
  args = dict(global_batch=4, num_pipelines=0, seed=0, start_step=0,
              shuffle_buffer=8, keys=("video_id", "frame_index", "crops"))
  args.update(kw)
  return input_pipeline.train_iterator(info, **args)


def _tfds():
  """TFDS, the oracle (test extra; images without TF skip these checks)."""
  return optional.import_or_skip("tensorflow_datasets", "tensorflow-datasets",
                                 module_level=False)


def test_records_info_and_tfds_reads_them(records):
  tfds = _tfds()
  info = input_pipeline.records_info(records, "train")
  assert info.num_examples == 40 and len(info.files) == 4
  assert (info.window, info.crop_size, info.channels) == (7, 8, 1)
  assert (info.num_det, info.num_cls) == (4, 3)
  ds = tfds.builder_from_directory(records).as_dataset(split="train")
  assert sum(1 for _ in ds) == 40


def test_round_trip_identical_arrays(tmp_path):
  from ssmtl_jax.base import schema
  feats = schema.features(window=3, crop_size=4, channels=3, num_det=2, num_cls=0)
  rng = np.random.default_rng(1)
  written = [{"video_id": "v", "frame_index": np.int32(i),
              "box": rng.random(4, dtype=np.float32), "det_score": 0.5,
              "det_class": 1,
              "crops": rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8),
              "teacher_det": rng.random(2, dtype=np.float32),
              "teacher_cls": np.zeros((0,), np.float32)} for i in range(5)]
  schema.write_shard(str(tmp_path / schema.shard_filename("test", 0, 1)),
                     [schema.serialize(feats, e) for e in written])
  schema.finalize(str(tmp_path), feats, {"test": [5]})
  info = input_pipeline.records_info(str(tmp_path), "test")
  read = list(input_pipeline.eval_dataset(
      info, batch_size=2, keys=("crops", "box", "teacher_det", "frame_index")))
  assert [len(b["crops"]) for b in read] == [2, 2, 1]
  for key in ("crops", "box", "teacher_det", "frame_index"):
    got = np.concatenate([b[key] for b in read])
    want = np.stack([e[key] for e in written])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype


def test_seeded_order_and_epochs(records):
  a = [_ids(b) for b in itertools.islice(_iter(records), 20)]
  b = [_ids(b) for b in itertools.islice(_iter(records), 20)]
  c = [_ids(b) for b in itertools.islice(_iter(records, seed=1), 20)]
  assert a == b and a != c
  epoch1 = sum(a[:10], [])
  epoch2 = sum(a[10:], [])
  assert len(set(epoch1)) == 40 and set(epoch1) == set(epoch2)  # each once
  assert epoch1 != epoch2  # reshuffled per epoch


@pytest.mark.parametrize("start", [3, 10, 13])
def test_resume_skips_to_the_same_batches(records, start):
  full = [_ids(b) for b in itertools.islice(_iter(records), start + 5)]
  resumed = [_ids(b) for b in
             itertools.islice(_iter(records, start_step=start), 5)]
  assert resumed == full[start:]


def test_order_does_not_depend_on_process_count(records):
  one = [_ids(b) for b in itertools.islice(_iter(records, num_pipelines=2), 12)]
  p0 = itertools.islice(_iter(records, num_pipelines=2, process_index=0,
                              process_count=2), 12)
  p1 = itertools.islice(_iter(records, num_pipelines=2, process_index=1,
                              process_count=2), 12)
  two = [_ids(a) + _ids(b) for a, b in zip(p0, p1)]
  assert one == two
  # Each process reads only its own files.
  assert {i.split(":")[0] for b in two for i in b[:2]} == {"v0", "v2"}


def test_clear_errors(records, tmp_path):
  with pytest.raises(input_pipeline.DataError, match="/nonexistent"):
    input_pipeline.records_info("/nonexistent", "train")
  with pytest.raises(input_pipeline.DataError, match="no split 'test'"):
    input_pipeline.records_info(records, "test")
  with pytest.raises(errors.ConfigError, match="batch_size=6"):
    next(_iter(records, global_batch=6, num_pipelines=4))
  with pytest.raises(errors.ConfigError, match="num_pipelines=3"):
    next(_iter(records, num_pipelines=3, process_count=2))


def test_eval_dataset_file_order_and_every(records):
  info = input_pipeline.records_info(records, "train")
  keys = ("video_id", "frame_index")
  batches = list(input_pipeline.eval_dataset(info, batch_size=3, keys=keys))
  ids = sum((_ids(b) for b in batches), [])
  assert ids == [f"v{v}:{i + 3}" for v in range(4) for i in range(10)]
  assert [len(b["video_id"]) for b in batches] == [3] * 13 + [1]
  assert batches[0]["video_id"].dtype == object  # bytes, as tf.data gave
  every = input_pipeline.eval_dataset(info, batch_size=4, keys=keys, every=3)
  assert sum((_ids(b) for b in every.as_numpy_iterator()), []) == ids[::3]


def test_decoding_equals_tfds(records):
  """Every feature of every example as tfds decodes the same records."""
  tfds = _tfds()
  info = input_pipeline.records_info(records, "train")
  keys = ("video_id", "frame_index", "box", "det_score", "det_class", "crops",
          "teacher_det", "teacher_cls")
  ours = list(input_pipeline.eval_dataset(info, batch_size=40, keys=keys))
  assert len(ours) == 1
  ds = tfds.builder_from_directory(records).as_dataset(
      split="train", shuffle_files=False)
  theirs = list(tfds.as_numpy(ds))
  assert len(theirs) == 40
  for key in keys:
    want = np.stack([e[key] for e in theirs])
    got = ours[0][key]
    if want.dtype.kind in "SO":
      assert list(got) == list(want), key
    else:
      assert got.dtype == want.dtype, key
      np.testing.assert_array_equal(got, want, err_msg=key)


def test_train_order_is_the_documented_permutation(records):
  """Epoch e of pipeline k: file order, then a permutation inside windows of
  shuffle_buffer examples, both from np.random.default_rng((seed, k, e))
  (docs/DESIGN.md §5.3)."""
  def expected(seed, epoch, window):
    rng = np.random.default_rng((seed, 0, epoch))
    files = rng.permutation(4)
    stream = np.concatenate([np.arange(f * 10, f * 10 + 10) for f in files])
    keys = np.arange(40) // window + rng.random(40)
    return [f"v{i // 10}:{i % 10 + 3}"
            for i in stream[np.argsort(keys, kind="stable")]]
  for window in (1, 8, 40, 1000):
    got = sum((_ids(b) for b in itertools.islice(
        _iter(records, seed=5, shuffle_buffer=window), 20)), [])
    assert got == expected(5, 0, window) + expected(5, 1, window), window
  # A buffer of 1 keeps file order (as tf.data's did); windows keep reads
  # local: 8 consecutive examples (one window) come from at most 2 files.
  got = sum((_ids(b) for b in itertools.islice(
      _iter(records, shuffle_buffer=1), 10)), [])
  assert [x.split(":")[1] for x in got[:10]] == [str(i + 3) for i in range(10)]
  got = sum((_ids(b) for b in itertools.islice(_iter(records), 10)), [])
  for i in range(0, 40, 8):
    assert len({x.split(":")[0] for x in got[i:i + 8]}) <= 2


@pytest.mark.parametrize("start", [1, 7, 23])
def test_resume_equals_uninterrupted_stream_sub_batch_crossing_epochs(
    records, start):
  """Batch 3 (global 6 / 2 pipelines) does not divide 20 examples per
  pipeline, so sub-batches straddle epochs; resume must still line up."""
  kw = dict(global_batch=6, num_pipelines=2)
  full = [_ids(b) for b in itertools.islice(_iter(records, **kw), start + 8)]
  resumed = [_ids(b) for b in itertools.islice(
      _iter(records, start_step=start, **kw), 8)]
  assert resumed == full[start:]


def test_corrupt_shard_is_reported(records, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  copy = str(tmp_path / "records")
  shutil.copytree(records, copy)
  info = input_pipeline.records_info(copy, "train")
  with open(info.files[1], "r+b") as f:
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(input_pipeline.DataError, match="crc"):
    list(input_pipeline.eval_dataset(info, batch_size=8, keys=("crops",)))
  with open(info.files[2], "r+b") as f:
    f.truncate(os.path.getsize(info.files[2]) - 3)
  with pytest.raises(input_pipeline.DataError, match="truncated"):
    next(iter(input_pipeline.eval_dataset(info, batch_size=8,
                                          keys=("crops",))))


def test_no_tensorflow_needed(records, tmp_path):
  """Writing, indexing and reading records with TensorFlow and TFDS made
  unimportable."""
  code = f"""
import itertools, sys
sys.modules["tensorflow"] = None
sys.modules["tensorflow_datasets"] = None
from ssmtl_jax.data import input_pipeline
from tests import record_helpers
record_helpers.write_records({str(tmp_path / "r")!r}, num_videos=2,
                             objects_per_video=5, half_window=1, crop_size=8)
for records in ({records!r}, {str(tmp_path / "r")!r}):
  info = input_pipeline.records_info(records, "train")
  n = sum(len(b["crops"]) for b in input_pipeline.eval_dataset(
      info, batch_size=7, keys=("crops", "video_id", "teacher_cls")))
  assert n == info.num_examples, n
  batches = list(itertools.islice(input_pipeline.train_iterator(
      info, global_batch=4, num_pipelines=2, seed=0, start_step=3,
      shuffle_buffer=8), 5))
  assert batches[-1]["crops"].shape[0] == 4
bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow",
       "tensorflow_datasets") and sys.modules[m] is not None]
assert not bad, bad
print("ok")
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root,
                       capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
