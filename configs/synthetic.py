"""The embedded default: a small synthetic surveillance data set, trained in CPU minutes.

  python -m ssmtl_jax.main --config configs/synthetic.py --workdir /tmp/ssmtl_synthetic

Generates the videos under <workdir>/synthetic_data and the records under
<workdir>/records when missing (override with --config.data.root/records).
"""

import ml_collections

from configs import common


def get_config():
  config = common.get_config()
  config.data.synthetic = True
  config.synthetic = ml_collections.ConfigDict(dict(
      seed=0, num_train=4, num_test=3, num_frames=64, height=120, width=160,
      channels=1, objects_per_frame=3))
  config.build.crop_size = 32
  config.build.half_window = 6
  config.build.min_box_size = 4.0
  config.build.padding = 0.1
  config.build.workers = 1
  # The synthetic set's ground-truth boxes are its detections; no classifier
  # (its logits on drawn pedestrians would teach little and cost CPU time).
  config.build.detector.kind = "file"
  config.build.detector.min_score = 0.0
  config.build.classifier.kind = "none"

  config.model.variant = "narrow"
  config.model.widths = (8, 16, 16)
  config.input.batch_size = 32
  config.input.shuffle_buffer = 1024
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 20
  config.total_steps = 300
  config.log_every_steps = 25
  config.checkpoint.every_steps = 100
  config.eval.batch_size = 128
  return config
