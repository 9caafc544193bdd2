"""The object detector (YOLOv3 / YOLOv3-tiny) in Flax, from darknet files.

* :mod:`ssmtl_jax.perception.detector.darknet`: ``.cfg`` parser, ``.weights`` reader and
  writer.
* :mod:`ssmtl_jax.perception.detector.yolo`: the Flax network, letterboxing, box decoding,
  NMS and the batched :class:`~ssmtl_jax.perception.detector.yolo.Detector`.
* :mod:`data_prep.detector.weights`: fetches the MIT YOLOv3-tiny files offline.
"""
