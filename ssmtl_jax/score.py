r"""python -m ssmtl_jax.score --bundle BUNDLE --input SRC --out DIR [...]: scores a
video, a frame folder, a camera or a stream as it arrives, with a model bundle
(``python -m ssmtl_jax.export``). The scorer is :mod:`ssmtl_jax.serve.stream`
(its docstring lists the outputs, latency and robustness rules)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from ssmtl_jax.base import cli
from ssmtl_jax.serve import stream

_BUNDLE = flags.DEFINE_string("bundle", None, "Bundle (python -m ssmtl_jax.export).")
_INPUT = flags.DEFINE_string(
    "input", None, "Video file, frame folder, camera index or stream URL.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_THRESHOLD = flags.DEFINE_float(
    "threshold", None, "Alert threshold on frame scores (default: the "
    "bundle's calibrated one).")
_MAX_LATENCY = flags.DEFINE_integer(
    "max_latency_frames", 1, "Complete frames whose objects are scored "
    "together (throughput vs latency).", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Objects per model call.",
                              lower_bound=1)
_VIDEO = flags.DEFINE_bool("video", False, "Write annotated.mp4.")
_PLOT = flags.DEFINE_bool("plot", True, "Write scores.png at the end.")
_DETECTIONS = flags.DEFINE_string(
    "detections", None, "Detections CSV of the input (ssmtl_jax/perception/detections.py "
    "format), for bundles trained on pre-computed detections.")
_DET_CFG = flags.DEFINE_string("detector_cfg", None, "Darknet cfg (default: "
                               "YOLOv3-tiny, as in training).")
_DET_WEIGHTS = flags.DEFINE_string("detector_weights", None,
                                   "Darknet weights (checked by sha256).")
_CLS_WEIGHTS = flags.DEFINE_string("classifier_weights", None,
                                   "Classifier teacher .pth (checked by "
                                   "sha256; default: the packaged Lite0).")
_FPS = flags.DEFINE_float("fps", None, "Frame rate for timestamps when the "
                          "source has none (folders; default 25).")
_STALL = flags.DEFINE_float("stall_timeout_s", 10.0, "End the stream when no "
                            "frame arrives for this long.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 0, "Stop after this many "
                                   "frames (0 = the whole source).",
                                   lower_bound=0)
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bar on stderr.")
_REALTIME = flags.DEFINE_bool(
    "realtime", False, "Read a file or folder at its frame rate, as a camera "
    "delivers frames (latency figures of a live source).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  options = stream.Options(
      threshold=_THRESHOLD.value, max_latency_frames=_MAX_LATENCY.value,
      batch_size=_BATCH.value, video=_VIDEO.value, plot=_PLOT.value,
      detections=_DETECTIONS.value, detector_cfg=_DET_CFG.value,
      detector_weights=_DET_WEIGHTS.value,
      classifier_weights=_CLS_WEIGHTS.value, fps=_FPS.value,
      stall_timeout_s=_STALL.value, max_frames=_MAX_FRAMES.value,
      progress=_PROGRESS.value, realtime=_REALTIME.value)
  summary = cli.run_reporting_user_errors(
      lambda: stream.run(_BUNDLE.value, _INPUT.value, _OUT.value, options))
  lat = summary["latency_ms"] or {}
  print(f"{summary['frames']} frames, {summary['objects']} objects, "
        f"{summary['events']} events; {summary['frames_per_s']:.1f} frames/s, "
        f"latency p50 {lat.get('p50', float('nan')):.0f} ms, p99 "
        f"{lat.get('p99', float('nan')):.0f} ms -> {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["bundle", "input", "out"])
  app.run(main, flags_parser=cli.parse_flags)
