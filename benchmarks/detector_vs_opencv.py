"""The detector section of ``python -m benchmarks.compare``.

Frames/s of YOLOv3-tiny at the same input size, Flax
(``ssmtl_jax.perception.detector.yolo.Detector``, its default
``conv_impl``) vs OpenCV dnn (``cv2.dnn.readNetFromDarknet``, on the CPU)
with the same weights: "network" (one letterboxed blob in, decoded rows
out, host to host for both) and "end_to_end" (frames in, final detections
out, both with our letterbox pre-processing and NMS post-processing). Where
the default runs oneDNN, "flax_xla_network" times the same network on XLA's
convolutions in the same run. Where OpenCV has no
darknet importer, the Flax rows are still measured and the OpenCV rows are
recorded as ``{"unavailable": reason}``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import cv2
import jax
import numpy as np

from benchmarks import harness


def opencv_darknet(cfg: str, weights_path: str) -> tuple[Any, Optional[str]]:
  """OpenCV dnn's darknet network on the CPU, or (None, why not).

  OpenCV 5 removed the darknet importer (``cv2.dnn.readNetFromDarknet``);
  there, and wherever reading the network fails, the OpenCV side of the
  detector comparison is unavailable rather than an error of the benchmark.
  """
  dnn = getattr(cv2, "dnn", None)
  if dnn is None or not hasattr(dnn, "readNetFromDarknet"):
    return None, (f"OpenCV {cv2.__version__} has no "
                  "cv2.dnn.readNetFromDarknet (the darknet importer was "
                  "removed in OpenCV 5)")
  try:
    net = dnn.readNetFromDarknet(cfg, weights_path)
    net.setPreferableBackend(dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(dnn.DNN_TARGET_CPU)
  except cv2.error as e:
    return None, (f"OpenCV {cv2.__version__} cannot read the darknet "
                  f"network: {harness.error_text(e).splitlines()[0]}")
  return net, None


def detector_section(settings: harness.BenchSettings) -> dict:
  """Flax vs OpenCV detector frames/s (network and end to end), and the
  largest difference of their decoded rows (box, objectness)."""
  from ssmtl_jax.perception.detector import weights  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.perception.detector import yolo  # pylint: disable=g-import-not-at-top
  try:
    files = weights.ensure_yolov3_tiny()
  except weights.WeightsError as e:
    return {"error": harness.error_text(e)}
  size = tuple(settings.det_input)
  det = yolo.Detector(files.cfg, files.weights, input_size=size,
                      conf_threshold=0.25, nms_threshold=0.45,
                      batch_size=settings.det_batch)
  net, unavailable = opencv_darknet(files.cfg, files.weights)
  yolo_names = [f"yolo_{i}" for i in det.net.yolo_indices]
  frames, source = harness.detector_frames(settings.det_frames,
                                           settings.frames_dir)
  blob, _ = yolo.preprocess(frames[:settings.det_batch], size)
  nchw = np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

  def cv_rows(x: np.ndarray) -> np.ndarray:
    net.setInput(x)
    return np.concatenate(net.forward(yolo_names), axis=1)

  def cv_detect(frames_: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i in range(0, len(frames_), settings.det_batch):
      b, boxes = yolo.preprocess(frames_[i:i + settings.det_batch], size)
      rows = cv_rows(np.ascontiguousarray(b.transpose(0, 3, 1, 2)))
      out.extend(yolo.postprocess(rows[j], lb, conf_threshold=0.25,
                                  nms_threshold=0.45)
                 for j, lb in enumerate(boxes))
    return out

  nosync = lambda _: None  # both return host arrays
  runners = [
      harness.Runner("flax_network", functools.partial(det.decoded_rows, blob),
                     nosync, settings.det_batch),
      harness.Runner("opencv_network", functools.partial(cv_rows, nchw),
                     nosync, settings.det_batch),
      harness.Runner("flax_end_to_end", functools.partial(det.detect, frames),
                     nosync, len(frames)),
      harness.Runner("opencv_end_to_end", functools.partial(cv_detect, frames),
                     nosync, len(frames)),
  ]
  if det.conv_impl != "xla":
    # The same network on XLA's convolutions, side by side: what the
    # default ('auto' -> oneDNN) changed.
    det_xla = yolo.Detector(files.cfg, files.weights, input_size=size,
                            conf_threshold=0.25, nms_threshold=0.45,
                            batch_size=settings.det_batch, conv_impl="xla")
    runners.insert(1, harness.Runner(
        "flax_xla_network", functools.partial(det_xla.decoded_rows, blob),
        nosync, settings.det_batch))
  if unavailable:
    runners = [r for r in runners if not r.name.startswith("opencv_")]
  harness.measure(runners, settings)
  out = {r.name: harness.summary(r, "frames_per_s") for r in runners}
  out.update(input_size=list(size), batch=settings.det_batch,
             frames=source, flax_device=str(jax.devices()[0].platform),
             flax_conv_impl=det.conv_impl,
             opencv_device="cpu", conf_threshold=0.25, nms_threshold=0.45)
  if unavailable:
    for name in ("opencv_network", "opencv_end_to_end", "max_abs_row_diff"):
      out[name] = {"unavailable": unavailable}
    return out
  try:
    out["max_abs_row_diff"] = float(np.abs(det.decoded_rows(blob)[..., :5] -
                                           cv_rows(nchw)[..., :5]).max())
  except Exception as e:  # pylint: disable=broad-except
    out["max_abs_row_diff"] = harness.error_text(e)
  return out
