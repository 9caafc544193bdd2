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


def _check_input(config: ml_collections.ConfigDict, pidx: int,
                 pcount: int) -> tuple[input_pipeline.RecordsInfo, int, int]:
  """Checks the input before the model is built or anything is written: the
  batch must split over the devices and the input pipelines.

  Returns:
    (the training records' info, the global batch size, the number of steps).
  """
  info = input_pipeline.records_info(config.data.records,
                                     config.data.train_split)
  global_batch = int(config.input.batch_size)
  sharding.check_batch_size(global_batch, jax.device_count())
  input_pipeline.pipeline_layout(global_batch, int(config.input.num_pipelines),
                                 len(info.files), pidx, pcount)
  total_steps = total_train_steps(config, info.num_examples)
  return info, global_batch, total_steps


def _claim_workdir(config: ml_collections.ConfigDict, workdir: str,
                   pidx: int) -> None:
  """Refuses a workdir of another run, else creates it and saves the config."""
  # A workdir holds one run: resuming with other model/task/build settings
  # is refused by name; the resolved config is saved for evaluate/export.
  run_config.check_matches(config, workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if pidx == 0:
    run_config.save(config, workdir)


def _create_state(config: ml_collections.ConfigDict,
                  info: input_pipeline.RecordsInfo,
                  cfg: tasks_lib.StepConfig, mesh, total_steps: int,
                  use_pmap: bool):
  """Builds the model, the optimiser and the initial state (replicated over
  the mesh), and the step rng (replicated too).

  Returns:
    (model, tx, state, step_rng).
  """
  model = network.create_model(
      config, kd_outputs=info.kd_outputs, channels=info.channels,
      bn_axis_name=sharding.PMAP_AXIS if use_pmap else None)
  tx = step_lib.create_optimizer(config, total_steps)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  views = network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                            crop_size=info.crop_size, channels=info.channels)
  state = jax.jit(
      functools.partial(step_lib.create_train_state, model=model, tx=tx,
                        views=views),
      out_shardings=sharding.replicated(mesh))(init_rng)
  step_rng = sharding.to_replicated(step_rng, mesh)
  return model, tx, state, step_rng


def _resume(manager, state):
  """Restores the latest checkpoint of ``manager`` (if any) into ``state``.

  Returns:
    (the state, its step). Raises NonFiniteLossError when that checkpoint
    recorded a non-finite loss.
  """
  if manager.latest_step() is not None:
    state = checkpointing.restore(manager, state)
    logging.info("Resumed from checkpoint at step %d.", int(state.step))
  start_step = int(jax.device_get(state.step))
  if int(jax.device_get(state.bad_step)) >= 0:
    raise NonFiniteLossError(
        f"the checkpoint at step {start_step} recorded a non-finite loss at "
        f"step {int(jax.device_get(state.bad_step))}")
  return state, start_step


class _StepRunner:
  """Runs train steps jitted over the mesh, or under pmap; holds the running
  state as the step takes it (replicated per device under pmap)."""

  def __init__(self, step_fn, state, mesh, use_pmap: bool):
    self.mesh, self.use_pmap = mesh, use_pmap
    if use_pmap:
      self.p_step = sharding.pmap_train_step(step_fn)
      self.state = sharding.replicate_for_pmap(_fetch(state))
      self.place = sharding.split_for_pmap
      self.first = lambda x: x[0]
    else:
      self.p_step = sharding.jit_train_step(step_fn, mesh)
      self.state = state
      self.place = functools.partial(sharding.global_batch, mesh=mesh)
      self.first = lambda x: x

  def step(self, batch, rng):
    """Dispatches one step on a placed batch; returns its metrics."""
    self.state, metrics = self.p_step(self.state, batch, rng)
    return metrics

  def savable(self):
    """The running state as a checkpoint holds it."""
    return sharding.to_replicated(sharding.unreplicate_from_pmap(self.state),
                                  self.mesh) if self.use_pmap else self.state

  def bad_step(self) -> int:
    """The step whose loss was not finite, or -1 (waits for the device)."""
    return int(jax.device_get(self.first(self.state.bad_step)))


