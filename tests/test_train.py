"""Trainer (in process): loss falls, outputs per the interface contract, exact
resume, non-finite guard."""

import functools
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ssmtl_jax.data import input_pipeline
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib
from ssmtl_jax.train import trainer
from tests import record_helpers


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("records"))
  record_helpers.write_records(path, num_videos=2, objects_per_video=16)
  return path


def _restore(workdir, step=None):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mngr.latest_step() if step is None else step
  return step, mngr.restore(step, args=ocp.args.StandardRestore())


def test_loss_decreases_on_a_fixed_batch(records):
  config = record_helpers.tiny_config(records)
  config.optim.schedule = "constant"
  info = input_pipeline.records_info(records, "train")
  cfg = tasks_lib.StepConfig.from_config(config, info)
  model = network.create_model(config, kd_outputs=info.kd_outputs, channels=1)
  tx = step_lib.create_optimizer(config, 30)
  state = step_lib.create_train_state(
      jax.random.PRNGKey(0), model=model, tx=tx,
      views=network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                             crop_size=info.crop_size,
                             channels=info.channels))
  batch = next(input_pipeline.train_iterator(
      info, global_batch=16, num_pipelines=1, seed=0, start_step=0,
      shuffle_buffer=4))
  mesh = sharding.create_mesh()
  step = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=model, tx=tx, cfg=cfg), mesh)
  batch = sharding.global_batch(batch, mesh)
  state = jax.device_put(state, sharding.replicated(mesh))
  rng = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, rng)
    losses.append({k: float(v) for k, v in metrics.items()})
  first, last = losses[0], np.mean([m["loss"] for m in losses[-3:]])
  assert last < 0.7 * first["loss"], (first, losses[-1])
  assert losses[-1]["mbp_loss"] < first["mbp_loss"]
  assert losses[-1]["kd_loss"] < first["kd_loss"]


def test_trainer_outputs_contract(records, tmp_path):
  workdir = str(tmp_path / "wd")
  config = record_helpers.tiny_config(records, total_steps=4)
  summary = trainer.train(config, workdir)
  with open(os.path.join(workdir, "train_summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(summary))
  assert on_disk["step"] == 4 and on_disk["num_devices"] == 8
  assert on_disk["num_processes"] == 1 and on_disk["parallelism"] == "jit"
  assert set(on_disk["losses"]) == {"total", "aot", "mi", "mbp", "kd"}
  assert all(np.isfinite(v) for v in on_disk["losses"].values())
  assert on_disk["steps_per_sec"] > 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


def test_disabled_task_reports_null_loss(records, tmp_path):
  config = record_helpers.tiny_config(records, total_steps=2, **{
      "tasks.aot.weight": 0.0, "tasks.kd.weight": 0.0})
  summary = trainer.train(config, str(tmp_path))
  assert summary["losses"]["aot"] is None and summary["losses"]["kd"] is None
  assert summary["losses"]["mi"] > 0
  _, restored = _restore(str(tmp_path))
  assert sorted(restored["params"]) == ["backbone", "heads_mbp", "heads_mi"]


def test_pmap_resume_continues_exactly(records, tmp_path):
  """(jit: test_train_process.py kills a run with SIGKILL and resumes it.)"""
  kw = {"parallelism": "pmap", "optim.schedule": "constant"}
  straight = str(tmp_path / "straight")
  trainer.train(
      record_helpers.tiny_config(records, total_steps=6, **kw), straight)
  resumed = str(tmp_path / "resumed")
  trainer.train(
      record_helpers.tiny_config(records, total_steps=4, **kw), resumed)
  summary = trainer.train(
      record_helpers.tiny_config(records, total_steps=6, **kw), resumed)
  assert summary["step"] == 6
  _, a = _restore(straight, 6)
  _, b = _restore(resumed, 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
