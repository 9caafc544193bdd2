"""Per-stage timing of the SSMTL backbone, JAX vs PyTorch, in one run.

  python -m benchmarks.layer_profile [--batch 64] [--frames 7] [--repeats 3]

Each row is one backbone stage (3x3x3 conv + batch norm in training mode +
ReLU + (1, 2, 2) max-pool) of the narrow network at a 64 px crop, timed
forward and forward + backward (gradients of the parameters and the input)
after a warm-up call; the median of the repeats, in milliseconds. It
explains the train-throughput ratio of ``benchmarks.compare``; it makes no
claim by itself.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional, Sequence

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from ssmtl_jax.base import cli
from ssmtl_jax.model import network

STAGES = ((1, 16, 64), (16, 32, 32), (32, 32, 16), (32, 32, 8))


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1000 * float(np.median(times))


class _Stage(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return network.max_pool_hw(network.ConvBNReLU(self.features, (3, 3, 3))(x, True))


def jax_stage(cin: int, cout: int, hw: int, batch: int, frames: int,
              repeats: int) -> tuple[float, float]:
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, frames, hw, hw, cin))
  model = _Stage(cout)
  variables = model.init(jax.random.PRNGKey(1), x)

  def forward(params, x):
    y, _ = model.apply({**variables, "params": params}, x,
                       mutable=["batch_stats"])
    return y

  fwd = jax.jit(forward)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x) ** 2),
                          argnums=(0, 1)))
  params = variables["params"]
  return (_median_ms(lambda: jax.block_until_ready(fwd(params, x)), repeats),
          _median_ms(lambda: jax.block_until_ready(grad(params, x)), repeats))


def torch_stage(cin: int, cout: int, hw: int, batch: int, frames: int,
                repeats: int) -> tuple[float, float]:
  stage = torch.nn.Sequential(
      torch.nn.Conv3d(cin, cout, 3, padding=1, bias=False),
      torch.nn.BatchNorm3d(cout), torch.nn.ReLU(),
      torch.nn.MaxPool3d((1, 2, 2))).to(memory_format=torch.channels_last_3d)
  x = torch.randn(batch, cin, frames, hw, hw).to(
      memory_format=torch.channels_last_3d).requires_grad_(True)

  def fwd():
    with torch.no_grad():
      stage(x)

  def fwd_bwd():
    (stage(x) ** 2).sum().backward()

  return _median_ms(fwd, repeats), _median_ms(fwd_bwd, repeats)


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_integer("batch", 64, "cubes per batch", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_integer("frames", 7, "frames per cube", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_integer("repeats", 3, "timed repeats (median)", flag_values=fv,
                       lower_bound=1)
  return fv


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = cli.parse_tool_flags("python -m benchmarks.layer_profile", _flags(),
                              argv)
  torch.set_num_threads(os.cpu_count() or 1)
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); batch "
        f"{args.batch} x {args.frames} frames; ms, fwd / fwd+bwd")
  print("| stage | JAX | torch eager |\n|---|---|---|")
  for cin, cout, hw in STAGES:
    j = jax_stage(cin, cout, hw, args.batch, args.frames, args.repeats)
    t = torch_stage(cin, cout, hw, args.batch, args.frames, args.repeats)
    print(f"| {cin} -> {cout} @ {hw}px | {j[0]:.0f} / {j[1]:.0f} | "
          f"{t[0]:.0f} / {t[1]:.0f} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
