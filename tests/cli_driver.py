"""Runs one binary's main() on several argument lists in one process;
``run(module, cases)`` does it in a subprocess from a test.

  python -m tests.cli_driver MODULE 'JSON list of argv lists'

Prints a JSON list of {"code": exit status, "stderr": text, "seconds": the
case's wall time, "jax_imported": whether jax was imported by then}, one
per argv.
One process per binary instead of one per case keeps the table test of
tests/test_config_checks.py fast (JAX/TF imports are paid once).
"""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import time

from absl import flags

from ssmtl_jax.base import cli
from tests.paths import REPO


def run(module: str, cases: list) -> list:
  """The results of ``module``'s main() on each argv of ``cases``, in one
  subprocess with one CPU device, as a user runs it."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as a user has
  proc = subprocess.run(
      [sys.executable, "-m", "tests.cli_driver", module, json.dumps(cases)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  prog, cases = sys.argv[1], json.loads(sys.argv[2])
  module = importlib.import_module(prog)
  results = []
  for argv in cases:
    err = io.StringIO()
    code = 0
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
      try:
        flags.FLAGS.unparse_flags()
        # The --config.* override flags are registered per parse: drop the
        # previous case's.
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
          delattr(flags.FLAGS, name)
        # ml_collections reads the --config.* overrides from sys.argv.
        sys.argv = [prog] + argv
        parse = getattr(module, "PARSE_FLAGS", cli.parse_flags)
        module.main(parse([prog] + argv))
      except SystemExit as e:
        code = e.code
    results.append({"code": code, "stderr": err.getvalue(),
                    "seconds": time.perf_counter() - t0,
                    "jax_imported": "jax" in sys.modules})
  print(json.dumps(results))


if __name__ == "__main__":
  main()
