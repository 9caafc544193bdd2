"""CUHK Avenue (640x360 RGB videos; 16 train / 21 test).

Expects ROOT/{train,test}/<id>.avi (or frame folders) with gt_frame/ and
gt_pixel/ converted to the layout of docs/DESIGN.md §4.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.build.channels = 1
  config.build.crop_size = 64
  config.build.detector.kind = "yolov3"
  config.build.detector.input_size = (640, 384)
  config.build.detector.min_score = 0.25
  config.build.classifier.kind = "efficientnet_lite0"
  config.model.variant = "wide"
  config.model.depth = "deep"
  config.num_epochs = 30
  config.eval.sigma = (3.0, 3.0, 3.0)
  config.eval.map_scale = 0.25
  return config
