"""Motion proposals (issue #26): what moves and no detection covers becomes
an object, in the builder, the recall tool and the scorer's settings alike."""

import os

import numpy as np
import pytest

from data_prep import recall
from ssmtl_jax.base import schema
from ssmtl_jax.base import records as records_lib
from ssmtl_jax.data import builder
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.data import synthetic
from ssmtl_jax.perception import motion
from tests import record_helpers

D = 4  # detector classes in the hand-made rows


def _window(square=(20, 30, 12), steps=13, moving=True, size=(60, 80)):
  """A textured static background and a bright square moving right 3 px a
  frame (or standing still); uint8 [T, H, W, 1]."""
  rng = np.random.default_rng(0)
  background = rng.integers(60, 120, size, dtype=np.uint8)
  y, x, side = square
  frames = []
  for t in range(steps):
    f = background.copy()
    dx = 3 * t if moving else 0
    f[y:y + side, x - 18 + dx:x - 18 + dx + side] = 250
    frames.append(f[..., None])
  return np.stack(frames)


def _rows(*boxes):
  out = np.zeros((len(boxes), 6 + D), np.float32)
  for i, b in enumerate(boxes):
    out[i, :4], out[i, 4], out[i, 5], out[i, 6] = b, 0.9, 0, 0.9
  return out


def test_a_moving_square_is_proposed_unless_a_detection_covers_it():
  window = _window()
  got = motion.proposals(window, 6, _rows(), num_det=D)
  assert got.shape == (1, 6 + D)
  # Centre frame: the square at x = 30 - 18 + 18 = 30 .. 42, y = 20 .. 32.
  np.testing.assert_array_equal(got[0, :4], [30, 20, 42, 32])
  assert got[0, 4] == 0 and got[0, 5] == -1 and not got[0, 6:].any()
  # Covered by a detection (more than half of it): no proposal.
  assert len(motion.proposals(window, 6, _rows((28, 18, 44, 34)),
                              num_det=D)) == 0
  # A detection elsewhere leaves it proposed.
  assert len(motion.proposals(window, 6, _rows((0, 0, 10, 10)),
                              num_det=D)) == 1
  # Too small, or standing still: nothing.
  assert len(motion.proposals(window, 6, _rows(), num_det=D,
                              min_area=12 * 12 + 1)) == 0
  assert len(motion.proposals(_window(moving=False), 6, _rows(),
                              num_det=D)) == 0


@pytest.fixture(scope="module")
def blind_root(tmp_path_factory):
  """Synthetic videos whose test detections are all removed: only motion
  can find the objects there."""
  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, seed=3, num_train=1, num_test=2, num_frames=40,
                     height=120, width=160, objects_per_frame=2)
  with open(os.path.join(root, "detections", "test", "test_00.csv"), "w") as f:
    f.write("frame,x1,y1,x2,y2,score,class\n")
  return root


def _build(root, records, proposals):
  # The default window of 13 frames: a walker moves about its own width in
  # it, so the temporal median is the background behind it.
  config = record_helpers.file_detections_config(
      root, records, half_window=6, proposals=proposals)
  return builder.build(config)


def _objects(records, split):
  info = input_pipeline.records_info(records, split)
  feats = schema.read_features(records)
  return [schema.deserialize(feats, data)
          for path in info.files for data in records_lib.iter_tfrecord(path)]


def _vid(obj) -> str:
  v = obj["video_id"]
  return v.decode() if isinstance(v, bytes) else str(v)


def test_the_builder_and_the_recall_tool_see_the_proposals(blind_root,
                                                           tmp_path):
  plain, moving = str(tmp_path / "plain"), str(tmp_path / "motion")
  _build(blind_root, plain, "detector")
  metas = _build(blind_root, moving, "detector+motion")
  blind = [o for o in _objects(moving, "test") if _vid(o) == "test_00"]
  assert blind and all(int(o["det_class"]) == -1 for o in blind)
  assert all(not np.any(o["teacher_det"]) for o in blind)
  # Where detections exist, motion adds little: the walkers are boxed.
  seen = [o for o in _objects(moving, "test") if _vid(o) == "test_01"]
  extra = sum(int(o["det_class"]) == -1 for o in seen)
  assert extra <= 0.25 * len(seen), (extra, len(seen))
  assert metas["test"]["settings"]["proposals"] == "detector+motion"
  # The recall tool reads the records' boxes: the blind video's ground-truth
  # regions are found by the proposals only.
  without = recall.anomaly_recall(plain, blind_root)["per_video"]["test_00"]
  with_motion = recall.anomaly_recall(moving, blind_root)["per_video"][
      "test_00"]
  assert without["regions_found"] == 0
  assert with_motion["regions_found"] >= 0.5 * with_motion["regions"] > 0


def test_the_fingerprint_carries_proposals_only_when_used(blind_root,
                                                          tmp_path):
  config = record_helpers.file_detections_config(blind_root, str(tmp_path))
  plain = builder.BuildSettings.from_config(config).fingerprint_for(
      "test", "train")
  assert "proposals" not in plain and "motion_threshold" not in plain
  config.build.proposals = "detector+motion"
  config.build.motion.threshold = 30.0
  fp = builder.BuildSettings.from_config(config).fingerprint_for(
      "test", "train")
  assert fp["proposals"] == "detector+motion"
  # The streaming scorer rebuilds its settings from a bundle's fingerprint.
  again = builder.BuildSettings.from_fingerprint(fp)
  assert (again.proposals, again.motion_threshold) == ("detector+motion", 30.0)
  assert builder.BuildSettings.from_fingerprint(plain).proposals == "detector"
