"""python -m data_prep.synthetic --root DIR [--num_train N ...]: generates the
synthetic data set (library: :mod:`ssmtl_jax.data.synthetic`)."""

import json

from absl import flags

from ssmtl_jax.base import cli
from ssmtl_jax.data import synthetic


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("root", None, "output directory", flag_values=fv,
                      required=True)
  for key, value in synthetic.DEFAULTS.items():
    flags.DEFINE_integer(key, value, key.replace("_", " "), flag_values=fv)
  return fv


def main(argv: list[str] | None = None) -> None:
  """python -m data_prep.synthetic --root DIR [--num_train N ...]"""
  fv = cli.parse_tool_flags("python -m data_prep.synthetic", _flags(), argv)
  summary = synthetic.generate(fv.root, **{k: fv[k].value for k in synthetic.DEFAULTS})
  summary.pop("per_video")
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
