"""The report of ``python -m benchmarks.compare``: machine, ratios, table.

``machine_info`` is the results' "machine" entry (CPU, library versions,
devices, threads, load average); ``ratios`` the JAX-over-torch and
Flax-over-OpenCV quotients of the measured rates; ``markdown`` the summary
table (median [min-max] per repeat), whose cell formatting (``cell``,
``fmt_ratio``) the speed matrix's tables (``benchmarks.matrix``) share.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Optional

import cv2
import jax
import torch


def machine_info(device: torch.device) -> dict:
  """The machine and the libraries' settings (torch on ``device``)."""
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
  """JAX over torch (train, infer) and Flax over OpenCV (detector) rates;
  None where either side was not measured."""
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
  teacher = results.get("teacher", {})
  for other in ("torch_eager", "torch_frozen"):
    out[f"teacher_flax_over_{other}"] = _ratio(
        teacher.get("flax", {}), teacher.get(other, {}), "images_per_s")
  return out


def cell(entry: dict, key: str) -> str:
  """A measured entry as 'median [min-max]' of ``key`` (or what went wrong)."""
  if not entry:
    return "-"
  if "error" in entry:
    return "error"
  if "unavailable" in entry:
    return "unavailable"
  return f"{entry[key]:.1f} [{entry['min']:.1f}-{entry['max']:.1f}]"


def fmt_ratio(x: Optional[float]) -> str:
  return "-" if x is None else f"{x:.2f}"


