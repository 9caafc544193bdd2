"""python -m data_prep.validation --root ROOT --out OUT --holdout 08,16: makes
the pseudo-anomaly validation root (DESIGN §6.5; library:
:mod:`ssmtl_jax.data.validation_split`)."""

from typing import Optional, Sequence

from absl import flags

from ssmtl_jax.base import cli
from ssmtl_jax.base import files
from ssmtl_jax.data import validation_split


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("root", None, "data set root (ROOT/train, ROOT/test...)",
                      flag_values=fv, required=True)
  flags.DEFINE_string("out", None, "validation root to make", flag_values=fv,
                      required=True)
  flags.DEFINE_list("holdout", None, "training video ids to hold out, e.g. "
                    "08,16", flag_values=fv, required=True)
  flags.DEFINE_integer("seed", 0, "seeds where each segment starts",
                       flag_values=fv)
  flags.DEFINE_integer("fast_stride", 3, "source step inside a fast segment",
                       flag_values=fv)
  flags.DEFINE_float("segment", 1 / 3, "anomalous fraction of each "
                     "validation video", flag_values=fv)
  flags.DEFINE_integer("min_normal", 8, "fewest normal frames before and "
                       "after each segment", flag_values=fv)
  flags.DEFINE_list("kinds", list(validation_split.KINDS), "pseudo-anomalies to make",
                    flag_values=fv)
  flags.DEFINE_float("paste_size", validation_split.PASTE_SIZE,
                     "height of a 'paste' object, as a fraction of the frame "
                     "height", flag_values=fv)
  flags.DEFINE_string("prefix", "val", "validation ids are "
                      "<prefix><source_id>_<kind>", flag_values=fv)
  return fv


def main(argv: Optional[Sequence[str]] = None) -> None:
  """python -m data_prep.validation --root ROOT --out OUT --holdout 08,16"""
  args = cli.parse_tool_flags("python -m data_prep.validation", _flags(), argv)
  if args.out:
    cli.run_reporting_user_errors(
        lambda: files.check_writable_dir(args.out, "--out"))
  summary = cli.run_reporting_user_errors(lambda: validation_split.make_validation_root(
      args.root, args.out, holdout=args.holdout, seed=args.seed,
      segment=args.segment, fast_stride=args.fast_stride,
      min_normal=args.min_normal, kinds=args.kinds, prefix=args.prefix,
      paste_size=args.paste_size, progress=True))
  for val_id in summary["val"]:
    print(validation_split.describe(val_id, summary["videos"][val_id]))
  status = ("made " + ", ".join(summary["made"]) if summary["made"]
            else "already complete, nothing to do")
  print(f"{args.out}: {len(summary['train'])} train, {len(summary['val'])} "
        f"val, {len(summary['test'])} test videos; {status}")


if __name__ == "__main__":
  main()
