"""Tests for ssmtl_jax.evaluation.frame_scoring: normalisation, maps, smoothing, frame scores."""

import numpy as np
import pytest
from scipy import ndimage

from ssmtl_jax.evaluation import frame_scoring
from ssmtl_jax.perception import cubes


# --- normalisation and combination -----------------------------------------


def test_fit_stats_and_zscore():
  rng = np.random.default_rng(0)
  train = {"aot": rng.normal(2.0, 3.0, 100), "mbp": rng.random(50),
           "kd": np.full(10, 4.0)}
  stats = frame_scoring.fit_stats(train)
  assert stats["aot"] == pytest.approx((train["aot"].mean(),
                                        train["aot"].std()))
  assert stats["kd"] == (4.0, 1.0)  # constant task: std 1, not 0
  test = {"aot": np.array([2.0, 5.0]), "kd": np.array([4.0, 6.0])}
  out = frame_scoring.normalize_scores(test, stats, "zscore")
  np.testing.assert_allclose(
      out["aot"], (test["aot"] - stats["aot"][0]) / stats["aot"][1])
  np.testing.assert_allclose(out["kd"], [0.0, 2.0])
  assert test["aot"][0] == 2.0  # input untouched


def test_normalize_minmax_none_and_errors():
  scores = {"mi": np.array([1.0, 3.0, 2.0]), "aot": np.array([5.0, 5.0])}
  out = frame_scoring.normalize_scores(scores, None, "minmax")
  np.testing.assert_allclose(out["mi"], [0.0, 1.0, 0.5])
  np.testing.assert_allclose(out["aot"], [0.0, 0.0])
  out = frame_scoring.normalize_scores(scores, None, "none")
  np.testing.assert_allclose(out["mi"], scores["mi"])
  with pytest.raises(ValueError, match="statistics for task 'mi'"):
    frame_scoring.normalize_scores(scores, {"aot": (0.0, 1.0)}, "zscore")
  with pytest.raises(ValueError, match="one of"):
    frame_scoring.normalize_scores(scores, None, "rank")
  with pytest.raises(ValueError, match="non-finite"):
    frame_scoring.normalize_scores({"mi": np.array([np.nan])}, None, "none")


def test_kd_score_modes():
  normed = {"mi": np.array([0.5, 0.5]), "kd": np.array([9.0, 8.0]),
            "kd_det": np.array([0.0, 1.0]), "kd_cls": np.array([1.0, 0.0])}
  got = frame_scoring.kd_score(normed, "balanced")
  assert set(got) == {"mi", "kd"}  # the parts are folded into kd
  np.testing.assert_allclose(got["kd"], [0.5, 0.5])
  np.testing.assert_allclose(frame_scoring.kd_score(normed, "sum")["kd"], [9.0, 8.0])
  np.testing.assert_allclose(frame_scoring.kd_score(normed, "det")["kd"], [0.0, 1.0])
  np.testing.assert_allclose(frame_scoring.kd_score(normed, "cls")["kd"], [1.0, 0.0])
  assert normed["kd"][0] == 9.0  # input untouched
  # Without a classifier teacher, 'balanced' is the detector part alone.
  no_cls = {"kd": np.array([3.0]), "kd_det": np.array([2.0])}
  np.testing.assert_allclose(frame_scoring.kd_score(no_cls, "balanced")["kd"], [2.0])
  with pytest.raises(ValueError, match=r"needs the part scores \('kd_cls',\)"):
    frame_scoring.kd_score(no_cls, "cls")
  with pytest.raises(ValueError, match="older version"):
    frame_scoring.kd_score({"kd": np.array([1.0])}, "balanced")
  with pytest.raises(ValueError, match="one of"):
    frame_scoring.kd_score(normed, "max")
  # No KD task: nothing to do.
  assert set(frame_scoring.kd_score({"mi": np.ones(2)}, "balanced")) == {"mi"}


def test_combine_weighted_mean_and_left_out_tasks():
  s = {"aot": np.array([1.0, 2.0]), "mi": np.array([3.0, 6.0]),
       "mbp": np.array([100.0, 100.0])}
  got = frame_scoring.combine(s, {"aot": 1.0, "mi": 3.0, "mbp": 0.0, "kd": 0.0})
  np.testing.assert_allclose(got, [(1 + 9) / 4, (2 + 18) / 4])
  # Missing from the weights = left out.
  np.testing.assert_allclose(frame_scoring.combine(s, {"mi": 2.0}), s["mi"])
  with pytest.raises(ValueError, match="'kd' has weight"):
    frame_scoring.combine(s, {"kd": 1.0})
  with pytest.raises(ValueError, match="no task with a positive weight"):
    frame_scoring.combine(s, {"aot": 0.0})
  with pytest.raises(ValueError, match=">= 0"):
    frame_scoring.combine(s, {"aot": -1.0})
  with pytest.raises(ValueError, match="has 1 scores"):
    frame_scoring.combine({"aot": np.ones(2), "mi": np.ones(1)},
                    {"aot": 1.0, "mi": 1.0})


# --- boxes and maps ----------------------------------------------------------


