"""The four SSMTL proxy tasks: view construction on device, losses, scores.

A batch of object records holds ``crops`` uint8 ``[B, 2W+1, S, S, C]`` (frames
t-W..t+W around the detection's frame t), ``teacher_det`` float ``[B, D]`` and
``teacher_cls`` float ``[B, K]``. From it, with a PRNG key, we build:

* aot: the consecutive 7-frame sequence t-3..t+3, reversed in time with
  probability 1/2 (label 1 = backward);
* mi: the consecutive sequence (label 0) or, with probability 1/2, an
  intermittent one (label 1) whose 6 gaps are 1..max_gap frames with at least
  one gap > 1, centred on frame t;
* mbp: the consecutive sequence without its middle frame (6 frames), target
  the middle crop;
* kd: the consecutive sequence, targets the teachers' outputs.

Randomness is drawn per example from ``fold_in(key, global_example_index)`` so
that a sharded jit step, a pmap step and a single-device step draw the same
views for the same global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from ssmtl_jax.base import errors
from ssmtl_jax.base import schema
from ssmtl_jax.model import network

# `info` below is a data.input_pipeline.RecordsInfo (records_dir, split, ...);
# the model floor does not import the data floor for its type.
RecordsInfo = Any

Batch = Mapping[str, jax.Array]
KD_BALANCES = ("none", "target_std")


def check_window(seq_half: int, max_gap: int, half_window: int,
                 source: str = "the records") -> None:
  """Raises ConfigError unless the widest intermittent sequence fits in the
  half window of ``source`` (the records, or config.build.half_window before
  they are built)."""
  if seq_half * max_gap > half_window:
    raise errors.ConfigError(
        f"config.tasks.seq_half * config.tasks.max_gap = {seq_half * max_gap} "
        f"exceeds the half window {half_window} of {source}: intermittent "
        "sequences need frames t - seq_half*max_gap .. t + seq_half*max_gap; "
        "lower tasks.max_gap or build with a larger build.half_window")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train and score steps (hashable, bound with
  functools.partial)."""
  tasks: tuple[str, ...]
  weights: tuple[tuple[str, float], ...]
  seq_half: int
  max_gap: int
  num_det: int
  kd_loss: str
  # Divisors of the KD loss's (detector, classifier) parts (tasks.kd.balance).
  kd_scales: tuple[float, float] = (1.0, 1.0)

  @classmethod
  def from_config(cls, config,
                  info: RecordsInfo) -> "StepConfig":
    tasks = network.enabled_tasks(config)
    if config.tasks.max_gap < 2:
      raise errors.ConfigError(
          f"config.tasks.max_gap={config.tasks.max_gap}: must be >= 2 for "
          "intermittent sequences to have gaps")
    check_window(int(config.tasks.seq_half), int(config.tasks.max_gap),
                 (info.window - 1) // 2,
                 f"the records in config.data.records={config.data.records!r}")
    if config.tasks.kd.loss not in ("l1", "l2"):
      raise errors.ConfigError(f"config.tasks.kd.loss={config.tasks.kd.loss!r}: "
                               "expected 'l1' or 'l2'")
    return cls(tasks=tasks,
               weights=tuple((t, float(config.tasks[t].weight)) for t in tasks),
               seq_half=int(config.tasks.seq_half),
               max_gap=int(config.tasks.max_gap), num_det=info.num_det,
               kd_loss=config.tasks.kd.loss,
               kd_scales=kd_scales(config, info) if "kd" in tasks
               else (1.0, 1.0))


def kd_scales(config, info: RecordsInfo
              ) -> tuple[float, float]:
  """(detector, classifier) divisors of the KD loss parts for
  ``config.tasks.kd.balance``: 1 for 'none'; for 'target_std' the spread of
  each teacher's targets over the training records (``teacher_std`` in the
  split metadata, ``ssmtl_jax.data.builder.teacher_std``), squared for the l2
  loss."""
  balance = str(config.tasks.kd.get("balance", "none"))
  if balance not in KD_BALANCES:
    raise errors.ConfigError(f"config.tasks.kd.balance={balance!r}: expected "
                             f"one of {KD_BALANCES}")
  if balance == "none":
    return (1.0, 1.0)
  meta_file = schema.meta_path(info.records_dir, info.split)
  std = schema.read_json(meta_file).get("teacher_std")
  if not std:
    raise errors.ConfigError(
        f"config.tasks.kd.balance='target_std' needs the teachers' target "
        f"spread in {meta_file}, which records built before 2026-12 lack: "
        "rebuild the records, or set config.tasks.kd.balance=none")
  power = 1 if config.tasks.kd.loss == "l1" else 2
  scales = []
  for part in ("det", "cls"):
    value = float(std.get(part, 1.0))
    # A constant teacher (spread 0) has nothing to balance: leave it as is.
    scales.append(value ** power if value > 1e-12 else 1.0)
  return tuple(scales)


