r"""Any folder of videos: ROOT/{train,test}/<video_id>/ frames or <video_id>.mp4.

  python -m ssmtl_jax.main --config configs/folder.py --workdir W \
      --config.data.root=VIDEOS

builds the records under W/records (data.build_missing; an interrupted build
resumes), trains, and scores the test videos: W/eval/scores/<video>.npy,
scores_<video>.png and report.json. Test videos need no labels: without
VIDEOS/gt_frame/<video>.npy a video is scored but not measured, and with no
labelled video the report's AUCs, RBDC and TBDC are null with the reason in
``metrics_unavailable`` and ``notes``.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.data.build_missing = True
  config.build.detector.kind = "yolov3"
  config.build.detector.input_size = (640, 384)
  config.build.detector.min_score = 0.25
  config.build.classifier.kind = "efficientnet_lite0"
  config.model.variant = "narrow"
  config.model.depth = "shallow"
  config.num_epochs = 10
  return config
