"""Where a step's time goes, by op class: JAX vs torch eager, in one command.

  python -m benchmarks.op_profile [--batches 8,64] [--crops 32,64]
      [--steps 3] [--conv auto] [--out FILE.json] [--markdown FILE.md]

For each crop and batch, the real jitted train step and scoring step of
``benchmarks.matrix`` (the narrow shallow network, float32, the CPU's
pooling, ``model.conv_impl`` from ``--conv``) run ``--steps`` times under
``jax.profiler`` after a warm-up; every XLA op in the trace (on the CPU the
host's XLA threads, on an accelerator the device streams) is put in a class
by what the compiled HLO says it is: the custom-call target, the name scope
it was traced under (``BatchNorm``, ``max_pool_hw``, ``joint_loss``,
``optimizer``, ``make_views``, ``transpose(...)`` for the backward pass) and
its opcodes, fused ones included. The PyTorch twin's eager step runs as
often under ``torch.profiler``; each aten op's self CPU time is classed by
its name (CPU activity only: on a GPU torch's kernels are not counted, so
the table is for the CPU). The result is ms per step and class, side by
side.

"step wall" is a profiled step's wall time and "outside ops" the wall time
minus the sum of the classed ops: dispatch, Python, waits between ops. On a
multi-core CPU, XLA runs independent ops on several threads at once, so its
ops can sum to more than the wall time (a negative "outside ops"). Profiled
steps run slower than timed ones: this explains the ratios of
``benchmarks.compare``, it makes no speed claim by itself.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from absl import flags
import jax
import torch

from benchmarks import harness
from benchmarks import matrix
from benchmarks import report
from ssmtl_jax.base import cli

CLASSES = ("conv forward", "conv backward", "batch norm", "pooling", "matmul",
           "loss", "optimizer", "views", "layout", "reductions",
           "elementwise", "framework", "other")

# Opcodes that only move or re-shape data.
_LAYOUT = frozenset({
    "copy", "transpose", "bitcast", "reshape", "broadcast", "concatenate",
    "pad", "slice", "dynamic-slice", "dynamic-update-slice", "parameter",
    "constant", "tuple", "get-tuple-element", "iota", "reverse", "gather",
    "scatter", "copy-start", "copy-done", "bitcast-convert"})


# --- XLA: classes from the compiled HLO ----------------------------------------


@dataclasses.dataclass
class HloOp:
  """One instruction of a compiled XLA program, as far as classes need."""
  opcode: str
  opcodes: frozenset      # its own and, for a fusion, the fused ones
  scope: str              # metadata op_name
  target: str = ""        # custom_call_target


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_OPCODE = re.compile(r"(?:^|[\s}\])])(?P<op>[a-z][a-z0-9\-]*)\(")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")


def hlo_ops(hlo_text: str) -> dict[str, HloOp]:
  """Instruction name -> what it is, from ``compiled.as_text()``."""
  comps: dict[str, list[tuple[str, str, str]]] = {}
  current: Optional[str] = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      current = m.group("name")
      comps[current] = []
      continue
    m = _INSTR.match(line)
    if not m or current is None:
      continue
    rest = m.group("rest")
    op = _OPCODE.search(rest)
    if op:
      comps[current].append((m.group("name"), op.group("op"), rest))

  def opcodes(comp: str, seen: frozenset = frozenset()) -> set[str]:
    out = set()
    for _, op, rest in comps.get(comp, ()):
      out.add(op)
      for called in re.findall(r"calls=%?([\w.\-]+)", rest):
        if called not in seen:
          out |= opcodes(called, seen | {comp})
    return out

  ops = {}
  user_scope: dict[str, str] = {}  # an op's scope, seen from its users
  for instrs in comps.values():
    for name, op, rest in instrs:
      scope = re.search(r'op_name="([^"]*)"', rest)
      target = re.search(r'custom_call_target="([^"]*)"', rest)
      fused = {op}
      for called in re.findall(r"calls=%?([\w.\-]+)", rest):
        fused |= opcodes(called)
      ops[name] = HloOp(op, frozenset(fused), scope.group(1) if scope else "",
                        target.group(1) if target else "")
      if scope:
        for operand in re.findall(r"%([\w.\-]+)", rest.split("(", 1)[-1]):
          user_scope.setdefault(operand, scope.group(1))
  # XLA:CPU drops the metadata of some ops it rewrites (convolutions after
  # layout assignment); they take the scope of their first user.
  for name, op in ops.items():
    if not op.scope and name in user_scope:
      op.scope = user_scope[name]
  return ops


def xla_class(op: HloOp) -> str:
  """The class of one XLA op (see the module docstring)."""
  backward = "transpose(" in op.scope
  if op.opcode == "custom-call":
    if "conv3d_fwd" in op.target:
      return "conv forward"
    if "conv3d_bwd" in op.target:
      return "conv backward"
    return "other"
  for key, cls in (("optimizer", "optimizer"), ("make_views", "views"),
                   ("joint_loss", "loss"), ("BatchNorm", "batch norm"),
                   ("max_pool_hw", "pooling")):
    if key in op.scope:
      return cls
  if op.opcodes & {"reduce-window", "select-and-scatter"}:
    return "pooling"
  if "convolution" in op.opcodes or "/conv/" in op.scope + "/":
    return "conv backward" if backward else "conv forward"
  if "dot" in op.opcodes:
    return "matmul"
  if op.opcodes <= _LAYOUT:
    return "layout"
  if "reduce" in op.opcodes:
    return "reductions"
  return "elementwise"


def _jax_op_times(trace_dir: str, ops: dict[str, HloOp]) -> dict[str, float]:
  """Microseconds per class over a trace's XLA op events."""
  events = matrix.trace_events(trace_dir)
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {p for p, n in procs.items() if n.startswith("/device:")}
  out: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    if device_pids and e["pid"] not in device_pids:
      continue
    name = (e.get("args") or {}).get("hlo_op") or e.get("name", "")
    op = ops.get(name)
    if op is not None:  # not the executor's own spans, not Python
      out[xla_class(op)] += float(e["dur"])
  return out


