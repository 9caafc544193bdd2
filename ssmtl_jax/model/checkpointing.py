"""One place for orbax checkpointing: manager, save, restore into a sharded state."""

from __future__ import annotations

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from ssmtl_jax.base import errors


CheckpointError = errors.CheckpointError


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(workdir) / "checkpoints"


def create_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                   create: bool = True) -> ocp.CheckpointManager:
  """Keeps the latest `keep` checkpoints; the trainer decides when to save.
  ``create=False`` (readers: evaluator, export) makes no checkpoint folder.

  Saves are atomic: orbax writes to a temporary directory and renames it when
  complete, so a process killed mid-save leaves the previous checkpoints intact.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(keep), enable_async_checkpointing=bool(async_save),
      create=bool(create))
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> bool:
  """Saves `state` as `step` (asynchronously when the manager is async)."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=True)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a state, as restore targets."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      state)


def _existing_step(manager: ocp.CheckpointManager,
                   step: Optional[int]) -> int:
  """`step`, or the latest one when None; CheckpointError if there is none."""
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint under {manager.directory}")
  elif step not in manager.all_steps():
    raise CheckpointError(
        f"no checkpoint for step {step} under {manager.directory} "
        f"(available: {sorted(manager.all_steps())})")
  return step


def restore(manager: ocp.CheckpointManager, target: Any,
            step: Optional[int] = None) -> Any:
  """Restores `step` (default: latest) into the structure and shardings of
  `target` (a state or its abstract version)."""
  step = _existing_step(manager, step)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))


def restore_subtree(manager: ocp.CheckpointManager, target: dict,
                    step: Optional[int] = None) -> dict:
  """Restores only the top-level entries of a saved state named in `target`
  (e.g. {"step", "params", "batch_stats"} of a TrainState, without the
  optimiser state), into their structure and shardings.

  Args:
    target: {field of the saved state: (abstract) subtree}; leaves give the
      shape, dtype and sharding to restore into.
    step: default: the latest.
  Returns:
    A dict like `target` holding the restored arrays.
  """
  step = _existing_step(manager, step)
  target = abstract_like(target)
  return manager.restore(step, args=ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
