r"""Does the oneDNN convolution make the CPU train step faster? One run.

  python -m benchmarks.onednn_step [--batch 64] [--crop 64] [--repeats 3]
      [--impls fast,onednn] [--out results.json]

Two sections, each after warm-up (compilation and first calls excluded):

* step: seconds per call of the real ``ssmtl_jax.train.trainer.train_step`` (all
  four tasks, Adam, constant schedule) under ``sharding.jit_train_step``, as
  ``benchmarks.compare``'s train section runs it, on one synthetic global
  batch, for each ``model.conv_impl`` in ``--impls`` (default 'fast', the CPU
  default, and 'onednn'); the repeats are interleaved between the
  implementations (so that drifting background load hits all alike), each
  repeat several steps long; the median seconds per step and the ratio to
  the first implementation.
* conv: milliseconds of the one convolution layer that dominates the narrow
  model (16 -> 32 channels at 32 x 32, batch x 7 frames), forward and
  forward + backward (gradients of input and kernel), median of the repeats,
  for conv_impl 'fast', 'xla' and 'onednn' under ``jax.jit``, oneDNN called
  directly from numpy (no JAX: the difference to 'onednn' is the cost of
  ``jax.pure_callback``), and torch's ``conv3d`` on the CPU in
  channels-last-3d (torch's own oneDNN).

The model is the narrow shallow one (16/32/32) with 7x{crop}x{crop}x1 cubes
unless ``--variant`` / ``--depth`` say otherwise. ``onednn_callback`` (in
``--impls`` or the conv rows) is conv_impl 'onednn' called through
``jax.pure_callback`` instead of the FFI custom call. Prints a table, and how
much CPU other processes used meanwhile (the numbers are only clean when that
is near 0); ``--out`` also writes the numbers as JSON.

Measured on a 2-core AMD EPYC VM (Zen 5, AVX-512; KVM), jax 0.10.2 CPU,
torch 2.13.0+cpu, oneDNN 3.2.0 from ``onednn-cpu-gomp`` 2023.2.0 (OpenMP,
OMP_WAIT_POLICY=PASSIVE), narrow shallow model, crop 64:

* train step, batch 64, 5 interleaved repeats (other processes: 0.5 CPU s in
  84 s): 'fast' 5.01 s, 'onednn' 2.26 s per step: 2.21x. An earlier run with
  3 repeats (other processes 25 CPU s in 105 s): fast 4.82 s, onednn 2.22 s
  (2.17x), onednn_callback 3.34 s (1.44x).
* train step, batch 256, 3 repeats (other processes 60 CPU s in 354 s, so
  noisy: onednn's repeats 9.6-16.9 s): fast 39.5 s, onednn 12.6 s: 3.1x.
* the conv layer, 64 x 7 frames (other processes 0.1 CPU s), ms fwd /
  fwd+bwd: fast 217 / 785, xla 262 / 1033, onednn 41 / 98, onednn_callback
  150 / 100, oneDNN direct from numpy 26 / 81, torch channels-last 25 / 157.
* oneDNN 3.13.2 from ``onednn`` 2026.1.0 (the SYCL build) was only timed
  while other processes used more than a core (144 CPU s in 132 s): fast
  8.6 s, onednn 3.9 s per step at batch 64 (2.2x, interleaved), so there is
  no clean 3.2-vs-3.13 comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
from typing import Callable, Optional, Sequence
from unittest import mock

# OpenMP threads (oneDNN's and torch's) sleep when idle instead of spinning:
# see benchmarks.harness. Set before either library is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from ssmtl_jax.base import cli
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib


def _busy_cpu_s() -> Optional[float]:
  """CPU seconds all processes have used since boot (/proc/stat), or None."""
  try:
    with open("/proc/stat", encoding="utf-8") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuWitness:
  """How much CPU other processes used while a section ran: the machine's
  busy CPU seconds minus this process's. Near 0 = the numbers are clean."""

  def __enter__(self):
    self.t0, self.busy0, self.own0 = (time.perf_counter(), _busy_cpu_s(),
                                      sum(os.times()[:2]))
    return self

  def __exit__(self, *exc):
    busy = _busy_cpu_s()
    self.wall_s = time.perf_counter() - self.t0
    self.other_cpu_s = None if busy is None else max(
        0.0, busy - self.busy0 - (sum(os.times()[:2]) - self.own0))
    return False

  def summary(self) -> dict:
    return {"wall_s": self.wall_s, "other_processes_cpu_s": self.other_cpu_s}


