"""FLOP counts and rates of ``python -m benchmarks.compare``.

The model's analytic FLOPs per cube (``model_flops``: conv + dense
multiply-adds x 2; training = 3 x forward), XLA's own estimate for a lowered
step (``xla_flops``), and this machine's f32 matmul FLOP/s in JAX and torch
(``matmul_flops``), against which ``benchmarks.compare`` states the achieved
model FLOP/s as a percentage. The speed matrix (``benchmarks.matrix``) uses
the analytic count too.
"""

from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import harness
from ssmtl_jax.model import network


def model_flops(settings: harness.BenchSettings) -> dict:
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


def xla_flops(lowered) -> Optional[float]:
  """XLA's FLOP estimate of a lowered computation, or None if it has none."""
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
  device = harness.torch_device()
  ta = torch.randn(n, n, device=device)
  tb = torch.randn(n, n, device=device)
  sync = harness.torch_sync_fn(device)
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
