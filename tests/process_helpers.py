"""Running `python -m ssmtl_jax.main` in subprocesses and reading what it leaves."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 300


def write_config(path: pathlib.Path, records, **overrides) -> pathlib.Path:
  """A config file: record_helpers.tiny_config(records, **overrides)."""
  path.write_text(
      "from tests import record_helpers\n\n\n"
      "def get_config():\n"
      f"  return record_helpers.tiny_config({str(records)!r}, "
      f"**{overrides!r})\n")
  return path


class Run:
  """One `python -m ssmtl_jax.main` subprocess; stdout/stderr go to files.

  A shared persistent compilation cache (cache_dir) lets every run after the
  first skip most of the compile time.
  """

  def __init__(self, name, config, workdir, *flags, log_dir, devices=2,
               cache_dir=None):
    self.name = name
    self.stderr_path = log_dir / f"{name}.stderr"
    env = dict(os.environ)
    env.update(
        # This run's device count; the other XLA flags as the test session
        # has them (conftest.py's longer collective rendezvous timeouts).
        XLA_FLAGS=" ".join(
            [f"--xla_force_host_platform_device_count={devices}"]
            + [f for f in env.get("XLA_FLAGS", "").split()
               if not f.startswith("--xla_force_host_platform_device_count")]),
        TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(
            [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir is not None:
      env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    cmd = [sys.executable, "-m", "ssmtl_jax.main", f"--config={config}",
           f"--workdir={workdir}", *flags]
    with open(log_dir / f"{name}.stdout", "wb") as out, \
        open(self.stderr_path, "wb") as err:
      self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                   stderr=err, stdin=subprocess.DEVNULL)

  def stderr(self) -> str:
    return self.stderr_path.read_text(errors="replace")

  def tail(self, n: int = 40) -> str:
    lines = self.stderr().splitlines()[-n:]
    return f"--- {self.name} (rc={self.proc.poll()}), stderr tail:\n" + \
        "\n".join(lines)

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def wait(*runs: Run, timeout: float = TIMEOUT_S,
         fail_fast: bool = False) -> list[int]:
  """Waits for every run and returns their exit codes; kills them all past the
  timeout, or (fail_fast) as soon as one fails — a process whose peer died
  would block forever in a collective."""
  deadline = time.monotonic() + timeout
  try:
    while any(r.proc.poll() is None for r in runs):
      failed = [r for r in runs if r.proc.poll() not in (None, 0)]
      if (fail_fast and failed) or time.monotonic() > deadline:
        why = (f"{failed[0].name} failed" if fail_fast and failed
               else f"timed out after {timeout} s")
        raise AssertionError(why + "\n" + "\n".join(r.tail() for r in runs))
      time.sleep(0.2)
  finally:
    for r in runs:
      r.kill()
  return [r.proc.returncode for r in runs]


def poll_until(predicate, run: Run, what: str, timeout: float = TIMEOUT_S,
               interval: float = 0.05):
  deadline = time.monotonic() + timeout
  while not predicate():
    if run.proc.poll() is not None:
      raise AssertionError(f"{run.name} exited before {what}\n{run.tail()}")
    if time.monotonic() > deadline:
      run.kill()
      raise AssertionError(f"timed out waiting for {what}\n{run.tail()}")
    time.sleep(interval)


def committed_steps(workdir) -> list[int]:
  """Finished checkpoints (orbax renames `N.orbax-checkpoint-tmp` to `N`)."""
  d = pathlib.Path(workdir) / "checkpoints"
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def load_checkpoint(workdir, step: int) -> dict[str, np.ndarray]:
  """The saved TrainState at `step` as {key path: numpy array}.

  Restored as numpy: a multi-process checkpoint's shardings name devices of
  several processes, which do not exist in the test process.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "default"
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = ckptr.restore(
        path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def summary(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "train_summary.json").read_text())
