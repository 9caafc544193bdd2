"""Model: output shapes for every variant; disabled tasks have no head."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ssmtl_jax.base import errors
from ssmtl_jax.model import network


def _views(tasks, size=16, channels=1, batch=2):
  views = {t: jnp.zeros((batch, 7, size, size, channels)) for t in tasks}
  if "mbp" in views:
    views["mbp"] = jnp.zeros((batch, 6, size, size, channels))
  return views


@pytest.mark.parametrize("variant,depth", [("narrow", "shallow"),
                                           ("narrow", "deep"),
                                           ("wide", "shallow"),
                                           ("wide", "deep")])
def test_output_shapes_every_variant(variant, depth):
  config = common.get_config()
  config.model.variant, config.model.depth = variant, depth
  model = network.create_model(config, kd_outputs=80 + 1000, channels=1)
  views = _views(network.TASKS, size=32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), views,
                                                train=False))
  out = jax.eval_shape(lambda v: model.apply(v, views, train=False), variables)
  assert out["aot"].shape == (2, 2)
  assert out["mi"].shape == (2, 2)
  assert out["mbp"].shape == (2, 32, 32, 1)
  assert out["kd"].shape == (2, 1080)
  convs = [p for p in jax.tree_util.tree_leaves_with_path(variables["params"])
           if "backbone" in jax.tree_util.keystr(p[0]) and p[1].ndim == 5]
  widths = network.VARIANT_WIDTHS[variant]
  per_stage = network.DEPTH_CONVS[depth]
  assert [k.shape[-1] for _, k in convs] == [w for w in widths
                                             for _ in range(per_stage)]
  assert all(k.shape[:3] == (3, 3, 3) for _, k in convs)


def test_variant_widths_are_the_papers():
  """README and configs/common.py promise these channel widths."""
  assert network.VARIANT_WIDTHS == {"narrow": (16, 32, 32),
                                   "wide": (32, 64, 64)}
  assert network.DEPTH_CONVS == {"shallow": 1, "deep": 2}


def test_rgb_and_real_forward_values():
  config = common.get_config()
  config.model.widths = (4, 8, 8)
  model = network.create_model(config, kd_outputs=5, channels=3)
  views = _views(network.TASKS, size=16, channels=3)
  variables = model.init(jax.random.PRNGKey(0), views, train=False)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 7, 16, 16, 3))
  views = {"aot": x, "mi": x, "kd": x, "mbp": x[:, :6]}
  out, new = model.apply(variables, views, train=True, mutable=["batch_stats"])
  assert out["mbp"].shape == (2, 16, 16, 3)
  # mbp is a crop in (0, 1), not saturated, and its 3 channels differ (not
  # one channel broadcast); every head's output depends on the example.
  assert bool(jnp.all((out["mbp"] > 0) & (out["mbp"] < 1)))
  assert float(jnp.abs(out["mbp"][..., 0] - out["mbp"][..., 1]).max()) > 1e-4
  for task, v in out.items():
    assert bool(jnp.all(jnp.isfinite(v))), task
    assert float(jnp.abs(v[0] - v[1]).max()) > 1e-5, task
  # Train mode uses and updates batch statistics: eval mode (running
  # statistics still at their init) gives other outputs.
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         new["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  evaluated = model.apply(variables, views, train=False)
  assert float(jnp.abs(evaluated["aot"] - out["aot"]).max()) > 1e-5
  # Each input channel is used: changing only the blue channel of the kd
  # view changes the kd output.
  blue = views["kd"].at[..., 2].set(0.0)
  other = model.apply(variables, {**views, "kd": blue}, train=False)
  assert float(jnp.abs(other["kd"] - evaluated["kd"]).max()) > 1e-5


def test_disabled_task_has_no_head():
  config = common.get_config()
  config.model.widths = (4, 8, 8)
  config.tasks.mbp.weight = 0.0
  config.tasks.aot.weight = 0.0
  model = network.create_model(config, kd_outputs=5, channels=1)
  assert model.tasks == ("mi", "kd")
  variables = model.init(jax.random.PRNGKey(0), _views(model.tasks),
                         train=False)
  assert sorted(variables["params"]) == ["backbone", "heads_kd", "heads_mi"]


def test_bad_config_values_name_the_key():
  config = common.get_config()
  config.model.variant = "huge"
  with pytest.raises(errors.ConfigError, match="config.model.variant"):
    network.create_model(config, kd_outputs=5, channels=1)
  config = common.get_config()
  for t in network.TASKS:
    config.tasks[t].weight = 0.0
  with pytest.raises(errors.ConfigError, match="config.tasks"):
    network.create_model(config, kd_outputs=5, channels=1)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_fast_conv_equals_xla_conv3d(channels, train):
  """'fast' (im2col / conv2d + temporal shifts) is the same model as XLA's
  conv3d in training and in eval mode: same parameters, same outputs and
  gradients up to float rounding."""
  config = common.get_config()
  config.model.widths = (4, 8, 8)
  views = {t: jax.random.uniform(jax.random.PRNGKey(i), (3, 7, 16, 16, channels))
           for i, t in enumerate(network.TASKS)}
  views["mbp"] = views["mbp"][:, :6]
  outs, grads = {}, {}
  for impl in ("xla", "fast"):
    config.model.conv_impl = impl
    model = network.create_model(config, kd_outputs=5, channels=channels)
    variables = model.init(jax.random.PRNGKey(0), views, train=False)

    def loss(params, model=model, variables=variables):
      out, _ = model.apply({**variables, "params": params}, views, train=train,
                           mutable=["batch_stats"])
      return sum(jnp.sum(v ** 2) for v in out.values()), out

    grads[impl], outs[impl] = jax.grad(loss, has_aux=True)(variables["params"])
  for a, b in zip(jax.tree.leaves(outs["fast"]), jax.tree.leaves(outs["xla"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads["fast"]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_max_pool_hw_equals_flax_max_pool(padding, hw, ties):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, *hw, 4))
  if ties:  # few distinct values: many windows with tied maxima
    x = jnp.round(jnp.maximum(x, 0))

  def flax_pool(x):
    return nn.max_pool(x, (1, 2, 2), strides=(1, 2, 2), padding=padding)

  def ours(x):
    return network.max_pool_hw(x, padding)

  np.testing.assert_array_equal(ours(x), flax_pool(x))
  w = jax.random.normal(jax.random.PRNGKey(2), flax_pool(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(w * f(x)))(x)
  np.testing.assert_array_equal(grad(ours), grad(flax_pool))


def test_upsample_equals_nearest_resize():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 5, 4))

  def resize(x):
    return jax.image.resize(x, (2, 6, 10, 4), method="nearest")

  np.testing.assert_array_equal(network.upsample2x_nearest(x), resize(x))
  w = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 10, 4))
  grad = lambda f: jax.grad(lambda x: jnp.sum(w * f(x)))(x)
  np.testing.assert_allclose(grad(network.upsample2x_nearest), grad(resize),
                             rtol=1e-6, atol=1e-6)
