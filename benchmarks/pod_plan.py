r"""Plan a Cloud TPU pod run without a pod: compile the train and scoring
steps for real TPU topologies on this machine's CPU, and read the compiler's
own answers.

  pip install -e ".[tpu-plan]" -c constraints.txt   # libtpu (~300 MB wheel)
  python -m benchmarks.pod_plan --config configs/ped2.py \
      [--topologies v5e-16,v4-32,v5p-128,2xv5e-16] [--dtypes float32,bfloat16] \
      [--batches 32,64 | --search] [--out plan.json] [--markdown plan.md]

``jax.experimental.topologies.get_topology_desc`` describes a TPU slice
without hardware (libtpu answers it on the CPU), and ``jit(...).lower(...)
.compile()`` over a mesh of its devices runs the real XLA:TPU compiler, as
MaxText's ``train_compile.py`` does before a launch. The step is built by the
trainer's and the evaluator's own functions (``network.create_model``,
``step.create_optimizer``, ``step.create_train_state`` under
``jax.eval_shape``, ``sharding.jit_train_step``; ``inference.make_score_fn``
+ ``inference.jit_score_fn``) over a 1-D ``data`` mesh of every chip of the
topology, the global batch sharded on it and the state replicated, as
``main`` runs it. ``model.conv_impl`` / ``pool_impl`` 'auto' are resolved
for the TPU (``platform='tpu'``: XLA's convolution, ``reduce_window``
pooling), not for the CPU the compiler runs on.

Per (topology, dtype, per-chip batch) one row: the compiler's memory per
chip (arguments, outputs, temporaries, generated code; their sum less the
donated aliases is the peak), FLOPs and HBM bytes per chip-step
(``cost_analysis``), the collectives in the optimised HLO (kind, count,
bytes), the compile time, and a roofline step time: max(FLOPs / peak,
bytes / HBM bandwidth) from the published per-chip figures in ``CHIPS``,
beside the compiler's own estimate (``optimal_seconds``) and an ICI term
(ring all-reduce bytes 2 (n-1)/n x B over the published ICI bandwidth).
``--search`` finds the largest per-chip batch that fits ``--margin`` of the
chip's HBM: the compiler refuses an oversized program within seconds
(RESOURCE_EXHAUSTED, with the bytes it needed), so two such probes give the
program's bytes per cube and its fixed bytes, and the prediction is then
compiled and walked down until it fits.

Environment: libtpu looks for a TPU VM's metadata server at start-up and
locks /tmp/libtpu_lockfile; this module sets ``TPU_SKIP_MDS_QUERY=1``,
``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` and ``JAX_PLATFORMS=cpu`` (before JAX
starts) so that it runs on any machine, and nothing here touches a real TPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # quiets libtpu
# libtpu takes /tmp/libtpu_lockfile, one process per TPU host; a compile-only
# process owns no TPU, so two plans (or a plan and its test) may run at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import functools
import importlib.metadata
import json
import math
import platform as platform_lib
import re
import sys
import time
from typing import Any, Optional, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from ssmtl_jax.base import cli
from ssmtl_jax.base import errors
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.evaluation import inference
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (Cloud TPU system architecture pages,
  https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e; read 2026-12)."""
  name: str
  peak_tflops: float   # bf16 dense; XLA:TPU runs float32 matmuls as bf16 passes
  hbm_gib: float       # capacity as the page states it
  hbm_gbps: float      # GB/s
  ici_gbps: float      # inter-chip interconnect, GB/s per chip (as stated)


