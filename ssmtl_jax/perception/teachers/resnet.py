"""ResNet-50 (torchvision layout) in Flax Linen, and its state-dict converter.

The architecture is torchvision's ``resnet50``: a 7x7/2 stem conv, 3x3/2 max
pool, four stages of Bottleneck blocks (3, 4, 6, 3) with the stride on the 3x3
conv ("ResNet v1.5"), global average pooling and a 1000-way linear layer.
Batch norm runs in inference mode with torch's epsilon 1e-5. Images are
``[N, 224, 224, 3]`` float32, already normalised (see ``MEAN_RGB``).

Flax module names mirror torchvision's state-dict keys so that the conversion
is a renaming: ``layer1.0.conv1.weight`` -> ``layer1_0/conv1/kernel``,
``layer1.0.downsample.{0,1}`` -> ``layer1_0/downsample_{conv,bn}``.
"""

from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssmtl_jax.perception import convs
from ssmtl_jax.perception.teachers import common

# torchvision's ImageNet normalisation, applied to RGB in [0, 1].
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
NUM_CLASSES = 1000


def _conv_bn(module: nn.Module, x: jnp.ndarray, name: str, bn: str,
             features: int, kernel: int, stride: int, activation: str,
             impl: str) -> jnp.ndarray:
  # torch pads symmetrically by kernel // 2; Flax's "SAME" would pad the
  # stride-2 convs asymmetrically (TF style) and shift every feature map.
  pad = kernel // 2
  return convs.conv_bn_act(module, x, conv=name, bn=bn, features=features,
                           kernel=kernel, stride=stride,
                           padding=((pad, pad), (pad, pad)), bn_epsilon=1e-5,
                           activation=activation, impl=impl)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4 width) residual block.

  [N, H, W, C] -> [N, H / stride, W / stride, 4 * width].
  """
  width: int
  stride: int = 1
  downsample: bool = False
  conv_impl: str = "xla"  # 'xla' | 'onednn', see perception/convs.py

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    impl = self.conv_impl
    y = _conv_bn(self, x, "conv1", "bn1", self.width, 1, 1, "relu", impl)
    y = _conv_bn(self, y, "conv2", "bn2", self.width, 3, self.stride, "relu",
                 impl)
    y = _conv_bn(self, y, "conv3", "bn3", 4 * self.width, 1, 1, "none", impl)
    if self.downsample:
      x = _conv_bn(self, x, "downsample_conv", "downsample_bn",
                   4 * self.width, 1, self.stride, "none", impl)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Bottleneck ResNet: [N, H, W, 3] normalised images -> [N, classes]."""
  stage_sizes: Sequence[int]
  num_classes: int = NUM_CLASSES
  conv_impl: str = "xla"  # 'xla' | 'onednn', see perception/convs.py

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = _conv_bn(self, x, "conv1", "bn1", 64, 7, 2, "relu", self.conv_impl)
    # torch's max pool pads with -inf, as does Flax's.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = Bottleneck(width=64 * 2**i,
                       stride=2 if (i > 0 and j == 0) else 1,
                       downsample=(j == 0), conv_impl=self.conv_impl,
                       name=f"layer{i + 1}_{j}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc")(x)


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


def _flax_path(key: str) -> tuple[str, ...] | None:
  """torchvision key -> (collection, module..., leaf); None to skip."""
  module, _, field = key.rpartition(".")
  if field == "num_batches_tracked":
    return None
  m = _BLOCK.match(module)
  if m:
    layer, block, sub = m.groups()
    sub = {"downsample.0": "downsample_conv",
           "downsample.1": "downsample_bn"}.get(sub, sub)
    modules: tuple[str, ...] = (f"layer{layer}_{block}", sub)
  else:
    modules = (module,)
  name = modules[-1]
  if "conv" in name:
    if field != "weight":
      raise ValueError(f"resnet50: unexpected conv field {key!r}")
    return ("params",) + modules + ("kernel",)
  if "bn" in name:
    if field not in _BN_FIELDS:
      raise ValueError(f"resnet50: unexpected batch-norm field {key!r}")
    collection, leaf = _BN_FIELDS[field]
    return (collection,) + modules + (leaf,)
  if name == "fc" and field in ("weight", "bias"):
    return ("params", "fc", "kernel" if field == "weight" else "bias")
  raise ValueError(f"resnet50: unexpected state-dict key {key!r}")


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       model: nn.Module | None = None) -> dict:
  """torchvision ResNet state dict -> Flax variables.

  Args:
    state_dict: ``{torch key: array}`` (e.g. from ``torch_pickle``) of
      torchvision's ``resnet50``.
    model: the Flax model to check shapes against (default ``ResNet50()``).
  Returns:
    ``{"params": ..., "batch_stats": ...}`` float32 numpy trees.
  Raises:
    ValueError naming missing, unexpected or mis-shaped keys.
  """
  return common.convert_state_dict(state_dict, _flax_path, model or ResNet50(),
                                   INPUT_SIZE, "resnet50")
