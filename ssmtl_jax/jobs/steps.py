"""The steps the jobs share (DESIGN §1, §8): distributed set-up, default paths,
the output check, the data (synthetic videos, missing records) and evaluation
with the test videos' frames. No training here: ``python -m ssmtl_jax.evaluate``,
``validate`` and ``export`` stand on this module without loading the trainer
(:mod:`ssmtl_jax.jobs.runner` adds the training loop for ``main``)."""

from __future__ import annotations

import os
from typing import Callable, Iterator, Optional

from absl import logging
import jax
import numpy as np

from ssmtl_jax.base import errors
from ssmtl_jax.base import files
from ssmtl_jax.base import run_config
from ssmtl_jax.jobs import config_checks


def initialize_distributed(config) -> None:
  """jax.distributed.initialize per config.distributed (before any JAX op)."""
  d = config.distributed
  if not d.initialize:
    return
  if d.coordinator_address:
    # CPU multi-process collectives (tests on 127.0.0.1) need gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    local = ([int(i) for i in str(d.local_device_ids).split(",")]
             if d.local_device_ids else None)
    jax.distributed.initialize(coordinator_address=d.coordinator_address,
                               num_processes=int(d.num_processes),
                               process_id=int(d.process_id),
                               local_device_ids=local)
  else:  # Cloud TPU / SLURM / ...: discovered from the environment.
    jax.distributed.initialize()


def _builds_records(config) -> bool:
  return bool(config.data.synthetic or config.data.get("build_missing", False))


def resolve_paths(config, workdir: str) -> None:
  """Fills the default paths of the synthetic config and of
  data.build_missing (docs/DESIGN.md §8)."""
  if config.data.synthetic and not config.data.root:
    config.data.root = os.path.join(workdir, "synthetic_data")
  if _builds_records(config) and not config.data.records:
    config.data.records = os.path.join(workdir, "records")


def check_outputs(config, workdir: str) -> None:
  """The workdir (and the records folder when this job builds it) can be
  written: a ConfigError naming the flag or key before any work."""
  files.check_writable_dir(workdir, "--workdir")
  if _builds_records(config):
    files.check_writable_dir(config.data.records, "config.data.records")


def check_reader(config, workdir: str, out: str, out_flag: str) -> None:
  """What evaluate, validate and export check before any work: every config
  value, the default paths filled, the config against the run's own
  (WORKDIR/config.json, ``run_config.check_matches``) and their output
  folder ``out`` (flag ``out_flag``) writable. Raises errors.UserError."""
  config_checks.check(config)
  resolve_paths(config, workdir)
  run_config.check_matches(config, workdir)
  files.check_writable_dir(out, out_flag)


def prepare_data(config) -> None:
  """Synthetic config: generate the videos if missing; it and
  data.build_missing: build the records if incomplete."""
  if not _builds_records(config):
    return
  from ssmtl_jax.data import builder  # pylint: disable=g-import-not-at-top
  splits = builder.default_splits(config)
  if jax.process_index() == 0:
    if config.data.synthetic:
      from ssmtl_jax.data import synthetic  # pylint: disable=g-import-not-at-top
      params = dict(config.synthetic)
      if not synthetic.is_complete(config.data.root, **params):
        logging.info("Generating the synthetic data set under %s",
                     config.data.root)
        synthetic.generate(config.data.root, **params)
    if not builder.records_complete(config.data.records, splits):
      config_checks.check_build(config)  # now that the videos exist
      build_records(config, splits)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("prepare_data")


def build_records(config, splits=None, beam_args=()) -> dict:
  """Builds (or resumes) the records with the engine of ``build.engine``:
  'local' (``ssmtl_jax.data.builder``) or 'beam'
  (``ssmtl_jax.data.beam_builder``; ``beam_args``: Beam pipeline options
  beyond ``build.beam_options``). Returns the meta per split.

  Raises:
    ConfigError: Beam options for the local engine; the beam engine without
      Apache Beam installed.
  """
  engine = str(config.build.get("engine", "local"))
  if engine == "beam":
    from ssmtl_jax.data import beam_builder  # pylint: disable=g-import-not-at-top
    return beam_builder.build(config, splits, beam_args)
  if beam_args:
    raise errors.ConfigError(
        f"Beam pipeline options {list(beam_args)} given, but "
        f"config.build.engine={engine!r} (set it to 'beam')")
  from ssmtl_jax.data import builder  # pylint: disable=g-import-not-at-top
  return builder.build(config, splits)


def test_frame_reader(config) -> Callable[[str], Iterator[np.ndarray]]:
  """video_id -> its RGB frames (uint8 [H, W, 3]) from the test split of
  config.data.root, for eval.render_video. The evaluator takes this function
  rather than the videos' paths: it scores records and never decodes video
  unless asked to draw on it."""
  from ssmtl_jax.perception import video_io  # pylint: disable=g-import-not-at-top
  sources = {s.video_id: s for s in video_io.list_videos(
      config.data.root, config.data.test_split)}
  return lambda video_id: video_io.iter_frames(sources[video_id], 3)


def evaluate_with_videos(config, workdir: str, step: Optional[int] = None) -> dict:
  """evaluator.evaluate_checkpoint, with the test videos' frames when eval.render_video
  asks for annotated videos."""
  from ssmtl_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  read_frames = (test_frame_reader(config) if config.eval.render_video
                 else None)
  return evaluator.evaluate_checkpoint(config, workdir, step, read_frames=read_frames)