CHIPS = {
    "v4": Chip("v4", 275.0, 32.0, 1200.0, 300.0),     # 2400 Gbps ICI
    "v5e": Chip("v5e", 197.0, 16.0, 819.0, 200.0),    # 1600 Gbps ICI
    "v5p": Chip("v5p", 459.0, 95.0, 2765.0, 600.0),   # 4800 Gbps ICI
    "v6e": Chip("v6e", 918.0, 32.0, 1640.0, 448.0),   # 3584 Gbps ICI
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice as ``get_topology_desc`` takes it (the chip layouts
  of MaxText's ``accelerator_to_spec_map``); one JAX device per chip
  (megacore on v4 / v5p)."""
  name: str             # e.g. 'v5e-16', or '2xv5e-16' for two slices
  chip: str
  topology_name: str    # e.g. 'v5e:4x4'
  chip_config_name: str
  chips_per_host_bounds: tuple[int, int, int]
  chips: int            # per slice
  num_slices: int = 1

  @property
  def devices(self) -> int:
    return self.chips * self.num_slices


_SLICES = {
    "v4-8": ("v4", "v4:2x2x1", "megacore", 4),
    "v4-16": ("v4", "v4:2x2x2", "megacore", 8),
    "v4-32": ("v4", "v4:2x2x4", "megacore", 16),
    "v4-64": ("v4", "v4:2x4x4", "megacore", 32),
    "v4-128": ("v4", "v4:4x4x4", "megacore", 64),
    "v5e-4": ("v5e", "v5e:2x2", "default", 4),
    "v5e-8": ("v5e", "v5e:2x4", "default", 8),
    "v5e-16": ("v5e", "v5e:4x4", "default", 16),
    "v5e-32": ("v5e", "v5e:4x8", "default", 32),
    "v5e-64": ("v5e", "v5e:8x8", "default", 64),
    "v5e-128": ("v5e", "v5e:8x16", "default", 128),
    "v5e-256": ("v5e", "v5e:16x16", "default", 256),
    "v5p-8": ("v5p", "v5:2x2x1", "megacore", 4),
    "v5p-32": ("v5p", "v5:2x2x4", "megacore", 16),
    "v5p-128": ("v5p", "v5:4x4x4", "megacore", 64),
    "v6e-4": ("v6e", "v6e:2x2", "default", 4),
    "v6e-16": ("v6e", "v6e:4x4", "default", 16),
    "v6e-256": ("v6e", "v6e:16x16", "default", 256),
}


def topology(name: str) -> Topology:
  """'v5e-16' (one slice) or 'NxTOPO' (N slices over the data-centre
  network, e.g. '2xv5e-16')."""
  slices, _, base = name.rpartition("x") if re.match(r"^\d+x", name) else (
      "1", "x", name)
  if base not in _SLICES:
    raise errors.ConfigError(
        f"--topologies: unknown TPU slice {name!r}; known: "
        f"{', '.join(_SLICES)} (or NxSLICE for N slices)")
  chip, topo_name, chip_config, chips = _SLICES[base]
  return Topology(name=name, chip=chip, topology_name=topo_name,
                  chip_config_name=chip_config,
                  chips_per_host_bounds=(2, 2, 1), chips=chips,
                  num_slices=int(slices))


def topology_devices(topo: Topology) -> list:
  """The compile-only devices of a TPU slice (libtpu, no hardware)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(
        topo.topology_name, "tpu", chip_config_name=topo.chip_config_name,
        chips_per_host_bounds=topo.chips_per_host_bounds,
        num_slices=topo.num_slices)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"cannot describe TPU topology {topo.name} ({type(e).__name__}: "
        f"{e}); is libtpu installed (the [tpu-plan] extra)?") from e
  return list(desc.devices)


def libtpu_version() -> Optional[str]:
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return None


# --- the steps, as the trainer and the evaluator build them -----------------


def records_geometry(config: ml_collections.ConfigDict
                     ) -> input_pipeline.RecordsInfo:
  """What the builder would write for ``config`` (no records needed): the
  cube window, crop size and channels, the detector's classes and the
  classifier's 1000 ImageNet logits (none for classifier.kind='none')."""
  b = config.build
  return input_pipeline.RecordsInfo(
      records_dir="", split="train", files=(), shard_lengths=(),
      window=2 * int(b.half_window) + 1, crop_size=int(b.crop_size),
      channels=int(b.channels), num_det=int(b.num_det_classes),
      num_cls=0 if b.classifier.kind == "none" else 1000)


@dataclasses.dataclass
class Steps:
  """The jitted train and scoring steps over a mesh, and abstract inputs."""
  mesh: jax.sharding.Mesh
  train: Any
  score: Any
  state: Any        # ShapeDtypeStructs of the TrainState, replicated
  variables: Any    # ShapeDtypeStructs of {params, batch_stats}, replicated
  info: input_pipeline.RecordsInfo
  cfg: tasks_lib.StepConfig

  def batch(self, global_batch: int) -> dict:
    """Abstract train batch (its model keys are the scoring batch)."""
    data = sharding.data_sharding(self.mesh)
    i = self.info
    return {
        "crops": jax.ShapeDtypeStruct(
            (global_batch, i.window, i.crop_size, i.crop_size, i.channels),
            jnp.uint8, sharding=data),
        "teacher_det": jax.ShapeDtypeStruct((global_batch, i.num_det),
                                            jnp.float32, sharding=data),
        "teacher_cls": jax.ShapeDtypeStruct((global_batch, i.num_cls),
                                            jnp.float32, sharding=data)}

  def rng(self):
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype,
                                sharding=sharding.replicated(self.mesh))


