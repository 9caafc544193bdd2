"""A workdir remembers how it was made: ``WORKDIR/config.json``.

``python -m ssmtl_jax.main`` writes the resolved config (every override
applied) there before it trains. ``evaluate``, ``validate`` and ``export``
read it when ``--config`` is not given (``configs/workdir.py:WORKDIR`` is
the config file that loads it, so ``--config.*`` overrides still work), and
refuse a ``--config`` whose model, task or build settings differ from the
run's, naming the keys. Settings that change speed but not the trained
function (``SPEED_KEYS``) may differ.
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath
import ml_collections

from ssmtl_jax.base import errors
from ssmtl_jax.base import schema

FILE = "config.json"
COMPARED = ("model", "tasks", "build")
# Speed switches: the same parameters and maths (README "The speed matrix").
SPEED_KEYS = frozenset({
    "model.dtype", "model.conv_impl", "model.pool_impl", "model.fuse_views",
    "build.workers", "build.detector.batch_size",
    "build.classifier.batch_size"})


def path(workdir: str) -> str:
  return os.path.join(os.fspath(workdir), FILE)


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (they hold no lists)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def save(config, workdir: str) -> None:
  """Writes the resolved config to WORKDIR/config.json (atomically)."""
  schema.write_json_atomic(path(workdir), config.to_dict())


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config WORKDIR was trained with (locked, as config files are)."""
  file = path(workdir)
  if not epath.Path(file).exists():
    raise errors.ConfigError(
        f"{file} not found: this workdir was not made by `python -m "
        "ssmtl_jax.main` of this version; pass --config (the file it was "
        "trained with, and the same overrides)")
  config = ml_collections.ConfigDict(_tuples(schema.read_json(file)))
  config.lock()
  return config


def _flat(d: dict, prefix: str = "") -> dict:
  """{'a.b': value} of a nested dict."""
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def differences(config, run) -> list[str]:
  """'key (run: a, given: b)' for every compared key that differs."""
  given, made = (_flat(_tuples(c.to_dict())) for c in (config, run))
  out = []
  for key in sorted(set(given) | set(made)):
    if key.split(".")[0] not in COMPARED or key in SPEED_KEYS:
      continue
    a, b = made.get(key, "<absent>"), given.get(key, "<absent>")
    if a != b:
      out.append(f"config.{key} (run: {a!r}, given: {b!r})")
  return out


def check_matches(config, workdir: str) -> None:
  """ConfigError naming the keys where ``config`` differs from the run in
  ``workdir`` (nothing to check for a workdir without config.json)."""
  if not epath.Path(path(workdir)).exists():
    return
  diff = differences(config, load(workdir))
  if diff:
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more"
                                   if len(diff) > 6 else "")
    raise errors.ConfigError(
        f"--config differs from the run in {path(workdir)}: {shown}. Leave "
        "--config out to use the run's own config")
