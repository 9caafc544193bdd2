"""The EfficientNet-Lite0 teacher in PyTorch: the oracle of
tests/test_teachers.py and the torch side of the harness's teacher section
(``benchmarks.teacher_vs_torch``).

It mirrors ml-illustrated's EfficientNet-Lite-PyTorch (the lukemelas-style
port the packaged Lite0 weights were converted with): the same modules and
state-dict keys, eval mode, TF "SAME" padding computed explicitly the way
that port does (``SameConv``). ``load_state_dict`` takes the package's
``.pth`` with ``strict=True``: every key is used.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ssmtl_jax.perception.teachers import efficientnet_lite


class SameConv(nn.Conv2d):
  """Conv with TF "SAME" padding: pad_total // 2 before, the rest after."""

  def forward(self, x):
    pads = []
    for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1],
                          self.stride[::-1]):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project."""

  def __init__(self, inp, out, kernel, stride, expand):
    super().__init__()
    mid = inp * expand
    self.expand = expand != 1
    if self.expand:
      self._expand_conv = SameConv(inp, mid, 1, bias=False)
      self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
    self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid,
                                    bias=False)
    self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
    self._project_conv = SameConv(mid, out, 1, bias=False)
    self._bn2 = nn.BatchNorm2d(out, eps=1e-3)
    self.skip = stride == 1 and inp == out

  def forward(self, x):
    y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class Lite0(nn.Module):
  """EfficientNet-Lite0: [N, 3, H, W] normalised images -> [N, 1000]."""

  def __init__(self):
    super().__init__()
    self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
    self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
    blocks = []
    for repeats, k, s, e, i, o in efficientnet_lite.LITE0_STAGES:
      for r in range(repeats):
        blocks.append(MBConv(i if r == 0 else o, o, k, s if r == 0 else 1, e))
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = SameConv(320, 1280, 1, bias=False)
    self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
    self._fc = nn.Linear(1280, 1000)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return self._fc(x.mean((2, 3)))


def load_lite0(weights_path: str) -> Lite0:
  """The packaged weights in eval mode (every key used)."""
  model = Lite0().eval()
  model.load_state_dict(torch.load(weights_path, weights_only=True),
                        strict=True)
  return model