def build_steps(config: ml_collections.ConfigDict, devices: Sequence[Any],
                target_platform: str = "tpu") -> Steps:
  """The train step (``sharding.jit_train_step`` of ``step.train_step``) and
  the scoring step (``inference.jit_score_fn`` of ``make_score_fn``) over a
  1-D data mesh of ``devices``, with 'auto' switches resolved for
  ``target_platform``."""
  info = records_geometry(config)
  if str(config.tasks.kd.get("balance", "none")) != "none":
    # The KD divisors are two constants read from the records' metadata;
    # they change no shape, so the plan uses 1.
    config = ml_collections.ConfigDict(config.to_dict())
    config.tasks.kd.balance = "none"
  mesh = jax.sharding.Mesh(np.asarray(devices), (sharding.DATA_AXIS,))
  cfg = tasks_lib.StepConfig.from_config(config, info)
  model = network.create_model(config, kd_outputs=info.kd_outputs,
                               channels=info.channels,
                               platform=target_platform)
  tx = step_lib.create_optimizer(config, 1000)
  views = network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                             crop_size=info.crop_size, channels=info.channels)
  repl = sharding.replicated(mesh)

  def placed(tree):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), tree)

  state = placed(jax.eval_shape(functools.partial(
      step_lib.create_train_state, model=model, tx=tx, views=views),
      jax.random.PRNGKey(0)))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  train = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=model, tx=tx, cfg=cfg),
      mesh)
  score = inference.jit_score_fn(inference.make_score_fn(model, cfg), mesh)
  return Steps(mesh=mesh, train=train, score=score, state=state,
               variables=variables, info=info, cfg=cfg)


# --- what the compiler says ---------------------------------------------------


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
# '%name = SHAPE op(' for a synchronous collective or the '-done' half of an
# asynchronous one (its result is the collective's output).
_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) +
    r")(?P<done>-done)?\(")


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO type string (tuples summed)."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES[dtype]
  return total


_OP_NAME = re.compile(r'op_name="([^"]*)"')


def collective_source(op_name: str) -> str:
  """What a collective reduces, from the op_name XLA keeps of the first
  operation it was made from: batch-norm statistics of the forward pass
  (each layer's mean and mean square, needed before the next layer can
  run), batch-norm reductions of the backward pass (with the gradients of
  the batch-norm scales and offsets), or the rest: in the train step, after
  XLA's all-reduce combiner, every other gradient and the loss terms in one
  or two; in the scoring step, the scores, replicated on every chip."""
  if "BatchNorm" in op_name:
    return ("batch-norm backward" if "transpose(" in op_name
            else "batch-norm forward")
  return "gradients, loss, outputs"


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {count, bytes}} of the collectives in an optimised HLO module
  (per device; bytes = the collective's result, per operation), and under
  'sources' {kind: {source: {count, bytes}}} (:func:`collective_source`)."""
  out: dict[str, Any] = {}
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    if not m.group("done") and f"{m.group('op')}-start" in line:
      continue
    n = shape_bytes(m.group("shape"))
    entry = out.setdefault(m.group("op"), {"count": 0, "bytes": 0,
                                           "sources": {}})
    entry["count"] += 1
    entry["bytes"] += n
    name = _OP_NAME.search(line)
    src = entry["sources"].setdefault(
        collective_source(name.group(1) if name else ""),
        {"count": 0, "bytes": 0})
    src["count"] += 1
    src["bytes"] += n
  return out


# libtpu 0.0.42: "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total
# memory required for HLO temporaries (58.70G) exceeds available HBM
# (15.75G)." (G = GiB: a v5e's 16 GiB less what the runtime reserves).
_NEEDED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)")
_AVAILABLE = re.compile(r"available HBM \(([\d.]+)([KMGT])\)")


def _to_bytes(value: str, unit: str) -> float:
  return float(value) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]


def oom_bytes(message: str) -> tuple[Optional[float], Optional[float]]:
  """(temporaries needed, HBM available) in bytes from an XLA:TPU
  out-of-memory message; None where it does not say."""
  need, avail = _NEEDED.search(message), _AVAILABLE.search(message)
  return (_to_bytes(*need.groups()) if need else None,
          _to_bytes(*avail.groups()) if avail else None)


@dataclasses.dataclass
class Compiled:
  """One compile's answers (per chip)."""
  step: str                  # 'train' | 'score'
  topology: str
  dtype: str
  per_chip_batch: int
  fits: bool
  compile_s: float
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  optimal_s: Optional[float] = None
  collectives: dict = dataclasses.field(default_factory=dict)
  param_bytes: int = 0        # the model's parameters (one copy)
  state_bytes: int = 0        # the whole train state or scoring variables
  batch_bytes: int = 0        # one chip's share of the batch
  oom_message: str = ""
  needed_temp_bytes: Optional[float] = None   # out of memory: temporaries
  available_bytes: Optional[float] = None     # out of memory: the HBM limit

  @property
  def peak_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.code_bytes)


