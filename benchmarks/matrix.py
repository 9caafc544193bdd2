r"""The speed matrix of ``python -m benchmarks.compare --matrix``.

Every combination of the JAX model's speed switches -- ``model.dtype``
(float32 / bfloat16 mixed precision), ``model.pool_impl`` (argmax /
reduce_window), ``model.fuse_views`` (one backbone call per task / one for
the three 7-frame views), ``model.conv_impl`` (default 'auto' only; e.g.
'fast' and 'onednn' on a CPU) -- and each global batch size is timed against the
PyTorch twin doing the same work: the same step (views, forward, joint loss,
backward, Adam), the same batch, the same precision (torch autocast to
bfloat16 where JAX computes in bfloat16; float32 otherwise, TF32 allowed on
GPUs like JAX's default), eager and ``torch.compile``. The switches only
change how JAX computes (tests/test_speed_switches.py checks the maths is
the same), so each JAX row is compared with the torch rows of its dtype and
batch; all rows of one (dtype, batch) group are measured in one interleaved
set of repeats.

Per JAX row, XLA's own view of the compiled step: FLOPs and bytes accessed
(``cost_analysis``) next to the analytic FLOP count, and the buffers
(``memory_analysis``: temporaries, arguments, outputs), per cube. Per torch
row on CUDA, the peak allocated memory of a step (``torch.cuda``); on the CPU
torch has no allocator statistics (recorded as null).

Largest batch: on an accelerator, each framework's default step (float32,
the config's switches) is run at doubling batch sizes until it runs out of
memory or reaches ``max_batch`` (an OOM is caught and recorded). On the CPU
an OOM would kill the process, so only JAX's estimate is recorded: the
machine's available memory over ``memory_analysis``'s bytes per cube.

Profile: on an accelerator (or with ``profile=True``), the top operations of
a few JAX train steps of the first row, by total time, from a
``jax.profiler`` trace (its Perfetto JSON; device streams where the trace has
them, else the XLA CPU threads).

Built on ``benchmarks.harness`` (settings, models, records, the timing
harness), ``benchmarks.flops`` (the analytic count) and
``benchmarks.report``'s cell format; ``benchmarks.compare`` runs it, and this
module never imports that one.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import glob
import gzip
import itertools
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import torch

from benchmarks import flops as flops_lib
from benchmarks import harness
from benchmarks import report
from benchmarks import torch_ssmtl
from ssmtl_jax.evaluation import inference
from ssmtl_jax.model import network
from ssmtl_jax.model import sharding
from ssmtl_jax.train import step as step_lib

TORCH_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class Axes:
  """The switch values measured (every combination)."""
  dtypes: Sequence[str] = ("float32", "bfloat16")
  pool_impls: Sequence[str] = ("argmax", "reduce_window")
  fuse_views: Sequence[bool] = (False, True)
  conv_impls: Sequence[str] = ("auto",)   # e.g. ('fast', 'onednn') on CPU
  batches: Sequence[int] = ()   # () = the settings' batch
  max_batch: int = 8192         # largest-batch search cap (accelerators)
  profile: Optional[bool] = None  # None = on accelerators only


def step_config(settings, dtype: str, pool: str, fuse: bool, batch: int,
                conv: str = "auto"):
  """The benchmark's run config with these switches and global batch."""
  config = harness.bench_config(settings)
  config.model.conv_impl = conv
  config.model.dtype = dtype
  config.model.pool_impl = pool
  config.model.fuse_views = fuse
  config.input.batch_size = batch
  return config


def step_records(settings, batch: int) -> dict:
  """A synthetic batch of records of ``batch`` cubes."""
  return harness.bench_records(dataclasses.replace(settings, batch=batch))


def xla_costs(compiled, batch: int) -> dict:
  """FLOPs, bytes accessed and buffer sizes of a compiled step, per cube.

  Under SPMD jit XLA analyses the program of one device, which handles
  ``batch / device_count`` cubes: per-cube figures divide by that.
  """
  out: dict[str, Any] = {"devices": jax.device_count()}
  batch = max(1, batch // jax.device_count())
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    out["flops_per_cube"] = float(cost["flops"]) / batch
    out["bytes_accessed_per_cube"] = float(cost["bytes accessed"]) / batch
  except Exception as e:  # pylint: disable=broad-except
    out["cost_error"] = harness.error_text(e)
  try:
    mem = compiled.memory_analysis()
    temp, args = mem.temp_size_in_bytes, mem.argument_size_in_bytes
    outs, alias = mem.output_size_in_bytes, mem.alias_size_in_bytes
    out.update(temp_bytes=int(temp), argument_bytes=int(args),
               output_bytes=int(outs), alias_bytes=int(alias),
               temp_bytes_per_cube=temp / batch,
               peak_bytes=int(temp + args + outs - alias),
               peak_bytes_per_cube=(temp + args + outs - alias) / batch)
  except Exception as e:  # pylint: disable=broad-except
    out["memory_error"] = harness.error_text(e)
  return out


def _train_state(variables, tx):
  params = jax.tree.map(jnp.copy, variables["params"])
  return step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=jax.tree.map(jnp.copy, variables["batch_stats"]),
      opt_state=tx.init(params), bad_step=jnp.full((), -1, jnp.int32))


