"""Any folder of videos: ROOT/{train,test}/<video_id>/ frames or <video_id>.mp4.

  python -m ssmtl_jax.main --config configs/folder.py --workdir DIR \
      --config.data.root=/path/to/videos --config.data.records=DIR/records

Build the records first with `python -m data_prep.build --config
configs/folder.py ...`. Without ROOT/gt_frame/ the evaluator cannot compute
metrics: set --config.eval.after_training=False and score videos yourself.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.build.detector.kind = "yolov3"
  config.build.detector.input_size = (640, 384)
  config.build.detector.min_score = 0.25
  config.build.classifier.kind = "efficientnet_lite0"
  config.model.variant = "narrow"
  config.model.depth = "shallow"
  config.num_epochs = 10
  return config
