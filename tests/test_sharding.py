"""jit over 8 fake CPU devices == pmap over 8 == one device, for the same global batches."""

import functools

import jax
import numpy as np
import pytest

from ssmtl_jax.data import input_pipeline
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib
from tests import record_helpers

STEPS, BATCH = 3, 16


def _setup(tmp_path, bn_axis_name):
  info = input_pipeline.RecordsInfo(
      records_dir="", split="train", files=("a",), shard_lengths=(BATCH,),
      window=13, crop_size=16, channels=1, num_det=4, num_cls=3)
  config = record_helpers.tiny_config(str(tmp_path))
  cfg = tasks_lib.StepConfig.from_config(config, info)
  model = network.create_model(config, kd_outputs=info.kd_outputs, channels=1,
                              bn_axis_name=bn_axis_name)
  tx = step_lib.create_optimizer(config, STEPS)
  state = step_lib.create_train_state(
      jax.random.PRNGKey(0), model=model, tx=tx,
      views=network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                             crop_size=info.crop_size,
                             channels=info.channels))
  step_fn = functools.partial(step_lib.train_step, model=model, tx=tx, cfg=cfg)
  return state, step_fn


def _batches():
  rng = np.random.default_rng(0)
  return [{"crops": rng.integers(0, 255, (BATCH, 13, 16, 16, 1), dtype=np.uint8),
           "teacher_det": rng.random((BATCH, 4), dtype=np.float32),
           "teacher_cls": rng.normal(size=(BATCH, 3)).astype(np.float32)}
          for _ in range(STEPS)]


def _run_jit(tmp_path, devices):
  state, step_fn = _setup(tmp_path, None)
  mesh = jax.sharding.Mesh(np.asarray(devices), (sharding.DATA_AXIS,))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = sharding.jit_train_step(step_fn, mesh)
  rng = jax.device_put(jax.random.PRNGKey(1), sharding.replicated(mesh))
  losses = []
  for batch in _batches():
    state, metrics = step(state, jax.device_put(batch, sharding.data_sharding(mesh)), rng)
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), losses


def _run_pmap(tmp_path):
  state, step_fn = _setup(tmp_path, sharding.PMAP_AXIS)
  step = sharding.pmap_train_step(step_fn)
  state = sharding.replicate_for_pmap(state)
  losses = []
  for batch in _batches():
    state, metrics = step(state, sharding.split_for_pmap(batch), jax.random.PRNGKey(1))
    losses.append(float(metrics["loss"][0]))
  return sharding.unreplicate_from_pmap(state), losses


def _assert_close(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  return _run_jit(tmp_path_factory.mktemp("one"), jax.devices()[:1])


def test_eight_fake_devices():
  assert jax.device_count() == 8


def test_jit_on_8_devices_equals_1_device(tmp_path, one_device):
  state8, losses8 = _run_jit(tmp_path, jax.devices())
  state1, losses1 = one_device
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  assert losses1[-1] != losses1[0]  # it trained
  _assert_close(state8.params, state1.params)
  _assert_close(state8.batch_stats, state1.batch_stats)
  assert int(state8.step) == STEPS


def test_pmap_on_8_devices_equals_1_device(tmp_path, one_device):
  state_p, losses_p = _run_pmap(tmp_path)
  state1, losses1 = one_device
  np.testing.assert_allclose(losses_p, losses1, rtol=1e-5)
  _assert_close(state_p.params, state1.params)
  _assert_close(state_p.batch_stats, state1.batch_stats)
  _assert_close(state_p.opt_state, state1.opt_state)