def _median_s(fn: Callable[[], None], repeats: int, warmup: int = 1) -> float:
  for _ in range(1 + warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


# --- The train step ---------------------------------------------------------


def _step_runner(settings: harness.BenchSettings, impl: str,
                 variables: dict, records: dict) -> Callable[[], None]:
  """One train step of a model with ``conv_impl=impl`` (and the given initial
  variables: they are the same for every implementation), blocking."""
  config = harness.bench_config(settings)
  config.model.conv_impl = "onednn" if impl == "onednn_callback" else impl
  model = network.create_model(config, kd_outputs=settings.kd_outputs,
                              channels=settings.channels)
  cfg = tasks_lib.StepConfig(
      tasks=network.TASKS, weights=tuple((t, 1.0) for t in network.TASKS),
      seq_half=settings.seq_half, max_gap=settings.max_gap,
      num_det=settings.num_det, kd_loss="l1")
  tx = step_lib.create_optimizer(config, total_steps=1_000_000)
  mesh = sharding.create_mesh()
  params = jax.tree.map(jnp.copy, variables["params"])
  state = step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=jax.tree.map(jnp.copy, variables["batch_stats"]),
      opt_state=tx.init(params), bad_step=jnp.full((), -1, jnp.int32))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=model, tx=tx, cfg=cfg), mesh)
  batch = sharding.global_batch(records, mesh)
  rng = sharding.to_replicated(jax.random.PRNGKey(0), mesh)
  holder = {"state": state}

  def call():
    holder["state"], metrics = step(holder["state"], batch, rng)
    jax.block_until_ready(metrics)

  if impl == "onednn_callback":  # trace with conv3d(..., call='callback')
    from ssmtl_jax.base import onednn_conv  # pylint: disable=g-import-not-at-top
    with mock.patch.object(onednn_conv, "conv3d", functools.partial(
        onednn_conv.conv3d, call="callback")):
      call()
  call()  # traces and compiles (or runs, once traced)
  return call


def step_section(settings: harness.BenchSettings, impls: Sequence[str],
                 min_repeat_s: float) -> dict:
  """Median seconds per train step for each conv_impl, repeats interleaved."""
  config = harness.bench_config(settings)
  config.model.conv_impl = "xla"
  model = network.create_model(config, kd_outputs=settings.kd_outputs,
                              channels=settings.channels)
  views = network.init_views(network.TASKS, seq_half=settings.seq_half,
                            crop_size=settings.crop, channels=settings.channels)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), views)
  records = harness.bench_records(settings)
  calls, steps, first = {}, {}, {}
  for impl in impls:
    t0 = time.perf_counter()
    calls[impl] = _step_runner(settings, impl, variables, records)
    first[impl] = time.perf_counter() - t0
    calls[impl]()  # warm-up
    one = _median_s(calls[impl], 1, warmup=0)
    steps[impl] = max(1, int(np.ceil(min_repeat_s / one)))
    print(f"  {impl}: first call {first[impl]:.1f} s, {steps[impl]} steps "
          "per repeat", flush=True)
  per_step = {impl: [] for impl in impls}
  for _ in range(settings.repeats):
    for impl in impls:
      t0 = time.perf_counter()
      for _ in range(steps[impl]):
        calls[impl]()
      per_step[impl].append((time.perf_counter() - t0) / steps[impl])
  out = {impl: {"s_per_step": float(np.median(per_step[impl])),
                "repeats": per_step[impl], "steps_per_repeat": steps[impl],
                "first_call_s": first[impl]} for impl in impls}
  base = out[impls[0]]["s_per_step"]
  for impl in impls:
    out[impl][f"speedup_vs_{impls[0]}"] = base / out[impl]["s_per_step"]
  return out


# --- The convolution layer ------------------------------------------------------


