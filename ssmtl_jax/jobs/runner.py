"""The job behind ``python -m ssmtl_jax.main``: set-up, data, train, evaluate
(the shared steps are :mod:`ssmtl_jax.jobs.steps`)."""

from __future__ import annotations

from absl import logging
import jax

from ssmtl_jax.jobs import steps
from ssmtl_jax.model import sharding
from ssmtl_jax.train import trainer


def run(config, workdir: str) -> dict:
  steps.initialize_distributed(config)
  logging.info("JAX %s: %d devices (%s), process %d of %d", jax.__version__,
               jax.device_count(), jax.devices()[0].platform,
               jax.process_index(), jax.process_count())
  # Before anything is written: the global batch must split over the devices.
  sharding.check_batch_size(int(config.input.batch_size), jax.device_count())
  steps.resolve_paths(config, workdir)
  steps.check_outputs(config, workdir)
  steps.prepare_data(config)
  summary = trainer.train(config, workdir)
  result = {"train": summary}
  if (config.eval.after_training and not summary["preempted"]
      and jax.process_count() == 1):
    result["eval"] = steps.evaluate_with_videos(config, workdir)
  elif config.eval.after_training and jax.process_count() > 1:
    logging.info("Multi-process run: evaluate on one host with "
                 "`python -m ssmtl_jax.evaluate`.")
  return result