def _batches(config: ml_collections.ConfigDict,
             info: input_pipeline.RecordsInfo, global_batch: int,
             start_step: int, place, pidx: int,
             pcount: int) -> input_pipeline.Prefetcher:
  """This process's share of the batches from ``start_step`` on, placed on
  the devices (by ``place``) ahead of use."""
  local_iter = input_pipeline.train_iterator(
      info, global_batch=global_batch,
      num_pipelines=int(config.input.num_pipelines), seed=int(config.seed),
      start_step=start_step, shuffle_buffer=int(config.input.shuffle_buffer),
      process_index=pidx, process_count=pcount)
  return input_pipeline.Prefetcher(local_iter, place,
                                   depth=int(config.input.prefetch))


class _Loop:
  """The step loop, from ``start_step`` to ``total_steps`` or a SIGTERM.

  Logs the mean metrics every ``config.log_every_steps`` steps (TensorBoard,
  progress bar, log line) and checkpoints every
  ``config.checkpoint.every_steps``, at the end and on SIGTERM; the writer,
  bar and SIGTERM handler are set up here and released by :meth:`run`.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               runner: _StepRunner, manager, start_step: int,
               total_steps: int, pidx: int):
    self.runner, self.manager = runner, manager
    self.total_steps, self.pidx = total_steps, pidx
    self.writer = summaries.create_default_writer(workdir,
                                                  just_logging=pidx > 0)
    self.preemption = _Preemption()
    self.progress = tqdm.tqdm(total=total_steps, initial=start_step,
                              unit="step",
                              disable=pidx > 0 or not config.progress_bar,
                              dynamic_ncols=True)
    self.log_every = max(1, int(config.log_every_steps))
    self.save_every = max(1, int(config.checkpoint.every_steps))
    self.pending, self.last_metrics = [], {}
    self.finished = FinishedSteps(self.progress)
    self.t_log, self.steps_log = time.perf_counter(), 0
    self.t_start, self.first_step_time = None, None
    self.step = start_step
    self.preempted = False

  def run(self, batches, step_rng) -> None:
    """Runs the loop; on any exit closes the bar, the SIGTERM handler and
    the writer and waits for checkpoints still being written."""
    try:
      while self.step < self.total_steps:
        self._dispatch(next(batches), step_rng)
        if (self.step % self.log_every == 0 or
            self.step == self.total_steps):
          self._log()
        self.preempted = self.preemption.reached(self.step)
        if (self.preempted or self.step % self.save_every == 0 or
            self.step == self.total_steps):
          self._check_finite()
          checkpointing.save(self.manager, self.step, self.runner.savable())
        if self.preempted:
          logging.warning("SIGTERM: saved checkpoint at step %d, exiting.",
                          self.step)
          break
      self.finished.wait_all()
    finally:
      self.progress.close()
      self.preemption.close()
      self.manager.wait_until_finished()
      self.writer.close()

  def _dispatch(self, batch, step_rng) -> None:
    """Dispatches the next step; waits for the first one, so that steps/s
    excludes compilation."""
    metrics = self.runner.step(batch, step_rng)
    self.step += 1
    self.pending.append(metrics)
    self.steps_log += 1
    self.finished.dispatched(metrics)
    if self.t_start is None:  # exclude compilation from steps/s
      jax.block_until_ready(metrics)
      self.t_start = self.t_log = time.perf_counter()
      self.first_step_time, self.steps_log = self.step, 0

  def _log(self) -> None:
    """Writes the mean metrics of the steps since the last log, and the
    steps/s since then; raises NonFiniteLossError first if a loss was not
    finite."""
    fetched = _fetch(jax.tree.map(lambda *xs: jnp.stack(xs).mean(0),
                                  *self.pending))
    self._check_finite()
    first = self.runner.first
    self.last_metrics = {k: float(np.mean(first(v)))
                         for k, v in fetched.items()}
    self.pending = []
    self.finished.wait_all()
    now = time.perf_counter()
    rate = (self.steps_log / max(now - self.t_log, 1e-9) if self.steps_log
            else float("nan"))
    self.t_log, self.steps_log = now, 0
    scalars = {f"train/{k}": v for k, v in self.last_metrics.items()}
    self.writer.write_scalars(self.step,
                              scalars | {"train/steps_per_sec": rate})
    self.progress.set_postfix(loss=f"{self.last_metrics['loss']:.4f}")
    if self.pidx == 0:
      logging.info("step %d/%d: %s | %.2f steps/s", self.step,
                   self.total_steps,
                   " ".join(f"{k}={v:.4f}" for k, v in
                            sorted(self.last_metrics.items())), rate)

  def _check_finite(self) -> None:
    """Raises NonFiniteLossError naming the bad step and the last good
    checkpoint if a step so far had a non-finite loss."""
    bad = self.runner.bad_step()
    if bad >= 0:
      latest = self.manager.latest_step()
      raise NonFiniteLossError(
          f"non-finite loss at step {bad}; stopped before step {self.step}. "
          f"Last good checkpoint: "
          f"{'step %d' % latest if latest is not None else 'none'} under "
          f"{self.manager.directory}")

  def steps_per_sec(self) -> float | None:
    """Steps/s after the first step (None if there was no later one)."""
    if self.t_start is not None and self.step > self.first_step_time:
      return ((self.step - self.first_step_time) /
              (time.perf_counter() - self.t_start))
    return None


def _summary(config: ml_collections.ConfigDict, loop: _Loop, total_steps: int,
             global_batch: int, num_params: int, pcount: int) -> dict:
  """The train summary (train_summary.json) of a finished loop."""
  last_metrics = loop.last_metrics
  return {
      "step": loop.step,
      "total_steps": total_steps,
      "preempted": loop.preempted,
      "losses": {"total": last_metrics.get("loss")}
                | {t: last_metrics.get(f"{t}_loss") for t in network.TASKS},
      "accuracies": {t: last_metrics.get(f"{t}_acc") for t in ("aot", "mi")},
      "steps_per_sec": loop.steps_per_sec(),
      "num_devices": jax.device_count(),
      "num_processes": pcount,
      "parallelism": config.parallelism,
      "global_batch": global_batch,
      "num_params": int(num_params),
  }


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per config (resuming from workdir); returns the train summary."""
  workdir_path = epath.Path(workdir)
  pidx, pcount = jax.process_index(), jax.process_count()
  use_pmap = config.parallelism == "pmap"

  # --- Input, checked before the model is built or anything is written.
  info, global_batch, total_steps = _check_input(config, pidx, pcount)
  _claim_workdir(config, workdir, pidx)

  # --- Model, optimiser, state.
  mesh = sharding.create_mesh()
  cfg = tasks_lib.StepConfig.from_config(config, info)
  model, tx, state, step_rng = _create_state(config, info, cfg, mesh,
                                             total_steps, use_pmap)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model: %s, %d parameters, tasks %s; %d examples, batch %d, "
               "%d steps on %d devices (%d processes), %s.",
               config.model.variant, num_params, ",".join(cfg.tasks),
               info.num_examples, global_batch, total_steps,
               jax.device_count(), pcount, config.parallelism)

  # --- Checkpoints: resume from the latest one in workdir.
  manager = checkpointing.create_manager(
      workdir, keep=config.checkpoint.keep,
      async_save=config.checkpoint.async_save)
  state, start_step = _resume(manager, state)
  summary_file = workdir_path / "train_summary.json"
  if start_step >= total_steps and summary_file.exists():
    logging.info("Already trained to step %d (total_steps=%d).", start_step,
                 total_steps)
    return schema.read_json(str(summary_file))

  # --- Step function and data placement.
  runner = _StepRunner(
      functools.partial(step_lib.train_step, model=model, tx=tx, cfg=cfg),
      state, mesh, use_pmap)
  del state
  batches = _batches(config, info, global_batch, start_step, runner.place,
                     pidx, pcount)

  # --- Loop.
  loop = _Loop(config, workdir, runner, manager, start_step, total_steps, pidx)
  loop.run(batches, step_rng)
  summary = _summary(config, loop, total_steps, global_batch, num_params,
                     pcount)
  if pidx == 0:
    schema.write_json_atomic(str(summary_file), summary)
  return summary