def _nbytes(tree) -> int:
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def compile_step(steps: Steps, which: str, per_chip_batch: int,
                 topo: Topology, dtype: str) -> Compiled:
  """AOT-compiles the train or scoring step at ``per_chip_batch`` cubes per
  chip; an out-of-memory refusal is a result (fits=False), not an error."""
  global_batch = per_chip_batch * steps.mesh.size
  batch = steps.batch(global_batch)
  sizes = dict(
      param_bytes=_nbytes(steps.state.params),
      state_bytes=_nbytes(steps.state if which == "train" else
                          steps.variables),
      batch_bytes=_nbytes(batch) // steps.mesh.size)
  if which == "train":
    lowered = steps.train.lower(steps.state, batch, steps.rng())
  else:
    lowered = steps.score.lower(
        steps.variables, {k: batch[k] for k in inference.MODEL_KEYS})
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
      raise
    need, avail = oom_bytes(message)
    return Compiled(step=which, topology=topo.name, dtype=dtype,
                    per_chip_batch=per_chip_batch, fits=False,
                    compile_s=time.perf_counter() - start, **sizes,
                    oom_message=message.strip().splitlines()[0][:400],
                    needed_temp_bytes=need, available_bytes=avail)
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return Compiled(
      step=which, topology=topo.name, dtype=dtype,
      per_chip_batch=per_chip_batch, fits=True, compile_s=seconds, **sizes,
      argument_bytes=int(mem.argument_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes),
      temp_bytes=int(mem.temp_size_in_bytes),
      code_bytes=int(mem.generated_code_size_in_bytes),
      flops=float(cost.get("flops", 0.0)),
      bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      # XLA:TPU's own estimate; libtpu 0.0.42 gives negative values for
      # large programs (then None).
      optimal_s=(float(cost["optimal_seconds"])
                 if float(cost.get("optimal_seconds", -1)) > 0 else None),
      collectives=collectives(compiled.as_text()))


def roofline(c: Compiled, topo: Topology) -> dict[str, float]:
  """Seconds per step from the published chip figures: compute
  (FLOPs / peak), HBM (bytes / bandwidth), ICI (a ring all-reduce moves
  2 (n-1)/n of its bytes through each chip's links) and the bound."""
  chip = CHIPS[topo.chip]
  n = topo.devices
  reduce_bytes = sum(v["bytes"] for v in c.collectives.values())
  compute = c.flops / (chip.peak_tflops * 1e12)
  hbm = c.bytes_accessed / (chip.hbm_gbps * 1e9)
  ici = 2 * (n - 1) / n * reduce_bytes / (chip.ici_gbps * 1e9) if n > 1 else 0.0
  return {"compute_s": compute, "hbm_s": hbm, "ici_s": ici,
          "bound_s": max(compute, hbm) + ici}


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# --- the largest batch --------------------------------------------------------


def hbm_budget(topo: Topology, margin: float) -> float:
  return CHIPS[topo.chip].hbm_gib * 2**30 * margin


def largest_batch(steps: Steps, which: str, topo: Topology, dtype: str, *,
                  margin: float, multiple: int = 8, start: int = 8,
                  probe: int = 0, max_compiles: int = 6, log=None
                  ) -> tuple[Optional[Compiled], list[Compiled]]:
  """The largest per-chip batch (a multiple of ``multiple``) whose compiled
  peak memory is within ``margin`` of the chip's HBM, and every compile tried.

  Bisection on the compiler's answers. A full compile of this model takes
  minutes on two CPU cores; an oversized one is refused in seconds with the
  temporaries it needed. So: compile at ``start``; probe at ``probe``
  (default: four times the HBM over the first compile's temporaries per
  cube, which the compiler refuses at once); the line through the two
  gives the first guess, and bisection between the largest batch that fits
  and the smallest that does not takes it from there, within
  ``max_compiles`` compiles (the result is then the largest confirmed, and
  the bracket is logged). Memory is not linear in the batch near the
  limit (for configs/ped2.py on a v5e, float32: 9.1 GiB at 112 cubes per
  chip, 15.0 GiB at 136 and still 15.3 GiB at 243): the compiler fills what
  is free, and may rematerialise activations, which shows as more FLOPs per
  cube (``row``'s ``flops_per_cube``).
  """
  budget = hbm_budget(topo, margin)
  tried: list[Compiled] = []
  log = log or _log

  def run(b: int) -> Compiled:
    c = compile_step(steps, which, b, topo, dtype)
    tried.append(c)
    log(f"  {which} {topo.name} {dtype} batch {b}/chip: "
        + (f"{c.peak_bytes / 2**30:.2f} GiB peak, {c.compile_s:.0f} s"
           if c.fits else
           f"out of memory ({c.compile_s:.0f} s)"
           + (f", temporaries {c.needed_temp_bytes / 2**30:.2f} GiB"
              if c.needed_temp_bytes else "")))
    return c

  def ok(c: Compiled) -> bool:
    return c.fits and c.peak_bytes <= budget

  first = run(start)
  if not ok(first):
    return None, tried
  fixed = first.peak_bytes - first.temp_bytes
  if not probe:
    probe = int(4 * hbm_budget(topo, 1.0) / max(first.temp_bytes / start, 1))
  high = run(max(probe, 2 * start))
  if high.fits:
    high_bytes = high.peak_bytes
  elif high.needed_temp_bytes:
    high_bytes = fixed + high.needed_temp_bytes
  else:  # refused without saying how much
    high_bytes = hbm_budget(topo, 1.0)
  lo = high if ok(high) else first
  hi = None if ok(high) else high.per_chip_batch
  per_cube = max((high_bytes - first.peak_bytes)
                 / (high.per_chip_batch - start), 1.0)
  guess = int(start + (budget - first.peak_bytes) / per_cube)
  guess = guess // multiple * multiple
  from_line = True  # the line's guess: if it fits, try the next multiple
  while len(tried) < max_compiles:
    if hi is not None and guess >= hi:
      guess = (lo.per_chip_batch + hi) // 2 // multiple * multiple
    if guess <= lo.per_chip_batch:
      break
    c = run(guess)
    if ok(c):
      lo = c
      guess = (guess + multiple if from_line else
               2 * guess if hi is None else
               (guess + hi) // 2 // multiple * multiple)
    else:
      hi = guess
      guess = (lo.per_chip_batch + hi) // 2 // multiple * multiple
    from_line = False
  log(f"  {which} {topo.name} {dtype}: largest {lo.per_chip_batch}/chip"
      + (f" (the next tried, {hi}, did not fit in {margin:.0%} of HBM)"
         if hi else ""))
  return lo, tried


# --- report -------------------------------------------------------------------


def row(c: Compiled, topo: Topology) -> dict:
  d = dataclasses.asdict(c)
  d["peak_bytes"] = c.peak_bytes
  d["global_batch"] = c.per_chip_batch * topo.devices
  d["chips"] = topo.devices
  d["flops_per_cube"] = c.flops / c.per_chip_batch if c.fits else None
  if c.fits:
    d["roofline"] = roofline(c, topo)
    d["cubes_per_s"] = (d["global_batch"] / d["roofline"]["bound_s"]
                        if d["roofline"]["bound_s"] else None)
  return d


def _gib(x: float) -> str:
  return f"{x / 2**30:.2f}"


def markdown(results: dict) -> str:
  lines = [
      f"Config: {results['config']}; jax {results['versions']['jax']}, "
      f"libtpu {results['versions']['libtpu']}; compiled on "
      f"{results['machine']}.",
      "",
      "| step | topology | chips | dtype | batch/chip | global batch | "
      "args GiB | temp GiB | peak GiB | GFLOP/chip | GB/chip | collectives "
      "(count, MiB) | roofline ms (compute / HBM / ICI) | "
      "cubes/s (roofline) | GFLOP/cube | compile s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    if not r["fits"]:
      lines.append(
          f"| {r['step']} | {r['topology']} | {r['chips']} | {r['dtype']} | "
          f"{r['per_chip_batch']} | {r['global_batch']} | | | out of memory"
          + (f" (temporaries {_gib(r['needed_temp_bytes'])} of "
             f"{_gib(r['available_bytes'])})" if r["needed_temp_bytes"]
             and r["available_bytes"] else "") + f" | | | | | | | {r['compile_s']:.0f} |")
      continue
    coll = "; ".join(
        f"{k} {v['count']} ({v['bytes'] / 2**20:.2f}: " + ", ".join(
            f"{src} {w['count']}" for src, w in sorted(v["sources"].items()))
        + ")" for k, v in sorted(r["collectives"].items())) or "none"
    rl = r["roofline"]
    lines.append(
        f"| {r['step']} | {r['topology']} | {r['chips']} | {r['dtype']} | "
        f"{r['per_chip_batch']} | {r['global_batch']} | "
        f"{_gib(r['argument_bytes'])} | {_gib(r['temp_bytes'])} | "
        f"{_gib(r['peak_bytes'])} | {r['flops'] / 1e9:.0f} | "
        f"{r['bytes_accessed'] / 1e9:.1f} | {coll} | "
        f"{rl['bound_s'] * 1e3:.1f} ({rl['compute_s'] * 1e3:.1f} / "
        f"{rl['hbm_s'] * 1e3:.1f} / {rl['ici_s'] * 1e3:.2f}) | "
        f"{r['cubes_per_s']:.0f} | {r['flops_per_cube'] / 1e9:.1f} | "
        f"{r['compile_s']:.0f} |")
  if results.get("largest"):
    lines += ["", "Largest per-chip batch within "
              f"{results['margin']:.0%} of HBM:", ""]
    for key, b in results["largest"].items():
      lines.append(f"* {key}: {b if b else 'none (the first probe did not fit)'}")
  lines += ["", "Chip figures (published, per chip): " + "; ".join(
      f"{c.name} {c.peak_tflops:g} TFLOP/s bf16, {c.hbm_gib:g} GiB HBM at "
      f"{c.hbm_gbps:g} GB/s, ICI {c.ici_gbps:g} GB/s" for c in CHIPS.values())]
  return "\n".join(lines)


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_list("topologies", ["v5e-16", "v4-32", "v5p-128"],
                    "TPU slices (e.g. v5e-16, v4-32, v5p-128, v5e-256; "
                    "NxSLICE for N slices, e.g. 2xv5e-16)", flag_values=fv)
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "model.dtype values",
                    flag_values=fv)
  flags.DEFINE_list("batches", [], "per-chip batches to compile at (default: "
                    "the config's global batch over the chips, at least 1)",
                    flag_values=fv)
  flags.DEFINE_boolean("search", False, "find the largest per-chip train "
                       "batch within --margin of HBM (several compiles)",
                       flag_values=fv)
  flags.DEFINE_integer("max_compiles", 6, "compiles per --search (each takes "
                       "minutes for configs/ped2.py on two CPU cores)",
                       flag_values=fv, lower_bound=3)
  flags.DEFINE_float("margin", 0.9, "share of the chip's HBM a plan may use",
                     flag_values=fv, lower_bound=0.1, upper_bound=1.0)
  flags.DEFINE_list("steps", ["train", "score"], "which steps to compile",
                    flag_values=fv)
  flags.DEFINE_string("out", None, "write the plan as JSON here",
                      flag_values=fv)
  flags.DEFINE_string("markdown", None, "write the table here", flag_values=fv)
  return fv


def _check_args(args) -> list[Topology]:
  topos = [topology(t) for t in args.topologies]
  for d in args.dtypes:
    if d not in ("float32", "bfloat16"):
      raise errors.ConfigError(f"--dtypes: {d!r} is not float32 or bfloat16")
  for s in args.steps:
    if s not in ("train", "score"):
      raise errors.ConfigError(f"--steps: {s!r} is not train or score")
  for b in args.batches:
    if not b.isdigit() or int(b) < 1:
      raise errors.ConfigError(f"--batches: {b!r} is not a positive integer")
  return topos


def plan(config, topos: Sequence[Topology], dtypes: Sequence[str], *,
         batches: Sequence[int] = (), search: bool = False,
         margin: float = 0.9, which: Sequence[str] = ("train", "score"),
         max_compiles: int = 6, log=None) -> dict:
  """Compiles every (topology, dtype, step, batch); returns the rows."""
  log = log or _log
  results = {"config": "", "margin": margin, "rows": [], "largest": {},
             "machine": f"{platform_lib.processor() or platform_lib.machine()}"
                        f", {os.cpu_count()} CPUs",
             "versions": {"jax": jax.__version__,
                          "jaxlib": importlib.metadata.version("jaxlib"),
                          "libtpu": libtpu_version(),
                          "python": sys.version.split()[0]}}
  for topo in topos:
    devices = topology_devices(topo)
    for dtype in dtypes:
      cfg = ml_collections.ConfigDict(config.to_dict())
      cfg.model.dtype = dtype
      steps = build_steps(cfg, devices, "tpu")
      sizes = list(batches) or [max(1, int(config.input.batch_size)
                                    // topo.devices)]
      if search and "train" in which:
        best, tried = largest_batch(steps, "train", topo, dtype,
                                    margin=margin, max_compiles=max_compiles,
                                    log=log)
        results["largest"][f"train {topo.name} {dtype}"] = (
            best.per_chip_batch if best else None)
        results["rows"] += [row(c, topo) for c in tried]
        sizes = [best.per_chip_batch] if best else []
      for b in sizes:
        for w in which:
          if search and w == "train" and any(
              r["per_chip_batch"] == b and r["step"] == "train"
              and r["topology"] == topo.name and r["dtype"] == dtype
              for r in results["rows"]):
            continue
          c = compile_step(steps, w, b, topo, dtype)
          log(f"  {w} {topo.name} {dtype} batch {b}/chip: "
              + (f"{c.peak_bytes / 2**30:.2f} GiB peak, {c.compile_s:.0f} s"
                 if c.fits else "out of memory"))
          results["rows"].append(row(c, topo))
  return results


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  cli.check_overrides(argv)  # a bad --config or --config.* is one line
  fv = _flags()
  args = cli.parse_tool_flags("python -m benchmarks.pod_plan", fv, argv,
                              output_files=("out", "markdown"))
  results = cli.run_reporting_user_errors(lambda: _plan_from_flags(args))
  results["config"] = " ".join(
      [f"--config {cli._config_path(argv)}"]  # pylint: disable=protected-access
      + [a for a in argv if a.startswith("--config.")])
  table = markdown(results)
  print(table)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  return 0


def _plan_from_flags(args) -> dict:
  """The flags checked (UserError on the first bad one), then the plan."""
  if args.config is None:
    raise errors.UserError("--config is required, e.g. --config "
                           "configs/ped2.py")
  topos = _check_args(args)
  if libtpu_version() is None:
    raise errors.UserError(
        "libtpu is not installed: pip install -e \".[tpu-plan]\" -c "
        "constraints.txt (the TPU compiler; nothing runs on a TPU)")
  return plan(args.config, topos, args.dtypes,
              batches=[int(b) for b in args.batches], search=args.search,
              margin=args.margin, which=args.steps,
              max_compiles=args.max_compiles)


if __name__ == "__main__":
  raise SystemExit(main())