def test_rasterize_boxes_matches_clip_box():
  rng = np.random.default_rng(1)
  h, w = 37, 53
  boxes = rng.uniform(-10, 65, (300, 4))
  boxes[:, 2:] = boxes[:, :2] + rng.uniform(-2, 30, (300, 2))
  # Exact halves and integers: the rounding tie cases.
  boxes[:40] = np.round(boxes[:40] * 2) / 2
  got = frame_scoring.rasterize_boxes(boxes, h, w)
  want = np.array([cubes.clip_box(b, h, w) for b in boxes])
  np.testing.assert_array_equal(got, want)


def test_anomaly_maps_overlap_border_background():
  boxes = np.array([
      [1.0, 1.0, 4.0, 3.0],     # frame 0
      [2.0, 2.0, 6.0, 5.0],     # frame 0, overlaps the first, lower score
      [-3.0, 4.6, 2.4, 9.0],    # frame 1, partly outside (left and bottom)
      [20.0, 20.0, 30.0, 30.0],  # frame 1, fully outside: no pixel
  ])
  fi = np.array([0, 0, 1, 1])
  sc = np.array([5.0, 2.0, 7.0, 9.0])
  maps = frame_scoring.anomaly_maps(boxes, fi, sc, 3, 6, 8)
  assert maps.shape == (3, 6, 8) and maps.dtype == np.float32
  want = np.full((3, 6, 8), 2.0, np.float32)  # background = min score
  want[0, 2:5, 2:6] = 2.0
  want[0, 1:3, 1:4] = 5.0  # max in the overlap
  want[1, 5:6, 0:2] = 7.0  # y1 4.6 -> 5, x2 2.4 -> 2, clipped at 0 / 6
  np.testing.assert_array_equal(maps, want)


def test_anomaly_maps_background_above_a_score_and_empty():
  maps = frame_scoring.anomaly_maps([[0, 0, 2, 2]], [1], [-1.0], 2, 3, 3,
                              background=0.5)
  assert maps[1, 0, 0] == -1.0 and maps[1, 2, 2] == 0.5
  assert np.all(maps[0] == 0.5)
  empty = frame_scoring.anomaly_maps(np.zeros((0, 4)), [], [], 2, 3, 3)
  np.testing.assert_array_equal(empty, np.zeros((2, 3, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    frame_scoring.anomaly_maps([[0, 0, 1, 1]], [2], [1.0], 2, 3, 3)


def test_anomaly_maps_scale():
  maps = frame_scoring.anomaly_maps([[4.0, 2.0, 12.0, 10.0]], [0], [1.0], 1, 12,
                              16, scale=0.5, background=0.0)
  assert maps.shape == (1, 6, 8)
  want = np.zeros((6, 8), np.float32)
  want[1:5, 2:6] = 1.0
  np.testing.assert_array_equal(maps[0], want)
  # A box reaching the frame edge reaches the map edge at any scale.
  maps = frame_scoring.anomaly_maps([[0.0, 0.0, 15.0, 11.0]], [0], [1.0], 1, 11,
                              15, scale=0.3, background=0.0)
  assert maps.shape == (1, 3, 5) and np.all(maps == 1.0)


def test_smooth_single_box_matches_scipy():
  maps = frame_scoring.anomaly_maps([[5, 4, 9, 10]], [3], [2.0], 7, 16, 20,
                              background=0.0)
  got = frame_scoring.smooth(maps, (1.0, 2.0, 1.5))
  want = ndimage.gaussian_filter(maps.astype(np.float64), (1.0, 2.0, 1.5),
                                 mode="nearest")
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got.dtype == np.float32
  assert got[3].max() < 2.0 and got[0].max() > 0.0  # spread in space and time
  np.testing.assert_array_equal(frame_scoring.smooth(maps, 0.0), maps)
  with pytest.raises(ValueError, match="sigma"):
    frame_scoring.smooth(maps, (1.0, 2.0))


def test_frame_scores_temporal_smooth_and_pipeline():
  rng = np.random.default_rng(2)
  n, t, h, w = 25, 9, 24, 32
  xy = rng.uniform(0, 28, (n, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(2, 10, (n, 2))], axis=1)
  fi = rng.integers(0, t, n)
  fi[fi == 4] = 5  # frame 4 has no object
  sc = rng.normal(size=n)
  maps = frame_scoring.anomaly_maps(boxes, fi, sc, t, h, w)
  np.testing.assert_allclose(frame_scoring.frame_scores(maps), maps.max(axis=(1, 2)))
  assert frame_scoring.frame_scores(maps)[4] == np.float32(sc.min())
  fs = rng.normal(size=t).astype(np.float32)
  np.testing.assert_allclose(frame_scoring.temporal_smooth(fs, 2.0),
                             ndimage.gaussian_filter1d(fs, 2.0, mode="nearest"))
  np.testing.assert_array_equal(frame_scoring.temporal_smooth(fs, 0.0), fs)

  got, got_maps = frame_scoring.video_frame_scores(
      boxes, fi, sc, t, h, w, sigma=(1.0, 4.0, 4.0), scale=0.5,
      temporal_sigma=1.0, return_maps=True)
  small = frame_scoring.anomaly_maps(boxes, fi, sc, t, h, w, scale=0.5)
  want_maps = frame_scoring.smooth(small, (1.0, 2.0, 2.0))
  np.testing.assert_allclose(got_maps, want_maps)
  np.testing.assert_allclose(
      got, frame_scoring.temporal_smooth(frame_scoring.frame_scores(want_maps), 1.0))
  assert got.shape == (t,) and got.dtype == np.float32