# --- torch: classes from aten op names -------------------------------------------

_TORCH_LAYOUT = frozenset({
    "copy_", "_to_copy", "to", "contiguous", "clone", "permute", "transpose",
    "t", "cat", "stack", "pad", "constant_pad_nd", "empty", "empty_like",
    "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "fill_",
    "zero_", "as_strided", "view", "reshape", "_reshape_alias", "_unsafe_view",
    "slice", "select", "index", "index_select", "flip", "expand", "narrow",
    "unsqueeze", "squeeze", "split", "chunk", "unbind", "repeat", "detach",
    "alias", "resize_", "new_zeros", "new_empty", "unfold", "roll", "gather",
    "scatter", "index_put_", "lift_fresh", "expand_as", "flatten",
    "new_empty_strided", "_index_put_impl_", "masked_fill_", "narrow_copy"})
_TORCH_REDUCE = frozenset({
    "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "norm",
    "var", "std", "prod", "any", "all", "logsumexp", "linalg_vector_norm"})
_TORCH_LOSS = ("cross_entropy", "nll_loss", "log_softmax", "l1_loss",
               "mse_loss", "binary_cross_entropy", "smooth_l1")


def torch_class(name: str) -> str:
  """The class of one torch profiler event name."""
  if name.startswith(("autograd::", "ProfilerStep", "Optimizer.zero_grad")):
    return "framework"
  if name.startswith("Optimizer.") or "_foreach_" in name:
    return "optimizer"
  base = name.split("::", 1)[-1]
  if "convolution_backward" in base:
    return "conv backward"
  if "conv" in base and "::" in name:
    return "conv forward"
  if "batch_norm" in base:
    return "batch norm"
  if "pool" in base:
    return "pooling"
  if any(k in base for k in _TORCH_LOSS):
    return "loss"
  if base in ("addmm", "mm", "bmm", "matmul", "linear", "einsum"):
    return "matmul"
  if base in _TORCH_LAYOUT:
    return "layout"
  if base in _TORCH_REDUCE:
    return "reductions"
  if "::" in name:
    return "elementwise"
  return "framework"  # Python-level spans of the twin (e.g. backward hooks)


def _torch_op_times(prof) -> dict[str, float]:
  out: collections.Counter = collections.Counter()
  for avg in prof.key_averages():
    out[torch_class(avg.key)] += float(avg.self_cpu_time_total)
  return out


# --- One measurement ---------------------------------------------------------------


def _profile(run: Callable[[], Any], sync: Callable[[Any], None], steps: int,
             profiler) -> tuple[float, Any]:
  """(wall seconds per step, profiler result) of `steps` calls after one
  warm-up call."""
  sync(run())
  with profiler() as prof:
    t = time.perf_counter()
    out = None
    for _ in range(steps):
      out = run()
    sync(out)
    wall = (time.perf_counter() - t) / steps
  return wall, prof


