"""The object detector (YOLOv3 / YOLOv3-tiny) in Flax, from darknet files.

* :mod:`data_prep.detector.darknet`: ``.cfg`` parser, ``.weights`` reader and
  writer.
* :mod:`data_prep.detector.yolo`: the Flax network, letterboxing, box decoding,
  NMS and the batched :class:`~data_prep.detector.yolo.Detector`.
* :mod:`data_prep.detector.weights`: fetches the MIT YOLOv3-tiny files offline.
"""