def jax_train(settings, m, config, records):
  """(call, sync, xla costs) of the real jitted train step for `config`;
  ``call.compiled`` is the compiled step (its HLO names the profiled ops)."""
  model = network.create_model(config, kd_outputs=settings.kd_outputs,
                              channels=settings.channels)
  tx = step_lib.create_optimizer(config, total_steps=1_000_000)
  mesh = sharding.create_mesh()
  sharding.check_batch_size(config.input.batch_size, jax.device_count())
  state = jax.device_put(_train_state(m.variables, tx),
                         sharding.replicated(mesh))
  step = sharding.jit_train_step(
      functools.partial(step_lib.train_step, model=model, tx=tx, cfg=m.cfg),
      mesh)
  batch = sharding.global_batch(records, mesh)
  rng = sharding.to_replicated(jax.random.PRNGKey(0), mesh)
  compiled = step.lower(state, batch, rng).compile()
  holder = {"state": state}

  def call():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    return metrics

  call.compiled = compiled

  return call, harness.jax_sync, xla_costs(compiled, config.input.batch_size)


def jax_infer(settings, m, config, records):
  model = network.create_model(config, kd_outputs=settings.kd_outputs,
                              channels=settings.channels)
  mesh = sharding.create_mesh()
  fn = inference.jit_score_fn(inference.make_score_fn(model, m.cfg), mesh)
  variables = jax.device_put(m.variables, sharding.replicated(mesh))
  batch = sharding.global_batch(records, mesh)
  compiled = fn.lower(variables, batch).compile()
  call = functools.partial(compiled, variables, batch)
  call.compiled = compiled  # as jax_train's
  return (call, harness.jax_sync,
          xla_costs(compiled, config.input.batch_size))


def _torch_peak(device: torch.device) -> Callable[[Callable[[], Any]], Optional[int]]:
  """Peak bytes allocated during one call (CUDA), above what was allocated
  before it; None on the CPU."""

  def measure(call):
    if device.type != "cuda":
      return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)

  return measure


def torch_train(settings, m, config, records, device, compiled: bool,
                dtype: str):
  twin = copy.deepcopy(m.twin)
  opt, sched = torch_ssmtl.create_optimizer(twin, config.optim, 1_000_000)
  cfg = m.cfg
  trainer = torch_ssmtl.Trainer(
      twin, tasks=cfg.tasks, weights=dict(cfg.weights), seq_half=cfg.seq_half,
      max_gap=cfg.max_gap, num_det=cfg.num_det, kd_loss=cfg.kd_loss,
      optimizer=opt, scheduler=sched, compiled=compiled,
      autocast=TORCH_DTYPES[dtype])
  crops, teacher = harness.torch_batch(records, device)
  return functools.partial(trainer.step, crops, teacher)


def torch_infer(settings, m, records, device, compiled: bool, dtype: str):
  del settings
  cfg = m.cfg
  scorer = torch_ssmtl.Scorer(m.twin, seq_half=cfg.seq_half,
                              num_det=cfg.num_det, kd_loss=cfg.kd_loss,
                              compiled=compiled, autocast=TORCH_DTYPES[dtype])
  crops, teacher = harness.torch_batch(records, device)
  return functools.partial(scorer, crops, teacher)


def _row(section: str, framework: str, dtype: str, batch: int, **switches):
  return dict(section=section, framework=framework, dtype=dtype, batch=batch,
              **switches)