@dataclasses.dataclass
class ConvShape:
  batch: int = 64  # cubes (x frames)
  frames: int = 7
  hw: int = 32
  cin: int = 16
  cout: int = 32

  @property
  def flops(self) -> float:
    """Forward FLOPs (2 x multiply-adds)."""
    return (2.0 * self.batch * self.frames * self.hw * self.hw * self.cin *
            self.cout * 27)


def _jax_conv(impl: str) -> Callable:
  """conv(x, k) of a conv_impl; 'onednn_callback' is 'onednn' reached through
  jax.pure_callback instead of the XLA FFI custom call."""
  if impl in ("onednn", "onednn_callback"):
    from ssmtl_jax.base import onednn_conv  # pylint: disable=g-import-not-at-top
    call = "callback" if impl == "onednn_callback" else "ffi"
    return lambda x, k: onednn_conv.conv3d(x, k, call=call)
  return lambda x, k: network.Conv3x3x3(k.shape[-1], impl).apply(
      {"params": {"kernel": k}}, x)


def conv_section(shape: ConvShape, repeats: int,
                 impls: Sequence[str] = ("fast", "xla", "onednn",
                                         "onednn_callback")) -> dict:
  """{row: {"fwd_ms", "fwd_bwd_ms", "fwd_gflops", "fwd_bwd_gflops"}}."""
  rng = np.random.default_rng(0)
  s = shape
  xn = rng.standard_normal((s.batch, s.frames, s.hw, s.hw, s.cin), np.float32)
  kn = rng.standard_normal((3, 3, 3, s.cin, s.cout), np.float32) * 0.1
  x, k = jnp.asarray(xn), jnp.asarray(kn)
  rows = {}

  def row(fwd: Callable[[], None], fwd_bwd: Callable[[], None]) -> dict:
    f = _median_s(fwd, repeats)
    fb = _median_s(fwd_bwd, repeats)
    return {"fwd_ms": 1e3 * f, "fwd_bwd_ms": 1e3 * fb,
            "fwd_gflops": s.flops / f / 1e9,
            "fwd_bwd_gflops": 3 * s.flops / fb / 1e9}

  for impl in impls:
    conv = _jax_conv(impl)
    fwd = jax.jit(conv).lower(x, k).compile()
    # Loss sum(y^2) / 2 (cotangent y): forward and backward both run (a
    # plain sum would let XLA drop the forward) at the cost of two cheap
    # elementwise passes; torch's row below does the same.
    grad = jax.jit(jax.grad(lambda x, k: 0.5 * jnp.sum(jnp.square(conv(x, k))),  # pylint: disable=cell-var-from-loop
                            argnums=(0, 1))).lower(x, k).compile()
    rows[impl] = row(lambda: jax.block_until_ready(fwd(x, k)),  # pylint: disable=cell-var-from-loop
                     lambda: jax.block_until_ready(grad(x, k)))  # pylint: disable=cell-var-from-loop
    print(f"  conv {impl}: {rows[impl]['fwd_ms']:.0f} / "
          f"{rows[impl]['fwd_bwd_ms']:.0f} ms", flush=True)
  if "onednn" in impls:
    from ssmtl_jax.base import onednn  # pylint: disable=g-import-not-at-top
    lib = onednn.library()

    def direct_fwd_bwd():
      lib.backward(xn, kn, lib.forward(xn, kn))

    rows["onednn_direct"] = row(lambda: lib.forward(xn, kn), direct_fwd_bwd)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return rows
  torch.set_num_threads(os.cpu_count() or 1)
  tx = torch.from_numpy(xn).permute(0, 4, 1, 2, 3).contiguous(
      memory_format=torch.channels_last_3d)
  tk = torch.from_numpy(kn).permute(4, 3, 0, 1, 2).contiguous(
      memory_format=torch.channels_last_3d)

  def torch_fwd():
    with torch.no_grad():
      torch.nn.functional.conv3d(tx, tk, padding=1)

  txg, tkg = tx.clone().requires_grad_(True), tk.clone().requires_grad_(True)

  def torch_fwd_bwd():
    y = torch.nn.functional.conv3d(txg, tkg, padding=1)
    (0.5 * y.square().sum()).backward()
    txg.grad, tkg.grad = None, None

  rows["torch"] = row(torch_fwd, torch_fwd_bwd)
  return rows


# --- Report -------------------------------------------------------------------


