"""Scoring object records with a trained checkpoint (sharded, batched, jitted).

Used by the evaluator for the test split and for the training-object
statistics that normalise each task's scores.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Optional

import jax
import numpy as np
import tqdm

from ssmtl_jax import checkpointing
from ssmtl_jax import input_pipeline
from ssmtl_jax import models
from ssmtl_jax import sharding
from ssmtl_jax import tasks as tasks_lib
from ssmtl_jax import train

GEOMETRY_KEYS = ("video_id", "frame_index", "box")


@dataclasses.dataclass
class ObjectScores:
  """Per-object task scores of a split, in record (= video) order."""
  video_id: np.ndarray      # str [N]
  frame_index: np.ndarray   # int32 [N]
  box: np.ndarray           # float32 [N, 4] x1, y1, x2, y2 px
  scores: dict[str, np.ndarray]  # {task: float32 [N]}
  seconds: float            # model time (transfers + compute), excluding compile


@dataclasses.dataclass
class Scorer:
  """A restored model and its jitted scoring function over the device mesh."""
  model: models.SSMTL
  variables: dict
  mesh: jax.sharding.Mesh
  cfg: train.StepConfig
  step: int

  @functools.cached_property
  def _fn(self):
    cfg = self.cfg

    def score(variables, batch):
      consec, middle_removed = tasks_lib.inference_views(batch, cfg.seq_half)
      outputs = self.model.apply(variables, consec, middle_removed,
                                 method=models.SSMTL.score_heads)
      return tasks_lib.object_scores(outputs, consec, batch,
                                     num_det=cfg.num_det,
                                     seq_half=cfg.seq_half, kd_loss=cfg.kd_loss)

    return jax.jit(score, in_shardings=(sharding.replicated(self.mesh),
                                        sharding.data_sharding(self.mesh)),
                   out_shardings=sharding.replicated(self.mesh))

  def score_split(self, info: input_pipeline.RecordsInfo, batch_size: int, *,
                  max_objects: Optional[int] = None,
                  desc: str = "score") -> ObjectScores:
    """Scores every object of a split (or, with max_objects, an evenly spaced
    subset of about that many; used for training statistics)."""
    n_dev = self.mesh.size
    batch_size = -(-batch_size // n_dev) * n_dev
    keys = ("crops", "teacher_det", "teacher_cls") + GEOMETRY_KEYS
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
        model_in = {k: _pad(batch[k], batch_size)
                    for k in ("crops", "teacher_det", "teacher_cls")}
        t0 = time.perf_counter()
        out = jax.device_get(self._fn(self.variables,
                                      sharding.global_batch(model_in, self.mesh)))
        if compiled:  # the first call includes compilation
          seconds += time.perf_counter() - t0
        compiled = True
        for task, v in out.items():
          scores.setdefault(task, []).append(np.asarray(v[:n], np.float32))
        bar.update(n)
    if not geometry["video_id"]:
      raise input_pipeline.DataError(
          f"{info.records_dir}: split {info.split!r} has no objects")
    return ObjectScores(
        video_id=np.array([v.decode() for v in np.concatenate(geometry["video_id"])]),
        frame_index=np.concatenate(geometry["frame_index"]).astype(np.int32),
        box=np.concatenate(geometry["box"]).astype(np.float32),
        scores={t: np.concatenate(v) for t, v in scores.items()},
        seconds=seconds)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def restore_scorer(config, workdir: str, step: Optional[int] = None) -> Scorer:
  """Restores the checkpoint `step` (default: latest) of workdir for scoring."""
  info = input_pipeline.records_info(config.data.records,
                                     config.data.train_split)
  cfg = train.StepConfig.from_config(config, info)
  mesh = sharding.create_mesh()
  model = models.create_model(config, kd_outputs=info.kd_outputs,
                              channels=info.channels)
  # The optimiser only shapes opt_state in the abstract restore target.
  tx = train.create_optimizer(config, max(1, int(config.total_steps)))
  abstract = jax.eval_shape(functools.partial(
      train.create_train_state, model=model, tx=tx,
      views=train.init_views(info, cfg.seq_half, cfg.tasks)),
      jax.random.PRNGKey(0))
  repl = sharding.replicated(mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), abstract)
  manager = checkpointing.create_manager(workdir, async_save=False)
  state = checkpointing.restore(manager, abstract, step)
  return Scorer(model=model,
                variables={"params": state.params,
                           "batch_stats": state.batch_stats},
                mesh=mesh, cfg=cfg, step=int(jax.device_get(state.step)))
