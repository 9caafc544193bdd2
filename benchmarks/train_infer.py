"""The train and infer sections of ``python -m benchmarks.compare``.

Cubes/s of the JAX model vs its PyTorch twin (eager and ``torch.compile``)
on one global batch of synthetic object records, the contenders' repeats
interleaved (``benchmarks.harness.measure``):

* ``train_section``: a full optimisation step (views, forward, joint loss,
  backward, Adam), JAX's the real ``train_step`` under
  ``sharding.jit_train_step``; also XLA's FLOP estimate of the step.
* ``infer_section``: the scoring forward as the evaluator runs it, and the
  largest difference between the frameworks' object scores (a check that
  both compute the same thing).
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import flops as flops_lib
from benchmarks import harness
from benchmarks import torch_ssmtl
from ssmtl_jax.evaluation import inference
from ssmtl_jax.model import sharding
from ssmtl_jax.train import step as step_lib


def _jax_train_runner(settings: harness.BenchSettings, m: harness.Models,
                      records: dict, config) -> tuple[harness.Runner, dict]:
  """The real jitted train step on every local device, and its XLA cost."""
  tx = step_lib.create_optimizer(config, total_steps=1_000_000)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(settings.batch, jax.device_count())
  # Fresh copies: the step donates its state.
  params = jax.tree.map(jnp.copy, m.variables["params"])
  state = step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=jax.tree.map(jnp.copy, m.variables["batch_stats"]),
      opt_state=tx.init(params), bad_step=jnp.full((), -1, jnp.int32))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=m.flax, tx=tx, cfg=m.cfg),
      mesh)
  batch = sharding.global_batch(records, mesh)
  rng = sharding.to_replicated(jax.random.PRNGKey(0), mesh)
  xla = {"xla_flops_per_step": flops_lib.xla_flops(
      step.lower(state, batch, rng))}

  holder = {"state": state}

  def jax_call():
    holder["state"], metrics = step(holder["state"], batch, rng)
    return metrics

  return harness.Runner("jax", jax_call, harness.jax_sync, settings.batch), xla


def train_section(settings: harness.BenchSettings, m: harness.Models,
                  records: dict, device: torch.device) -> tuple[dict, dict]:
  """Train throughput; returns (results, XLA cost info)."""
  config = harness.bench_config(settings)
  cfg = m.cfg
  jax_runner, xla = _jax_train_runner(settings, m, records, config)
  runners = [jax_runner]
  crops, teacher = harness.torch_batch(records, device)
  sync = harness.torch_sync_fn(device)
  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    if compiled and not settings.torch_compile:
      continue
    twin = copy.deepcopy(m.twin)
    opt, sched = torch_ssmtl.create_optimizer(twin, config.optim, 1_000_000)
    torch_trainer = torch_ssmtl.Trainer(
        twin, tasks=cfg.tasks, weights=dict(cfg.weights),
        seq_half=cfg.seq_half, max_gap=cfg.max_gap, num_det=cfg.num_det,
        kd_loss=cfg.kd_loss, optimizer=opt, scheduler=sched, compiled=compiled)
    runners.append(harness.Runner(
        name, functools.partial(torch_trainer.step, crops, teacher), sync,
        settings.batch))
  harness.measure(runners, settings)
  return {r.name: harness.summary(r, "cubes_per_s") for r in runners}, xla


def infer_section(settings: harness.BenchSettings, m: harness.Models,
                  records: dict, device: torch.device) -> dict:
  """Scoring throughput (and the largest score difference, as a check that
  both frameworks compute the same thing)."""
  cfg = m.cfg
  mesh = sharding.create_mesh()
  fn = inference.jit_score_fn(inference.make_score_fn(m.flax, cfg), mesh)
  variables = jax.device_put(m.variables, sharding.replicated(mesh))
  batch = sharding.global_batch(records, mesh)
  runners = [harness.Runner("jax", functools.partial(fn, variables, batch),
                            harness.jax_sync, settings.batch)]
  crops, teacher = harness.torch_batch(records, device)
  scorers = {}
  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    if compiled and not settings.torch_compile:
      continue
    scorers[name] = torch_ssmtl.Scorer(
        m.twin, seq_half=cfg.seq_half, num_det=cfg.num_det,
        kd_loss=cfg.kd_loss, compiled=compiled)
    runners.append(harness.Runner(
        name, functools.partial(scorers[name], crops, teacher),
        harness.torch_sync_fn(device), settings.batch))
  harness.measure(runners, settings)
  out = {r.name: harness.summary(r, "cubes_per_s") for r in runners}
  try:
    ref = jax.device_get(fn(variables, batch))
    got = scorers["torch_eager"](crops, teacher)
    out["max_abs_score_diff"] = {
        t: float(np.abs(got[t].float().cpu().numpy() - ref[t]).max())
        for t in ref}
  except Exception as e:  # pylint: disable=broad-except
    out["max_abs_score_diff"] = {"error": harness.error_text(e)}
  return out
