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
  ``{"unavailable": reason}`` ("unavailable" in the table).
* end_to_end: frames/s of the whole JAX scoring pipeline on real frames
  (Ped2 test video 01 beside the repository, or ``--frames DIR``): Flax
  detector, cubes, Lite0 teacher, the model's task scores, maps, smoothing;
  with each stage's seconds. JAX only (see ``end_to_end_section``).
* flops: this machine's f32 matmul FLOP/s (JAX and torch) and the model's
  FLOPs per cube (analytic: conv + dense multiply-adds x 2; training = 3 x
  forward), giving the achieved model FLOP/s as a percentage of the JAX
  matmul rate; plus XLA's own estimate for the compiled train step.

Devices: JAX uses its default backend (all local devices); torch uses CUDA
when ``torch.cuda.is_available()`` (one device; TF32 allowed like JAX's
default precision), else the CPU with ``torch.set_num_threads(os.cpu_count())``
(``--torch_threads`` overrides) and ``OMP_WAIT_POLICY=PASSIVE`` unless set
(why: see below the imports). OpenCV's dnn always runs on the CPU
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
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import math
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

# JAX and torch share the accelerator in one process: no preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Idle OpenMP threads of torch's CPU ops sleep instead of spinning (libgomp /
# libiomp spin up to ~200 ms after every parallel region). Spinning steals
# the cores from JAX's next measurement in this same process, and on a
# machine with other load it made torch itself 10-20x slower here (a thread
# spinning at a barrier while its partner is descheduled). Must be set before
# torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # pylint: disable=g-import-not-at-top
import cv2  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import matrix as matrix_lib
from benchmarks import torch_ssmtl
from configs import common
from ssmtl_jax.base import cli
from ssmtl_jax.evaluation import inference
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib

# Real frames for the detector and end-to-end sections: the first test video
# of UCSD Ped2 when ../shared/data/ped2 sits beside the repository (--frames
# overrides); otherwise synthetic frames.
PED2_TEST_VIDEO = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), os.pardir, "shared", "data", "ped2", "test",
                               "01")


@dataclasses.dataclass
class Settings:
  """What is measured (see the module docstring for the two presets)."""
  quick: bool = False
  batch: int = 256
  crop: int = 64
  channels: int = 1
  variant: str = "narrow"
  depth: str = "shallow"
  head_width: int = 0
  half_window: int = 6
  seq_half: int = 3
  max_gap: int = 2
  num_det: int = 80
  num_cls: int = 1000
  learning_rate: float = 1e-3
  repeats: int = 5
  warmup: int = 1          # untimed calls after the first (compiling) one
  min_repeat_s: float = 2.0  # steps per repeat chosen to last about this long
  max_steps: int = 50
  det_input: tuple[int, int] = (736, 480)
  det_batch: int = 8
  det_frames: int = 32     # frames per end-to-end repeat
  e2e_frames: int = 64     # frames scored per end-to-end (pipeline) repeat
  e2e: bool = True
  frames_dir: str = PED2_TEST_VIDEO
  matmul_n: int = 4096     # doubled on accelerators
  torch_compile: bool = True
  detector: bool = True
  torch_channels_last: bool = True
  torch_threads: int = 0   # 0 = os.cpu_count()
  matrix: Optional["matrix_lib.Axes"] = None   # --matrix: the speed matrix

  @classmethod
  def quick_preset(cls) -> "Settings":
    return cls(quick=True, batch=8, crop=32, repeats=3, warmup=1,
               min_repeat_s=0.4, max_steps=20, det_input=(416, 416),
               det_batch=4, det_frames=4, e2e_frames=16, matmul_n=2048)

  @property
  def widths(self) -> tuple[int, ...]:
    return network.VARIANT_WIDTHS[self.variant]

  @property
  def kd_outputs(self) -> int:
    return self.num_det + self.num_cls


# --- Timing -----------------------------------------------------------------


@dataclasses.dataclass
class Runner:
  """One contender: ``call()`` runs one step; ``sync(result)`` waits for it."""
  name: str
  call: Callable[[], Any]
  sync: Callable[[Any], None]
  items: int  # cubes or frames per call
  first_call_s: Optional[float] = None
  steps: int = 1
  rates: list = dataclasses.field(default_factory=list)
  error: Optional[str] = None


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).strip()}"[:2000]


def _warm_up(runner: Runner, settings: Settings) -> None:
  """First call (compilation) + warm-up calls, then sizes the repeats."""
  try:
    t0 = time.perf_counter()
    runner.sync(runner.call())
    runner.first_call_s = time.perf_counter() - t0
    for _ in range(settings.warmup):
      runner.sync(runner.call())
    t0 = time.perf_counter()
    runner.sync(runner.call())
    one = time.perf_counter() - t0
    runner.steps = int(min(settings.max_steps,
                           max(1, math.ceil(settings.min_repeat_s / one))))
  except Exception as e:  # pylint: disable=broad-except
    runner.error = _error(e)
    print(f"  {runner.name}: FAILED in warm-up: {runner.error.splitlines()[0]}",
          file=sys.stderr)
    if os.environ.get("BENCH_TRACEBACK"):
      traceback.print_exc()


