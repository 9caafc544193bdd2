"""The model bundle (ssmtl_jax.export / bundle.py) and the streaming scorer
(ssmtl_jax.score) on a tiny synthetic model: the bundle round trip, weights
with other hashes refused, streaming scores equal to the offline evaluator's
path bit for bit, damaged inputs giving valid partial outputs, and memory
that does not grow with the stream's length (peak RSS of a subprocess)."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from ssmtl_jax.base import errors
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.evaluation import evaluator
from ssmtl_jax.evaluation import frame_scoring
from ssmtl_jax.evaluation import inference
from ssmtl_jax.jobs import runner
from ssmtl_jax.perception import detections as detections_lib
from ssmtl_jax.perception import video_io
from ssmtl_jax.serve import bundle as bundle_lib
from ssmtl_jax.serve import sources
from ssmtl_jax.serve import stream
from tests.paths import REPO


def _config():
  config = synthetic_config.get_config()
  config.synthetic.num_train, config.synthetic.num_test = 2, 2
  config.synthetic.num_frames = 40
  config.build.crop_size = 16
  config.model.widths = (4, 8, 8)
  config.input.batch_size = 16
  config.total_steps = 20
  config.checkpoint.every_steps = 20
  config.progress_bar = False
  config.eval.after_training = False
  return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stream_job"))
  config = _config()
  runner.run(config, workdir)
  out = os.path.join(workdir, "bundle")
  meta = bundle_lib.export(config, workdir, out)
  return config, workdir, out, meta


def _options(**kw):
  return stream.Options(**{"progress": False, "plot": False, **kw})


def _scores_csv(out):
  with open(os.path.join(out, "scores.csv"), encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_bundle_round_trip(exported):
  config, workdir, out, meta = exported
  assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)
  b = bundle_lib.load(out)
  assert b.step == 20 and meta["step"] == 20
  restored = inference.restore_scorer(config, workdir)
  for x, y in zip(jax.tree.leaves(b.variables),
                  jax.tree.leaves(jax.device_get(restored.variables))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert b.cfg == restored.cfg
  # Calibration = the evaluator's z-score statistics (same objects, same
  # function), computed on training objects only.
  ev = evaluator.Evaluator(config, workdir)
  assert b.task_stats == ev.train_stats()
  cal = meta["calibration"]
  assert cal["split"] == "train" and cal["objects"] > 0
  assert cal["background"] == cal["combined"]["min"]
  assert cal["combined"]["min"] <= cal["threshold"] <= cal["combined"]["max"]
  # Self-contained: loads from a copy, with the workdir gone from view.
  copy = os.path.join(os.path.dirname(out), "moved_bundle")
  shutil.copytree(out, copy)
  again = bundle_lib.load(copy)
  for x, y in zip(jax.tree.leaves(again.variables),
                  jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(bundle_lib.BundleError, match="exists"):
    bundle_lib.export(config, workdir, out)


def test_weights_with_other_hashes_are_refused(exported, tmp_path):
  _, _, out, _ = exported
  b = bundle_lib.load(out)
  good, bad = tmp_path / "good.weights", tmp_path / "bad.weights"
  good.write_bytes(b"the detector it was trained with")
  bad.write_bytes(b"another detector")
  from ssmtl_jax.base import files  # pylint: disable=g-import-not-at-top
  b.meta["build"]["det_weights_sha256"] = files.sha256_file(good)
  b.check_weights("detector", str(good))
  with pytest.raises(bundle_lib.BundleError, match="bad.weights: sha256"):
    b.check_weights("detector", str(bad))
  b.meta["build"]["classifier_sha256"] = files.sha256_file(good)
  with pytest.raises(bundle_lib.BundleError, match="differs from the classifier"):
    b.check_weights("classifier", str(bad))
  # Through the command line: one line, exit status 2, nothing scored.
  edited = tmp_path / "bundle"
  shutil.copytree(out, edited)
  meta = json.loads((edited / "bundle.json").read_text())
  meta["build"].update(detector_kind="yolov3",
                       det_weights_sha256=files.sha256_file(good))
  (edited / "bundle.json").write_text(json.dumps(meta))
  cfg = tmp_path / "net.cfg"
  cfg.write_text("[net]\n")
  frames = tmp_path / "frames"  # a good input: the input is checked first
  frames.mkdir()
  cv2.imwrite(str(frames / "000.png"), np.zeros((24, 32), np.uint8))
  proc = subprocess.run(
      [sys.executable, "-m", "ssmtl_jax.score", f"--bundle={edited}",
       f"--input={frames}", f"--out={tmp_path / 'o'}",
       f"--detector_cfg={cfg}", f"--detector_weights={bad}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "bad.weights: sha256" in last
  assert not (tmp_path / "o").exists()


def test_streaming_equals_the_offline_path(exported, tmp_path):
  config, workdir, out, _ = exported
  root = config.data.root
  ev = evaluator.Evaluator(config, workdir)
  objs = ev.objects
  # The expected scores come from the config and the evaluator's path, not
  # from the bundle: its stored settings, statistics and background must
  # agree with them for the test to pass (a scaled task weight or a shifted
  # background in the bundle fails it).
  s = dataclasses.replace(frame_scoring.Settings.from_config(config),
                          normalize="zscore")
  _, combined = ev.object_scores(s)
  scorer = inference.restore_scorer(config, workdir)
  train = scorer.score_split(
      input_pipeline.records_info(config.data.records, "train"),
      int(config.eval.batch_size),
      max_objects=int(config.eval.norm_max_objects))
  _, train_combined = frame_scoring.object_anomaly_scores(train.scores, s,
                                                    ev.train_stats())
  background = float(train_combined.min())  # frames without objects
  for vid, latency in (("test_00", 1), ("test_01", 5)):
    src = video_io.list_videos(root, "test")
    folder = next(v.path for v in src if v.video_id == vid)
    o = str(tmp_path / vid)
    summary = stream.run(out, folder, o, _options(
        detections=os.path.join(root, "detections", "test", f"{vid}.csv"),
        max_latency_frames=latency, video=(vid == "test_00"), plot=True))
    frames, height, width = ev.videos[vid]
    m = objs.video_id == vid
    want = frame_scoring.video_frame_scores(
        objs.box[m], objs.frame_index[m], combined[m], frames, height, width,
        sigma=s.sigma, scale=s.map_scale, background=background,
        temporal_sigma=s.temporal_sigma, context=ev.context)
    rows = _scores_csv(o)
    got = np.asarray([float(r["score"]) for r in rows], np.float32)
    # The same objects, crops, model, calibration and frame-score path; the
    # model's float32 outputs can differ in the last bit with the batch an
    # object is scored in (offline: eval.batch_size objects; here: the
    # objects of max_latency_frames frames), nothing more.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert [int(r["frame"]) for r in rows] == list(range(frames))
    assert sum(int(r["objects"]) for r in rows) == int(m.sum())
    assert summary["frames"] == frames and summary["ended"] == "end of input"
    assert summary["latency_frames"]["smoothing"] == int(4 * s.sigma[0] + .5)
    alerts = [int(r["alert"]) for r in rows]
    assert alerts == [int(x > summary["threshold"]) for x in got]
  assert os.path.getsize(tmp_path / "test_00" / "annotated.mp4") > 10_000
  assert os.path.getsize(tmp_path / "test_00" / "scores.png") > 5_000
  events = [json.loads(line) for line in
            open(tmp_path / "test_00" / "events.jsonl", encoding="utf-8")]
  for e in events:
    assert e["start_frame"] <= e["peak_frame"] <= e["end_frame"]
    assert e["peak_score"] > summary["threshold"]


def _write_avi(path, frames):
  h, w = frames[0].shape[:2]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 or
                 f.shape[2] == 1 else f)
  writer.release()


def test_damaged_inputs_give_valid_partial_outputs(exported, tmp_path):
  config, _, out, _ = exported
  root = config.data.root
  src = video_io.list_videos(root, "test")[0]
  dets = os.path.join(root, "detections", "test", f"{src.video_id}.csv")
  frames = list(video_io.iter_frames(src, 1))
  # A video file cut short: the frames before the cut are scored to the end.
  avi = str(tmp_path / "cut.avi")
  _write_avi(avi, frames)
  data = open(avi, "rb").read()
  open(avi, "wb").write(data[:int(len(data) * 0.6)])
  o = str(tmp_path / "cut")
  summary = stream.run(out, avi, o, _options(detections=dets))
  rows = _scores_csv(o)
  assert 0 < summary["frames"] < len(frames)
  assert len(rows) == summary["frames"]
  assert all(np.isfinite(float(r["score"])) for r in rows)
  assert summary["ended"] != "end of input" or summary["declared_frames"] in (
      None, summary["frames"])
  # A corrupt frame inside a frame folder repeats the previous frame.
  folder = tmp_path / "frames"
  shutil.copytree(src.path, folder)
  victim = sorted(os.listdir(folder))[10]
  (folder / victim).write_bytes(b"not an image")
  summary = stream.run(out, str(folder), str(tmp_path / "corrupt"),
                      _options(detections=dets))
  assert summary["corrupt_frames"] == 1
  assert summary["frames"] == len(frames) == len(_scores_csv(
      str(tmp_path / "corrupt")))
  # Not a video at all: one clear error, before any model work.
  text = tmp_path / "a.mp4"
  text.write_text("not a video")
  with pytest.raises(errors.UserError, match="a.mp4"):
    stream.run(out, str(text), str(tmp_path / "t"), _options(detections=dets))
  with pytest.raises(bundle_lib.BundleError, match="not a bundle"):
    stream.run(str(tmp_path), str(folder), str(tmp_path / "u"), _options())
  with pytest.raises(sources.ScoreInputError, match="--detections"):
    stream.run(out, str(folder), str(tmp_path / "v"), _options())


_RSS_SCRIPT = r"""
import resource, sys
from ssmtl_jax.serve import stream
stream.run(sys.argv[1], sys.argv[2], sys.argv[3], stream.Options(
    progress=False, plot=False, detections=sys.argv[4], max_latency_frames=16))
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_the_stream(exported, tmp_path):
  """Peak RSS of a subprocess scoring 300 and 1500 frames of the same
  looped synthetic video (one moving object per frame)."""
  config, _, out, _ = exported
  src = video_io.list_videos(config.data.root, "test")[0]
  frames = list(video_io.iter_frames(src, 1))
  rss = {}
  for n in (300, 1500):
    avi = str(tmp_path / f"long{n}.avi")
    _write_avi(avi, [frames[i % len(frames)] for i in range(n)])
    dets = str(tmp_path / f"dets{n}.csv")
    detections_lib.write_detections(
        dets, [(t, 10 + t % 50, 20, 40 + t % 50, 60, 0.9, 0)
               for t in range(n)])
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, out, avi, str(tmp_path / f"o{n}"),
         dets], cwd=REPO, capture_output=True, text=True, timeout=600,
        check=False, env={k: v for k, v in os.environ.items()
                          if k != "XLA_FLAGS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss[n] = int(proc.stdout.split("MAXRSS")[1].split()[0])   # KiB
    assert len(_scores_csv(str(tmp_path / f"o{n}"))) == n
  # 5x the frames: peak memory within 30 MiB (a stored frame is 19 KiB,
  # one float per frame kept would be 5 KiB; what must not grow is frames,
  # maps and objects).
  assert rss[1500] - rss[300] < 30 * 1024, rss


def test_batch_shapes_are_powers_of_two_up_to_the_batch():
  assert stream.batch_shapes(64, 1) == [1, 2, 4, 8, 16, 32, 64]
  assert stream.batch_shapes(64, 8) == [8, 16, 32, 64]
  assert stream.batch_shapes(100, 8) == [8, 16, 32, 64, 104]
  assert stream.batch_shapes(3, 8) == [8]


def test_close_waits_for_the_reader_before_releasing_the_capture(tmp_path):
  """Source.close stops the reader thread before the capture is released:
  releasing a cv2.VideoCapture under a thread inside its read() frees
  FFmpeg's buffers under it (a 'double free' abort was seen once when a
  scorer test failed mid-stream). Closed mid-stream, with the reader
  blocked on a full queue, over and over."""
  rng = np.random.default_rng(0)
  avi = str(tmp_path / "long.avi")
  _write_avi(avi, [rng.integers(0, 255, (48, 64), dtype=np.uint8)
                   for _ in range(200)])
  for k in range(20):
    src = sources.Source(avi, fps=None, stall_timeout_s=5.0, keep_rgb=True)
    src.start(1)
    for i, _ in enumerate(src.frames()):
      if i == k:
        break
    src.close()
    assert not src._thread.is_alive()  # pylint: disable=protected-access
    assert src._cap is None  # pylint: disable=protected-access
  # Closing before the reader started, and twice, is fine too.
  src = sources.Source(avi, fps=None, stall_timeout_s=5.0, keep_rgb=False)
  src.close()
  src.close()
