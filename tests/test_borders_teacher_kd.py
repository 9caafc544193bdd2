"""The accuracy fixes: test objects up to the video borders (and border frames
scored from their neighbours), the classifier teacher on full-resolution
crops, the two distillation parts balanced in the loss, both macro-AUC
conventions, and eval settings chosen on a validation split."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmtl_jax import validate
from ssmtl_jax.base import errors
from ssmtl_jax.base import schema
from ssmtl_jax.data import builder
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.data import synthetic
from ssmtl_jax.evaluation import evaluator as ev
from ssmtl_jax.evaluation import frame_scoring
from ssmtl_jax.evaluation import metrics
from ssmtl_jax.model import tasks
from ssmtl_jax.perception import cubes
from ssmtl_jax.perception import objects
from ssmtl_jax.perception import video_io
from ssmtl_jax.train import trainer
from tests import record_helpers

FRAMES, W, C = 20, 3, 1


# --------------------------------------------------------------------------
# Sliding windows with a context smaller than the half window.


def _frames(n):
  return [np.full((2, 3, 1), i, np.uint8) for i in range(n)]


def test_sliding_windows_context_reaches_the_borders():
  got = list(cubes.sliding_windows(_frames(10), 3, context=1))
  assert [t for t, _ in got] == list(range(1, 9))
  for t, window in got:
    want = np.clip(np.arange(t - 3, t + 4), 0, 9)
    np.testing.assert_array_equal(window[:, 0, 0, 0], want)
  # context = W is the old policy: full windows only, same arrays.
  full = list(cubes.sliding_windows(_frames(10), 3))
  assert [t for t, _ in full] == [3, 4, 5, 6]
  for (t, a), (u, b) in zip(full, cubes.sliding_windows(_frames(10), 3, 3)):
    assert t == u
    np.testing.assert_array_equal(a, b)
  # Short videos: a centre needs C real frames on each side.
  assert [t for t, _ in cubes.sliding_windows(_frames(2), 3, 1)] == []
  assert [t for t, _ in cubes.sliding_windows(_frames(3), 3, 1)] == [1]
  with pytest.raises(ValueError, match="context"):
    list(cubes.sliding_windows(_frames(3), 3, 4))


# --------------------------------------------------------------------------
# The builder: test split with context C, training with the whole window;
# teacher statistics in the split metadata.


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("borders"))
  synthetic.generate(root, seed=3, num_train=1, num_test=1, num_frames=FRAMES,
                     height=60, width=80, channels=1, objects_per_frame=2)
  return root


def _config(root, records):
  config = record_helpers.file_detections_config(root, records, half_window=W)
  config.tasks.seq_half = C
  return config


@pytest.fixture(scope="module")
def built(data_root, tmp_path_factory):
  records = str(tmp_path_factory.mktemp("records") / "r")
  return records, builder.build(_config(data_root, records))


def _read(records, split, keys):
  info = input_pipeline.records_info(records, split)
  out = {k: [] for k in keys}
  for b in input_pipeline.eval_dataset(info, batch_size=64,
                                       keys=keys).as_numpy_iterator():
    for k in keys:
      out[k].append(b[k])
  return {k: np.concatenate(v) for k, v in out.items()}


def test_test_objects_reach_the_borders_training_keeps_whole_windows(
    data_root, built):
  records, metas = built
  assert (metas["train"]["context"], metas["test"]["context"]) == (W, C)
  train_t = _read(records, "train", ("frame_index",))["frame_index"]
  assert train_t.min() >= W and train_t.max() < FRAMES - W
  test = _read(records, "test", ("frame_index", "box", "crops"))
  t_all = test["frame_index"]
  assert t_all.min() == C and t_all.max() == FRAMES - C - 1
  src = video_io.list_videos(data_root, "test")[0]
  frames = np.stack(list(video_io.iter_frames(src, 1)))
  for t, box, crops in zip(t_all, test["box"], test["crops"]):
    # Every stored frame is the box cut from frame t+k, clamped to the video.
    idx = np.clip(np.arange(t - W, t + W + 1), 0, FRAMES - 1)
    want = cubes.crop_cube(frames[idx], box, size=16, min_size=4.0)
    np.testing.assert_array_equal(crops, want)


def test_teacher_std_in_the_metadata_matches_numpy(built):
  records, metas = built
  det = _read(records, "train", ("teacher_det",))["teacher_det"].astype(
      np.float64)
  want = np.sqrt(det.var(axis=0).mean())
  assert metas["train"]["teacher_std"]["det"] == pytest.approx(want, rel=1e-9)
  assert "cls" not in metas["train"]["teacher_std"]  # classifier 'none'


def test_changing_test_context_leaves_training_records_valid(
    data_root, tmp_path):
  records = str(tmp_path / "r")
  config = _config(data_root, records)
  builder.build(config)
  shard = [f for f in os.listdir(records) if "train.tfrecord" in f][0]
  mtime = os.stat(os.path.join(records, shard)).st_mtime_ns
  config.build.test_context = W  # the old policy for the test split
  with pytest.raises(errors.ConfigError, match="other settings"):
    builder.build(config, ("test",))
  builder.build(config, ("train",))
  assert os.stat(os.path.join(records, shard)).st_mtime_ns == mtime


# --------------------------------------------------------------------------
# Border frames take the nearest scored frame's map.


def test_border_frames_take_the_nearest_scorable_frame():
  num, c = 12, 2
  boxes = np.tile([[10.0, 10.0, 20.0, 20.0]], (num - 2 * c, 1))
  frame_index = np.arange(c, num - c)
  scores = np.linspace(1.0, 5.0, num - 2 * c)
  kwargs = dict(sigma=0.0, scale=1.0, background=0.0)
  got = frame_scoring.video_frame_scores(boxes, frame_index, scores, num, 30, 30,
                                   context=c, **kwargs)
  np.testing.assert_allclose(got[c:num - c], scores)
  np.testing.assert_allclose(got[:c], scores[0])
  np.testing.assert_allclose(got[num - c:], scores[-1])
  # Without the context the border frames hold the background.
  old = frame_scoring.video_frame_scores(boxes, frame_index, scores, num, 30, 30,
                                   **kwargs)
  np.testing.assert_allclose(old[:c], 0.0)
  # A video too short for any object is left alone.
  short = frame_scoring.fill_borders(np.zeros((4, 2, 2), np.float32) + 7, 2)
  np.testing.assert_array_equal(short, 7)


# --------------------------------------------------------------------------
# The classifier teacher sees the object at its own resolution.


def test_classifier_input_is_cut_from_the_full_resolution_frame():
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 256, (60, 80, 1), np.uint8) for _ in range(7)]
  box = np.array([10.3, 5.6, 40.2, 50.7], np.float32)
  dets = np.concatenate([box, [0.9, 0.0], [0.9]]).astype(np.float32)[None]
  seen = []

  def classifier(images):
    seen.append(images)
    return np.zeros((len(images), 5), np.float32)

  def run(crop):
    seen.clear()
    objs = list(objects.iter_objects(
        [(f, dets if t == 3 else dets[:0]) for t, f in enumerate(frames)],
        video_id="v", half_window=3, crop_size=16, padding=0.1,
        min_box_size=4.0, square=False, classifier=classifier,
        classifier_crop=crop))
    assert len(objs) == 1 and "_teacher_input" not in objs[0]
    return objs[0], seen[0][0]

  obj, image = run(48)
  want = cubes.crop_cube(frames[3][None], box, size=48, padding=0.1)[0]
  assert image.shape == (48, 48, 1)
  np.testing.assert_array_equal(image, want)
  # The stored cube is unchanged by where the teacher's input comes from.
  old_obj, old_image = run(None)
  np.testing.assert_array_equal(old_image, obj["crops"][3])
  np.testing.assert_array_equal(old_obj["crops"], obj["crops"])


# --------------------------------------------------------------------------
# Distillation: both teachers move the gradient.


def _kd_config(records, balance="target_std", loss="l1"):
  config = record_helpers.tiny_config(records)
  config.tasks.kd.balance = balance
  config.tasks.kd.loss = loss
  return config


def _records_with_std(tmp_path, std):
  records = str(tmp_path / "r")
  record_helpers.write_records(records, num_det=4, num_cls=3)
  meta = {"half_window": 6, "videos": {}}
  if std is not None:
    meta["teacher_std"] = std
  schema.write_json_atomic(schema.meta_path(records, "train"), meta)
  return records


def test_kd_scales_come_from_the_training_metadata(tmp_path):
  records = _records_with_std(tmp_path, {"det": 0.05, "cls": 2.0})
  info = input_pipeline.records_info(records, "train")
  assert tasks.kd_scales(_kd_config(records), info) == (0.05, 2.0)
  assert tasks.kd_scales(_kd_config(records, loss="l2"), info) == (
      pytest.approx(0.0025), 4.0)
  assert tasks.kd_scales(_kd_config(records, "none"), info) == (1.0, 1.0)
  cfg = tasks.StepConfig.from_config(_kd_config(records), info)
  assert cfg.kd_scales == (0.05, 2.0)
  old = _records_with_std(tmp_path / "old", None)
  with pytest.raises(errors.ConfigError, match="rebuild the records"):
    tasks.kd_scales(_kd_config(old), input_pipeline.records_info(old, "train"))


def test_both_kd_parts_move_the_gradient():
  num_det, num_cls, b = 80, 1000, 4
  rng = np.random.default_rng(0)
  target = jnp.asarray(rng.normal(size=(b, num_det + num_cls)), jnp.float32)
  pred = target + jnp.asarray(rng.normal(size=target.shape), jnp.float32)

  def share(scales):
    g = jax.grad(lambda p: tasks.kd_discrepancy(
        p, target, num_det, "l1", scales).mean())(pred)
    det, cls = jnp.linalg.norm(g[:, :num_det]), jnp.linalg.norm(g[:, num_det:])
    return float(det / (det + cls))

  # Unbalanced, the detector's 80 outputs get a per-output gradient 1000/80
  # times the logits'; with Ped2-like target spreads (probabilities ~0.03,
  # logits ~1.7) their error is then divided by very different scales.
  scales = (0.03, 1.7)
  g = jax.grad(lambda p: tasks.kd_discrepancy(
      p, target, num_det, "l1", scales).mean())(pred)
  np.testing.assert_allclose(np.abs(g[:, :num_det]), 1 / (b * num_det * 0.03),
                             rtol=1e-5)
  np.testing.assert_allclose(np.abs(g[:, num_det:]), 1 / (b * num_cls * 1.7),
                             rtol=1e-5)
  assert share(scales) > share((1.0, 1.0))
  # The loss's value: each part's mean error over its scale.
  parts = tasks.kd_parts(pred, target, num_det, "l1", scales)
  want_det = np.abs(np.asarray(pred - target))[:, :num_det].mean(1) / 0.03
  np.testing.assert_allclose(parts["det"], want_det, rtol=1e-5)


# --------------------------------------------------------------------------
# Macro AUC, both conventions.


def test_macro_auc_single_class_as_one():
  per_video = {"a": 0.8, "b": None, "c": 0.6}
  assert metrics.macro_auc_single_as_one(per_video) == pytest.approx(0.8)
  assert metrics.macro_auc_single_as_one({}) is None


# --------------------------------------------------------------------------
# Settings chosen on a validation split.


@pytest.fixture(scope="module")
def val_job(data_root, tmp_path_factory):
  """A 'val' split of other videos than the test split's (the test video
  of another synthetic set, as 'val_00', with its labels and detections)
  and a model trained for a few steps."""
  base = tmp_path_factory.mktemp("val")
  other = str(base / "other")
  synthetic.generate(other, seed=4, num_train=1, num_test=1, num_frames=FRAMES,
                     height=60, width=80, channels=1, objects_per_frame=2)
  (other_id,) = os.listdir(os.path.join(other, "test"))
  root = str(base / "root")
  os.makedirs(os.path.join(root, "val"))
  for name in ("train", "test"):
    os.symlink(os.path.join(data_root, name), os.path.join(root, name))
  os.symlink(os.path.join(other, "test", other_id),
             os.path.join(root, "val", "val_00"))
  for name in ("gt_frame", "gt_pixel"):
    os.makedirs(os.path.join(root, name))
    for f in os.listdir(os.path.join(data_root, name)):
      os.symlink(os.path.join(data_root, name, f), os.path.join(root, name, f))
    for f in os.listdir(os.path.join(other, name)):
      if f.startswith(other_id + "."):
        os.symlink(os.path.join(other, name, f), os.path.join(
            root, name, "val_00" + f[len(other_id):]))
  os.makedirs(os.path.join(root, "detections", "val"))
  for split in ("train", "test"):
    os.symlink(os.path.join(data_root, "detections", split),
               os.path.join(root, "detections", split))
  os.symlink(os.path.join(other, "detections", "test", other_id + ".csv"),
             os.path.join(root, "detections", "val", "val_00.csv"))
  config = _config(root, str(base / "records"))
  config.data.val_split = "val"
  config.model.widths = (4,)
  config.tasks.max_gap = 2
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  config.total_steps = 3
  config.log_every_steps = 3
  config.checkpoint.every_steps = 3
  config.progress_bar = False
  config.eval.after_training = False
  config.eval.batch_size = 16
  config.eval.plots = False
  metas = builder.build(config)
  assert set(metas) == {"train", "test", "val"}
  workdir = str(base / "wd")
  trainer.train(config, workdir)
  return config, workdir


def test_validate_chooses_on_the_val_split_only(val_job, monkeypatch):
  config, workdir = val_job
  grid = {"normalize": ("zscore", "minmax"), "temporal_sigma": (0.0, 2.0)}
  read = []  # the splits whose records were opened
  real_info = input_pipeline.records_info
  monkeypatch.setattr(input_pipeline, "records_info",
                      lambda d, split: read.append(split) or real_info(d, split))
  result = validate.select(config, workdir, grid=grid)
  monkeypatch.undo()
  assert "test" not in read and "val" in read, read
  assert result["num_videos"] == 1  # val_00, not the test split's video
  assert len(result["rows"]) == 4 and result["split"] == "val"
  best = max(r["micro_auc"] for r in result["rows"])
  assert result["chosen_micro_auc"] == best
  assert result["flags"] == [f"--config.eval.{k}={v}"
                             for k, v in result["chosen"].items()]
  saved = json.loads(open(os.path.join(workdir, "eval_val",
                                       "selection.json")).read())
  assert saved["chosen"] == result["chosen"]
  # Nothing of the test split was scored or written.
  assert not os.path.exists(os.path.join(workdir, "eval"))
  # The chosen row's number is what the evaluator reports for that setting
  # on the val split (the same path, not a copy).
  chosen = config.copy_and_resolve_references()
  with chosen.unlocked():
    for k, v in result["chosen"].items():
      chosen.eval[k] = v
  report = ev.evaluate_checkpoint(chosen, workdir, split="val")
  assert report["micro_auc"] == pytest.approx(result["chosen_micro_auc"])
  assert report["split"] == "val"
  assert os.path.exists(os.path.join(workdir, "eval_val", "report.json"))


def test_validate_needs_a_val_split(val_job):
  config, workdir = val_job
  config = config.copy_and_resolve_references()
  config.data.val_split = ""
  with pytest.raises(errors.ConfigError, match="config.data.val_split"):
    validate.select(config, workdir)


# --------------------------------------------------------------------------
# scripts/ped2_ablations.py: the old border handling, emulated exactly.


def test_ablation_emulates_records_built_with_the_old_border_policy(
    val_job, tmp_path):
  """Objects at W <= t < T-W of records built with C < W are exactly the
  objects of records built with C = W: the script's emulation of the old
  policy (keep those, context W) equals evaluating such records."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "ped2_ablations", os.path.join(os.path.dirname(__file__), "..",
                                     "scripts", "ped2_ablations.py"))
  ablations = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ablations)
  config, workdir = val_job
  new = ev.Evaluator(config, workdir)
  objs = new.objects
  frames = np.array([new.gt[v].frames for v in objs.video_id])
  keep = (objs.frame_index >= W) & (objs.frame_index < frames - W)
  assert 0 < keep.sum() < len(keep)
  emulated = ablations.row(new, new.settings, keep=keep, context=W)

  old_config = config.copy_and_resolve_references()
  old_config.data.records = str(tmp_path / "old_records")
  old_config.build.test_context = W
  builder.build(old_config)
  old = ev.Evaluator(old_config, workdir)
  np.testing.assert_array_equal(old.objects.frame_index,
                                objs.frame_index[keep])
  for task, values in old.objects.scores.items():
    np.testing.assert_allclose(values, objs.scores[task][keep], rtol=1e-6,
                               atol=1e-7)
  assert emulated["micro"] == pytest.approx(old.outputs.metrics["micro_auc"])
  assert emulated["macro"] == pytest.approx(old.outputs.metrics["macro_auc"])


