"""Units and engines of the builder (issue #25): chunked long videos give the
whole videos' objects; the Apache Beam pipeline (DirectRunner, 2 processes)
writes the local builder's records byte for byte; a unit that dies leaves no
visible shard and a rerun finishes; weights are checked on the workers; bad
pipeline options are one line."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.base import files
from ssmtl_jax.base import records as records_lib
from ssmtl_jax.base import schema
from ssmtl_jax.data import builder
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.data import synthetic
from ssmtl_jax.jobs import steps
from ssmtl_jax.perception import video_io
from tests import cli_driver
from tests import optional
from tests import record_helpers

# 3 + 2 videos of 40 frames: chunks of 12 cut each into 4 units (the last of
# 4 frames), so every cut has objects on both sides, in both splits.
PARAMS = dict(seed=5, num_train=3, num_test=2, num_frames=40, height=60,
              width=80, channels=1, objects_per_frame=2)
CHUNK = 12


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  """The synthetic videos renamed 00, 01, ... in each split: ids repeat
  across splits, as in Ped2 (train/01 and test/01 are other videos)."""
  root = tmp_path_factory.mktemp("synthetic")
  synthetic.generate(str(root), **PARAMS)
  shutil.rmtree(root / "gt_tracks")
  for folder in ("train", "test", "detections/train", "detections/test",
                 "gt_frame", "gt_pixel"):
    for path in (root / folder).iterdir():
      path.rename(path.with_name(path.name.split("_", 1)[1]))
  return str(root)


def _config(root, records, **build):
  # Training takes every 5th frame: the stride counts in the video's frames
  # whatever the chunk (12 is no multiple of 5).
  return record_helpers.file_detections_config(root, records, train_stride=5,
                                               **build)


@pytest.fixture(scope="module")
def local(data_root, tmp_path_factory):
  """The local builder's records of whole videos (the reference)."""
  records = str(tmp_path_factory.mktemp("local") / "records")
  return records, builder.build(_config(data_root, records))


def _examples(records, split):
  """Every example of a split, in read order (the shards in order)."""
  info = input_pipeline.records_info(records, split)
  feats = schema.read_features(records)
  return [schema.deserialize(feats, data)
          for path in info.files for data in records_lib.iter_tfrecord(path)]


def _same_examples(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), k)


def _shards(records):
  return {f: open(os.path.join(records, f), "rb").read()
          for f in sorted(os.listdir(records)) if ".tfrecord-" in f}


def _meta(records, split):
  meta = schema.read_json(schema.meta_path(records, split))
  meta.pop("build_seconds")
  return meta


def test_chunked_videos_give_the_whole_videos_examples(data_root, local,
                                                       tmp_path):
  whole, _ = local
  records = str(tmp_path / "chunked")
  metas = builder.build(_config(data_root, records, chunk_frames=CHUNK))
  # 4 units per 40-frame video: 12 training shards, 8 test shards.
  assert metas["train"]["shard_objects"].__len__() == 12
  assert metas["test"]["shard_objects"].__len__() == 8
  assert sorted(os.listdir(os.path.join(records, "meta", "test")))[:4] == [
      "00@0-12.json", "00@12-24.json", "00@24-36.json", "00@36-40.json"]
  # Each split's summary has its own videos' (ids repeat across splits),
  # built now or read back by a rerun that finds everything done.
  rerun = builder.build(_config(data_root, whole))
  for meta, folder in ((metas, records), (rerun, whole)):
    assert meta["train"]["num_frames"] == 120  # 3 videos of 40 frames
    assert meta["test"]["num_frames"] == 80
    assert all(v["abnormal_frames"] is None
               for v in meta["train"]["videos"].values())
    assert all(v["abnormal_frames"] is not None
               for v in meta["test"]["videos"].values())
    for split in ("train", "test"):
      assert meta[split]["num_objects"] == len(_examples(folder, split))
  for split in ("train", "test"):
    _same_examples(_examples(records, split), _examples(whole, split))
    got, want = _meta(records, split), _meta(whole, split)
    assert got["videos"] == want["videos"]  # per video: chunks added up
    assert got["num_objects"] == want["num_objects"]
    for part, std in want["teacher_std"].items():
      assert got["teacher_std"][part] == pytest.approx(std, rel=1e-12)
  # Training objects only on every 5th frame of the video.
  frames = {int(e["frame_index"]) for e in _examples(records, "train")}
  assert frames and all(t % 5 == 0 for t in frames)
  # A rerun with another chunking is not mixed into these records: the
  # units differ, so they are built again under their own names.
  again = builder.build(_config(data_root, records, chunk_frames=CHUNK))
  assert again["test"]["shard_objects"] == metas["test"]["shard_objects"]


