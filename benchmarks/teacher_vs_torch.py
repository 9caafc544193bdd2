"""The teacher section of ``python -m benchmarks.compare``.

Images/s of the EfficientNet-Lite0 classifier teacher with the packaged
weights on one batch of normalised images (``settings.teacher_batch`` at
``settings.teacher_input`` px; the network only, pre-processing excluded on
both sides): Flax with its default convolutions (``build.conv_impl='auto'``:
oneDNN's fused conv + batch norm + activation on the CPU), Flax on XLA's
convolutions, and the torch port of the same network
(``benchmarks/torch_teachers.py``) eager in channels-last and after
``torch.jit.trace`` + ``torch.jit.freeze`` + ``optimize_for_inference``
(which folds batch norm and fuses activations into oneDNN convolutions: the
same transformation as ours, torch's way). The largest logit difference
between Flax and torch is recorded.
"""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import torch

from benchmarks import harness


def teacher_section(settings: harness.BenchSettings) -> dict:
  """Flax (default and XLA convolutions) vs torch Lite0 images/s."""
  from benchmarks import torch_teachers  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception import teachers  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception.teachers import efficientnet_lite as lite  # pylint: disable=g-import-not-at-top
  try:
    clf = teachers.load_classifier("efficientnet_lite0",
                                   input_size=settings.teacher_input)
  except Exception as e:  # pylint: disable=broad-except
    return {"error": harness.error_text(e)}
  n, size = settings.teacher_batch, settings.teacher_input
  rng = np.random.default_rng(0)
  x = ((rng.integers(0, 256, (n, size, size, 3)).astype(np.float32) -
        np.float32(lite.MEAN_RGB[0])) / np.float32(lite.STDDEV_RGB[0]))
  variables = clf._variables  # pylint: disable=protected-access
  default = jax.jit(lite.EfficientNetLite0(conv_impl=clf.conv_impl).apply)
  on_xla = jax.jit(lite.EfficientNetLite0(conv_impl="xla").apply)
  xj = jax.device_put(x)

  model = torch_teachers.load_lite0(clf.weights_path)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  eager = model.to(memory_format=torch.channels_last)
  xt_cl = xt.contiguous(memory_format=torch.channels_last)
  with torch.no_grad(), warnings.catch_warnings():
    # SameConv's pads become constants of the traced size: intended.
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    frozen = torch.jit.optimize_for_inference(
        torch.jit.freeze(torch.jit.trace(eager, xt_cl)))

  def torch_call(fn):
    with torch.no_grad():
      return fn(xt_cl)

  runners = [
      harness.Runner("flax", functools.partial(default, variables, xj),
                     harness.jax_sync, n),
      harness.Runner("flax_xla", functools.partial(on_xla, variables, xj),
                     harness.jax_sync, n),
      harness.Runner("torch_eager", functools.partial(torch_call, eager),
                     lambda _: None, n),
      harness.Runner("torch_frozen", functools.partial(torch_call, frozen),
                     lambda _: None, n),
  ]
  harness.measure(runners, settings)
  out = {r.name: harness.summary(r, "images_per_s") for r in runners}
  with torch.no_grad():
    want = eager(xt_cl).numpy()
  got = np.asarray(default(variables, xj))
  out.update(model="efficientnet_lite0", input_size=size, batch=n,
             flax_conv_impl=clf.conv_impl,
             max_abs_logit_diff=float(np.abs(got - want).max()),
             logit_range=float(want.max() - want.min()))
  return out