def consecutive_indices(half_window: int, seq_half: int) -> jax.Array:
  return jnp.arange(half_window - seq_half, half_window + seq_half + 1)


def intermittent_indices(key: jax.Array, half_window: int, seq_half: int,
                         max_gap: int) -> jax.Array:
  """Frame indices [2*seq_half+1] of one intermittent sequence (sorted, centred on W)."""
  k_extra, k_force = jax.random.split(key)
  extra = jax.random.randint(k_extra, (2 * seq_half,), 0, max_gap)
  # Force at least one gap > 1 so that the sequence is never consecutive.
  forced = jax.nn.one_hot(jax.random.randint(k_force, (), 0, 2 * seq_half),
                          2 * seq_half, dtype=extra.dtype)
  extra = jnp.where(extra.sum() == 0, forced, extra)
  gaps = 1 + extra
  left = half_window - jnp.cumsum(gaps[:seq_half])[::-1]
  right = half_window + jnp.cumsum(gaps[seq_half:])
  return jnp.concatenate([left, jnp.array([half_window]), right])


def _to_float(crops: jax.Array) -> jax.Array:
  return crops.astype(jnp.float32) / 255.0


def make_views(batch: Batch, key: jax.Array, *, tasks, seq_half: int,
               max_gap: int, example_offset=0):
  """Builds the views and targets of the enabled tasks.

  Args:
    batch: crops uint8 [B, 2W+1, S, S, C], teacher_det [B, D], teacher_cls [B, K].
    key: PRNG key of this step.
    tasks: enabled task names.
    seq_half: sequences have 2*seq_half+1 frames.
    max_gap: largest gap of an intermittent sequence.
    example_offset: global index of this batch's first example (pmap shards).
  Returns:
    (views, targets): views {task: float [B, T, S, S, C]}; targets: aot/mi
    int labels [B], mbp float [B, S, S, C], kd float [B, D + K].
  """
  crops = batch["crops"]
  b, window = crops.shape[:2]
  half_window = (window - 1) // 2
  check_window(seq_half, max_gap, half_window)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(
      key, example_offset + jnp.arange(b))
  keys = jax.vmap(lambda k: jax.random.split(k, 3))(keys)  # [B, 3, key]
  consec = _to_float(jnp.take(crops, consecutive_indices(half_window, seq_half),
                              axis=1))
  views, targets = {}, {}
  if "aot" in tasks:
    backward = jax.vmap(jax.random.bernoulli)(keys[:, 0]).astype(jnp.int32)
    views["aot"] = jnp.where(backward[:, None, None, None, None] == 1,
                             consec[:, ::-1], consec)
    targets["aot"] = backward
  if "mi" in tasks:
    intermittent = jax.vmap(jax.random.bernoulli)(keys[:, 1]).astype(jnp.int32)
    idx = jax.vmap(lambda k: intermittent_indices(
        k, half_window, seq_half, max_gap))(keys[:, 2])
    gathered = _to_float(jnp.take_along_axis(
        crops, idx[:, :, None, None, None], axis=1))
    views["mi"] = jnp.where(intermittent[:, None, None, None, None] == 1,
                            gathered, consec)
    targets["mi"] = intermittent
  if "mbp" in tasks:
    views["mbp"] = jnp.concatenate(
        [consec[:, :seq_half], consec[:, seq_half + 1:]], axis=1)
    targets["mbp"] = consec[:, seq_half]
  if "kd" in tasks:
    views["kd"] = consec
    targets["kd"] = teacher_targets(batch)
  return views, targets


def teacher_targets(batch: Batch) -> jax.Array:
  return jnp.concatenate([batch["teacher_det"].astype(jnp.float32),
                          batch["teacher_cls"].astype(jnp.float32)], axis=-1)