def _header_lines(results: dict) -> list[str]:
  """The machine and config sentences, and the model table's header."""
  mach, cfg = results["machine"], results["config"]
  return [
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


def _model_rows(results: dict) -> list[str]:
  """The train and infer rows (cubes/s, then first-call seconds)."""
  rat = results["ratios"]
  lines = []
  for section, label in (("train", "train cubes/s"),
                         ("infer", "infer cubes/s")):
    sec = results.get(section, {})
    lines.append(
        f"| {label} | {cell(sec.get('jax'), 'cubes_per_s')} | "
        f"{cell(sec.get('torch_eager'), 'cubes_per_s')} | "
        f"{cell(sec.get('torch_compile'), 'cubes_per_s')} | "
        f"{fmt_ratio(rat.get(f'{section}_jax_over_torch_eager'))} | "
        f"{fmt_ratio(rat.get(f'{section}_jax_over_torch_compile'))} |")
  for section in ("train", "infer"):
    sec = results.get(section, {})
    cells = [f"{sec[k]['first_call_s']:.1f}" if sec.get(k, {}).get(
        "first_call_s") is not None else "-"
             for k in ("jax", "torch_eager", "torch_compile")]
    lines.append(f"| {section} first call s (compile) | " + " | ".join(cells)
                 + " | | |")
  return lines


def _detector_lines(results: dict) -> list[str]:
  """The detector table (Flax vs OpenCV frames/s), or its error."""
  det, rat = results.get("detector", {}), results["ratios"]
  if det and "error" not in det:
    lines = ["", "| detector frames/s | Flax | OpenCV dnn | Flax/OpenCV |",
             "|---|---|---|---|"]
    for kind in ("network", "end_to_end"):
      lines.append(
          f"| {kind} | {cell(det.get(f'flax_{kind}'), 'frames_per_s')} | "
          f"{cell(det.get(f'opencv_{kind}'), 'frames_per_s')} | "
          f"{fmt_ratio(rat.get(f'detector_{kind}_flax_over_opencv'))} |")
    if det.get("flax_xla_network"):
      xla = det["flax_xla_network"]
      lines.append(
          f"| Flax on XLA's convolutions, network | "
          f"{cell(xla, 'frames_per_s')} | | "
          f"{fmt_ratio(_ratio(xla, det.get('opencv_network', {}), 'frames_per_s'))} |")
      lines.append(f"Flax's convolutions: {det.get('flax_conv_impl', '?')} "
                   "(the default) in the first rows.")
    why = (det.get("opencv_network") or {}).get("unavailable")
    if why:
      lines.append(f"OpenCV dnn unavailable: {why}.")
    return lines
  if det:
    return ["", f"detector: {det['error']}"]
  return []


def _teacher_lines(results: dict) -> list[str]:
  """The teacher table (Flax vs torch Lite0 images/s), or its error."""
  t, rat = results.get("teacher", {}), results["ratios"]
  if t and "error" not in t:
    return [
        "", f"| teacher images/s ({t['model']}, {t['input_size']} px, batch "
        f"{t['batch']}) | Flax ({t['flax_conv_impl']}) | Flax (xla) | torch "
        "eager | torch frozen | Flax/eager | Flax/frozen |",
        "|---|---|---|---|---|---|---|",
        f"| network | {cell(t.get('flax'), 'images_per_s')} | "
        f"{cell(t.get('flax_xla'), 'images_per_s')} | "
        f"{cell(t.get('torch_eager'), 'images_per_s')} | "
        f"{cell(t.get('torch_frozen'), 'images_per_s')} | "
        f"{fmt_ratio(rat.get('teacher_flax_over_torch_eager'))} | "
        f"{fmt_ratio(rat.get('teacher_flax_over_torch_frozen'))} |",
        f"Largest logit difference Flax vs torch: "
        f"{t['max_abs_logit_diff']:.1e} (logit range {t['logit_range']:.1f})."]
  if t:
    return ["", f"teacher: {t['error']}"]
  return []


def _end_to_end_lines(results: dict) -> list[str]:
  """The end-to-end sentence (frames/s, seconds per stage), or its error."""
  e2e = results.get("end_to_end", {})
  if e2e and "error" not in e2e:
    stages = ", ".join(f"{k} {v:.2f}" for k, v in e2e["stage_seconds"].items())
    return ["", f"End to end (JAX pipeline: detector -> cubes -> teacher -> "
            f"model -> maps), {e2e['frames']} frames of {e2e['source']} "
            f"({e2e['objects']} objects): {cell(e2e, 'frames_per_s')} "
            f"frames/s; seconds per stage: {stages}."]
  if e2e:
    return ["", f"end to end: {str(e2e['error']).splitlines()[0][:300]}"]
  return []


def _flops_lines(results: dict) -> list[str]:
  """Matmul and model FLOP rates, and the achieved % of the matmul rate."""
  fl = results.get("flops", {})
  if not fl:
    return []
  lines = ["", f"Matmul f32 {fl['matmul']['n']}^2: JAX "
           f"{fl['matmul']['jax_flops_per_s'] / 1e9:.1f} GFLOP/s, torch "
           f"{fl['matmul']['torch_flops_per_s'] / 1e9:.1f} GFLOP/s. Model: "
           f"{fl['train_flops_per_cube'] / 1e9:.3f} GFLOP/cube train, "
           f"{fl['infer_flops_per_cube'] / 1e9:.3f} inference (analytic)."]
  for key, label in (("train", "train"), ("infer", "infer")):
    pct = fl.get(f"{key}_pct_of_jax_matmul", {})
    if pct:
      lines.append(f"{label} achieved % of JAX matmul peak: " + ", ".join(
          f"{k} {v:.1f}%" for k, v in pct.items()))
  return lines


def _check_lines(results: dict) -> list[str]:
  """The same-weights score differences, and each section's errors."""
  lines = []
  det = results.get("detector", {})
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
  return lines


def markdown(results: dict) -> str:
  """The summary table (median [min-max] per repeat)."""
  lines = (_header_lines(results) + _model_rows(results) +
           _detector_lines(results) + _teacher_lines(results) +
           _end_to_end_lines(results) +
           _flops_lines(results) + _check_lines(results))
  return "\n".join(lines)


def write_outputs(results: dict, table: str, out: Optional[str],
                  markdown_path: Optional[str]) -> None:
  """A benchmark's results as JSON to ``out`` and its table to
  ``markdown_path`` (each where given)."""
  if out:
    with open(out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  if markdown_path:
    with open(markdown_path, "w", encoding="utf-8") as f:
      f.write(table + "\n")
