"""The model on objects: a checkpoint's weights (restored without the
trainer) score object records -> raw per-task scores (sharded, batched,
jitted). ``frame_scoring.py`` takes it from there (object scores -> frame scores).

Used by the evaluator for the test split and for the training-object
statistics that normalise each task's scores. :func:`make_score_fn` (the pure
scoring function), :func:`jit_score_fn`, :func:`stacked_batches` and
:func:`score_batch` are also what the benchmark's pipeline scores objects
with.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import (Any, Callable, Iterable, Iterator, Mapping, Optional,
                    Sequence)

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ssmtl_jax.data import input_pipeline
from ssmtl_jax.model import checkpointing
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib

GEOMETRY_KEYS = ("video_id", "frame_index", "box")
MODEL_KEYS = ("crops", "teacher_det", "teacher_cls")

ScoreFn = Callable[[dict, Mapping[str, jax.Array]], dict[str, jax.Array]]


def make_score_fn(model: network.SSMTL, cfg: tasks_lib.StepConfig) -> ScoreFn:
  """The pure scoring function ``score(variables, batch) -> {task: [B]}``.

  batch: crops uint8 [B, 2W+1, S, S, C], teacher_det [B, D], teacher_cls
  [B, K]. The consecutive view goes through the backbone once for the aot,
  mi and kd heads, the middle-removed view for mbp; the result holds the
  per-task object scores of ``tasks.task_scores`` (kd with its parts).
  """

  def score(variables, batch):
    consec, middle_removed = tasks_lib.inference_views(batch, cfg.seq_half)
    outputs = model.apply(variables, consec, middle_removed,
                          method=network.SSMTL.score_heads)
    return tasks_lib.task_scores(outputs, consec, batch, num_det=cfg.num_det,
                                 seq_half=cfg.seq_half, kd_loss=cfg.kd_loss,
                                 kd_scales=cfg.kd_scales)

  return score


def jit_score_fn(score: ScoreFn, mesh: jax.sharding.Mesh) -> ScoreFn:
  """jits a score function over the mesh: variables replicated, the batch
  split over the data axis, scores replicated."""
  return jax.jit(score, in_shardings=(sharding.replicated(mesh),
                                      sharding.data_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def padded_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """batch_size rounded up to a multiple of the mesh's devices."""
  return -(-batch_size // mesh.size) * mesh.size


def stacked_batches(objects: Iterable[Mapping[str, Any]], size: int,
                    keys: Sequence[str] = MODEL_KEYS + GEOMETRY_KEYS
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Groups a stream of objects (one dict each, as ``ssmtl_jax.perception.objects``
  yields them) into batches {key: [n, ...]} of n <= size objects, in order;
  only the last batch is smaller."""
  chunk = []
  for obj in objects:
    chunk.append(obj)
    if len(chunk) == size:
      yield {k: np.stack([o[k] for o in chunk]) for k in keys}
      chunk = []
  if chunk:
    yield {k: np.stack([o[k] for o in chunk]) for k in keys}


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def score_batch(fn: ScoreFn, variables, batch: Mapping[str, np.ndarray], *,
                batch_size: int, mesh: jax.sharding.Mesh
                ) -> dict[str, np.ndarray]:
  """Scores n <= batch_size objects with a jitted score function.

  The batch is zero-padded to batch_size (a multiple of the mesh's devices,
  see padded_batch_size) so that one compiled shape serves every batch.

  Args:
    batch: the MODEL_KEYS arrays of n objects (other keys are ignored).
  Returns:
    {task: float32 [n]} on the host.
  """
  n = len(batch["crops"])
  model_in = {k: _pad(np.asarray(batch[k]), batch_size) for k in MODEL_KEYS}
  out = jax.device_get(fn(variables, sharding.global_batch(model_in, mesh)))
  return {task: np.asarray(v[:n], np.float32) for task, v in out.items()}


@dataclasses.dataclass
class ScoredObjects:
  """Per-object task scores of a split, in record (= video) order."""
  video_id: np.ndarray      # str [N]
  frame_index: np.ndarray   # int32 [N]
  box: np.ndarray           # float32 [N, 4] x1, y1, x2, y2 px
  scores: dict[str, np.ndarray]  # {task: float32 [N]}
  seconds: float            # model time (transfers + compute), excluding compile


@dataclasses.dataclass
class ObjectScorer:
  """A restored model and its jitted scoring function over the device mesh."""
  model: network.SSMTL
  variables: dict
  mesh: jax.sharding.Mesh
  cfg: tasks_lib.StepConfig
  step: int

  @functools.cached_property
  def _fn(self) -> ScoreFn:
    return jit_score_fn(make_score_fn(self.model, self.cfg), self.mesh)

  def score_arrays(self, batch: Mapping[str, np.ndarray], batch_size: int
                   ) -> dict[str, np.ndarray]:
    """:func:`score_batch` of n <= batch_size objects (batch_size a multiple
    of the devices: :func:`padded_batch_size`)."""
    return score_batch(self._fn, self.variables, batch,
                       batch_size=batch_size, mesh=self.mesh)

  def score_split(self, info: input_pipeline.RecordsInfo, batch_size: int, *,
                  max_objects: Optional[int] = None,
                  desc: str = "score") -> ScoredObjects:
    """Scores every object of a split (or, with max_objects, an evenly spaced
    subset of about that many; used for training statistics)."""
    batch_size = padded_batch_size(batch_size, self.mesh)
    keys = MODEL_KEYS + GEOMETRY_KEYS
    ds = input_pipeline.eval_dataset(info, batch_size=batch_size, keys=keys,
                                     every=(max(1, info.num_examples // max_objects)
                                            if max_objects else 1))
    geometry = {k: [] for k in GEOMETRY_KEYS}
    scores: dict[str, list] = {}
    seconds, compiled = 0.0, False
    total = info.num_examples if not max_objects else min(max_objects, info.num_examples)
    with tqdm.tqdm(total=total, unit="obj", desc=desc, dynamic_ncols=True,
                   disable=jax.process_index() > 0) as bar:
      for batch in ds.as_numpy_iterator():
        n = len(batch["crops"])
        for k in GEOMETRY_KEYS:
          geometry[k].append(batch[k])
        t0 = time.perf_counter()
        out = score_batch(self._fn, self.variables, batch,
                          batch_size=batch_size, mesh=self.mesh)
        if compiled:  # the first call includes compilation
          seconds += time.perf_counter() - t0
        compiled = True
        for task, v in out.items():
          scores.setdefault(task, []).append(v)
        bar.update(n)
    if not geometry["video_id"]:
      raise input_pipeline.DataError(
          f"{info.records_dir}: split {info.split!r} has no objects")
    return ScoredObjects(
        video_id=np.array([v.decode() for v in np.concatenate(geometry["video_id"])]),
        frame_index=np.concatenate(geometry["frame_index"]).astype(np.int32),
        box=np.concatenate(geometry["box"]).astype(np.float32),
        scores={t: np.concatenate(v) for t, v in scores.items()},
        seconds=seconds)


def requested_step(config, step: Optional[int] = None) -> Optional[int]:
  """The checkpoint step to restore: ``step`` when given, else
  ``config.eval.checkpoint_step`` (None = the latest, for -1)."""
  if step is None and int(config.eval.checkpoint_step) >= 0:
    step = int(config.eval.checkpoint_step)
  return step


def restore_scorer(config, workdir: str, step: Optional[int] = None) -> ObjectScorer:
  """Restores the weights of checkpoint `step` (default: latest) of workdir
  for scoring: params and batch statistics only (no optimiser state)."""
  info = input_pipeline.records_info(config.data.records,
                                     config.data.train_split)
  cfg = tasks_lib.StepConfig.from_config(config, info)
  mesh = sharding.create_mesh()
  model = network.create_model(config, kd_outputs=info.kd_outputs,
                              channels=info.channels)
  views = network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                            crop_size=info.crop_size, channels=info.channels)
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.PRNGKey(0), views)
  repl = sharding.replicated(mesh)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
      {"step": jax.ShapeDtypeStruct((), jnp.int32),
       "params": abstract["params"],
       "batch_stats": abstract.get("batch_stats", {})})
  manager = checkpointing.create_manager(workdir, async_save=False,
                                        create=False)
  restored = checkpointing.restore_subtree(manager, target, step)
  return ObjectScorer(model=model,
                variables={"params": restored["params"],
                           "batch_stats": restored["batch_stats"]},
                mesh=mesh, cfg=cfg, step=int(jax.device_get(restored["step"])))
