"""The training loop: mesh, input, checkpoints, logging, preemption (the
step it runs is :mod:`ssmtl_jax.train.step`)."""

from __future__ import annotations

import collections
import functools
import signal
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ssmtl_jax.base import errors
from ssmtl_jax.base import run_config
from ssmtl_jax.base import schema
from ssmtl_jax.base import summaries
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.model import checkpointing
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """The loss became NaN/inf (learning rate, data); names the step."""


def total_train_steps(config, num_examples: int) -> int:
  if config.total_steps > 0:
    return int(config.total_steps)
  steps = int(config.num_epochs) * num_examples // int(config.input.batch_size)
  if steps <= 0:
    raise errors.ConfigError(
        f"config.num_epochs={config.num_epochs} over {num_examples} examples "
        f"with batch {config.input.batch_size} gives 0 steps; set "
        "config.total_steps")
  return steps


class _Preemption:
  """SIGTERM (e.g. TPU preemption) -> save a checkpoint and exit cleanly.

  Single process: a local flag set by a signal handler. Multi-process: JAX's
  preemption sync point, which agrees on the step to save at across hosts.
  """

  def __init__(self):
    self.multi = jax.process_count() > 1
    self.flag = False
    self._previous = None
    if not self.multi:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.flag = True

  def reached(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _fetch(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


class FinishedSteps:
  """Moves a progress bar by finished steps, not dispatched ones: JAX
  dispatches a step long before the device finishes it, so counting calls
  overstates progress and speed on a slow machine. Each new step waits for
  the one before it (the device has the new one queued meanwhile, so it
  never idles for this); ``wait_all`` waits for every step in flight."""

  def __init__(self, progress, in_flight: int = 1):
    self.progress, self.in_flight = progress, int(in_flight)
    self._queue: collections.deque = collections.deque()

  def dispatched(self, outputs) -> None:
    self._queue.append(outputs)
    while len(self._queue) > self.in_flight:
      jax.block_until_ready(self._queue.popleft())
      self.progress.update(1)

  def wait_all(self) -> None:
    while self._queue:
      jax.block_until_ready(self._queue.popleft())
      self.progress.update(1)


def train(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains per config (resuming from workdir); returns the train summary."""
  workdir_path = epath.Path(workdir)
  pidx, pcount = jax.process_index(), jax.process_count()
  use_pmap = config.parallelism == "pmap"
  if config.parallelism not in ("jit", "pmap"):
    raise errors.ConfigError(f"config.parallelism={config.parallelism!r}: expected "
                     "'jit' or 'pmap'")

  # --- Input, checked before the model is built or anything is written:
  # the batch must split over the devices and the input pipelines.
  info = input_pipeline.records_info(config.data.records, config.data.train_split)
  global_batch = int(config.input.batch_size)
  sharding.check_batch_size(global_batch, jax.device_count())
  input_pipeline.pipeline_layout(global_batch, int(config.input.num_pipelines),
                                 len(info.files), pidx, pcount)
  total_steps = total_train_steps(config, info.num_examples)
  # A workdir holds one run: resuming with other model/task/build settings
  # is refused by name; the resolved config is saved for evaluate/export.
  run_config.check_matches(config, workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  if pidx == 0:
    run_config.save(config, workdir)

  # --- Model, optimiser, state.
  mesh = sharding.create_mesh()
  cfg = tasks_lib.StepConfig.from_config(config, info)
  model = network.create_model(
      config, kd_outputs=info.kd_outputs, channels=info.channels,
      bn_axis_name=sharding.PMAP_AXIS if use_pmap else None)
  tx = step_lib.create_optimizer(config, total_steps)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  views = network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                            crop_size=info.crop_size, channels=info.channels)
  state = jax.jit(
      functools.partial(step_lib.create_train_state, model=model, tx=tx, views=views),
      out_shardings=sharding.replicated(mesh))(init_rng)
  step_rng = sharding.to_replicated(step_rng, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model: %s, %d parameters, tasks %s; %d examples, batch %d, "
               "%d steps on %d devices (%d processes), %s.",
               config.model.variant, num_params, ",".join(cfg.tasks),
               info.num_examples, global_batch, total_steps,
               jax.device_count(), pcount, config.parallelism)

  # --- Checkpoints: resume from the latest one in workdir.
  manager = checkpointing.create_manager(
      workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  if manager.latest_step() is not None:
    state = checkpointing.restore(manager, state)
    logging.info("Resumed from checkpoint at step %d.", int(state.step))
  start_step = int(jax.device_get(state.step))
  if int(jax.device_get(state.bad_step)) >= 0:
    raise NonFiniteLossError(
        f"the checkpoint at step {start_step} recorded a non-finite loss at "
        f"step {int(jax.device_get(state.bad_step))}")

  summary_file = workdir_path / "train_summary.json"
  if start_step >= total_steps and summary_file.exists():
    logging.info("Already trained to step %d (total_steps=%d).", start_step,
                 total_steps)
    return schema.read_json(str(summary_file))

  # --- Step function and data placement.
  step_fn = functools.partial(step_lib.train_step, model=model, tx=tx, cfg=cfg)
  if use_pmap:
    p_step = sharding.pmap_train_step(step_fn)
    run_state = sharding.replicate_for_pmap(_fetch(state))
    place = sharding.split_for_pmap
    first = lambda x: x[0]
  else:
    p_step = sharding.jit_train_step(step_fn, mesh)
    run_state = state
    place = functools.partial(sharding.global_batch, mesh=mesh)
    first = lambda x: x
  del state

  def savable(s):
    return sharding.to_replicated(sharding.unreplicate_from_pmap(s), mesh) \
        if use_pmap else s

  def check_finite(s, step):
    bad = int(jax.device_get(first(s.bad_step)))
    if bad >= 0:
      latest = manager.latest_step()
      raise NonFiniteLossError(
          f"non-finite loss at step {bad}; stopped before step {step}. "
          f"Last good checkpoint: "
          f"{'step %d' % latest if latest is not None else 'none'} under "
          f"{manager.directory}")

  local_iter = input_pipeline.train_iterator(
      info, global_batch=global_batch,
      num_pipelines=int(config.input.num_pipelines), seed=int(config.seed),
      start_step=start_step, shuffle_buffer=int(config.input.shuffle_buffer),
      process_index=pidx, process_count=pcount)
  batches = input_pipeline.Prefetcher(local_iter, place,
                                      depth=int(config.input.prefetch))

  # --- Loop.
  writer = summaries.create_default_writer(workdir, just_logging=pidx > 0)
  preemption = _Preemption()
  progress = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                       disable=pidx > 0 or not config.progress_bar,
                       dynamic_ncols=True)
  log_every = max(1, int(config.log_every_steps))
  save_every = max(1, int(config.checkpoint.every_steps))
  pending, last_metrics = [], {}
  finished = FinishedSteps(progress)
  t_log, steps_log = time.perf_counter(), 0
  t_start, first_step_time = None, None
  step = start_step
  preempted = False
  try:
    while step < total_steps:
      batch = next(batches)
      run_state, metrics = p_step(run_state, batch, step_rng)
      step += 1
      pending.append(metrics)
      steps_log += 1
      finished.dispatched(metrics)
      if t_start is None:  # exclude compilation from steps/s
        jax.block_until_ready(metrics)
        t_start = t_log = time.perf_counter()
        first_step_time, steps_log = step, 0
      if step % log_every == 0 or step == total_steps:
        fetched = _fetch(jax.tree.map(lambda *xs: jnp.stack(xs).mean(0),
                                      *pending))
        check_finite(run_state, step)
        last_metrics = {k: float(np.mean(first(v))) for k, v in fetched.items()}
        pending = []
        finished.wait_all()
        now = time.perf_counter()
        rate = steps_log / max(now - t_log, 1e-9) if steps_log else float("nan")
        t_log, steps_log = now, 0
        writer.write_scalars(step, {f"train/{k}": v
                                    for k, v in last_metrics.items()}
                             | {"train/steps_per_sec": rate})
        progress.set_postfix(loss=f"{last_metrics['loss']:.4f}")
        if pidx == 0:
          logging.info("step %d/%d: %s | %.2f steps/s", step, total_steps,
                       " ".join(f"{k}={v:.4f}" for k, v in
                                sorted(last_metrics.items())), rate)
      preempted = preemption.reached(step)
      if preempted or step % save_every == 0 or step == total_steps:
        check_finite(run_state, step)
        checkpointing.save(manager, step, savable(run_state))
      if preempted:
        logging.warning("SIGTERM: saved checkpoint at step %d, exiting.", step)
        break
    finished.wait_all()
  finally:
    progress.close()
    preemption.close()
    manager.wait_until_finished()
    writer.close()

  steps_per_sec = None
  if t_start is not None and step > first_step_time:
    steps_per_sec = (step - first_step_time) / (time.perf_counter() - t_start)
  summary = {
      "step": step,
      "total_steps": total_steps,
      "preempted": preempted,
      "losses": {"total": last_metrics.get("loss")}
                | {t: last_metrics.get(f"{t}_loss") for t in network.TASKS},
      "accuracies": {t: last_metrics.get(f"{t}_acc") for t in ("aot", "mi")},
      "steps_per_sec": steps_per_sec,
      "num_devices": jax.device_count(),
      "num_processes": pcount,
      "parallelism": config.parallelism,
      "global_batch": global_batch,
      "num_params": int(num_params),
  }
  if pidx == 0:
    schema.write_json_atomic(str(summary_file), summary)
  return summary
