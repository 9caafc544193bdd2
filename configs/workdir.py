"""The config a training run was made with, read from its workdir
(WORKDIR/config.json, written by `python -m ssmtl_jax.main`).

evaluate, validate and export use it when --config is not given:
  python -m ssmtl_jax.evaluate --workdir W
is
  python -m ssmtl_jax.evaluate --config configs/workdir.py:W --workdir W
and --config.* overrides work on top of it as with any config file.
"""

from ssmtl_jax.base import run_config


def get_config(workdir):
  return run_config.load(workdir)
