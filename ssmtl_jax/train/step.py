"""The train state, the optimizer and the pure, jitted train step (DESIGN §3).

The loop that drives them is :mod:`ssmtl_jax.train.trainer`; benchmarks and
the pod plan build the same step from here without the loop."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssmtl_jax.base import errors
from ssmtl_jax.model import network
from ssmtl_jax.model import tasks as tasks_lib


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # -1 while every loss so far was finite; else the first step whose loss was
  # not. From then on the step leaves the state untouched (see train_step).
  bad_step: jax.Array


def create_optimizer(config: ml_collections.ConfigDict,
                     total_steps: int) -> optax.GradientTransformation:
  o = config.optim
  lr = float(o.learning_rate)
  if o.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if o.warmup_steps else lr, lr, int(o.warmup_steps),
        max(total_steps, int(o.warmup_steps) + 1))
  elif o.schedule == "constant":
    schedule = (optax.linear_schedule(0.0, lr, int(o.warmup_steps))
                if o.warmup_steps else lr)
  else:
    raise errors.ConfigError(f"config.optim.schedule={o.schedule!r}: expected 'cosine' "
                     "or 'constant'")
  if o.name == "adam":
    tx = optax.adam(schedule)
  elif o.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=float(o.weight_decay))
  elif o.name == "sgd":
    tx = optax.sgd(schedule, momentum=0.9)
  else:
    raise errors.ConfigError(f"config.optim.name={o.name!r}: expected adam, adamw or sgd")
  if o.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), tx)
  return tx


def create_train_state(rng: jax.Array, *, model: network.SSMTL,
                       tx: optax.GradientTransformation,
                       views: Mapping[str, jax.Array]) -> TrainState:
  variables = model.init(rng, views, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params),
                    bad_step=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch, rng: jax.Array, *, model: network.SSMTL,
               tx: optax.GradientTransformation, cfg: tasks_lib.StepConfig,
               axis_name: Optional[str] = None):
  """One optimisation step on a batch of object records.

  Args:
    state: the train state (replicated).
    batch: crops uint8 [B, 2W+1, S, S, C], teacher_det [B, D], teacher_cls [B, K]
      (B = global batch under jit, per-device batch under pmap).
    rng: the run's base key; views are drawn from fold_in(rng, step).
    axis_name: pmap axis to average gradients, statistics and metrics over.
  Returns:
    (new state, metrics {name: scalar}).
  """
  offset = 0
  if axis_name is not None:
    offset = jax.lax.axis_index(axis_name) * batch["crops"].shape[0]
  with jax.named_scope("make_views"):  # names the ops in profiles
    views, targets = tasks_lib.make_views(
        batch, jax.random.fold_in(rng, state.step), tasks=cfg.tasks,
        seq_half=cfg.seq_half, max_gap=cfg.max_gap, example_offset=offset)

  def loss_fn(params):
    outputs, new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, views,
        train=True, mutable=["batch_stats"])
    # Named scopes only name the ops in XLA's metadata (profiles,
    # benchmarks.op_profile); the computation is the same.
    with jax.named_scope("joint_loss"):
      loss, metrics = tasks_lib.joint_loss(outputs, targets,
                                           dict(cfg.weights),
                                           num_det=cfg.num_det,
                                           kd_loss=cfg.kd_loss,
                                           kd_scales=cfg.kd_scales)
    return loss, (metrics, new_vars["batch_stats"])

  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
  with jax.named_scope("optimizer"):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  # A non-finite loss freezes the state at the last good values and records
  # the step; the host checks bad_step at log and checkpoint steps, so no
  # per-step device->host sync is needed and no bad state is ever saved.
  finite = jnp.isfinite(metrics["loss"])
  ok = finite & (state.bad_step < 0)
  new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
  bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step,
                       state.bad_step)
  return new_state.replace(bad_step=bad_step), metrics