def measure_group(settings, m, device, *, dtype: str, batch: int,
                  axes: Axes, handles: Optional[dict] = None) -> list[dict]:
  """The train and infer rows of one (dtype, batch) group, each section's
  runners measured in one interleaved set of repeats. ``handles`` collects
  each JAX train row's (call, sync, costs) by (dtype, batch, pool, fuse)."""
  records = step_records(settings, batch)
  sync = harness.torch_sync_fn(device)
  peak = _torch_peak(device)
  rows = []
  for section in ("train", "infer"):
    runners, metas = [], []
    # fuse_views changes training only (scoring already runs the backbone
    # once for aot, mi and kd).
    fuses = axes.fuse_views if section == "train" else (False,)
    for conv, pool, fuse in itertools.product(axes.conv_impls,
                                              axes.pool_impls, fuses):
      config = step_config(settings, dtype, pool, fuse, batch, conv)
      name = f"jax {dtype} conv={conv} pool={pool}" + (
          f" fuse={fuse}" if section == "train" else "")
      meta = _row(section, "jax", dtype, batch, conv_impl=conv, pool_impl=pool,
                  **({"fuse_views": fuse} if section == "train" else {}))
      try:
        build = jax_train if section == "train" else jax_infer
        t0 = time.perf_counter()
        call, jsync, costs = build(settings, m, config, records)
        meta["compile_s"] = time.perf_counter() - t0   # lower + compile
        meta["xla"] = costs
        if section == "train" and handles is not None and conv == "auto":
          handles[(dtype, batch, pool, fuse)] = (call, jsync, costs)
      except Exception as e:  # pylint: disable=broad-except
        meta["error"] = harness.error_text(e)
        rows.append(meta)
        print(f"  {name}: FAILED: {meta['error'].splitlines()[0]}",
              file=sys.stderr)
        continue
      runners.append(harness.Runner(name, call, jsync, batch))
      metas.append(meta)
    for framework, compiled in (("torch_eager", False),
                                ("torch_compile", True)):
      if compiled and not settings.torch_compile:
        continue
      meta = _row(section, framework, dtype, batch)
      config = step_config(settings, dtype, "argmax", False, batch)
      try:
        if section == "train":
          call = torch_train(settings, m, config, records, device, compiled,
                             dtype)
        else:
          call = torch_infer(settings, m, records, device, compiled, dtype)
      except Exception as e:  # pylint: disable=broad-except
        meta["error"] = harness.error_text(e)
        rows.append(meta)
        continue
      runners.append(harness.Runner(f"{framework} {dtype}", call, sync, batch))
      metas.append(meta)
    print(f"matrix {section} {dtype} batch {batch}: {len(runners)} rows",
          file=sys.stderr, flush=True)
    harness.measure(runners, settings)
    for runner, meta in zip(runners, metas):
      meta.update(harness.summary(runner, "cubes_per_s"))
      if meta["framework"] != "jax" and not runner.error:
        try:
          meta["peak_bytes"] = peak(runner.call)
          if meta["peak_bytes"] is not None:
            meta["peak_bytes_per_cube"] = meta["peak_bytes"] / batch
        except Exception as e:  # pylint: disable=broad-except
          meta["peak_bytes_error"] = harness.error_text(e)
      rows.append(meta)
  return rows


def add_ratios(rows: list[dict]) -> None:
  """JAX rows get ``over_torch_eager`` / ``over_torch_compile``: their
  cubes/s over the torch row of the same section, dtype and batch."""
  ref = {(r["section"], r["framework"], r["dtype"], r["batch"]): r
         for r in rows if r["framework"] != "jax"}
  for r in rows:
    if r["framework"] != "jax" or "cubes_per_s" not in r:
      continue
    for fw in ("torch_eager", "torch_compile"):
      other = ref.get((r["section"], fw, r["dtype"], r["batch"]), {})
      r[f"over_{fw}"] = (r["cubes_per_s"] / other["cubes_per_s"]
                         if other.get("cubes_per_s") else None)


def _is_oom(e: BaseException) -> bool:
  text = f"{type(e).__name__} {e}"
  return any(k in text for k in ("RESOURCE_EXHAUSTED", "OutOfMemory",
                                 "out of memory", "Out of memory"))


