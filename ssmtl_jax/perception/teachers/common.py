"""Helpers shared by the teacher converters: layouts, tree assembly, checks."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def torch_to_flax(value: np.ndarray) -> np.ndarray:
  """torch weight layout -> Flax layout, as float32.

  Conv ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]`` (a depthwise ``[C, 1, k, k]``
  becomes ``[k, k, 1, C]``, what Flax wants with ``feature_group_count=C``);
  linear ``[out, in]`` -> ``[in, out]``; vectors unchanged.
  """
  value = np.asarray(value, np.float32)
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if value.ndim == 2:
    return np.ascontiguousarray(value.T)
  return value


def assign(tree: dict, path: Sequence[str], value: Any) -> None:
  """tree[path[0]][path[1]]... = value, creating sub-dicts on the way."""
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def check_variables(variables: Mapping, model: nn.Module, input_size: int,
                    what: str) -> None:
  """Raises ValueError unless ``variables`` has exactly the model's leaves.

  Shapes come from ``jax.eval_shape(model.init, ...)`` on one
  ``[1, input_size, input_size, 3]`` image, so nothing is computed.
  """
  expected = jax.eval_shape(
      model.init, jax.random.PRNGKey(0),
      jnp.zeros((1, input_size, input_size, 3), jnp.float32))
  got = traverse_util.flatten_dict(dict(variables), sep="/")
  want = traverse_util.flatten_dict(dict(expected), sep="/")
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted((k, tuple(got[k].shape), tuple(want[k].shape))
                 for k in set(got) & set(want)
                 if tuple(got[k].shape) != tuple(want[k].shape))
  if missing or extra or wrong:
    raise ValueError(
        f"{what}: the state dict does not fit the model: missing "
        f"{missing[:5]}, unexpected {extra[:5]}, wrong shapes (got, want) "
        f"{wrong[:5]}")


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       flax_path: Callable[[str], Optional[Sequence[str]]],
                       model: nn.Module, input_size: int, name: str) -> dict:
  """torch state dict -> checked Flax variables.

  Args:
    state_dict: {torch key: array}.
    flax_path: torch key -> path in the Flax variables (None = not a variable,
      e.g. num_batches_tracked).
    model, input_size, name: for :func:`check_variables`.
  Returns:
    {"params": ..., "batch_stats": ...} float32 numpy trees.
  """
  variables: dict = {}
  for key, value in state_dict.items():
    path = flax_path(key)
    if path is not None:
      assign(variables, path, torch_to_flax(value))
  check_variables(variables, model, input_size, name)
  return variables
