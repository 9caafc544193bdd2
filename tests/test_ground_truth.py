"""Tests for ssmtl_jax.base.ground_truth: frame labels and pixel masks, and the
messages that name the file."""

import os

import numpy as np
import pytest

from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.base.ground_truth import GroundTruthError


def _write_gt(root, vid, labels=None, mask=None):
  if labels is not None:
    os.makedirs(os.path.join(root, "gt_frame"), exist_ok=True)
    np.save(os.path.join(root, "gt_frame", f"{vid}.npy"), labels)
  if mask is not None:
    os.makedirs(os.path.join(root, "gt_pixel"), exist_ok=True)
    np.savez_compressed(os.path.join(root, "gt_pixel", f"{vid}.npz"),
                        mask=mask)


def test_ground_truth_absent(tmp_path):
  got = ground_truth.load(str(tmp_path), "01", 5, 4, 6)
  assert got == (None, None)


def test_ground_truth_round_trip(tmp_path):
  labels = np.array([0, 1, 1, 0, 0], np.int64)
  mask = np.zeros((5, 4, 6), bool)
  mask[1:3, 1:3, 2:4] = True
  _write_gt(str(tmp_path), "01", labels, mask)
  got_labels, got_mask = ground_truth.load(
      str(tmp_path), "01", 5, 4, 6)
  assert got_labels.dtype == np.uint8
  np.testing.assert_array_equal(got_labels, labels)
  assert got_mask.dtype == bool
  np.testing.assert_array_equal(got_mask, mask)
  got_labels, got_mask = ground_truth.load(
      str(tmp_path), "01", 5, 4, 6, load_masks=False)
  assert got_mask is None and got_labels is not None


def test_ground_truth_uint8_mask_becomes_bool(tmp_path):
  mask = np.zeros((2, 3, 3), np.uint8)
  mask[0, 1, 1] = 255
  _write_gt(str(tmp_path), "a", mask=mask)
  _, got = ground_truth.load(str(tmp_path), "a", 2, 3, 3)
  assert got.dtype == bool and got.sum() == 1 and got[0, 1, 1]


def test_ground_truth_length_mismatch_names_file(tmp_path):
  _write_gt(str(tmp_path), "01", labels=np.zeros(7, np.uint8))
  with pytest.raises(GroundTruthError) as e:
    ground_truth.load(str(tmp_path), "01", 5, 4, 6)
  msg = str(e.value)
  assert str(tmp_path / "gt_frame" / "01.npy") in msg
  assert "7" in msg and "5 frames" in msg


def test_ground_truth_labels_not_binary(tmp_path):
  _write_gt(str(tmp_path), "01", labels=np.array([0, 2, 1]))
  with pytest.raises(GroundTruthError, match="0/1"):
    ground_truth.load(str(tmp_path), "01", 3, 4, 6)


@pytest.mark.parametrize("load_masks", [True, False])
def test_ground_truth_mask_shape_mismatch_names_file(tmp_path, load_masks):
  _write_gt(str(tmp_path), "01", mask=np.zeros((5, 4, 7), bool))
  with pytest.raises(GroundTruthError) as e:
    ground_truth.load(str(tmp_path), "01", 5, 4, 6,
                               load_masks=load_masks)
  msg = str(e.value)
  assert str(tmp_path / "gt_pixel" / "01.npz") in msg
  assert "(5, 4, 7)" in msg and "(5, 4, 6)" in msg


def test_ground_truth_mask_missing_key(tmp_path):
  os.makedirs(tmp_path / "gt_pixel")
  np.savez(tmp_path / "gt_pixel" / "01.npz", masks=np.zeros((1, 2, 2), bool))
  with pytest.raises(GroundTruthError, match="no key 'mask'"):
    ground_truth.load(str(tmp_path), "01", 1, 2, 2)


def test_errors_are_data_errors():
  assert issubclass(GroundTruthError, errors.DataError)


def test_load_split_requires_frame_labels(tmp_path):
  videos = {"a": {"frames": 3, "height": 4, "width": 6}}
  with pytest.raises(GroundTruthError, match="no frame labels") as e:
    ground_truth.load_split(str(tmp_path), videos)
  assert str(tmp_path / "gt_frame" / "a.npy") in str(e.value)


def test_load_split_labels_and_lazy_masks(tmp_path):
  mask = np.zeros((3, 4, 6), np.uint8)
  mask[1, 2, 3] = 255
  _write_gt(str(tmp_path), "a", labels=np.array([0, 1, 0]), mask=mask)
  _write_gt(str(tmp_path), "b", labels=np.array([1, 1, 0]))
  videos = {"a": {"frames": 3, "height": 4, "width": 6},
            "b": {"frames": 3, "height": 4, "width": 6, "objects": 9}}
  got = ground_truth.load_split(str(tmp_path), videos)
  assert list(got) == ["a", "b"]
  np.testing.assert_array_equal(got["b"].labels, [1, 1, 0])
  assert got["a"].mask_path == ground_truth.pixel_masks_path(str(tmp_path), "a")
  assert got["b"].mask_path is None
  assert got["a"].masks().dtype == bool and got["a"].masks().sum() == 1
  with pytest.raises(GroundTruthError, match="no gt_pixel"):
    got["b"].masks()


def test_load_split_checks_lengths_and_mask_shapes(tmp_path):
  _write_gt(str(tmp_path), "a", labels=np.zeros(10, np.uint8))
  videos = {"a": {"frames": 64, "height": 4, "width": 6}}
  with pytest.raises(GroundTruthError, match="10 labels.*64 frames"):
    ground_truth.load_split(str(tmp_path), videos)
  _write_gt(str(tmp_path), "a", labels=np.zeros(64, np.uint8),
            mask=np.zeros((64, 4, 5), bool))
  with pytest.raises(GroundTruthError, match=r"\(64, 4, 5\).*\(64, 4, 6\)"):
    ground_truth.load_split(str(tmp_path), videos)


def test_pixel_masks_absent_and_unreadable(tmp_path):
  assert ground_truth.load_pixel_masks(str(tmp_path), "a", (1, 2, 2)) is None
  os.makedirs(tmp_path / "gt_pixel")
  (tmp_path / "gt_pixel" / "a.npz").write_bytes(b"not a zip")
  with pytest.raises(GroundTruthError, match="cannot read .*a.npz"):
    ground_truth.load_pixel_masks(str(tmp_path), "a", (1, 2, 2))
