r"""Side-by-side speed: the JAX model vs its PyTorch twin, and the detector.

  python -m benchmarks.compare [--quick] [--out results.json] [--markdown t.md]

Measured in one process on one machine (docs/DESIGN.md §7), each after warm-up
(compilation and first calls excluded, reported separately as
``first_call_s``), over several repeats, interleaved between frameworks (so
that drifting background load hits all of them alike); the median and the
spread (min, max, quartiles) of the per-repeat rates are reported:

* train: cubes/s of a full optimisation step on one global batch of object
  records (all four tasks: views built on device, forward, joint loss,
  backward, Adam with a constant schedule). JAX: the real
  ``ssmtl_jax.train.trainer.train_step`` under ``sharding.jit_train_step`` over every
  local device. PyTorch: ``benchmarks.torch_ssmtl.Trainer`` eager and with
  ``torch.compile`` (views + forward + loss compiled, backward through
  AOTAutograd, optimiser eager). A failing ``torch.compile`` is recorded as
  its error string.
* infer: cubes/s of the scoring forward (``ssmtl_jax.evaluation.inference``'s
  ``make_score_fn``, as the evaluator runs it: the consecutive view through
  the backbone once for the aot, mi and kd heads, the middle-removed view for
  mbp, then the per-task object scores).
* detector: frames/s of YOLOv3-tiny at the same input size, Flax
  (``ssmtl_jax.perception.detector.yolo.Detector``) vs OpenCV dnn
  (``cv2.dnn.readNetFromDarknet``) on the same weights. "network": one
  letterboxed blob in, decoded rows out (host to host for both); "end_to_end":
  frames in, final detections out, both with our letterbox pre-processing and
  our NMS post-processing (only the network differs). Where OpenCV has no
  darknet importer (OpenCV 5 dropped ``readNetFromDarknet``), the Flax rows
  are still measured and the OpenCV rows are recorded as
  ``{"unavailable": reason}`` ("unavailable" in the table). Where Flax's
  default convolutions are oneDNN's, the same network on XLA's convolutions
  is timed too.
* teacher: images/s of the EfficientNet-Lite0 teacher on one batch of
  normalised images (32 at 224 px; quick: 8 at 128), Flax (default and XLA
  convolutions) vs the torch port eager (channels-last) and frozen
  (``benchmarks.teacher_vs_torch``).
* end_to_end: frames/s of the whole JAX scoring pipeline on real frames
  (Ped2 test video 01 beside the repository, or ``--frames DIR``): Flax
  detector, cubes, Lite0 teacher, the model's task scores, maps, smoothing;
  with each stage's seconds. JAX only (see ``benchmarks.end_to_end``).
* flops: this machine's f32 matmul FLOP/s (JAX and torch) and the model's
  FLOPs per cube (analytic: conv + dense multiply-adds x 2; training = 3 x
  forward), giving the achieved model FLOP/s as a percentage of the JAX
  matmul rate; plus XLA's own estimate for the compiled train step.

Devices: JAX uses its default backend (all local devices); torch uses CUDA
when ``torch.cuda.is_available()`` (one device; TF32 allowed like JAX's
default precision), else the CPU with ``torch.set_num_threads(os.cpu_count())``
(``--torch_threads`` overrides) and ``OMP_WAIT_POLICY=PASSIVE`` unless set
(why: see ``benchmarks.harness``). OpenCV's dnn always runs on the CPU
(``cv2.setNumThreads(os.cpu_count())``; the pip wheels have no CUDA).

Configurations:

* full: global batch 256 of 7x64x64x1 cubes, narrow model (16/32/32,
  shallow), 5 repeats of >= 2 s; detector at 736x480 (the Ped2 setting) in
  batches of 8, 32 frames per detector end-to-end repeat; the pipeline on
  64 frames (3 timed passes).
* quick: global batch 8 of 7x32x32x1 cubes, narrow shallow model, 3 repeats
  of >= 0.4 s; detector at 416x416, batches of 4, 4 frames per detector
  end-to-end repeat; the pipeline on 16 frames (1 timed pass). About 1-2
  minutes on 2 CPU cores once torch.compile's on-disk cache
  (``/tmp/torchinductor_$USER``) is warm; the very first run on a machine adds
  about a minute of Inductor C++ compilation (shown as ``first_call_s``).

Numbers on a shared machine are noisy; the JSON records the load average
before and after.

Modules: ``benchmarks.harness`` (settings, timing, inputs, models),
``benchmarks.train_infer``, ``benchmarks.detector_vs_opencv``,
``benchmarks.teacher_vs_torch`` and ``benchmarks.end_to_end`` (the
sections; ``benchmarks.torch_teachers`` the torch Lite0), ``benchmarks.flops`` (FLOP counts
and the matmul rate), ``benchmarks.matrix`` (``--matrix``) and
``benchmarks.report`` (machine, ratios, table). This module holds the flags,
``run`` and ``main``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

# First: sets this process's environment defaults (no GPU preallocation,
# OMP_WAIT_POLICY=PASSIVE, ...) before torch and JAX are loaded.
from benchmarks import harness  # pylint: disable=g-bad-import-order
from absl import flags  # pylint: disable=g-import-not-at-top,g-bad-import-order
import cv2  # pylint: disable=g-import-not-at-top
import jax
import torch

from benchmarks import detector_vs_opencv
from benchmarks import teacher_vs_torch
from benchmarks import end_to_end
from benchmarks import flops as flops_lib
from benchmarks import matrix as matrix_lib
from benchmarks import report
from benchmarks import train_infer
from ssmtl_jax.base import cli
from ssmtl_jax.model import network

# Times one section: section(name, fn) -> fn(), its wall seconds recorded.
_SectionFn = Callable[[str, Callable[[], Any]], Any]


def _set_up_devices(settings: harness.BenchSettings) -> torch.device:
  """Thread counts of torch and OpenCV, and torch's device and precision."""
  ncpu = os.cpu_count() or 1
  torch.set_num_threads(settings.torch_threads or ncpu)
  cv2.setNumThreads(ncpu)
  device = harness.torch_device()
  if device.type == "cuda":
    # Same precision policy as JAX's default on GPUs (TF32 convs/matmuls).
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
  return device