def _per_step(us: dict[str, float], steps: int, wall_s: float) -> dict:
  ms = {c: us.get(c, 0.0) / 1e3 / steps for c in CLASSES}
  ops = sum(ms.values())
  return {"classes_ms": ms, "ops_ms": ops, "wall_ms": 1e3 * wall_s,
          "outside_ops_ms": 1e3 * wall_s - ops}


def measure(settings: harness.BenchSettings, m: harness.Models,
            device: torch.device, *, section: str, batch: int, conv: str,
            steps: int) -> dict:
  """JAX and torch eager per-class ms per step for one section and batch."""
  config = matrix.step_config(settings, "float32", "auto", False, batch, conv)
  records = matrix.step_records(settings, batch)
  if section == "train":
    call, sync, _ = matrix.jax_train(settings, m, config, records)
    twin = matrix.torch_train(settings, m, config, records, device,
                              compiled=False, dtype="float32")
  else:
    call, sync, _ = matrix.jax_infer(settings, m, config, records)
    twin = matrix.torch_infer(settings, m, records, device, compiled=False,
                              dtype="float32")
  ops = hlo_ops(call.compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    wall, _ = _profile(call, sync, steps, lambda: jax.profiler.trace(
        d, create_perfetto_trace=True))
    jax_row = _per_step(_jax_op_times(d, ops), steps, wall)
  wall, prof = _profile(
      twin, harness.torch_sync_fn(device), steps,
      lambda: torch.profiler.profile(
          activities=[torch.profiler.ProfilerActivity.CPU]))
  torch_row = _per_step(_torch_op_times(prof), steps, wall)
  return {"section": section, "batch": batch, "crop": settings.crop,
          "conv_impl": conv, "steps": steps, "jax": jax_row,
          "torch_eager": torch_row}


def run(batches: Sequence[int], crops: Sequence[int], *, conv: str,
        steps: int, progress: Callable[[str], None] = print) -> dict:
  """Every (crop, batch, train|infer) measurement, with the machine."""
  rows = []
  torch.set_num_threads(os.cpu_count() or 1)
  device = harness.torch_device()
  for crop in crops:
    settings = dataclasses.replace(harness.BenchSettings.quick_preset(),
                                   crop=crop)
    m = harness.build_models(settings, device)
    for batch in batches:
      for section in ("train", "infer"):
        progress(f"{section} crop {crop} batch {batch} ...")
        rows.append(measure(settings, m, device, section=section, batch=batch,
                            conv=conv, steps=steps))
  return {"machine": report.machine_info(device), "rows": rows}


def markdown(result: dict) -> str:
  """One table per section: ms per step and class, JAX / torch eager."""
  out = []
  for section in ("train", "infer"):
    rows = [r for r in result["rows"] if r["section"] == section]
    if not rows:
      continue
    head = [f"batch {r['batch']}, {r['crop']} px" for r in rows]
    out += [f"**{section}** (ms per step, JAX / torch eager; conv_impl="
            f"{rows[0]['conv_impl']})", "",
            "| class | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(rows)]
    keys = [(c, lambda x, c=c: x["classes_ms"][c]) for c in CLASSES]
    keys += [("sum of ops", lambda x: x["ops_ms"]),
             ("step wall", lambda x: x["wall_ms"]),
             ("outside ops", lambda x: x["outside_ops_ms"])]
    for label, get in keys:
      cells = [f"{get(r['jax']):.1f} / {get(r['torch_eager']):.1f}"
               for r in rows]
      out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_list("batches", ["8", "64"], "global batch sizes", flag_values=fv)
  flags.DEFINE_list("crops", ["32", "64"], "crop sides (px)", flag_values=fv)
  flags.DEFINE_integer("steps", 3, "profiled steps per measurement",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_enum("conv", "auto", ["auto", "fast", "xla", "onednn"],
                    "model.conv_impl of the JAX step", flag_values=fv)
  flags.DEFINE_string("out", None, "write the JSON here", flag_values=fv)
  flags.DEFINE_string("markdown", None, "write the tables here",
                      flag_values=fv)
  return fv


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = cli.parse_tool_flags("python -m benchmarks.op_profile", _flags(),
                              argv, output_files=("out", "markdown"))
  try:
    batches = [int(b) for b in args.batches]
    crops = [int(c) for c in args.crops]
    if min(batches + crops) < 1:
      raise ValueError
  except ValueError:
    print("error: --batches and --crops are comma-separated positive "
          "integers", file=sys.stderr)
    return 2
  result = run(batches, crops, conv=args.conv, steps=args.steps)
  table = markdown(result)
  print(table)
  report.write_outputs(result, table, args.out, args.markdown)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