def _measure(runners: Sequence[Runner], settings: Settings) -> None:
  """Warm up each runner, then interleave the timed repeats."""
  for r in runners:
    _warm_up(r, settings)
  for _ in range(settings.repeats):
    for r in runners:
      if r.error:
        continue
      try:
        t0 = time.perf_counter()
        out = None
        for _ in range(r.steps):
          out = r.call()
        r.sync(out)
        r.rates.append(r.steps * r.items / (time.perf_counter() - t0))
      except Exception as e:  # pylint: disable=broad-except
        r.error = _error(e)


def _summary(r: Runner, unit: str) -> dict:
  if r.error:
    return {"error": r.error, "first_call_s": r.first_call_s}
  rates = np.asarray(r.rates)
  q1, med, q3 = np.percentile(rates, [25, 50, 75])
  return {unit: float(med), "min": float(rates.min()),
          "max": float(rates.max()), "q1": float(q1), "q3": float(q3),
          "repeats": [float(x) for x in rates], "steps_per_repeat": r.steps,
          "items_per_step": r.items, "first_call_s": r.first_call_s}


def _jax_sync(out: Any) -> None:
  jax.block_until_ready(out)


def _torch_sync_fn(device: torch.device) -> Callable[[Any], None]:
  if device.type == "cuda":
    return lambda _: torch.cuda.synchronize(device)
  return lambda _: None  # CPU ops are synchronous.


# --- Inputs and models --------------------------------------------------------


def _records(settings: Settings, seed: int = 0) -> dict:
  """A global batch of synthetic object records (speed does not depend on the
  pixel values)."""
  rng = np.random.default_rng(seed)
  s = settings
  return {
      "crops": rng.integers(0, 256, (s.batch, 2 * s.half_window + 1, s.crop,
                                     s.crop, s.channels), np.uint8),
      "teacher_det": rng.random((s.batch, s.num_det), np.float32),
      "teacher_cls": rng.normal(size=(s.batch, s.num_cls)).astype(np.float32),
  }


def _config(settings: Settings):
  config = common.get_config()
  config.model.variant = settings.variant
  config.model.depth = settings.depth
  config.model.head_width = settings.head_width
  config.optim.name = "adam"
  config.optim.schedule = "constant"
  config.optim.learning_rate = settings.learning_rate
  config.tasks.seq_half = settings.seq_half
  config.tasks.max_gap = settings.max_gap
  config.input.batch_size = settings.batch
  return config


def _torch_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_batch(records: dict, device: torch.device):
  """uint8 crops [B, C, 2W+1, S, S] and teacher targets [B, D + K] on device
  (the layout a PyTorch data loader would produce)."""
  crops = torch.from_numpy(records["crops"]).permute(0, 4, 1, 2, 3)
  teacher = torch.from_numpy(np.concatenate(
      [records["teacher_det"], records["teacher_cls"]], axis=1))
  return crops.contiguous().to(device), teacher.to(device)


# --- FLOPs ------------------------------------------------------------------


def model_flops(settings: Settings) -> dict:
  """Analytic conv + dense FLOPs (2 x multiply-adds) per cube.

  Returns:
    {"forward_train": forward of the four task views, "train": 3 x that
    (backward ~ 2 x forward), "infer": the scoring forward}.
  """
  s = settings
  widths, convs = s.widths, network.DEPTH_CONVS[s.depth]
  hw = s.head_width or widths[-1]

  def backbone(t: int) -> float:
    flops, c, size = 0.0, s.channels, s.crop
    for w in widths:
      for _ in range(convs):
        flops += 2 * 27 * c * w * t * size * size
        c = w
      size //= 2
    return flops

  final = s.crop // 2 ** len(widths)

  def class_head(t: int, outputs: int) -> float:
    return 2 * 27 * widths[-1] * hw * t * final * final + 2 * hw * outputs

  def mbp_head(t: int) -> float:
    c, size = t * widths[-1], final
    flops = 2 * 9 * c * widths[-1] * size * size
    c = widths[-1]
    for w in reversed(widths):
      size *= 2
      flops += 2 * 9 * c * w * size * size
      c = w
    return flops + 2 * 9 * c * s.channels * size * size

  t = 2 * s.seq_half + 1
  forward_train = (3 * backbone(t) + backbone(t - 1) + 2 * class_head(t, 2) +
                   class_head(t, s.kd_outputs) + mbp_head(t - 1))
  infer = (backbone(t) + backbone(t - 1) + 2 * class_head(t, 2) +
           class_head(t, s.kd_outputs) + mbp_head(t - 1))
  return {"forward_train": forward_train, "train": 3 * forward_train,
          "infer": infer}


