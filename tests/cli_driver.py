"""Runs one binary's main() on several argument lists in one process.

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
import sys
import time

from absl import flags

from ssmtl_jax import cli


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
        module.main(cli.parse_flags([prog] + argv))
      except SystemExit as e:
        code = e.code
    results.append({"code": code, "stderr": err.getvalue(),
                    "seconds": time.perf_counter() - t0,
                    "jax_imported": "jax" in sys.modules})
  print(json.dumps(results))


if __name__ == "__main__":
  main()