# --------------------------------------------------------------------------
# scripts/validate_build.py and scripts/video_analysis.py on the val job.


def _script(name):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(__file__), "..", "scripts",
                         f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_build_settings_are_chosen_on_the_val_split(val_job, tmp_path):
  """The run's own settings reuse its records; another combination builds
  the val split only (training records linked, test split not built, the
  run's records untouched) and is scored by the run's checkpoint."""
  sweep = _script("validate_build")
  config, workdir = val_job
  records_before = sorted(os.listdir(config.data.records))
  own = sweep.run_combination(
      config, workdir, {"build.padding": config.build.padding},
      str(tmp_path / "sweep"))
  assert own["runs_own_build"] and own["records"] == config.data.records
  assert own["recall_videos"] == ["val_00"]  # The val video has masks.
  selection = validate.select(config, workdir)
  assert own["val_micro_auc"] == selection["chosen_micro_auc"]
  other = sweep.run_combination(config, workdir, {"build.padding": 0.5},
                                str(tmp_path / "sweep"))
  assert not other["runs_own_build"]
  records = other["records"]
  assert records.startswith(str(tmp_path / "sweep"))
  assert os.path.exists(os.path.join(records, "meta", "val.json"))
  assert not os.path.exists(os.path.join(records, "meta", "test.json"))
  assert os.path.islink(os.path.join(records, "meta", "train.json"))
  meta = json.load(open(os.path.join(records, "meta", "val.json")))
  assert meta["settings"]["padding"] == 0.5
  assert sorted(os.listdir(config.data.records)) == records_before
  # Wider boxes hold the same objects, so the val AUC is computed on them.
  assert other["objects"] == own["objects"]
  assert 0 <= other["val_micro_auc"] <= 1
  rows = [dict(own, val_micro_auc=0.5), dict(other, val_micro_auc=0.6)]
  assert sweep.choose(rows) is rows[1]
  rows[0]["val_micro_auc"] = 0.6
  rows[0]["region_recall"] = rows[1]["region_recall"]
  assert sweep.choose(rows) is rows[0]  # Tie: the earlier row.
  with pytest.raises(errors.ConfigError, match="--grid: no config key"):
    sweep.parse_grid('{"build.nothing": [1]}', config)
  with pytest.raises(errors.ConfigError, match="--grid must be"):
    sweep.parse_grid('{"build.padding": 0.5}', config)


def test_video_analysis_frame_auc_is_the_evaluators(val_job):
  """The analysis' combined frame AUC per video is the evaluator's, and its
  object counts add up."""
  analysis = _script("video_analysis")
  config, workdir = val_job
  evaluator = ev.Evaluator(config, workdir)
  (vid,) = evaluator.gt
  det_class = analysis._det_class(config, "test", evaluator.objects)  # pylint: disable=protected-access
  r = analysis.analyse(evaluator, vid, 0.2, det_class)
  assert r["tasks"]["combined"]["frame_auc"] == pytest.approx(
      evaluator.outputs.per_video[vid])
  assert 0 < r["objects_on_anomaly"] < r["objects"] == int(
      (evaluator.objects.video_id == vid).sum())
  assert r["proposals"] == 0  # File detections only.
  assert "combined" in r["tasks"] and "mbp" in r["tasks"]
