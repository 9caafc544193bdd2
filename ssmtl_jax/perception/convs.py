"""How the perception networks (the YOLO detector, the classifier teachers)
run a convolution with its batch norm and activation.

Two implementations of one function, chosen per network by ``conv_impl``:

* ``'xla'``: Flax's ``nn.Conv`` / ``nn.BatchNorm`` and a JAX activation,
  each its own XLA op (fused by XLA where it can).
* ``'onednn'`` (CPU): the batch norm folded into the kernel and a bias
  (running statistics: these networks are frozen), the convolution, the bias
  and the activation as one oneDNN primitive
  (``ssmtl_jax.base.onednn_conv.conv2d``): one pass over the output instead
  of three, and oneDNN's direct / depthwise / 1x1 kernels instead of XLA:CPU's
  convolutions. Same variables, same results up to float rounding (tested).
* ``'auto'`` (the default): ``'onednn'`` on the CPU where oneDNN loads and
  the jaxlib takes its custom call, else ``'xla'`` (said once in the log).

The networks keep their Flax variable trees unchanged: in ``'onednn'`` mode a
module reads its submodules' variables (``params/<conv>/kernel``,
``params/<bn>/{scale,bias}``, ``batch_stats/<bn>/{mean,var}``) instead of
calling them, and ``init`` always takes the Flax path.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "onednn")

# What each activation name computes on the Flax path ('leaky_relu' takes its
# slope from the call); the oneDNN path fuses the same as a post-op.
_ACTIVATIONS = {
    "none": lambda x, slope: x,
    "relu": lambda x, slope: nn.relu(x),
    "relu6": lambda x, slope: nn.relu6(x),
    "leaky_relu": lambda x, slope: nn.leaky_relu(x, slope),
}


def resolve(impl: str) -> str:
  """'xla' or 'onednn' for ``impl`` (one of ``IMPLS``)."""
  if impl not in IMPLS:
    raise ValueError(f"conv_impl={impl!r}: expected one of {IMPLS}")
  if impl != "auto":
    return impl
  if jax.default_backend() != "cpu":
    return "xla"
  from ssmtl_jax.base import onednn_conv  # pylint: disable=g-import-not-at-top
  return "onednn" if onednn_conv.usable(
      "build.conv_impl='auto': the detector and the teachers use XLA's "
      "convolutions, not oneDNN") else "xla"


def activate(x: jax.Array, activation: str, slope: float = 0.0) -> jax.Array:
  return _ACTIVATIONS[activation](x, slope)


def conv_bn_act(module: nn.Module, x: jax.Array, *, conv: str,
                bn: Optional[str], features: int, kernel: int,
                stride: int = 1,
                padding: Union[str, Sequence[tuple[int, int]]] = "SAME",
                groups: int = 1, use_bias: bool = False,
                bn_epsilon: float = 1e-5, activation: str = "none",
                slope: float = 0.0, impl: str = "xla",
                precision: Any = None,
                xla_conv: Optional[nn.Module] = None) -> jax.Array:
  """activation(bn(conv(x))) inside ``module``'s compact ``__call__``.

  Args:
    module: the calling module; ``conv`` and ``bn`` name its submodules (an
      ``nn.Conv`` with ``features``, ``kernel`` x ``kernel``, ``stride``,
      ``padding``, ``groups`` = feature_group_count, ``use_bias``; an
      inference ``nn.BatchNorm`` with ``bn_epsilon``, or no batch norm when
      ``bn`` is None).
    x: [N, H, W, C].
    activation: a key of ``_ACTIVATIONS``; ``slope`` for 'leaky_relu'.
    impl: 'xla' or 'onednn' (resolved: see ``resolve``).
    precision: the Flax path's conv precision.
    xla_conv: the Flax path's convolution module, named ``conv``, when not
      an ``nn.Conv`` (e.g. a depthwise convolution with its own kernel
      layout; its variable must still be ``params/<conv>/kernel`` in HWIO).
  Returns:
    [N, H', W', features], float32 on the oneDNN path.
  """
  if impl == "onednn" and not module.is_initializing():
    from ssmtl_jax.base import onednn_conv  # pylint: disable=g-import-not-at-top
    params = module.variables["params"]
    k = params[conv]["kernel"]
    b = params[conv]["bias"] if use_bias else None
    if bn is not None:
      stats = module.variables["batch_stats"][bn]
      k, b = onednn_conv.fold_batch_norm(
          k, b, params[bn]["scale"], params[bn]["bias"], stats["mean"],
          stats["var"], bn_epsilon)
    elif b is None:
      b = jnp.zeros((features,), jnp.float32)
    return onednn_conv.conv2d(x, k, b, strides=(stride, stride),
                              padding=padding, groups=groups,
                              activation=activation, slope=slope)
  if impl not in ("xla", "onednn"):
    raise ValueError(f"conv_bn_act: impl={impl!r} (resolve it first)")
  if xla_conv is None:
    xla_conv = nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                       padding=padding, feature_group_count=groups,
                       use_bias=use_bias, precision=precision, name=conv)
  y = xla_conv(x)
  if bn is not None:
    y = nn.BatchNorm(use_running_average=True, epsilon=bn_epsilon,
                     name=bn)(y)
  return activate(y, activation, slope)