def _config_entry(settings: harness.BenchSettings) -> dict:
  """The results' "config" entry: what was measured, and how."""
  s = settings
  return {
      "quick": s.quick, "batch": s.batch, "crop": s.crop,
      "channels": s.channels, "frames": 2 * s.seq_half + 1,
      "half_window": s.half_window, "variant": s.variant, "depth": s.depth,
      "widths": list(s.widths), "head_width": s.head_width,
      "kd_outputs": s.kd_outputs, "tasks": list(network.TASKS),
      "optimizer": f"adam lr {s.learning_rate}, constant",
      "repeats": s.repeats, "warmup_calls": s.warmup,
      "min_repeat_s": s.min_repeat_s, "det_input": list(s.det_input),
      "det_batch": s.det_batch, "det_frames": s.det_frames,
      "teacher_batch": s.teacher_batch, "teacher_input": s.teacher_input,
      "e2e_frames": s.e2e_frames,
      "torch_channels_last": s.torch_channels_last,
      "torch_compile": s.torch_compile,
      "jax_conv_impl": str(harness.bench_config(s).model.get("conv_impl",
                                                             "xla")),
      "torch_threads_policy": (f"torch.set_num_threads({s.torch_threads})"
                               if s.torch_threads else
                               "torch.set_num_threads(os.cpu_count())"),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
  }


def _model_sections(settings: harness.BenchSettings, m: harness.Models,
                    records: dict, device: torch.device, results: dict,
                    section: _SectionFn) -> dict:
  """Fills results' "matrix" (with --matrix), "train" and "infer"; returns
  XLA's cost of the train step."""
  s = settings
  default = None
  if s.matrix is not None:
    results["matrix"] = section(
        "matrix", lambda: matrix_lib.matrix_section(s, m, device, s.matrix))
    default = matrix_lib.default_sections(results["matrix"], s.batch)
  if default is not None:
    # The matrix holds the default configuration's rows: the summary table
    # shows those instead of timing them again.
    results["train"], results["infer"], xla = default
  else:
    results["train"], xla = section(
        "train", lambda: train_infer.train_section(s, m, records, device))
    results["infer"] = section(
        "infer", lambda: train_infer.infer_section(s, m, records, device))
  return xla