def kd_parts(pred: jax.Array, target: jax.Array, num_det: int,
             kind: str = "l1", scales: tuple[float, float] = (1.0, 1.0)
             ) -> dict[str, jax.Array]:
  """Per-example distance to each teacher [B]: {'det': mean error over the
  detector's class probabilities / scales[0], 'cls': mean error over the
  classifier's logits / scales[1]} (a part is absent when its teacher has no
  outputs)."""
  err = jnp.abs(pred - target) if kind == "l1" else jnp.square(pred - target)
  parts = {"det": err[:, :num_det], "cls": err[:, num_det:]}
  scale = dict(zip(("det", "cls"), scales))
  return {k: p.mean(axis=-1) / scale[k] for k, p in parts.items()
          if p.shape[-1] > 0}


def kd_discrepancy(pred: jax.Array, target: jax.Array, num_det: int,
                   kind: str = "l1", scales: tuple[float, float] = (1.0, 1.0)
                   ) -> jax.Array:
  """Per-example distance to the teachers [B]: the sum of the two parts of
  :func:`kd_parts` (averaged separately, so the 1000 logits do not outnumber
  the 80 probabilities, and divided by ``scales``). This is the KD training
  loss."""
  return sum(kd_parts(pred, target, num_det, kind, scales).values())


def task_losses(outputs, targets, *, num_det: int, kd_loss: str = "l1",
                kd_scales: tuple[float, float] = (1.0, 1.0)):
  """Per-task mean losses and accuracies. Returns {name: scalar}."""
  metrics = {}
  for task in ("aot", "mi"):
    if task in outputs:
      logits, labels = outputs[task], targets[task]
      metrics[f"{task}_loss"] = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      metrics[f"{task}_acc"] = (jnp.argmax(logits, -1) == labels).mean()
  if "mbp" in outputs:
    metrics["mbp_loss"] = jnp.abs(outputs["mbp"] - targets["mbp"]).mean()
  if "kd" in outputs:
    parts = kd_parts(outputs["kd"], targets["kd"], num_det, kd_loss,
                     kd_scales)
    metrics["kd_loss"] = sum(parts.values()).mean()
    if len(parts) > 1:  # each teacher's share of the KD loss
      for k, v in parts.items():
        metrics[f"kd_{k}_loss"] = v.mean()
  return metrics


def joint_loss(outputs, targets, weights: Mapping[str, float], *, num_det: int,
               kd_loss: str = "l1", kd_scales: tuple[float, float] = (1.0, 1.0)):
  """Sum of weight * loss over the tasks present in outputs; returns (loss, metrics)."""
  metrics = task_losses(outputs, targets, num_det=num_det, kd_loss=kd_loss,
                        kd_scales=kd_scales)
  total = sum(weights[t] * metrics[f"{t}_loss"] for t in outputs)
  metrics["loss"] = total
  return total, metrics


def task_scores(outputs, consecutive: jax.Array, batch: Batch, *,
                  num_det: int, seq_half: int, kd_loss: str = "l1",
                  kd_scales: tuple[float, float] = (1.0, 1.0)):
  """Per-object anomaly scores of each task [B] (higher = more abnormal).

  aot: P(backward | forward input); mi: P(intermittent | consecutive input);
  mbp: mean absolute error of the middle crop; kd: discrepancy to the teachers
  (the training loss: detector part + classifier part), and its two parts on
  their own as kd_det and kd_cls (see frame_scoring.kd_score: on raw scales the
  logits' error is ~100x the probabilities' and would decide the sum alone).
  """
  scores = {}
  for task in ("aot", "mi"):
    if task in outputs:
      scores[task] = jax.nn.softmax(outputs[task], -1)[:, 1]
  if "mbp" in outputs:
    middle = consecutive[:, seq_half]
    scores["mbp"] = jnp.abs(outputs["mbp"] - middle).mean(axis=(1, 2, 3))
  if "kd" in outputs:
    parts = kd_parts(outputs["kd"], teacher_targets(batch), num_det, kd_loss,
                     kd_scales)
    scores["kd"] = sum(parts.values())
    scores.update({f"kd_{k}": v for k, v in parts.items()})
  return scores


def inference_views(batch: Batch, seq_half: int):
  """(consecutive [B, 2h+1, ...], middle removed [B, 2h, ...]) float views."""
  crops = batch["crops"]
  half_window = (crops.shape[1] - 1) // 2
  consec = _to_float(jnp.take(crops, consecutive_indices(half_window, seq_half),
                              axis=1))
  middle_removed = jnp.concatenate(
      [consec[:, :seq_half], consec[:, seq_half + 1:]], axis=1)
  return consec, middle_removed