def _xla_flops(lowered) -> Optional[float]:
  try:
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost["flops"])
  except Exception:  # pylint: disable=broad-except
    return None


def matmul_flops(n: int, repeats: int = 5) -> dict:
  """f32 n x n matmul FLOP/s, best and median of `repeats`, JAX and torch."""
  out = {"n": n}
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  out["jax_flops_per_s"] = 2 * n ** 3 / min(times)
  out["jax_flops_per_s_median"] = 2 * n ** 3 / float(np.median(times))
  device = _torch_device()
  ta = torch.randn(n, n, device=device)
  tb = torch.randn(n, n, device=device)
  sync = _torch_sync_fn(device)
  torch.mm(ta, tb)
  sync(None)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    torch.mm(ta, tb)
    sync(None)
    times.append(time.perf_counter() - t0)
  out["torch_flops_per_s"] = 2 * n ** 3 / min(times)
  out["torch_flops_per_s_median"] = 2 * n ** 3 / float(np.median(times))
  return out


# --- Sections -----------------------------------------------------------------


@dataclasses.dataclass
class Models:
  """The Flax model with its initial variables and the twin holding them,
  and the step settings (all four tasks, weight 1) both are run with."""
  flax: network.SSMTL
  variables: dict
  twin: torch_ssmtl.SSMTL
  cfg: tasks_lib.StepConfig


def build_models(settings: Settings, device: torch.device) -> Models:
  config = _config(settings)
  model = network.create_model(config, kd_outputs=settings.kd_outputs,
                              channels=settings.channels)
  views = network.init_views(network.TASKS, seq_half=settings.seq_half,
                            crop_size=settings.crop,
                            channels=settings.channels)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), views)
  twin = torch_ssmtl.from_flax_module(
      model, seq_half=settings.seq_half,
      channels_last=settings.torch_channels_last)
  torch_ssmtl.load_flax_variables(twin, jax.device_get(variables))
  twin.to(device)
  cfg = tasks_lib.StepConfig(
      tasks=network.TASKS, weights=tuple((t, 1.0) for t in network.TASKS),
      seq_half=settings.seq_half, max_gap=settings.max_gap,
      num_det=settings.num_det, kd_loss="l1")
  return Models(model, variables, twin, cfg)


def train_section(settings: Settings, m: Models, records: dict,
                  device: torch.device) -> tuple[dict, dict]:
  """Train throughput; returns (results, XLA cost info)."""
  config = _config(settings)
  cfg = m.cfg
  tx = step_lib.create_optimizer(config, total_steps=1_000_000)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(settings.batch, jax.device_count())
  # Fresh copies: the step donates its state.
  params = jax.tree.map(jnp.copy, m.variables["params"])
  state = step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=jax.tree.map(jnp.copy, m.variables["batch_stats"]),
      opt_state=tx.init(params), bad_step=jnp.full((), -1, jnp.int32))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=m.flax, tx=tx, cfg=cfg), mesh)
  batch = sharding.global_batch(records, mesh)
  rng = sharding.to_replicated(jax.random.PRNGKey(0), mesh)
  xla = {"xla_flops_per_step": _xla_flops(step.lower(state, batch, rng))}

  holder = {"state": state}

  def jax_call():
    holder["state"], metrics = step(holder["state"], batch, rng)
    return metrics

  runners = [Runner("jax", jax_call, _jax_sync, settings.batch)]
  crops, teacher = _torch_batch(records, device)
  sync = _torch_sync_fn(device)
  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    if compiled and not settings.torch_compile:
      continue
    twin = copy.deepcopy(m.twin)
    opt, sched = torch_ssmtl.create_optimizer(twin, config.optim, 1_000_000)
    torch_trainer = torch_ssmtl.Trainer(
        twin, tasks=cfg.tasks, weights=dict(cfg.weights),
        seq_half=cfg.seq_half, max_gap=cfg.max_gap, num_det=cfg.num_det,
        kd_loss=cfg.kd_loss, optimizer=opt, scheduler=sched, compiled=compiled)
    runners.append(Runner(name, functools.partial(torch_trainer.step, crops,
                                                  teacher),
                          sync, settings.batch))
  _measure(runners, settings)
  return {r.name: _summary(r, "cubes_per_s") for r in runners}, xla


