"""UCSD Ped2 on a laptop CPU: the ped2 pipeline with a lighter detector
threshold, smaller crops and the narrow shallow network.

  scripts/reproduce_ped2.sh ../shared/data/ped2 /tmp/ped2_cpu configs/ped2_cpu.py
"""

from configs import ped2


def get_config():
  config = ped2.get_config()
  config.build.crop_size = 32
  config.build.detector.min_score = 0.1
  # Training objects from every 2nd frame (neighbouring frames hold nearly
  # the same objects); the test split always uses every frame.
  config.build.train_stride = 2
  config.build.classifier.input_size = 128
  # The teacher sees the stored 32-px crop, stretched to 128 px: on the
  # validation split it beat the box cut from the full-resolution frame
  # ('frame', the paper-faithful default of configs/ped2.py), best micro AUC
  # 87.2 vs 86.4 (README "What mattered").
  config.build.classifier.crop = "cube"
  config.model.variant = "narrow"
  config.model.depth = "shallow"
  config.input.batch_size = 64
  config.num_epochs = 4
  config.optim.warmup_steps = 100
  config.checkpoint.every_steps = 250
  config.log_every_steps = 50
  config.eval.norm_max_objects = 2000
  return config
