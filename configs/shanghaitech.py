"""ShanghaiTech Campus (856x480 RGB; 330 train / 107 test videos, 13 scenes).

The paper reportedly used detector confidence 0.8 here; the large test set
makes a coarser anomaly map (map_scale) and sigma 7 (as AI-VAD) sensible.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.build.channels = 1
  config.build.crop_size = 64
  config.build.detector.kind = "yolov3"
  config.build.detector.input_size = (864, 480)
  config.build.detector.min_score = 0.5
  config.build.classifier.kind = "efficientnet_lite0"
  config.build.workers = 2
  config.model.variant = "wide"
  config.model.depth = "deep"
  config.input.batch_size = 128
  config.num_epochs = 10
  config.eval.sigma = (7.0, 7.0, 7.0)
  config.eval.map_scale = 0.25
  return config
