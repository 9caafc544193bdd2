"""What every binary shares: absl flag parsing where a bad ``--config.*``
override is one clear line, and the mapping of user errors
(``errors.UserError``) to one line on stderr and exit status 2."""

from __future__ import annotations

import difflib
import importlib.util
import logging as logging_std
import os
import sys
from typing import Callable, Optional, Sequence

from absl import flags
from absl import logging

from ssmtl_jax.base import errors
from ssmtl_jax.base import files


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The value of --name=v or --name v in argv, else None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg[len(name) + 3:]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_path(argv: Sequence[str]) -> Optional[str]:
  return _flag_value(argv, "config")


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


def load_config(path: str):
  """(config, None), or (None, why the config file of ``--config=path[:arg]``
  cannot be loaded: missing, a folder, a syntax error, no get_config,
  get_config raising)."""
  file = path.split(":", 1)[0]
  if not os.path.exists(file):
    return None, f"--config: config file {file} not found"
  if not os.path.isfile(file):
    return None, f"--config: {file} is not a file"
  try:
    return _load_config(path), None
  except errors.UserError as e:  # e.g. configs/workdir.py without config.json
    return None, f"--config {path}: {e}"
  except SyntaxError as e:
    return None, (f"--config: config file {file} line {e.lineno}: syntax "
                  f"error: {e.msg}")
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, AttributeError) and "get_config" in str(e):
      return None, f"--config: config file {file} defines no get_config()"
    where = ""
    tb = e.__traceback__
    while tb is not None:  # the innermost frame inside the config file
      if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(file):
        where = f" line {tb.tb_lineno}"
      tb = tb.tb_next
    return None, f"--config: config file {file}{where}: {type(e).__name__}: {e}"


def check_overrides(argv: Sequence[str]) -> None:
  """Exits with one line when the config file cannot be loaded or a
  --config.* override names no config key."""
  keys = _override_keys(argv)
  path = _config_path(argv)
  if not path:
    return
  config, problem = load_config(path)
  if problem:
    _exit(problem)
  if not keys:
    return
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


# configs/ is a top-level package beside ssmtl_jax/ (setup.cfg installs both).
WORKDIR_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), "configs", "workdir.py")


def parse_flags_config_from_workdir(
    argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> list[str]:
  """parse_flags for the binaries that read a training workdir (evaluate,
  validate, export): without --config, the config is the run's own
  (``configs/workdir.py:WORKDIR``, i.e. WORKDIR/config.json), and
  ``--config.*`` overrides apply on top of it."""
  argv = list(argv)
  workdir = _flag_value(argv, "workdir")
  if _config_path(argv) is None and workdir:
    argv.insert(1, f"--config={WORKDIR_CONFIG}:{workdir}")
  return parse_flags(argv, flag_values)


def parse_tool_flags(prog: str, flag_values: flags.FlagValues,
                     argv: Optional[Sequence[str]] = None,
                     output_files: Sequence[str] = ()) -> flags.FlagValues:
  """Parses a tool's own absl flags (argv without the program name; default
  sys.argv[1:]). Tools without a config (recall, weights, synthetic,
  benchmarks) define their flags on their own FlagValues, so that several
  can be imported and called in one process (tests) without clashing.
  --help prints the flags; a bad flag is one line and exit status 2, as is
  an ``output_files`` flag naming a file whose folder cannot be written
  (checked now, not after the tool's work)."""
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
  for name in output_files:  # files written at the end: their folder now
    value = flag_values[name].value
    if value:
      run_reporting_user_errors(lambda v=value, n=name: files.check_writable_dir(
          os.path.dirname(os.path.abspath(v)), f"--{n}"))
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


class _DropLibraryInfo(logging_std.Filter):
  """Drops INFO records of chatty libraries (orbax logs every save step by step)."""
  QUIET = ("/orbax/", "/tensorflow_datasets/")

  def filter(self, record):
    return record.levelno > logging_std.INFO or not any(
        q in record.pathname for q in self.QUIET)


def quiet_library_logs() -> None:
  """Every binary's logging: INFO of orbax and TFDS dropped. Here, not in
  the job modules, so that a binary that only scores (score, evaluate,
  export) does not import the trainer to set up its logs."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