def infer_section(settings: Settings, m: Models, records: dict,
                  device: torch.device) -> dict:
  """Scoring throughput (and the largest score difference, as a check that
  both frameworks compute the same thing)."""
  cfg = m.cfg
  mesh = sharding.create_mesh()
  fn = inference.jit_score_fn(inference.make_score_fn(m.flax, cfg),
                                  mesh)
  variables = jax.device_put(m.variables, sharding.replicated(mesh))
  batch = sharding.global_batch(records, mesh)
  runners = [Runner("jax", functools.partial(fn, variables, batch), _jax_sync,
                    settings.batch)]
  crops, teacher = _torch_batch(records, device)
  scorers = {}
  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    if compiled and not settings.torch_compile:
      continue
    scorers[name] = torch_ssmtl.Scorer(
        m.twin, seq_half=cfg.seq_half, num_det=cfg.num_det,
        kd_loss=cfg.kd_loss, compiled=compiled)
    runners.append(Runner(name, functools.partial(scorers[name], crops,
                                                  teacher),
                          _torch_sync_fn(device), settings.batch))
  _measure(runners, settings)
  out = {r.name: _summary(r, "cubes_per_s") for r in runners}
  try:
    ref = jax.device_get(fn(variables, batch))
    got = scorers["torch_eager"](crops, teacher)
    out["max_abs_score_diff"] = {
        t: float(np.abs(got[t].float().cpu().numpy() - ref[t]).max())
        for t in ref}
  except Exception as e:  # pylint: disable=broad-except
    out["max_abs_score_diff"] = {"error": _error(e)}
  return out


def _detector_frames(n: int, frames_dir: str = PED2_TEST_VIDEO
                     ) -> tuple[list[np.ndarray], str]:
  """The first n gray frames of frames_dir (jpg/png/tif/bmp, sorted by name),
  or n synthetic 240x360 frames when it holds fewer."""
  paths = sorted(p for p in glob.glob(os.path.join(frames_dir, "*"))
                 if p.lower().endswith((".jpg", ".jpeg", ".png", ".tif",
                                        ".tiff", ".bmp")))
  if len(paths) >= n:
    frames = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths[:n]]
    bad = [p for p, f in zip(paths, frames) if f is None]
    if bad:
      raise ValueError(f"unreadable frame: {bad[0]}")
    return frames, os.path.normpath(frames_dir)
  rng = np.random.default_rng(0)
  frames = []
  for _ in range(n):
    g = cv2.GaussianBlur(rng.integers(0, 256, (240, 360), np.uint8), (9, 9), 3)
    frames.append(g)
  return frames, "synthetic 240x360 gray"