def test_a_chunk_reads_its_frames_of_a_video_file(tmp_path):
  import cv2  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "v.avi")
  out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
  for t in range(15):
    out.write(np.full((24, 32, 3), 10 * t, np.uint8))
  out.release()
  src = video_io.VideoSource(split="test", video_id="v", path=path,
                             kind="file")
  every = list(video_io.iter_frames(src, 1))
  assert len(every) == 15
  part = list(video_io.iter_frames(src, 1, 4, 9))
  assert len(part) == 5
  for a, b in zip(part, every[4:9]):
    np.testing.assert_array_equal(a, b)
  assert len(list(video_io.iter_frames(src, 1, 12))) == 3


def test_workers_check_the_weights_they_load(tmp_path):
  weights = tmp_path / "teacher.pth"
  weights.write_bytes(b"weights as planned")
  settings = builder.BuildSettings.from_config(record_helpers.file_detections_config(
      str(tmp_path), str(tmp_path / "records")))
  import dataclasses  # pylint: disable=g-import-not-at-top
  planned = dataclasses.replace(
      settings, classifier_kind="efficientnet_lite0",
      classifier_weights=str(weights),
      classifier_sha256=files.sha256_file(weights))
  weights.write_bytes(b"other weights on this worker")
  with pytest.raises(errors.DataError, match="sha256 on this worker differs"):
    builder.load_models(planned)
  weights.unlink()
  with pytest.raises(errors.DataError, match="not found on this worker"):
    builder.load_models(planned)


def test_beam_options_and_engine_errors_are_one_line(data_root, tmp_path):
  common = ["--config=configs/common.py", f"--config.data.root={data_root}",
            f"--config.data.records={tmp_path / 'records'}",
            "--config.build.detector.kind=file",
            "--config.build.classifier.kind=none"]
  cases = [common + ["--", "--runner=DirectRunner"],
           common + ["--config.build.engine=beam", "--", "runner"]]
  expected = ["given, but config.build.engine='local'",
              "each must be --name=value"]
  if not optional.installed("apache-beam"):
    expected[1] = "needs Apache Beam: pip install 'ssmtl-jax[beam]'"
  for result, want in zip(cli_driver.run("data_prep.build", cases), expected):
    assert result["code"] == 2, result
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and want in lines[0], result["stderr"]
  assert not os.path.exists(tmp_path / "records" / "meta")


def test_without_apache_beam_the_engine_names_the_extra(monkeypatch, data_root,
                                                        tmp_path):
  monkeypatch.setitem(sys.modules, "apache_beam", None)
  monkeypatch.delitem(sys.modules, "ssmtl_jax.data.beam_builder",
                      raising=False)
  with pytest.raises(errors.ConfigError, match=r"ssmtl-jax\[beam\]"):
    steps.build_records(_config(data_root, str(tmp_path / "r"),
                                engine="beam"))
  assert not os.path.exists(tmp_path / "r")


def _beam():
  return optional.import_or_skip("apache_beam", "apache-beam",
                                 module_level=False)


