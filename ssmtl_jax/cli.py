"""What the three binaries share: flag parsing with one-line errors, and the
mapping of user errors to one line on stderr and exit status 2."""

from __future__ import annotations

import re
import sys
from typing import Callable, Sequence

from absl import flags

from ssmtl_jax import errors


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing where a bad --config.* override is one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(f"{e}")
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key that does not exist.
    key = str(e).strip("\"'")
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")
             and re.search(rf"[.]{re.escape(key)}(=|$|[.])", a.split("=")[0] + "=")]
    where = f" ({given[0]})" if given else ""
    _exit(f"unknown config key {key!r}{where}: see configs/common.py for the "
          "available keys")
  raise AssertionError("unreachable")


def _exit(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run_reporting_user_errors(fn: Callable[[], object]) -> object:
  """Runs fn; a user error (bad config value, data, checkpoint...) becomes one
  line on stderr and exit status 2 instead of a traceback."""
  try:
    return fn()
  except errors.UserError as e:
    _exit(str(e))
