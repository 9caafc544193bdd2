"""The perception networks' convolutions on oneDNN (ssmtl_jax/perception/
convs.py over base/onednn_conv.py's 2-D inference custom call): the fused
conv + bias + activation equals XLA's convolution for every kernel size,
stride, padding, grouping and activation the detector and the teachers use;
batch-norm folding equals conv then batch norm; and the whole YOLOv3-tiny
detector, EfficientNet-Lite0 and ResNet-50 give what their Flax ('xla')
path gives, on the same variables. 'auto' picks oneDNN on the CPU where it
loads and XLA where it does not.

Skipped as a module where no oneDNN distribution is installed (CI installs
the [onednn] extra); the torch comparisons of tests/test_teachers.py and the
OpenCV ones of tests/test_detector.py run with the default ('auto') too.
"""

import functools
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmtl_jax.base import onednn
from ssmtl_jax.base import onednn_conv
from ssmtl_jax.perception import convs
from ssmtl_jax.perception.detector import yolo
from ssmtl_jax.perception.teachers import efficientnet_lite
from ssmtl_jax.perception.teachers import resnet
from tests import optional

optional.require(onednn.library, onednn.OneDnnUnavailableError,
                 onednn.DISTRIBUTIONS)


def _close(a, b, rtol=1e-4):
  """Equal up to float rounding, relative to the largest value."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  assert a.shape == b.shape, (a.shape, b.shape)
  scale = max(1.0, float(np.abs(b).max()))
  np.testing.assert_allclose(a / scale, b / scale, rtol=rtol, atol=rtol)


def _reference(x, k, b, strides, padding, groups, activation, slope):
  y = jax.lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, precision=jax.lax.Precision.HIGHEST) + b
  return convs.activate(y, activation, slope)


# (N, H, W, C, O, kernel, stride, padding, groups, activation): YOLO's
# 3x3 leaky and 1x1 linear with explicit pads, Lite0's strided SAME stem,
# 1x1 relu6 and strided 5x5 depthwise, ResNet's 7x7 stride 2, a grouped
# (not depthwise) case, odd sizes everywhere.
CASES = [
    (2, 11, 13, 3, 16, 3, 1, ((1, 1), (1, 1)), 1, "leaky_relu"),
    (1, 7, 9, 32, 24, 1, 1, ((0, 0), (0, 0)), 1, "none"),
    (2, 12, 10, 3, 8, 3, 2, "SAME", 1, "relu6"),
    (2, 9, 11, 16, 16, 5, 2, "SAME", 16, "relu6"),
    (1, 15, 13, 12, 12, 3, 1, "SAME", 12, "relu6"),
    (1, 17, 15, 3, 8, 7, 2, ((3, 3), (3, 3)), 1, "relu"),
    (2, 8, 8, 8, 12, 3, 1, "VALID", 4, "none"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[5]}s{c[6]}g{c[8]}"
                         f"{c[9]}")
def test_conv2d_matches_xla(case):
  n, h, w, c, o, k, s, padding, groups, act = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, c), np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, c // groups, o),
                                           np.float32))
  bias = jnp.asarray(rng.standard_normal(o, np.float32))
  got = jax.jit(lambda x, k, b: onednn_conv.conv2d(
      x, k, b, strides=(s, s), padding=padding, groups=groups,
      activation=act, slope=0.1))(x, kernel, bias)
  _close(got, _reference(x, kernel, bias, (s, s), padding, groups, act, 0.1))


def test_conv2d_rejects_what_does_not_fit():
  x, k, b = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 8)), jnp.zeros(8)
  with pytest.raises(ValueError, match="groups=2"):
    onednn_conv.conv2d(x, k, b, groups=2)
  with pytest.raises(ValueError, match="bias"):
    onednn_conv.conv2d(x, k, jnp.zeros(4))
  with pytest.raises(ValueError, match="activation"):
    onednn_conv.conv2d(x, k, b, activation="swish")
  with pytest.raises(ValueError, match="padding"):
    onednn_conv.conv2d(x, k, b, padding="FULL")


def test_fold_batch_norm_equals_conv_then_batch_norm():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 7, 5), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, 5, 4), np.float32))
  bias = jnp.asarray(rng.standard_normal(4, np.float32))
  scale, offset, mean = (jnp.asarray(rng.standard_normal(4, np.float32))
                         for _ in range(3))
  var = jnp.asarray(rng.uniform(0.1, 2.0, 4).astype(np.float32))
  conv = lambda k: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  want = (conv(k) + bias - mean) * scale / jnp.sqrt(var + 1e-3) + offset
  for b in (bias, None):
    kf, bf = onednn_conv.fold_batch_norm(k, b, scale, offset, mean, var,
                                         1e-3)
    expect = want if b is not None else want - bias * scale / jnp.sqrt(
        var + 1e-3)
    _close(conv(kf) + bf, expect)


def _randomized(variables, seed=0):
  """``variables`` with random batch statistics and scales (init's are the
  identity, which would hide a wrong folding)."""
  rng = np.random.default_rng(seed)

  def leaf(path, v):
    name = jax.tree_util.keystr(path)
    if "var" in name:
      return jnp.asarray(rng.uniform(0.5, 2.0, v.shape), jnp.float32)
    if "batch_stats" in name or "scale" in name or "bias" in name:
      return jnp.asarray(rng.uniform(-0.5, 0.5, v.shape) +
                         (1.0 if "scale" in name else 0.0), jnp.float32)
    return v

  return jax.tree_util.tree_map_with_path(leaf, variables)


# Smaller instances of the teachers' architectures, every kind of block kept
# (Lite: no-expand, expand, 3x3 and 5x5 depthwise, strided, residual; ResNet:
# stem, max-pool, downsampling and identity bottlenecks): the full networks
# compile for ~20 s, and test_teachers.py runs them (on the default
# conv_impl) against torch.
_LITE = functools.partial(
    efficientnet_lite.EfficientNetLite,
    stages=((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40)),
    head_filters=64, num_classes=10)
_RESNET = functools.partial(resnet.ResNet, stage_sizes=(2, 1), num_classes=10)


@pytest.mark.parametrize("make", [_LITE, _RESNET], ids=["lite", "resnet"])
def test_teachers_on_onednn_equal_their_flax_path(make):
  # 40 px: odd feature maps after the strided stages (TF SAME pads).
  x = jnp.asarray(np.random.default_rng(2).standard_normal(
      (2, 40, 40, 3), np.float32))
  variables = _randomized(jax.jit(make().init)(jax.random.key(0), x))
  want = jax.jit(make(conv_impl="xla").apply)(variables, x)
  lowered = jax.jit(make(conv_impl="onednn").apply).lower(variables, x)
  assert "ssmtl_onednn_conv2d_inference" in lowered.as_text()
  _close(lowered.compile()(variables, x), want, rtol=1e-3)


def test_detector_on_onednn_equals_its_flax_path(tiny_files):
  frames = [np.random.default_rng(i).integers(0, 255, (120, 180, 3), np.uint8)
            for i in range(3)]
  dets = {}
  for impl in ("xla", "onednn"):
    det = yolo.Detector(tiny_files.cfg, tiny_files.weights,
                        input_size=(192, 128), conf_threshold=1e-3,
                        batch_size=2, conv_impl=impl)
    assert det.conv_impl == impl
    blob, _ = yolo.preprocess(frames[:2], det.input_size)
    dets[impl] = det.decoded_rows(blob), det.detect(frames)
  _close(dets["onednn"][0], dets["xla"][0], rtol=1e-4)
  for got, want in zip(dets["onednn"][1], dets["xla"][1]):
    assert len(want) and got.shape == want.shape
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1e-3)  # px
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=1e-4)


def test_init_takes_the_flax_path_and_keeps_the_variables():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = {impl: jax.eval_shape(
      efficientnet_lite.EfficientNetLite0(conv_impl=impl).init,
      jax.random.key(0), x) for impl in ("xla", "onednn")}
  assert (jax.tree_util.tree_map(lambda a: a.shape, shapes["onednn"]) ==
          jax.tree_util.tree_map(lambda a: a.shape, shapes["xla"]))


def test_resolve(monkeypatch):
  assert convs.resolve("xla") == "xla"
  assert convs.resolve("onednn") == "onednn"
  assert convs.resolve("auto") == "onednn"  # CPU, oneDNN installed
  with pytest.raises(ValueError, match="conv_impl='fast'"):
    convs.resolve("fast")
  onednn_conv.usable.cache_clear()
  monkeypatch.setattr(onednn_conv, "unusable_reason",
                      lambda: "oneDNN not found: ...")
  try:
    with mock.patch.object(onednn_conv.logging, "info") as info:
      assert convs.resolve("auto") == "xla"
      assert convs.resolve("auto") == "xla"
    assert info.call_count == 1  # said once, with the reason
    assert "oneDNN not found" in info.call_args[0][2]
    assert "build.conv_impl" in info.call_args[0][1]
  finally:
    onednn_conv.usable.cache_clear()


def test_conv_bn_act_flax_path_is_the_modules():
  """'xla' is exactly nn.Conv -> nn.BatchNorm -> activation."""

  class Fused(nn.Module):
    impl: str

    @nn.compact
    def __call__(self, x):
      return convs.conv_bn_act(self, x, conv="c", bn="b", features=4,
                               kernel=3, stride=2, activation="relu6",
                               bn_epsilon=1e-3, impl=self.impl)

  class Plain(nn.Module):

    @nn.compact
    def __call__(self, x):
      y = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                  name="c")(x)
      return nn.relu6(nn.BatchNorm(use_running_average=True, epsilon=1e-3,
                                   name="b")(y))

  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 9, 9, 3),
                                                           np.float32))
  variables = _randomized(Plain().init(jax.random.key(1), x))
  want = Plain().apply(variables, x)
  np.testing.assert_array_equal(Fused("xla").apply(variables, x), want)
  _close(Fused("onednn").apply(variables, x), want)