def test_beam_build_writes_the_local_records(data_root, local, tmp_path):
  """The issue's command: data_prep.build with engine 'beam', the
  DirectRunner's 2 processes; the records equal the local builder's byte for
  byte, and the trainer's input pipeline reads them."""
  _beam()
  whole, _ = local
  records = str(tmp_path / "beam")
  result, = cli_driver.run("data_prep.build", [[
      "--config=configs/common.py", f"--config.data.root={data_root}",
      f"--config.data.records={records}", "--config.build.half_window=3",
      "--config.build.crop_size=16", "--config.build.min_box_size=4",
      "--config.build.train_stride=5", "--config.build.detector.kind=file",
      # The test split's context as the reference's (tasks.seq_half = 3),
      # tasks that fit the window of 3 (they do not shape records).
      "--config.build.test_context=3", "--config.tasks.seq_half=1",
      "--config.build.detector.min_score=0",
      "--config.build.classifier.kind=none", "--config.build.engine=beam",
      "--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]])
  assert result["code"] == 0, result["stderr"][-3000:]
  assert _shards(records) == _shards(whole)
  for name in ("dataset_info.json", "features.json"):
    with open(os.path.join(records, name)) as a, \
        open(os.path.join(whole, name)) as b:
      assert a.read() == b.read(), name
  for split in ("train", "test"):
    got, want = _meta(records, split), _meta(whole, split)
    assert got.pop("root") == want.pop("root")
    assert got == want
  info = input_pipeline.records_info(records, "train")
  batch = next(input_pipeline.eval_dataset(info, batch_size=8,
                                           keys=("crops", "frame_index"))
               .as_numpy_iterator())
  assert batch["crops"].shape[0] == 8


def test_a_unit_that_dies_leaves_no_shard_and_a_rerun_finishes(
    data_root, local, tmp_path, monkeypatch):
  """In-process DirectRunner (its workers run here, so the failure can be
  planted): one chunk's encoding fails mid-unit. The pipeline fails, no
  shard of that unit is visible and the split is not finalized; the rerun
  builds what is missing and only that, and the result equals the local
  chunked build."""
  _beam()
  records = str(tmp_path / "beam")
  config = _config(data_root, records, chunk_frames=CHUNK, engine="beam",
                   workers=1)
  serialize = schema.serialize

  def dies_in_test_01_second_chunk(feats, obj):
    # Frame 13 is no training frame (stride 5): test/01, its second chunk.
    if obj["video_id"] == "01" and obj["frame_index"] == 13:
      raise RuntimeError("worker died")
    return serialize(feats, obj)

  monkeypatch.setattr(schema, "serialize", dies_in_test_01_second_chunk)
  with pytest.raises(Exception, match="worker died"):
    steps.build_records(config)
  victim = os.path.join(records, schema.shard_filename("test", 5, 8))
  assert not os.path.exists(victim)
  assert not os.path.exists(os.path.join(records, "meta", "test",
                                         "01@12-24.json"))
  assert not os.path.exists(os.path.join(records, "dataset_info.json"))
  assert not [f for f in os.listdir(records) if f.endswith(".incomplete")]
  done = {(s, f): os.stat(os.path.join(records, "meta", s, f)).st_mtime_ns
          for s in ("train", "test")
          for f in os.listdir(os.path.join(records, "meta", s))}
  assert done  # some units finished before the failure

  monkeypatch.setattr(schema, "serialize", serialize)
  steps.build_records(config)
  for (split, f), mtime in done.items():  # finished units were not rebuilt
    assert os.stat(os.path.join(records, "meta", split, f)).st_mtime_ns == mtime
  reference = str(tmp_path / "local_chunked")
  builder.build(_config(data_root, reference, chunk_frames=CHUNK))
  assert _shards(records) == _shards(reference)
  with open(os.path.join(records, "dataset_info.json")) as a, \
      open(os.path.join(reference, "dataset_info.json")) as b:
    assert json.load(a) == json.load(b)


@pytest.mark.slow
def test_beam_build_of_a_ped2_subset_equals_the_local_one(tmp_path):
  """Real frames, YOLOv3-tiny and the Lite0 teacher (configs/ped2_cpu.py) on
  2 training + 2 test videos of UCSD Ped2: the Beam build (DirectRunner, 2
  processes) writes the local build's shards byte for byte (marked slow: a
  few minutes on 2 cores; ``pytest -m slow -k ped2_subset``)."""
  from tests.paths import PED2  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(PED2, "test")):
    pytest.skip(f"{PED2} not available")
  _beam()
  root = tmp_path / "ped2"
  for split, kind, ext in (("train", None, None), ("test", None, None),
                           ("test", "gt_frame", "npy"),
                           ("test", "gt_pixel", "npz")):
    folder = root / (kind or split)
    folder.mkdir(parents=True, exist_ok=True)
    for vid in ("01", "02"):
      name = f"{vid}.{ext}" if kind else vid
      src = os.path.join(PED2, kind or split, name)
      if not os.path.exists(folder / name):
        (folder / name).symlink_to(src)
  from configs import ped2_cpu  # pylint: disable=g-import-not-at-top
  metas = {}
  for engine in ("local", "beam"):
    config = ped2_cpu.get_config()
    config.data.root = str(root)
    config.data.records = str(tmp_path / engine)
    config.build.engine = engine
    config.build.workers = 2 if engine == "beam" else 1
    metas[engine] = steps.build_records(config)
  assert metas["local"]["test"]["num_objects"] > 100
  assert _shards(str(tmp_path / "beam")) == _shards(str(tmp_path / "local"))
  for split in ("train", "test"):
    got, want = (_meta(str(tmp_path / e), split) for e in ("beam", "local"))
    assert got == want, split
  size = sum(map(len, _shards(str(tmp_path / "local")).values()))
  objects = sum(m["num_objects"] for m in metas["local"].values())
  print({e: {s: (m["num_frames"], m["num_objects"], round(m["build_seconds"], 1))
             for s, m in metas[e].items()} for e in metas},
        f"{size / objects:.0f} bytes per object")
