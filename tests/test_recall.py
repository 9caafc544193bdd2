"""data_prep.recall on hand-placed boxes: recall counts and the AUC bound.

Tiny test records (no detector) with boxes placed by hand next to 4x4-pixel
anomaly masks; every expected number below is worked out in the comments.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_prep import recall
from ssmtl_jax.base import ground_truth
from ssmtl_jax.base import schema

H = W = 16
MASK = (4, 4, 8, 8)       # x1, y1, x2, y2 of every anomaly (16 px)
HIT = (3, 3, 9, 9)        # covers the whole mask: frame hit, region found
GRAZE = (7, 7, 11, 11)    # 1 mask pixel, IoU 1/31 < 0.1: hit, region missed
FAR = (10, 10, 14, 14)    # no mask pixel: a normal object

# Video "a": every anomaly boxed. T=10, c=3: scorable frames 3..6.
#   scores [0 0 0 0 1 1 0 0 0 0] = labels -> AUC 1.
A = dict(frames=10, masks=(4, 5), boxes={3: [FAR], 4: [HIT, FAR], 5: [HIT]},
         labels=[0, 0, 0, 0, 1, 1, 0, 0, 0, 0])
# Video "b": abnormal frames 1..5; 1 and 2 are border frames (t < c = 3);
# frame 4 is missed (a box, but off the mask); frame 5 only grazed.
#   scorable scores t=3..6: 1, 0, 1, 0; frames 0-2 copy frame 3 (1), frames
#   7-9 copy frame 6 (0): scores [1 1 1 1 0 1 0 0 0 0]
#   labels                       [0 1 1 1 1 1 0 0 0 0]
#   positives 1,1,1,0,1; negatives 1,0,0,0,0: (4 * 4.5 + 1 * 2) / 25 = 0.8
#   (without the border copy: [0 0 0 1 0 1 0 ...] -> 17.5 / 25 = 0.7).
B = dict(frames=10, masks=(1, 2, 3, 4, 5),
         boxes={3: [HIT], 4: [FAR], 5: [GRAZE], 6: [FAR]},
         labels=[0, 1, 1, 1, 1, 1, 0, 0, 0, 0])
# Video "c": all normal, no gt_frame file (labels from the empty masks),
# boxes only on frames 3 and 4: scores all 0, single class -> AUC None.
C = dict(frames=8, masks=(), boxes={3: [FAR], 4: [FAR, HIT]}, labels=None)
# Video "d": T=8, c=3: scorable frames 3, 4. Frame 3 abnormal and hit, frame
# 4 normal with no box at all (score 0, not the lowest object score, which is
# 1 here). Frames 0-2 copy frame 3, 5-7 copy frame 4:
#   scores [1 1 1 1 0 0 0 0], labels [0 0 0 1 0 0 0 0]
#   -> (4 + 3 * 0.5) / 7 = 5.5 / 7 (no copy: 1.0; background 1: 0.5).
D = dict(frames=8, masks=(3,), boxes={3: [HIT]},
         labels=[0, 0, 0, 1, 0, 0, 0, 0])


def _write(tmp_path, videos, *, half_window=6, context=3):
  """Test records (one shard per video) and ROOT/gt_frame, gt_pixel."""
  records, root = str(tmp_path / "records"), str(tmp_path / "root")
  window = 2 * (half_window if context is None else context) + 1
  feats = schema.features(window=window, crop_size=4, channels=1, num_det=1,
                          num_cls=1)
  os.makedirs(os.path.join(records, "meta"))
  os.makedirs(os.path.join(root, "gt_frame"))
  os.makedirs(os.path.join(root, "gt_pixel"))
  lengths, meta_videos = [], {}
  for i, (vid, v) in enumerate(videos.items()):
    examples = [
        schema.serialize(feats, {
            "video_id": vid, "frame_index": t,
            "box": np.asarray(b, np.float32), "det_score": 1.0,
            "det_class": 0,
            "crops": np.zeros((window, 4, 4, 1), np.uint8),
            "teacher_det": np.ones(1, np.float32),
            "teacher_cls": np.zeros(1, np.float32)})
        for t, bs in sorted(v["boxes"].items()) for b in bs]
    schema.write_shard(os.path.join(
        records, schema.shard_filename("test", i, len(videos))), examples)
    lengths.append(len(examples))
    masks = np.zeros((v["frames"], H, W), bool)
    x1, y1, x2, y2 = MASK
    for t in v["masks"]:
      masks[t, y1:y2, x1:x2] = True
    np.savez(ground_truth.pixel_masks_path(root, vid), mask=masks)
    if v["labels"] is not None:
      np.save(ground_truth.frame_labels_path(root, vid),
              np.asarray(v["labels"], np.uint8))
    meta_videos[vid] = {"frames": v["frames"], "height": H, "width": W,
                        "objects": len(examples)}
  schema.finalize(records, feats, {"test": lengths})
  meta = {"videos": meta_videos, "half_window": half_window}
  if context is not None:
    meta["context"] = context
  schema.write_json_atomic(schema.meta_path(records, "test"), meta)
  return records, root


def test_all_anomalies_hit_bound_is_one(tmp_path):
  r = recall.anomaly_recall(*_write(tmp_path, {"a": A}))
  assert r["context"] == 3
  assert (r["abnormal_frames"], r["abnormal_frames_hit"], r["regions"],
          r["regions_found"], r["abnormal_border_frames_without_cubes"]) == (
              2, 2, 2, 2, 0)
  assert r["frame_recall"] == r["region_recall"] == 1.0
  assert r["auc_bound"] == {"micro": 1.0, "macro": 1.0,
                            "macro_single_class_as_1": 1.0,
                            "videos_labelled_from_masks": 0}
  assert r["per_video"]["a"] == {
      "abnormal_frames": 2, "hit": 2, "border_abnormal": 0, "regions": 2,
      "regions_found": 2, "frame_recall": 1.0, "auc_bound": 1.0}


def test_missed_frame_border_copy_and_frames_without_boxes(tmp_path):
  r = recall.anomaly_recall(*_write(tmp_path, {"a": A, "b": B, "c": C,
                                               "d": D}))
  pv = r["per_video"]
  assert pv["b"] == {"abnormal_frames": 3, "hit": 2, "border_abnormal": 2,
                     "regions": 3, "regions_found": 1,
                     "frame_recall": pytest.approx(2 / 3),
                     "auc_bound": pytest.approx(0.8)}
  assert pv["c"] == {"abnormal_frames": 0, "hit": 0, "border_abnormal": 0,
                     "regions": 0, "regions_found": 0, "frame_recall": None,
                     "auc_bound": None}
  assert pv["d"]["auc_bound"] == pytest.approx(5.5 / 7)
  assert (pv["d"]["abnormal_frames"], pv["d"]["hit"]) == (1, 1)
  assert pv["a"]["auc_bound"] == 1.0
  # Totals: abnormal scorable frames 2 + 3 + 0 + 1, hit 2 + 2 + 0 + 1;
  # regions found 2 + 1 + 0 + 1 (the grazed one is hit but not found).
  assert (r["abnormal_frames"], r["abnormal_frames_hit"], r["regions"],
          r["regions_found"], r["abnormal_border_frames_without_cubes"]) == (
              6, 5, 6, 4, 2)
  assert r["frame_recall"] == pytest.approx(5 / 6)
  assert r["region_recall"] == pytest.approx(4 / 6)
  # Micro over all 36 frames: positives 7 scored 1, 1 scored 0; negatives 4
  # scored 1 (b's frame 0, d's frames 0-2), 24 scored 0:
  # (7 * (24 + 4 / 2) + 1 * 24 / 2) / (8 * 28) = 194 / 224.
  bound = r["auc_bound"]
  assert bound["micro"] == pytest.approx(194 / 224)
  assert bound["macro"] == pytest.approx((1.0 + 0.8 + 5.5 / 7) / 3)
  assert bound["macro_single_class_as_1"] == pytest.approx(
      (1.0 + 0.8 + 5.5 / 7 + 1.0) / 4)
  assert bound["videos_labelled_from_masks"] == 1


def test_context_defaults_to_half_window(tmp_path):
  # No "context" key: c = half_window = 3, the same numbers as context 3.
  r = recall.anomaly_recall(*_write(tmp_path, {"b": B}, half_window=3,
                                    context=None))
  assert r["context"] == 3
  assert r["per_video"]["b"]["auc_bound"] == pytest.approx(0.8)
  assert r["abnormal_border_frames_without_cubes"] == 2
  # With c = half_window = 6 (> the c the boxes were placed for) frames 3..5
  # are border frames and T - 2c < 0 leaves no scorable frame.
  (tmp_path / "w6").mkdir()
  r = recall.anomaly_recall(*_write(tmp_path / "w6", {"b": B}, half_window=6,
                                    context=None))
  assert r["context"] == 6
  assert r["abnormal_border_frames_without_cubes"] == 5
  assert r["abnormal_frames"] == 0 and r["per_video"]["b"]["auc_bound"] == 0.5


def test_border_copy():
  s = np.arange(8, dtype=np.float64)
  np.testing.assert_array_equal(recall.border_copy(s, 2),
                                [2, 2, 2, 3, 4, 5, 5, 5])
  np.testing.assert_array_equal(recall.border_copy(s, 0), s)
  # No frame can hold objects (T <= 2c): left as is, as the evaluator's maps
  # (the recall's scores are all 0 there).
  np.testing.assert_array_equal(recall.border_copy(s, 4), s)
  assert recall.border_copy(s, 2) is not s and s[0] == 0
  assert recall.context_of({"half_window": 6}) == 6
  assert recall.context_of({"half_window": 6, "context": 3}) == 3


def test_cli_prints_every_key_and_per_video(tmp_path, capsys):
  records, root = _write(tmp_path, {"a": A, "b": B})
  recall.main(["--records", records, "--root", root])
  out = json.loads(capsys.readouterr().out)
  assert {"frame_recall", "region_recall", "abnormal_frames",
          "abnormal_frames_hit", "regions", "regions_found",
          "abnormal_border_frames_without_cubes", "context", "auc_bound",
          "per_video"} <= set(out)
  assert set(out["per_video"]) == {"a", "b"}
  assert out["per_video"]["b"]["auc_bound"] == pytest.approx(0.8)
  assert out["auc_bound"]["macro"] == pytest.approx(0.9)


def test_videos_without_masks_are_an_error_unless_skipped(tmp_path):
  """A validation split holds 'paste' videos with masks beside 'fast' and
  'reverse' ones without: --skip_unmasked measures the former only."""
  records, root = _write(tmp_path, {"a": A, "b": B})
  os.remove(ground_truth.pixel_masks_path(root, "a"))
  with pytest.raises(ground_truth.GroundTruthError,
                     match="test video 'a' has no pixel masks.*--skip_unmask"):
    recall.anomaly_recall(records, root)
  r = recall.anomaly_recall(records, root, skip_unmasked=True)
  assert r["videos_without_masks"] == ["a"] and set(r["per_video"]) == {"b"}
  assert r["per_video"]["b"]["auc_bound"] == pytest.approx(0.8)
  assert r["auc_bound"]["micro"] == pytest.approx(0.8)
  os.remove(ground_truth.pixel_masks_path(root, "b"))
  with pytest.raises(ground_truth.GroundTruthError,
                     match="no test video has pixel masks"):
    recall.anomaly_recall(records, root, skip_unmasked=True)