def opencv_darknet(cfg: str, weights_path: str) -> tuple[Any, Optional[str]]:
  """OpenCV dnn's darknet network on the CPU, or (None, why not).

  OpenCV 5 removed the darknet importer (``cv2.dnn.readNetFromDarknet``);
  there, and wherever reading the network fails, the OpenCV side of the
  detector comparison is unavailable rather than an error of the benchmark.
  """
  dnn = getattr(cv2, "dnn", None)
  if dnn is None or not hasattr(dnn, "readNetFromDarknet"):
    return None, (f"OpenCV {cv2.__version__} has no "
                  "cv2.dnn.readNetFromDarknet (the darknet importer was "
                  "removed in OpenCV 5)")
  try:
    net = dnn.readNetFromDarknet(cfg, weights_path)
    net.setPreferableBackend(dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(dnn.DNN_TARGET_CPU)
  except cv2.error as e:
    return None, (f"OpenCV {cv2.__version__} cannot read the darknet "
                  f"network: {_error(e).splitlines()[0]}")
  return net, None


def detector_section(settings: Settings) -> dict:
  from ssmtl_jax.perception.detector import weights  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception.detector import yolo  # pylint: disable=g-import-not-at-top
  try:
    files = weights.ensure_yolov3_tiny()
  except weights.WeightsError as e:
    return {"error": _error(e)}
  size = tuple(settings.det_input)
  det = yolo.Detector(files.cfg, files.weights, input_size=size,
                      conf_threshold=0.25, nms_threshold=0.45,
                      batch_size=settings.det_batch)
  net, unavailable = opencv_darknet(files.cfg, files.weights)
  yolo_names = [f"yolo_{i}" for i in det.net.yolo_indices]
  frames, source = _detector_frames(settings.det_frames, settings.frames_dir)
  blob, _ = yolo.preprocess(frames[:settings.det_batch], size)
  nchw = np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

  def cv_rows(x: np.ndarray) -> np.ndarray:
    net.setInput(x)
    return np.concatenate(net.forward(yolo_names), axis=1)

  def cv_detect(frames_: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i in range(0, len(frames_), settings.det_batch):
      b, boxes = yolo.preprocess(frames_[i:i + settings.det_batch], size)
      rows = cv_rows(np.ascontiguousarray(b.transpose(0, 3, 1, 2)))
      out.extend(yolo.postprocess(rows[j], lb, conf_threshold=0.25,
                                  nms_threshold=0.45)
                 for j, lb in enumerate(boxes))
    return out

  nosync = lambda _: None  # both return host arrays
  runners = [
      Runner("flax_network", functools.partial(det.decoded_rows, blob),
             nosync, settings.det_batch),
      Runner("opencv_network", functools.partial(cv_rows, nchw), nosync,
             settings.det_batch),
      Runner("flax_end_to_end", functools.partial(det.detect, frames), nosync,
             len(frames)),
      Runner("opencv_end_to_end", functools.partial(cv_detect, frames),
             nosync, len(frames)),
  ]
  if unavailable:
    runners = [r for r in runners if not r.name.startswith("opencv_")]
  _measure(runners, settings)
  out = {r.name: _summary(r, "frames_per_s") for r in runners}
  out.update(input_size=list(size), batch=settings.det_batch,
             frames=source, flax_device=str(jax.devices()[0].platform),
             opencv_device="cpu", conf_threshold=0.25, nms_threshold=0.45)
  if unavailable:
    for name in ("opencv_network", "opencv_end_to_end", "max_abs_row_diff"):
      out[name] = {"unavailable": unavailable}
    return out
  try:
    out["max_abs_row_diff"] = float(np.abs(det.decoded_rows(blob)[..., :5] -
                                           cv_rows(nchw)[..., :5]).max())
  except Exception as e:  # pylint: disable=broad-except
    out["max_abs_row_diff"] = _error(e)
  return out


E2E_STAGES = ("detector", "cubes", "teacher", "model", "maps")


def _timed(fn: Callable, seconds: dict, stage: str) -> Callable:
  """fn, adding the time of each call to seconds[stage]."""

  def timed(*args, **kwargs):
    t0 = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      seconds[stage] += time.perf_counter() - t0

  return timed


def _timed_iter(items: Iterable, seconds: dict, stage: str) -> Iterator:
  """items, adding the time spent producing each to seconds[stage]."""
  it = iter(items)
  while True:
    t0 = time.perf_counter()
    try:
      item = next(it)
    except StopIteration:
      return
    finally:
      seconds[stage] += time.perf_counter() - t0
    yield item


def end_to_end_section(settings: Settings, m: Models) -> dict:
  """Frames in, frame scores out, with this package's components and the
  detector, teacher, cube and eval settings of ``configs/ped2_cpu.py`` (crop
  size and input size from ``settings``): the Flax detector streamed over the
  frames, the builder's frames -> objects loop (``ssmtl_jax.perception.objects``: cubes
  of 2W+1 crops around each detection, the classifier teacher on batches of
  middle crops), the model's four task scores (``ssmtl_jax.evaluation.inference``,
  jitted, fixed batch), then ``ssmtl_jax.evaluation.frame_scoring``'s path to frame scores
  (normalisation, KD score, combination, anomaly maps, 3D Gaussian smoothing,
  frame maximum). Reports frames/s of the whole pipeline (median over
  repeats, compilation excluded) and the seconds of each stage in the median
  repeat; the stages interleave, so detector and teacher are timed around
  their calls, and cubes is the rest of the object stream's time. JAX only:
  the PyTorch twin covers the model, not a detector or teacher (the detector
  section compares the detector with OpenCV's)."""
  from ssmtl_jax.perception import objects as objects_lib  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import teachers  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception.detector import weights  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception.detector import yolo  # pylint: disable=g-import-not-at-top
  from configs import ped2_cpu  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top
  config = ped2_cpu.get_config()
  build = config.build
  # Min-max normalisation (ped2_cpu's validated choice): z-scoring needs
  # statistics of scored training objects, which a benchmark does not have;
  # both cost the same.
  eval_settings = dataclasses.replace(frame_scoring.Settings.from_config(config),
                                      normalize="minmax")
  # Scoring context, as the builder's test split (ssmtl_jax.perception.cubes).
  context = int(build.test_context) or int(config.tasks.seq_half)
  files = weights.ensure_yolov3_tiny()
  det = yolo.Detector(files.cfg, files.weights,
                      input_size=tuple(settings.det_input),
                      conf_threshold=float(build.detector.min_score),
                      nms_threshold=float(build.detector.nms_threshold),
                      batch_size=settings.det_batch)
  classifier = teachers.load_classifier(
      build.classifier.kind, build.classifier.weights or None,
      batch_size=int(build.classifier.batch_size),
      input_size=int(build.classifier.input_size))
  frames, source = _detector_frames(settings.e2e_frames, settings.frames_dir)
  frames = [f[..., None] for f in frames]
  videos = {source: (len(frames),) + frames[0].shape[:2]}
  mesh = sharding.create_mesh()
  fn = inference.jit_score_fn(inference.make_score_fn(m.flax, m.cfg),
                                  mesh)
  variables = jax.device_put(m.variables, sharding.replicated(mesh))
  batch_size = inference.padded_batch_size(settings.batch, mesh)

  def pipeline() -> tuple[dict, int]:
    t = dict.fromkeys(E2E_STAGES, 0.0)
    detections = _timed_iter(zip(frames, det.detect_stream(frames)), t,
                             "detector")
    objs = objects_lib.iter_objects(
        detections, video_id=source, half_window=settings.half_window,
        crop_size=settings.crop, padding=float(build.padding),
        min_box_size=float(build.min_box_size), square=bool(build.square),
        context=context, classifier=_timed(classifier.logits, t, "teacher"),
        classifier_batch=int(build.classifier.batch_size),
        classifier_crop=(int(build.classifier.input_size)
                         if build.classifier.crop == "frame" else None))
    score = _timed(inference.score_batch, t, "model")
    geometry: dict[str, list] = {k: [] for k in inference.GEOMETRY_KEYS}
    parts: dict[str, list] = {}
    for batch in inference.stacked_batches(
        _timed_iter(objs, t, "cubes"), batch_size):
      for k in geometry:
        geometry[k].append(batch[k])
      for task, v in score(fn, variables, batch, batch_size=batch_size,
                           mesh=mesh).items():
        parts.setdefault(task, []).append(v)
    # The object stream's time holds the detector and teacher calls it made.
    t["cubes"] -= t["detector"] + t["teacher"]
    if not parts:
      raise ValueError(f"no objects detected in {source}")
    t0 = time.perf_counter()
    geometry = {k: np.concatenate(v) for k, v in geometry.items()}
    _, combined = frame_scoring.object_anomaly_scores(
        {k: np.concatenate(v) for k, v in parts.items()}, eval_settings)
    frame_scoring.frame_scores_by_video(
        geometry["video_id"], geometry["frame_index"], geometry["box"],
        combined, videos, eval_settings, context=context)
    t["maps"] = time.perf_counter() - t0
    return t, len(combined)

  t0 = time.perf_counter()
  pipeline()  # compiles the detector, teacher and model shapes
  first = time.perf_counter() - t0
  runs = [pipeline() for _ in range(max(1, settings.repeats - 2))]
  totals = [sum(t.values()) for t, _ in runs]
  med = int(np.argsort(totals)[len(totals) // 2])
  rates = np.asarray([len(frames) / x for x in totals])
  return {"frames_per_s": float(np.median(rates)), "min": float(rates.min()),
          "max": float(rates.max()), "repeats": [float(x) for x in rates],
          "first_call_s": first, "frames": len(frames), "source": source,
          "objects": runs[med][1],
          "stage_seconds": {k: float(v) for k, v in runs[med][0].items()},
          "crop": settings.crop, "detector_input": list(settings.det_input),
          "teacher": f"{build.classifier.kind} @{build.classifier.input_size}",
          "settings": "configs/ped2_cpu.py"}


# --- Report -------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devs = jax.devices()
  info = {
      "cpu": cpu,
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": len(devs),
      "jax_device_kind": devs[0].device_kind,
      "torch": torch.__version__,
      "torch_device": str(device),
      "torch_num_threads": torch.get_num_threads(),
      "torch_num_interop_threads": torch.get_num_interop_threads(),
      "opencv": cv2.__version__,
      "opencv_num_threads": cv2.getNumThreads(),
  }
  if hasattr(os, "sched_getaffinity"):
    info["cpu_affinity"] = len(os.sched_getaffinity(0))
  if device.type == "cuda":
    info["torch_device_name"] = torch.cuda.get_device_name(device)
    info["torch_float32_matmul_precision"] = (
        torch.get_float32_matmul_precision())
    info["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
  if hasattr(os, "getloadavg"):
    info["loadavg_start"] = list(os.getloadavg())
  return info


def _ratio(a: dict, b: dict, key: str) -> Optional[float]:
  if key in a and key in b and b[key]:
    return a[key] / b[key]
  return None


def ratios(results: dict) -> dict:
  out = {}
  for section in ("train", "infer"):
    sec = results.get(section, {})
    for other in ("torch_eager", "torch_compile"):
      out[f"{section}_jax_over_{other}"] = _ratio(
          sec.get("jax", {}), sec.get(other, {}), "cubes_per_s")
  det = results.get("detector", {})
  for kind in ("network", "end_to_end"):
    out[f"detector_{kind}_flax_over_opencv"] = _ratio(
        det.get(f"flax_{kind}", {}), det.get(f"opencv_{kind}", {}),
        "frames_per_s")
  return out


def _cell(entry: dict, key: str) -> str:
  if not entry:
    return "-"
  if "error" in entry:
    return "error"
  if "unavailable" in entry:
    return "unavailable"
  return f"{entry[key]:.1f} [{entry['min']:.1f}-{entry['max']:.1f}]"


def _fmt_ratio(x: Optional[float]) -> str:
  return "-" if x is None else f"{x:.2f}"


def markdown(results: dict) -> str:
  """The summary table (median [min-max] per repeat)."""
  mach, cfg, rat = results["machine"], results["config"], results["ratios"]
  lines = [
      f"Machine: {mach['cpu']}, {mach['cpu_count']} cores; JAX "
      f"{mach['jax']} on {mach['jax_devices']} x {mach['jax_device_kind']} "
      f"({mach['jax_backend']}); torch {mach['torch']} on "
      f"{mach['torch_device']} ({mach['torch_num_threads']} threads); OpenCV "
      f"{mach['opencv']} ({mach['opencv_num_threads']} threads). Load average "
      f"{mach.get('loadavg_start')} -> {mach.get('loadavg_end')}.",
      f"Config: {'quick' if cfg['quick'] else 'full'}; batch {cfg['batch']} "
      f"of {cfg['frames']}x{cfg['crop']}x{cfg['crop']}x{cfg['channels']}, "
      f"{cfg['variant']}/{cfg['depth']} {cfg['widths']}, "
      f"{cfg['repeats']} repeats" + (
          f"; detector {cfg['det_input'][0]}x{cfg['det_input'][1]}, batch "
          f"{cfg['det_batch']}." if "detector" in results else "."),
      "",
      "| benchmark | JAX | torch eager | torch.compile | JAX/eager | "
      "JAX/compile |",
      "|---|---|---|---|---|---|",
  ]
  for section, label in (("train", "train cubes/s"),
                         ("infer", "infer cubes/s")):
    sec = results.get(section, {})
    lines.append(
        f"| {label} | {_cell(sec.get('jax'), 'cubes_per_s')} | "
        f"{_cell(sec.get('torch_eager'), 'cubes_per_s')} | "
        f"{_cell(sec.get('torch_compile'), 'cubes_per_s')} | "
        f"{_fmt_ratio(rat.get(f'{section}_jax_over_torch_eager'))} | "
        f"{_fmt_ratio(rat.get(f'{section}_jax_over_torch_compile'))} |")
  first = []
  for section in ("train", "infer"):
    sec = results.get(section, {})
    cells = [f"{sec[k]['first_call_s']:.1f}" if sec.get(k, {}).get(
        "first_call_s") is not None else "-"
             for k in ("jax", "torch_eager", "torch_compile")]
    first.append(f"| {section} first call s (compile) | " + " | ".join(cells) +
                 " | | |")
  lines += first
  det = results.get("detector", {})
  if det and "error" not in det:
    lines += ["", "| detector frames/s | Flax | OpenCV dnn | Flax/OpenCV |",
              "|---|---|---|---|"]
    for kind in ("network", "end_to_end"):
      lines.append(
          f"| {kind} | {_cell(det.get(f'flax_{kind}'), 'frames_per_s')} | "
          f"{_cell(det.get(f'opencv_{kind}'), 'frames_per_s')} | "
          f"{_fmt_ratio(rat.get(f'detector_{kind}_flax_over_opencv'))} |")
    why = (det.get("opencv_network") or {}).get("unavailable")
    if why:
      lines.append(f"OpenCV dnn unavailable: {why}.")
  elif det:
    lines += ["", f"detector: {det['error']}"]
  e2e = results.get("end_to_end", {})
  if e2e and "error" not in e2e:
    stages = ", ".join(f"{k} {v:.2f}" for k, v in e2e["stage_seconds"].items())
    lines += ["", f"End to end (JAX pipeline: detector -> cubes -> teacher -> "
              f"model -> maps), {e2e['frames']} frames of {e2e['source']} "
              f"({e2e['objects']} objects): {_cell(e2e, 'frames_per_s')} "
              f"frames/s; seconds per stage: {stages}."]
  elif e2e:
    lines += ["", f"end to end: {str(e2e['error']).splitlines()[0][:300]}"]
  fl = results.get("flops", {})
  if fl:
    lines += ["", f"Matmul f32 {fl['matmul']['n']}^2: JAX "
              f"{fl['matmul']['jax_flops_per_s'] / 1e9:.1f} GFLOP/s, torch "
              f"{fl['matmul']['torch_flops_per_s'] / 1e9:.1f} GFLOP/s. Model: "
              f"{fl['train_flops_per_cube'] / 1e9:.3f} GFLOP/cube train, "
              f"{fl['infer_flops_per_cube'] / 1e9:.3f} inference (analytic)."]
    for key, label in (("train", "train"), ("infer", "infer")):
      pct = fl.get(f"{key}_pct_of_jax_matmul", {})
      if pct:
        lines.append(f"{label} achieved % of JAX matmul peak: " + ", ".join(
            f"{k} {v:.1f}%" for k, v in pct.items()))
  diff = results.get("infer", {}).get("max_abs_score_diff")
  if diff and "error" not in diff:
    lines.append("Same weights, JAX vs torch eager object scores: max |diff| " +
                 ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) +
                 (f"; detector rows (box, objectness) Flax vs OpenCV: "
                  f"{det['max_abs_row_diff']:.1e}"
                  if isinstance(det.get("max_abs_row_diff"), float) else ""))
  for section in ("train", "infer"):
    for name, entry in results.get(section, {}).items():
      if isinstance(entry, dict) and "error" in entry:
        lines.append(f"{section} {name} error: "
                     f"{str(entry['error']).splitlines()[0][:300]}")
  return "\n".join(lines)


def run(settings: Settings) -> dict:
  ncpu = os.cpu_count() or 1
  torch.set_num_threads(settings.torch_threads or ncpu)
  cv2.setNumThreads(ncpu)
  device = _torch_device()
  if device.type == "cuda":
    # Same precision policy as JAX's default on GPUs (TF32 convs/matmuls).
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
  results: dict[str, Any] = {"machine": machine_info(device)}
  s = settings
  results["config"] = {
      "quick": s.quick, "batch": s.batch, "crop": s.crop,
      "channels": s.channels, "frames": 2 * s.seq_half + 1,
      "half_window": s.half_window, "variant": s.variant, "depth": s.depth,
      "widths": list(s.widths), "head_width": s.head_width,
      "kd_outputs": s.kd_outputs, "tasks": list(network.TASKS),
      "optimizer": f"adam lr {s.learning_rate}, constant",
      "repeats": s.repeats, "warmup_calls": s.warmup,
      "min_repeat_s": s.min_repeat_s, "det_input": list(s.det_input),
      "det_batch": s.det_batch, "det_frames": s.det_frames,
      "e2e_frames": s.e2e_frames,
      "torch_channels_last": s.torch_channels_last,
      "torch_compile": s.torch_compile,
      "jax_conv_impl": str(_config(s).model.get("conv_impl", "xla")),
      "torch_threads_policy": (f"torch.set_num_threads({s.torch_threads})"
                               if s.torch_threads else
                               "torch.set_num_threads(os.cpu_count())"),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
  }
  records = _records(s)
  walls = results["config"]["section_wall_s"] = {}

  def section(name: str, fn: Callable[[], Any]) -> Any:
    print(f"{name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
      return fn()
    finally:
      walls[name] = time.perf_counter() - t0

  m = section("models", lambda: build_models(s, device))
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
        "train", lambda: train_section(s, m, records, device))
    results["infer"] = section("infer",
                               lambda: infer_section(s, m, records, device))
  if s.detector:
    try:
      results["detector"] = section("detector", lambda: detector_section(s))
    except Exception as e:  # pylint: disable=broad-except
      results["detector"] = {"error": _error(e)}
  if s.e2e:
    try:
      results["end_to_end"] = section("end_to_end",
                                      lambda: end_to_end_section(s, m))
    except Exception as e:  # pylint: disable=broad-except
      results["end_to_end"] = {"error": _error(e)}
  n = s.matmul_n * (1 if jax.default_backend() == "cpu" else 2)
  mm = section("matmul", lambda: matmul_flops(n))
  fl = model_flops(s)
  flops = {"matmul": mm, "train_flops_per_cube": fl["train"],
           "infer_flops_per_cube": fl["infer"],
           "method": "analytic conv+dense FLOPs (2 x MACs); train = 3 x "
                     "forward of the four views",
           "xla_train_flops_per_cube": (xla["xla_flops_per_step"] / s.batch
                                        if xla["xla_flops_per_step"] else None)}
  for section in ("train", "infer"):
    pct = {}
    for name, entry in results[section].items():
      if isinstance(entry, dict) and "cubes_per_s" in entry:
        achieved = entry["cubes_per_s"] * fl[section]
        entry["model_flops_per_s"] = achieved
        pct[name] = 100 * achieved / mm["jax_flops_per_s"]
    flops[f"{section}_pct_of_jax_matmul"] = pct
  results["flops"] = flops
  results["ratios"] = ratios(results)
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
  flags.DEFINE_bool("end_to_end", True, "the end-to-end pipeline timing",
                    flag_values=fv)
  flags.DEFINE_string("frames", PED2_TEST_VIDEO,
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
  settings = Settings.quick_preset() if args.quick else Settings()
  for key in ("batch", "crop", "variant", "depth", "repeats"):
    if args[key].value is not None:
      setattr(settings, key, args[key].value)
  settings.torch_compile = args.torch_compile
  settings.detector = args.detector
  settings.e2e = args.end_to_end
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
  table = markdown(results)
  if "matrix" in results:
    table += "\n\nSpeed matrix:\n" + matrix_lib.markdown(results["matrix"])
  print(table)
  print(f"(total {results['config']['wall_s']:.0f} s)")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
