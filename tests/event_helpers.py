"""Reading TensorBoard event files the way TensorBoard does, without TensorFlow."""

from __future__ import annotations

from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util


def read_scalars(logdir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar in logdir's event files (all files,
  TensorBoard's loader; values as the scalars plugin sees them)."""
  acc = pea.EventAccumulator(str(logdir), size_guidance={pea.TENSORS: 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
    assert plugin == "scalars", (tag, plugin)
    for event in acc.Tensors(tag):
      out.setdefault(tag, {})[event.step] = float(
          tensor_util.make_ndarray(event.tensor_proto))
  return out