def _flops_entry(settings: harness.BenchSettings, results: dict, mm: dict,
                 xla: dict) -> dict:
  """The results' "flops" entry; adds each train and infer entry's achieved
  ``model_flops_per_s``."""
  fl = flops_lib.model_flops(settings)
  flops = {"matmul": mm, "train_flops_per_cube": fl["train"],
           "infer_flops_per_cube": fl["infer"],
           "method": "analytic conv+dense FLOPs (2 x MACs); train = 3 x "
                     "forward of the four views",
           "xla_train_flops_per_cube": (
               xla["xla_flops_per_step"] / settings.batch
               if xla["xla_flops_per_step"] else None)}
  for section in ("train", "infer"):
    pct = {}
    for name, entry in results[section].items():
      if isinstance(entry, dict) and "cubes_per_s" in entry:
        achieved = entry["cubes_per_s"] * fl[section]
        entry["model_flops_per_s"] = achieved
        pct[name] = 100 * achieved / mm["jax_flops_per_s"]
    flops[f"{section}_pct_of_jax_matmul"] = pct
  return flops


def run(settings: harness.BenchSettings) -> dict:
  """Every section the settings ask for; the results as the JSON holds them."""
  device = _set_up_devices(settings)
  results: dict[str, Any] = {"machine": report.machine_info(device)}
  s = settings
  results["config"] = _config_entry(s)
  records = harness.bench_records(s)
  walls = results["config"]["section_wall_s"] = {}

  def section(name: str, fn: Callable[[], Any]) -> Any:
    print(f"{name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
      return fn()
    finally:
      walls[name] = time.perf_counter() - t0

  m = section("models", lambda: harness.build_models(s, device))
  xla = _model_sections(s, m, records, device, results, section)
  # The optional sections: one that fails holds its error, the rest run.
  optional = (
      ("detector", s.detector, lambda: detector_vs_opencv.detector_section(s)),
      ("teacher", s.teacher, lambda: teacher_vs_torch.teacher_section(s)),
      ("end_to_end", s.e2e, lambda: end_to_end.end_to_end_section(s, m)))
  for name, wanted, fn in optional:
    if wanted:
      try:
        results[name] = section(name, fn)
      except Exception as e:  # pylint: disable=broad-except
        results[name] = {"error": harness.error_text(e)}
  n = s.matmul_n * (1 if jax.default_backend() == "cpu" else 2)
  mm = section("matmul", lambda: flops_lib.matmul_flops(n))
  results["flops"] = _flops_entry(s, results, mm, xla)
  results["ratios"] = report.ratios(results)
  if hasattr(os, "getloadavg"):
    results["machine"]["loadavg_end"] = list(os.getloadavg())
  results["machine"]["note"] = (
      "Timings on a shared machine are noisy: compare the spread (min/max, "
      "quartiles) and the load averages.")
  return results


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_bool("quick", False, "small preset, < 2 minutes on 2 CPU cores",
                    flag_values=fv)
  flags.DEFINE_string("out", None, "write the JSON here", flag_values=fv)
  flags.DEFINE_string("markdown", None, "write the table here", flag_values=fv)
  flags.DEFINE_integer("batch", None, "cubes per step", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_integer("crop", None, "crop side (px)", flag_values=fv,
                       lower_bound=8)
  flags.DEFINE_enum("variant", None, sorted(network.VARIANT_WIDTHS),
                    "backbone widths", flag_values=fv)
  flags.DEFINE_enum("depth", None, sorted(network.DEPTH_CONVS),
                    "convs per stage", flag_values=fv)
  flags.DEFINE_integer("repeats", None, "timed repeats (median)",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_bool("torch_compile", True, "also time torch.compile",
                    flag_values=fv)
  flags.DEFINE_bool("detector", True, "the detector comparison",
                    flag_values=fv)
  flags.DEFINE_bool("teacher", True, "the Lite0 teacher comparison (Flax vs "
                    "torch)", flag_values=fv)
  flags.DEFINE_bool("end_to_end", True, "the end-to-end pipeline timing",
                    flag_values=fv)
  flags.DEFINE_string("frames", harness.PED2_TEST_VIDEO,
                      "folder of frames for the detector and end-to-end "
                      "sections (default: Ped2 test/01 beside the repo; "
                      "synthetic frames if missing)", flag_values=fv)
  flags.DEFINE_integer("torch_threads", 0,
                       "torch CPU threads (0: os.cpu_count())",
                       flag_values=fv, lower_bound=0)
  flags.DEFINE_bool("matrix", False,
                    "also the speed matrix: every combination of the "
                    "--matrix_* switches, vs torch of the same dtype and "
                    "batch (benchmarks/matrix.py)", flag_values=fv)
  flags.DEFINE_list("matrix_dtypes", ["float32", "bfloat16"],
                    "model.dtype values", flag_values=fv)
  flags.DEFINE_list("matrix_pools", ["argmax", "reduce_window"],
                    "model.pool_impl values", flag_values=fv)
  flags.DEFINE_list("matrix_fuse", ["false", "true"],
                    "model.fuse_views values", flag_values=fv)
  flags.DEFINE_list("matrix_convs", ["auto"],
                    "model.conv_impl values (e.g. fast,onednn on a CPU)",
                    flag_values=fv)
  flags.DEFINE_list("matrix_batches", [],
                    "global batch sizes (default: --batch)", flag_values=fv)
  flags.DEFINE_integer("matrix_max_batch", 8192,
                       "largest-batch search cap on accelerators (0 = no "
                       "search; on the CPU JAX's estimate only)",
                       flag_values=fv, lower_bound=0)
  flags.DEFINE_enum("matrix_profile", "auto", ["auto", "true", "false"],
                    "top-ops profile of a JAX train step (auto: on "
                    "accelerators)", flag_values=fv)
  flags.DEFINE_bool("torch_contiguous", False,
                    "torch in NCDHW instead of channels_last_3d",
                    flag_values=fv)
  return fv


def _matrix_axes(args) -> matrix_lib.Axes:
  """--matrix_* flags -> Axes; a bad value is a UsageError naming the flag."""
  def check(flag, values, allowed):
    bad = [v for v in values if v not in allowed]
    if bad or not values:
      raise flags.IllegalFlagValueError(
          f"--{flag}={','.join(values)}: expected a non-empty list of "
          f"{', '.join(allowed)}")
    return values
  dtypes = check("matrix_dtypes", args.matrix_dtypes,
                 ("float32", "bfloat16"))
  pools = check("matrix_pools", args.matrix_pools,
                [p for p in network.POOL_IMPLS if p != "auto"])
  fuse = check("matrix_fuse", [v.lower() for v in args.matrix_fuse],
               ("false", "true"))
  convs = check("matrix_convs", args.matrix_convs, network.CONV_IMPLS)
  try:
    batches = [int(b) for b in args.matrix_batches]
  except ValueError:
    batches = [0]
  if any(b < 1 for b in batches):
    raise flags.IllegalFlagValueError(
        f"--matrix_batches={','.join(args.matrix_batches)}: expected "
        f"positive integers")
  profile = {"auto": None, "true": True, "false": False}[args.matrix_profile]
  return matrix_lib.Axes(dtypes=dtypes, pool_impls=pools,
                         fuse_views=[v == "true" for v in fuse],
                         conv_impls=convs,
                         batches=batches, max_batch=args.matrix_max_batch,
                         profile=profile)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = cli.parse_tool_flags("python -m benchmarks.compare", _flags(), argv,
                              output_files=("out", "markdown"))
  settings = (harness.BenchSettings.quick_preset() if args.quick
              else harness.BenchSettings())
  for key in ("batch", "crop", "variant", "depth", "repeats"):
    if args[key].value is not None:
      setattr(settings, key, args[key].value)
  settings.torch_compile = args.torch_compile
  settings.detector = args.detector
  settings.e2e = args.end_to_end
  settings.teacher = args.teacher
  settings.frames_dir = args.frames
  settings.torch_channels_last = not args.torch_contiguous
  settings.torch_threads = args.torch_threads
  if args.matrix:
    try:
      settings.matrix = _matrix_axes(args)
    except flags.Error as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  t0 = time.perf_counter()
  results = run(settings)
  results["config"]["wall_s"] = time.perf_counter() - t0
  table = report.markdown(results)
  if "matrix" in results:
    table += "\n\nSpeed matrix:\n" + matrix_lib.markdown(results["matrix"])
  print(table)
  print(f"(total {results['config']['wall_s']:.0f} s)")
  report.write_outputs(results, table, args.out, args.markdown)
  return 0


if __name__ == "__main__":
  sys.exit(main())