def _available_bytes() -> Optional[int]:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def largest_batch(settings, m, device, *, start: int, cap: int,
                  handles: Optional[dict] = None) -> dict:
  """Doubling search per framework (float32, default switches)."""
  out: dict[str, Any] = {"method": f"doubling from {start} up to {cap}"}
  if jax.default_backend() == "cpu":
    config = step_config(settings, "float32", "argmax", False, start)
    try:
      key = ("float32", start, "argmax", False)
      *_, costs = (handles or {}).get(key) or jax_train(
          settings, m, config, step_records(settings, start))
      avail = _available_bytes()
      per = costs.get("peak_bytes_per_cube")
      out["jax"] = {"estimate": int(avail // per) if avail and per else None,
                    "available_bytes": avail, "peak_bytes_per_cube": per}
    except Exception as e:  # pylint: disable=broad-except
      out["jax"] = {"error": harness.error_text(e)}
    out["method"] = ("CPU: no search (an OOM kills the process); JAX: "
                     "available memory / memory_analysis peak bytes per cube")
    out["torch_eager"] = {"unmeasured": "no search on the CPU"}
    return out
  for framework in ("jax", "torch_eager"):
    fits, failed, batch = None, None, start
    while batch <= cap:
      records = step_records(settings, batch)
      config = step_config(settings, "float32", "auto", False, batch)
      try:
        if framework == "jax":
          call, sync, _ = jax_train(settings, m, config, records)
          sync(call())
        else:
          call = torch_train(settings, m, config, records, device, False,
                             "float32")
          call()
          harness.torch_sync_fn(device)(None)
        fits = batch
      except Exception as e:  # pylint: disable=broad-except
        failed = {"batch": batch, "error": harness.error_text(e)[:500],
                  "oom": _is_oom(e)}
        break
      finally:
        if device.type == "cuda":
          torch.cuda.empty_cache()
      batch *= 2
    out[framework] = {"largest": fits, "failed_at": failed,
                      "reached_cap": failed is None}
  return out


def trace_events(trace_dir: str) -> list[dict]:
  """The Chrome-trace events of the ``jax.profiler`` trace in a folder."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                    recursive=True)
  if not paths:
    return []
  with gzip.open(paths[0], "rt", encoding="utf-8") as f:
    data = json.load(f)
  return data.get("traceEvents", []) if isinstance(data, dict) else data


def top_ops(events: list[dict], k: int = 15) -> dict:
  """Total time per operation name from Chrome-trace events: device
  processes ('/device:...') when the trace has them, else the host's XLA
  threads (not the Python thread, not Python frames '$...')."""
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  device_pids = {p for p, n in procs.items() if n.startswith("/device:")}
  total: collections.Counter = collections.Counter()
  calls: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    name = e.get("name", "")
    if device_pids:
      if e["pid"] not in device_pids:
        continue
    elif (name.startswith("$") or
          threads.get((e["pid"], e.get("tid")), "") == "python"):
      continue
    total[name] += float(e["dur"])
    calls[name] += 1
  all_us = sum(total.values())
  return {"source": "device" if device_pids else "host XLA threads",
          "total_ms": all_us / 1e3,
          "top": [{"op": n, "ms": us / 1e3, "calls": calls[n],
                   "share": us / all_us if all_us else None}
                  for n, us in total.most_common(k)]}


def profile_steps(call: Callable[[], Any], sync: Callable[[Any], None],
                  steps: int = 3) -> dict:
  """Top ops of `steps` calls of an already compiled step."""
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      out = None
      for _ in range(steps):
        out = call()
      sync(out)
    return dict(top_ops(trace_events(d)), steps=steps)


def matrix_section(settings, m, device, axes: Axes) -> dict:
  batches = list(axes.batches) or [settings.batch]
  rows, handles = [], {}
  for batch, dtype in itertools.product(batches, axes.dtypes):
    rows += measure_group(settings, m, device, dtype=dtype, batch=batch,
                          axes=axes, handles=handles)
  add_ratios(rows)
  out: dict[str, Any] = {
      "axes": {"dtype": list(axes.dtypes), "pool_impl": list(axes.pool_impls),
               "fuse_views": list(axes.fuse_views),
               "conv_impl": list(axes.conv_impls), "batch": batches},
      "rows": rows}
  analytic = flops_lib.model_flops(settings)
  out["analytic_flops_per_cube"] = {"train": analytic["train"],
                                    "infer": analytic["infer"]}
  accel = jax.default_backend() != "cpu"
  if axes.max_batch:
    out["largest_batch"] = largest_batch(settings, m, device,
                                         start=max(batches), cap=axes.max_batch,
                                         handles=handles)
  if axes.profile if axes.profile is not None else accel:
    key = (axes.dtypes[0], batches[0], axes.pool_impls[0], axes.fuse_views[0])
    config = step_config(settings, key[0], key[2], key[3], key[1])
    try:
      call, sync, _ = handles.get(key) or jax_train(
          settings, m, config, step_records(settings, batches[0]))
      sync(call())
      out["profile"] = dict(profile_steps(call, sync),
                            row=f"train {axes.dtypes[0]} pool="
                                f"{axes.pool_impls[0]} fuse="
                                f"{axes.fuse_views[0]} batch {batches[0]}")
    except Exception as e:  # pylint: disable=broad-except
      out["profile"] = {"error": harness.error_text(e)}
  return out


def default_sections(matrix: dict, batch: int):
  """(train, infer, xla) entries for compare's summary table from the rows of
  the default configuration (float32, ``model.pool_impl='auto'`` on this
  backend, no fused views, the settings' batch), or None if the matrix did
  not measure it."""
  pool = network.resolve_pool_impl("auto")
  sections = {}
  xla = None
  for section in ("train", "infer"):
    entries = {}
    for r in matrix["rows"]:
      if (r["section"], r["dtype"], r["batch"]) != (section, "float32", batch):
        continue
      if r["framework"] == "jax":
        if (r["pool_impl"] != pool or r.get("fuse_views", False)
            or r.get("conv_impl", "auto") != "auto"):
          continue
        if section == "train":
          flops = r.get("xla", {}).get("flops_per_cube")
          xla = {"xla_flops_per_step": flops * batch if flops else None}
      entries[r["framework"]] = {k: v for k, v in r.items()
                                 if k not in ("section", "framework", "xla")}
      if r["framework"] == "jax" and r.get("first_call_s") is not None:
        # Compiled ahead of the first call: count it, as the summary's
        # "first call s (compile)" row means.
        entries["jax"]["first_call_s"] += r.get("compile_s", 0.0)
    if "jax" not in entries:
      return None
    sections[section] = entries
  return sections["train"], sections["infer"], xla


def _gb(x: Optional[float]) -> str:
  return "-" if x is None else f"{x / 2 ** 20:.1f}"


def markdown(matrix: dict) -> str:
  """The matrix as tables (train, infer), one row per JAX combination, with
  the torch rows of its dtype and batch beside it."""
  rows = matrix["rows"]
  ref = {(r["section"], r["framework"], r["dtype"], r["batch"]): r
         for r in rows if r["framework"] != "jax"}
  lines = []
  for section in ("train", "infer"):
    flops = matrix["analytic_flops_per_cube"][section]
    lines += ["", f"**{section}** (cubes/s, median [min-max]; analytic "
              f"{flops / 1e9:.3f} GFLOP/cube)", "",
              "| dtype | batch | conv | pool | " +
              ("fuse views | " if section == "train" else "") +
              "JAX | torch eager | torch.compile | JAX/eager | JAX/compile | "
              "XLA GFLOP/cube | XLA temp MiB/cube | torch peak MiB/cube |",
              "|---|---|---|---|" + ("---|" if section == "train" else "") +
              "---|---|---|---|---|---|---|---|"]
    for r in rows:
      if r["section"] != section or r["framework"] != "jax":
        continue
      eager = ref.get((section, "torch_eager", r["dtype"], r["batch"]), {})
      comp = ref.get((section, "torch_compile", r["dtype"], r["batch"]), {})
      xla = r.get("xla", {})
      cells = [r["dtype"], str(r["batch"]), r.get("conv_impl", "auto"),
               r["pool_impl"]]
      if section == "train":
        cells.append("yes" if r["fuse_views"] else "no")
      cells += [report.cell(r, "cubes_per_s"),
                report.cell(eager, "cubes_per_s"),
                report.cell(comp, "cubes_per_s"),
                report.fmt_ratio(r.get("over_torch_eager")),
                report.fmt_ratio(r.get("over_torch_compile")),
                ("-" if xla.get("flops_per_cube") is None
                 else f"{xla['flops_per_cube'] / 1e9:.3f}"),
                _gb(xla.get("temp_bytes_per_cube")),
                _gb(eager.get("peak_bytes_per_cube"))]
      lines.append("| " + " | ".join(cells) + " |")
  lb = matrix.get("largest_batch")
  if lb:
    parts = []
    for fw in ("jax", "torch_eager"):
      e = lb.get(fw, {})
      if "largest" in e:
        parts.append(f"{fw} {e['largest']}" + (
            " (cap)" if e.get("reached_cap") else
            f" (fails at {e['failed_at']['batch']})"))
      elif e.get("estimate") is not None:
        parts.append(f"{fw} ~{e['estimate']} (estimate)")
      else:
        parts.append(f"{fw} -")
    lines += ["", f"Largest train batch ({lb['method']}): " + ", ".join(parts)
              + "."]
  prof = matrix.get("profile")
  if prof and "top" in prof:
    lines += ["", f"Top ops, {prof['row']}, {prof['steps']} steps "
              f"({prof['source']}, {prof['total_ms']:.0f} ms):"]
    lines += [f"- {o['op'][:80]}: {o['ms']:.1f} ms ({100 * o['share']:.0f} %, "
              f"{o['calls']} calls)" for o in prof["top"][:10]]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['section']} {r['framework']} {r['dtype']} batch "
                   f"{r['batch']} error: {str(r['error']).splitlines()[0][:200]}")
  return "\n".join(lines)