def machine() -> dict:
  info = {"jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), None)
  except OSError:
    pass
  try:
    from ssmtl_jax.base import onednn  # pylint: disable=g-import-not-at-top
    lib = onednn.library()
    info["onednn"] = {"version": lib.version, "runtime": lib.runtime,
                      "path": lib.path}
  except Exception as e:  # pylint: disable=broad-except
    info["onednn"] = {"error": str(e)}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    info["torch"] = torch.__version__
  except ImportError:
    pass
  info["loadavg"] = os.getloadavg()
  return info


def markdown(results: dict) -> str:
  lines = []
  st = results.get("step")
  if st:
    s = results["settings"]
    lines.append(f"train step, batch {s['batch']}, crop {s['crop']}, "
                 f"{s['variant']} {s['depth']}:\n")
    lines.append("| conv_impl | s / step | speed-up |\n|---|---|---|")
    for impl, r in st.items():
      key = next(k for k in r if k.startswith("speedup_vs_"))
      lines.append(f"| {impl} | {r['s_per_step']:.3f} | {r[key]:.2f}x |")
  cv = results.get("conv")
  if cv:
    c = results["conv_shape"]
    lines.append(f"\nconv {c['cin']} -> {c['cout']} at {c['hw']}x{c['hw']}, "
                 f"{c['batch']} x {c['frames']} frames (ms, GFLOP/s):\n")
    lines.append("| conv | fwd ms | fwd+bwd ms | fwd GFLOP/s | "
                 "fwd+bwd GFLOP/s |\n|---|---|---|---|---|")
    for name, r in cv.items():
      lines.append(f"| {name} | {r['fwd_ms']:.0f} | {r['fwd_bwd_ms']:.0f} | "
                   f"{r['fwd_gflops']:.0f} | {r['fwd_bwd_gflops']:.0f} |")
  for name, w in results.get("other_load", {}).items():
    if w["other_processes_cpu_s"] is not None:
      lines.append(f"\n{name}: other processes used "
                   f"{w['other_processes_cpu_s']:.1f} CPU s in "
                   f"{w['wall_s']:.0f} s")
  return "\n".join(lines)


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_integer("batch", 64, "global batch (cubes)", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_integer("crop", 64, "crop size (pixels)", flag_values=fv,
                       lower_bound=8)
  flags.DEFINE_integer("repeats", 3, "timed repeats (median)", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_float("min_repeat_s", 2.0, "steps per repeat chosen to last "
                     "about this long", flag_values=fv)
  flags.DEFINE_string("variant", "narrow", "model variant", flag_values=fv)
  flags.DEFINE_string("depth", "shallow", "model depth", flag_values=fv)
  flags.DEFINE_list("impls", ["fast", "onednn"], "conv_impl values to time "
                    "(the first is the baseline)", flag_values=fv)
  flags.DEFINE_boolean("step", True, "time the train step", flag_values=fv)
  flags.DEFINE_boolean("conv", True, "time the conv layer", flag_values=fv)
  flags.DEFINE_integer("conv_batch", 64, "cubes in the conv-layer timing",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_string("out", None, "write the results as JSON here",
                      flag_values=fv)
  return fv


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = cli.parse_tool_flags("python -m benchmarks.onednn_step", _flags(),
                              argv, output_files=("out",))
  settings = harness.BenchSettings(batch=args.batch, crop=args.crop,
                                   variant=args.variant, depth=args.depth,
                                   repeats=args.repeats)
  results = {"machine": machine(),
             "settings": {"batch": args.batch, "crop": args.crop,
                          "variant": args.variant, "depth": args.depth,
                          "repeats": args.repeats}}
  print(json.dumps(results["machine"]), flush=True)
  results["other_load"] = {}
  if args.conv:
    shape = ConvShape(batch=args.conv_batch)
    results["conv_shape"] = dataclasses.asdict(shape)
    with CpuWitness() as w:
      results["conv"] = conv_section(shape, args.repeats)
    results["other_load"]["conv"] = w.summary()
  if args.step:
    with CpuWitness() as w:
      results["step"] = step_section(settings, args.impls, args.min_repeat_s)
    results["other_load"]["step"] = w.summary()
  results["machine"]["loadavg_after"] = os.getloadavg()
  print(markdown(results))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
