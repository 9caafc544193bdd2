"""What every binary shares: absl flag parsing where a bad ``--config.*``
override is one clear line, and the mapping of user errors
(``errors.UserError``) to one line on stderr and exit status 2."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from typing import Callable, Optional, Sequence

from absl import flags

from ssmtl_jax import errors


def _config_path(argv: Sequence[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _override_keys(argv: Sequence[str]) -> list[str]:
  """The dotted keys of --config.a.b[=v] arguments, as given."""
  return [arg[2:].split("=", 1)[0] for arg in argv
          if arg.startswith("--config.")]


def unknown_override(config, key: str) -> Optional[str]:
  """Why ``key`` ('config.a.b') names no value of ``config``, or None.

  Walks the config itself rather than reading ml_collections' error text, so
  a typo at any depth, or a key below a plain value, is named exactly.
  """
  node, path = config, "config"
  for part in key.split(".")[1:]:
    if not hasattr(node, "keys"):
      return f"{path} is a value, not a group: {key!r} does not exist"
    if part not in node.keys():
      close = difflib.get_close_matches(part, list(node.keys()), n=1)
      hint = f" (did you mean {path}.{close[0]}?)" if close else ""
      return (f"unknown config key {key!r}: {path} has no {part!r}{hint}; "
              "see configs/common.py for the available keys")
    node, path = node[part], f"{path}.{part}"
  return None


def _load_config(path: str):
  """get_config() of a config file 'path[:arg]', as config_flags loads it."""
  file, *arg = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("_ssmtl_config_check", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def check_overrides(argv: Sequence[str]) -> None:
  """Exits with one line when a --config.* override names no config key."""
  keys = _override_keys(argv)
  path = _config_path(argv)
  if not keys or not path:
    return
  try:
    config = _load_config(path)
  except Exception:  # pylint: disable=broad-except
    return  # absl's parse below reports the config file itself
  if not hasattr(config, "keys"):
    return
  for key in keys:
    problem = unknown_override(config, key)
    if problem:
      _exit(problem)


def parse_flags(argv: Sequence[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl flag parsing; a bad flag or --config.* override is one clear line."""
  check_overrides(argv)
  try:
    return flag_values(argv)
  except flags.Error as e:
    _exit(f"{e}")
  raise AssertionError("unreachable")


def parse_tool_flags(prog: str, flag_values: flags.FlagValues,
                     argv: Optional[Sequence[str]] = None) -> flags.FlagValues:
  """Parses a tool's own absl flags (argv without the program name; default
  sys.argv[1:]). Tools without a config (recall, weights, synthetic,
  benchmarks) define their flags on their own FlagValues, so that several
  can be imported and called in one process (tests) without clashing.
  --help prints the flags; a bad flag is one line and exit status 2."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--help" in argv or "-h" in argv:
    print(f"usage: {prog} [flags]\n\n{flag_values.get_help()}")
    sys.exit(0)
  try:
    rest = flag_values([prog] + argv)
  except flags.Error as e:
    _exit(f"{e}")
  if len(rest) > 1:
    _exit(f"unexpected arguments: {rest[1:]}")
  return flag_values


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
