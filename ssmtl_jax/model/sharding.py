"""Device mesh, data placement and the jit / pmap wrappers of a step function.

The main path is ``jax.jit`` over a 1-D Mesh of every device (axis ``data``):
the global batch is sharded on its leading axis with NamedSharding and the
state is replicated, so batch-norm statistics and gradients are global without
any explicit collective. The pmap path runs the same step function with
``axis_name='batch'`` so that it averages them with ``lax.pmean`` itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssmtl_jax.base import errors

DATA_AXIS = "data"
PMAP_AXIS = "batch"


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, num_devices: int) -> None:
  if global_batch % num_devices:
    raise errors.ConfigError(f"config.input.batch_size={global_batch} is not divisible "
                     f"by the number of devices ({num_devices})")


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """This process's rows -> global jax.Arrays sharded on the batch axis."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}


def to_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host/device values (the same on every process) -> replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      tree)


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
  """step_fn(state, batch, rng) -> (state, metrics), jitted with explicit
  shardings: state and rng replicated, batch sharded, state donated."""
  repl, data = replicated(mesh), data_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(repl, data, repl),
                 out_shardings=(repl, repl), donate_argnums=(0,))


# --- pmap variant -----------------------------------------------------------


def pmap_train_step(step_fn: Callable) -> Callable:
  """The same step under jax.pmap over local devices (collectives over all
  processes' devices). The state is replicated with a leading device axis."""
  return jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS),
                  axis_name=PMAP_AXIS, in_axes=(0, 0, None),
                  donate_argnums=(0,))


def split_for_pmap(local: Mapping[str, np.ndarray]) -> dict:
  """[b_local, ...] -> [num_local_devices, b_local / n, ...]."""
  n = jax.local_device_count()
  return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:])
          for k, v in local.items()}


def replicate_for_pmap(tree: Any) -> Any:
  """Stacks one copy per local device; pmap places the copies on its first call."""
  n = jax.local_device_count()
  return jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)


def unreplicate_from_pmap(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)
