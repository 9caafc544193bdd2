"""What every section of ``python -m benchmarks.compare`` shares.

The settings (``BenchSettings``, with the full and quick presets), the timing
harness (``Runner``, ``measure``: warm-up, then repeats interleaved between
contenders; ``summary``: median and spread), the inputs (synthetic object
records, real or synthetic frames) and the models (the Flax model, its
initial variables and the PyTorch twin holding the same weights). The
sections (``benchmarks.train_infer``, ``benchmarks.detector_vs_opencv``,
``benchmarks.end_to_end``) and the speed matrix (``benchmarks.matrix``) build
on these; ``benchmarks.compare`` runs them.

Importing this module sets the process's environment defaults for JAX and
torch sharing one process (see below); it must be imported before torch for
them to take effect, which ``benchmarks.compare`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import sys
import time
import traceback
from typing import Any, Callable, Optional, Sequence

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

import cv2  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

from benchmarks import torch_ssmtl  # pylint: disable=g-import-not-at-top
from configs import common  # pylint: disable=g-import-not-at-top
from ssmtl_jax.model import network  # pylint: disable=g-import-not-at-top
from ssmtl_jax.model import tasks as tasks_lib  # pylint: disable=g-import-not-at-top

# Real frames for the detector and end-to-end sections: the first test video
# of UCSD Ped2 when ../shared/data/ped2 sits beside the repository (--frames
# overrides); otherwise synthetic frames.
PED2_TEST_VIDEO = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), os.pardir, "shared", "data", "ped2", "test",
                               "01")


@dataclasses.dataclass
class BenchSettings:
  """What is measured (see ``benchmarks.compare`` for the two presets)."""
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
  teacher: bool = True
  teacher_batch: int = 32  # images per teacher call (Lite0)
  teacher_input: int = 224
  e2e: bool = True
  frames_dir: str = PED2_TEST_VIDEO
  matmul_n: int = 4096     # doubled on accelerators
  torch_compile: bool = True
  detector: bool = True
  torch_channels_last: bool = True
  torch_threads: int = 0   # 0 = os.cpu_count()
  # --matrix: the speed matrix, a benchmarks.matrix.Axes (not imported here:
  # the matrix builds on this module); None = no matrix.
  matrix: Optional[Any] = None

  @classmethod
  def quick_preset(cls) -> "BenchSettings":
    return cls(quick=True, batch=8, crop=32, repeats=3, warmup=1,
               min_repeat_s=0.4, max_steps=20, det_input=(416, 416),
               det_batch=4, det_frames=4, e2e_frames=16, matmul_n=2048,
               teacher_batch=8, teacher_input=128)

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


def error_text(e: BaseException) -> str:
  """An exception as the one string the results record."""
  return f"{type(e).__name__}: {str(e).strip()}"[:2000]


def _warm_up(runner: Runner, settings: BenchSettings) -> None:
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
    runner.error = error_text(e)
    print(f"  {runner.name}: FAILED in warm-up: {runner.error.splitlines()[0]}",
          file=sys.stderr)
    if os.environ.get("BENCH_TRACEBACK"):
      traceback.print_exc()


def measure(runners: Sequence[Runner], settings: BenchSettings) -> None:
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
        r.error = error_text(e)


def summary(r: Runner, unit: str) -> dict:
  """A measured runner's entry: median ``unit`` (items/s) and the spread."""
  if r.error:
    return {"error": r.error, "first_call_s": r.first_call_s}
  rates = np.asarray(r.rates)
  q1, med, q3 = np.percentile(rates, [25, 50, 75])
  return {unit: float(med), "min": float(rates.min()),
          "max": float(rates.max()), "q1": float(q1), "q3": float(q3),
          "repeats": [float(x) for x in rates], "steps_per_repeat": r.steps,
          "items_per_step": r.items, "first_call_s": r.first_call_s}


def jax_sync(out: Any) -> None:
  jax.block_until_ready(out)


def torch_sync_fn(device: torch.device) -> Callable[[Any], None]:
  if device.type == "cuda":
    return lambda _: torch.cuda.synchronize(device)
  return lambda _: None  # CPU ops are synchronous.


# --- Inputs -------------------------------------------------------------------


def bench_records(settings: BenchSettings, seed: int = 0) -> dict:
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


def bench_config(settings: BenchSettings):
  """The project's base config with the settings' model, Adam at a constant
  rate, the tasks' sequence settings and the batch."""
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


def torch_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_batch(records: dict, device: torch.device):
  """uint8 crops [B, C, 2W+1, S, S] and teacher targets [B, D + K] on device
  (the layout a PyTorch data loader would produce)."""
  crops = torch.from_numpy(records["crops"]).permute(0, 4, 1, 2, 3)
  teacher = torch.from_numpy(np.concatenate(
      [records["teacher_det"], records["teacher_cls"]], axis=1))
  return crops.contiguous().to(device), teacher.to(device)


def detector_frames(n: int, frames_dir: str = PED2_TEST_VIDEO
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


# --- Models -------------------------------------------------------------------


@dataclasses.dataclass
class Models:
  """The Flax model with its initial variables and the twin holding them,
  and the step settings (all four tasks, weight 1) both are run with."""
  flax: network.SSMTL
  variables: dict
  twin: torch_ssmtl.SSMTL
  cfg: tasks_lib.StepConfig


def build_models(settings: BenchSettings, device: torch.device) -> Models:
  config = bench_config(settings)
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
