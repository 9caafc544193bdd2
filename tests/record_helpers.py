"""Writes small object-record sets in the builder's schema (for trainer tests)."""

from __future__ import annotations

import os

import numpy as np

from configs import common
from ssmtl_jax.base import schema


def file_detections_config(root: str, records: str, *, half_window: int = 3,
                           **build):
  """configs/common.py for a tiny build from detection files (no detector or
  classifier run): 16 px crops, boxes >= 4 px; ``build`` overrides
  config.build keys."""
  config = common.get_config()
  config.data.root, config.data.records = root, records
  config.build.half_window = half_window
  config.build.crop_size = 16
  config.build.min_box_size = 4.0
  config.build.workers = 1
  config.build.detector.kind = "file"
  config.build.detector.min_score = 0.0
  config.build.classifier.kind = "none"
  for k, v in build.items():
    config.build[k] = v
  return config


def write_records(records_dir: str, *, num_videos: int = 2,
                  objects_per_video: int = 24, half_window: int = 6,
                  crop_size: int = 16, channels: int = 1, num_det: int = 4,
                  num_cls: int = 3, seed: int = 0, split: str = "train",
                  corrupt_teacher_at: int | None = None) -> None:
  """Random but structured records: each object is a moving bright square, so
  the tasks are learnable. `corrupt_teacher_at` puts +inf in one teacher_cls."""
  rng = np.random.default_rng(seed)
  feats = schema.features(window=2 * half_window + 1, crop_size=crop_size,
                          channels=channels, num_det=num_det, num_cls=num_cls)
  os.makedirs(records_dir, exist_ok=True)
  lengths, index = [], 0
  for v in range(num_videos):
    examples = []
    for i in range(objects_per_video):
      crops = rng.integers(0, 40, (2 * half_window + 1, crop_size, crop_size,
                                   channels), dtype=np.uint8)
      x, y = rng.integers(0, crop_size // 2, 2)
      for t in range(2 * half_window + 1):
        xs = (x + t) % (crop_size - 4)
        crops[t, y:y + 4, xs:xs + 4] = 220
      teacher_cls = rng.normal(size=num_cls).astype(np.float32)
      if corrupt_teacher_at == index:
        teacher_cls[0] = np.inf
      det = np.zeros(num_det, np.float32)
      det[rng.integers(num_det)] = 1.0
      examples.append(schema.serialize(feats, {
          "video_id": f"v{v}", "frame_index": i + half_window,
          "box": np.asarray([0, 0, 10, 10], np.float32), "det_score": 1.0,
          "det_class": 0, "crops": crops, "teacher_det": det,
          "teacher_cls": teacher_cls}))
      index += 1
    schema.write_shard(os.path.join(
        records_dir, schema.shard_filename(split, v, num_videos)), examples)
    lengths.append(len(examples))
  schema.finalize(records_dir, feats, {split: lengths})


def tiny_config(records_dir: str, **overrides):
  """A tiny training config over records written by write_records."""
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.data.records = records_dir
  config.model.widths = (4, 8, 8)
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  config.total_steps = 4
  config.log_every_steps = 2
  config.checkpoint.every_steps = 2
  config.checkpoint.async_save = False
  config.progress_bar = False
  config.eval.after_training = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
