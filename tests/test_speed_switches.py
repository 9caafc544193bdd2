"""The speed switches of issue #15 compute the same maths: model.pool_impl
('argmax' vs 'reduce_window'), model.fuse_views (one interleaved backbone
call for the 7-frame views, with per-view batch norm) and their combination
with model.dtype, on the real model and train step, on one device and on the
8-device mesh (data-parallel jit), and GroupedBatchNorm against separate
nn.BatchNorm calls (also under pmap, where statistics are averaged over the
device axis).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.train import step as step_lib
from tests import test_options

_batch, _config, _Setup = (test_options._batch, test_options._config,  # pylint: disable=protected-access
                           test_options._Setup)  # pylint: disable=protected-access


def _close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32),
                               np.asarray(y, np.float32), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# max-pooling


@pytest.mark.parametrize("padding,shape", [
    ("VALID", (2, 3, 8, 8, 3)), ("VALID", (2, 3, 7, 9, 3)),
    ("SAME", (2, 3, 7, 9, 3)), ("SAME", (2, 3, 4, 4, 2))])
def test_pool_impls_same_values_and_gradient_routing(padding, shape):
  # Small integers: many ties inside windows. Both implementations send the
  # whole gradient to the first maximum of each window.
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, shape), jnp.float32)
  cot = jnp.asarray(np.random.default_rng(1).normal(
      size=network.max_pool_hw(x, padding, "argmax").shape), jnp.float32)

  def loss(impl, x):
    return jnp.sum(network.max_pool_hw(x, padding, impl) * cot)

  for impl in ("argmax", "reduce_window"):
    y = network.max_pool_hw(x, padding, impl)
    ref = nn.max_pool(x.reshape((-1,) + shape[2:]), (2, 2), strides=(2, 2),
                      padding=padding).reshape(y.shape)
    np.testing.assert_array_equal(y, ref)
  g_arg = jax.grad(functools.partial(loss, "argmax"))(x)
  g_rw = jax.grad(functools.partial(loss, "reduce_window"))(x)
  np.testing.assert_array_equal(g_arg, g_rw)
  # Each window's gradient lands on exactly one element.
  assert int(jnp.sum(g_rw != 0)) <= cot.size


# --------------------------------------------------------------------------
# GroupedBatchNorm


def _separate_bn(x_views, train):
  """nn.BatchNorm applied to each view in turn (one module, shared vars)."""

  class Separate(nn.Module):

    @nn.compact
    def __call__(self, views):
      bn = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        epsilon=1e-5, name="BatchNorm_0")
      return jnp.stack([bn(v) for v in views], axis=1)

  return Separate()


class _Grouped(nn.Module):
  groups: int
  train: bool
  axis_name: str = None

  @nn.compact
  def __call__(self, views):
    x = jnp.stack(views, axis=1)
    y = network.GroupedBatchNorm(self.groups, use_running_average=not self.train,
                                axis_name=self.axis_name,
                                name="BatchNorm_0")(
                                    x.reshape((-1,) + x.shape[2:]))
    return y.reshape(x.shape)


def _bn_views(seed=0, g=3, b=4):
  rng = np.random.default_rng(seed)
  # Different means and spreads per view: per-view statistics matter.
  return [jnp.asarray(rng.normal(i, 1 + i, (b, 3, 5, 5, 6)), jnp.float32)
          for i in range(g)]


@pytest.mark.parametrize("train_mode", [True, False])
def test_grouped_batch_norm_equals_separate_batch_norms(train_mode):
  views = _bn_views()
  ref_mod = _separate_bn(views, train_mode)
  ours = _Grouped(len(views), train_mode)
  variables = ref_mod.init(jax.random.PRNGKey(0), views)
  assert (jax.tree.structure(ours.init(jax.random.PRNGKey(0), views))
          == jax.tree.structure(variables))
  # Non-trivial running statistics and affine parameters.
  variables = jax.tree.map(lambda v: v + 0.3 * jnp.arange(v.size).reshape(
      v.shape) / v.size, variables)

  def run(mod, params, views):
    out, new = mod.apply({"params": params,
                          "batch_stats": variables["batch_stats"]},
                         views, mutable=["batch_stats"])
    return out, new["batch_stats"]

  (y_ref, s_ref), (y, s) = (run(ref_mod, variables["params"], views),
                            run(ours, variables["params"], views))
  _close(y, y_ref, rtol=1e-5, atol=1e-5)
  _close(s, s_ref)      # running averages: one update per view, in order
  cot = jnp.asarray(np.random.default_rng(2).normal(size=y.shape))

  def loss(mod, params, views):
    return jnp.sum(run(mod, params, views)[0] * cot)

  g_ref = jax.grad(functools.partial(loss, ref_mod), argnums=(0, 1))(
      variables["params"], views)
  g = jax.grad(functools.partial(loss, ours), argnums=(0, 1))(
      variables["params"], views)
  _close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_grouped_batch_norm_averages_statistics_over_the_pmap_axis():
  n = jax.local_device_count()
  if n < 2:
    pytest.skip("needs several devices (conftest forces 8 on the CPU)")
  views = _bn_views(b=2 * n)
  ours = _Grouped(len(views), True, "d")

  class SeparateP(nn.Module):

    @nn.compact
    def __call__(self, views):
      bn = nn.BatchNorm(use_running_average=False, momentum=0.9,
                        epsilon=1e-5, axis_name="d", name="BatchNorm_0")
      return jnp.stack([bn(v) for v in views], axis=1)

  variables = SeparateP().init(jax.random.PRNGKey(0), views)
  shard = lambda v: v.reshape((n, -1) + v.shape[1:])  # noqa: E731

  def run(mod):
    fn = jax.pmap(lambda vs: mod.apply(variables, vs, mutable=["batch_stats"]),
                  axis_name="d")
    out, new = fn([shard(v) for v in views])
    return out.reshape((-1,) + out.shape[2:]), new

  (y_ref, s_ref), (y, s) = run(SeparateP()), run(ours)
  _close(y, y_ref, rtol=1e-5, atol=1e-5)
  _close(s, s_ref)
  # Statistics are global: the same as one device seeing the whole batch.
  y1, _ = _Grouped(len(views), True).apply(variables, views,
                                           mutable=["batch_stats"])
  _close(y, y1.reshape(y.shape), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# The whole train step


def _step_outputs(setup, batch):
  grads, metrics = setup.run(batch)
  return grads, metrics, setup.state.batch_stats


@pytest.fixture(scope="module")
def reference():
  """One float32 train step with per-task backbone calls and argmax pools."""
  batch = _batch()
  ref = _Setup(_config(**{"model.widths": (4, 8),
                          "model.pool_impl": "argmax"}))
  state0 = ref.state
  return batch, state0, _step_outputs(ref, batch)


@pytest.mark.parametrize("pool,fuse", [("reduce_window", False),
                                       ("argmax", True)])
def test_train_step_same_maths_for_every_switch(reference, pool, fuse):
  batch, state0, (g_ref, m_ref, s_ref) = reference
  setup = _Setup(_config(**{"model.widths": (4, 8), "model.pool_impl": pool,
                            "model.fuse_views": fuse}), state=state0)
  grads, metrics, stats = _step_outputs(setup, batch)
  for key in ("loss", "aot_loss", "mi_loss", "mbp_loss", "kd_loss"):
    assert metrics[key] == pytest.approx(m_ref[key], rel=1e-5), key
  _close(grads, g_ref, rtol=1e-3, atol=1e-5)
  _close(stats, s_ref, rtol=1e-5, atol=1e-6)


def test_fused_bfloat16_step_matches_float32(reference):
  batch, state0, (_, m_ref, _) = reference
  setup = _Setup(_config(**{"model.widths": (4, 8), "model.fuse_views": True,
                            "model.pool_impl": "reduce_window",
                            "model.dtype": "bfloat16"}), state=state0)
  _, metrics, stats = _step_outputs(setup, batch)
  # Tolerance as test_options' bfloat16 test (<= 0.2 % seen, 2 % allowed).
  for key in ("loss", "aot_loss", "mi_loss", "mbp_loss", "kd_loss"):
    assert metrics[key] == pytest.approx(m_ref[key], rel=0.02), key
  assert {x.dtype for x in jax.tree.leaves(stats)} == {jnp.dtype(jnp.float32)}


def test_fused_step_on_the_device_mesh_equals_one_device(reference):
  """Data-parallel jit over all devices: the interleaved batch keeps each
  device's examples on it, and the result equals the 1-device step."""
  if jax.device_count() < 2:
    pytest.skip("needs several devices (conftest forces 8 on the CPU)")
  batch, state0, (_, m_ref, s_ref) = reference
  config = _config(**{"model.widths": (4, 8), "model.fuse_views": True,
                      "model.pool_impl": "argmax"})
  setup = _Setup(config, state=state0)
  mesh = sharding.create_mesh()
  step = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=setup.model, tx=setup.tx,
                        cfg=setup.cfg), mesh)
  state = sharding.to_replicated(state0, mesh)
  state, metrics = step(state, sharding.global_batch(
      {k: np.asarray(v) for k, v in batch.items()}, mesh), setup.rng)
  assert float(metrics["loss"]) == pytest.approx(m_ref["loss"], rel=1e-5)
  _close(state.batch_stats, s_ref, rtol=1e-5, atol=1e-6)


def test_bad_pool_impl_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="model.pool_impl"):
    network.create_model(_config(**{"model.pool_impl": "avg"}), kd_outputs=7,
                        channels=1)
