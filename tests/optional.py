"""Optional packages in tests: skip only where the distribution that provides
a package is not installed (issue #22).

``import_or_skip(module, dist)`` imports ``module``; if that fails it skips
when no distribution of ``dist`` is installed (a machine without the extra,
e.g. the accelerator image without TensorFlow) and *fails* when one is (an
installed extra that does not import hides a real failure behind a skip).
The decision is keyed by installed distributions (importlib.metadata), not
by the text of an error message.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable, Sequence, Union

import pytest


def installed(dists: Union[str, Sequence[str]]) -> list[str]:
  """Which of the named distributions are installed."""
  names = [dists] if isinstance(dists, str) else list(dists)
  found = []
  for name in names:
    try:
      importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      continue
    found.append(name)
  return found


def skip_or_fail(dists: Union[str, Sequence[str]], why: str,
                 module_level: bool = False) -> None:
  """Skips (none of ``dists`` installed) or fails (one is): ``why`` says
  what did not work."""
  have = installed(dists)
  if have:
    pytest.fail(f"{', '.join(have)} is installed, yet {why}", pytrace=False)
  names = dists if isinstance(dists, str) else " / ".join(dists)
  pytest.skip(f"{names} not installed ({why})",
              allow_module_level=module_level)


def import_or_skip(module: str, dists: Union[str, Sequence[str]],
                   module_level: bool = True):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    skip_or_fail(dists, f"import {module} failed: {e}", module_level)
  return None


def require(check: Callable[[], object], error: type,
            dists: Union[str, Sequence[str]], module_level: bool = True):
  """``check()``, or skip_or_fail when it raises ``error``."""
  try:
    return check()
  except error as e:
    skip_or_fail(dists, f"{type(e).__name__}: {e}", module_level)
  return None
