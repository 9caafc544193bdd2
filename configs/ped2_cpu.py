"""UCSD Ped2 on a laptop CPU: the ped2 pipeline with motion proposals beside
the detector and its threshold chosen on the validation split, smaller crops
and the narrow shallow network.

  scripts/reproduce_ped2.sh ../shared/data/ped2 /tmp/ped2_cpu configs/ped2_cpu.py
"""

from configs import ped2


def get_config():
  config = ped2.get_config()
  config.build.crop_size = 32
  # Chosen on the validation split (README "Past the detector's ceiling"):
  # motion proposals beside the detector (the pasted foreign objects: 0 ->
  # 100 % of regions boxed, validation micro AUC ~71 -> ~95), confidence 0.1.
  # scripts/validate_build.py with a 0.1 model preferred 0.05 (96.2 vs 95.4
  # with 0.25 at 95.6), but 0.05 built and trained again validated at 95.1,
  # below the 0.1 run's 95.4: full runs decide, and thresholds 0.05-0.25 lie
  # within what retraining moves. (Until 2026-12-05, 0.1 was the one
  # setting chosen on Ped2 test masks; it is now a validation choice.)
  config.build.detector.min_score = 0.1
  config.build.proposals = "detector+motion"
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
