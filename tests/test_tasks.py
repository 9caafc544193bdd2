"""Proxy-task views: backward reverses time, intermittent has gaps, MBP lacks
the middle frame, KD targets are the teachers'; losses and scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmtl_jax.model import tasks

W, H = 6, 3  # half window of the records, half length of the sequences


def _batch(b=64, size=4):
  # Frame index encoded in the pixel values: crops[:, f] == 10 * f + example % 10.
  f = np.arange(2 * W + 1, dtype=np.uint8)[None, :, None, None, None]
  e = (np.arange(b, dtype=np.uint8) % 10)[:, None, None, None, None]
  crops = np.broadcast_to(10 * f + e, (b, 2 * W + 1, size, size, 1)).copy()
  return {"crops": jnp.asarray(crops),
          "teacher_det": jnp.ones((b, 4)) * 0.5,
          "teacher_cls": jnp.arange(b * 3, dtype=jnp.float32).reshape(b, 3)}


def _frames(view):
  """Frame indices of each sequence, decoded from pixel values [B, T]."""
  return np.round(np.asarray(view[:, :, 0, 0, 0]) * 255.0).astype(int) // 10


def _views(batch, seed=0, offset=0, max_gap=2):
  return tasks.make_views(batch, jax.random.PRNGKey(seed),
                          tasks=("aot", "mi", "mbp", "kd"), seq_half=H,
                          max_gap=max_gap, example_offset=offset)


def test_arrow_of_time_backward_really_reverses():
  views, targets = _views(_batch())
  frames, labels = _frames(views["aot"]), np.asarray(targets["aot"])
  forward = np.arange(W - H, W + H + 1)
  assert 0 < labels.sum() < len(labels)  # both classes drawn
  for f, label in zip(frames, labels):
    np.testing.assert_array_equal(f, forward[::-1] if label else forward)


def test_motion_irregularity_intermittent_really_has_gaps():
  views, targets = _views(_batch())
  frames, labels = _frames(views["mi"]), np.asarray(targets["mi"])
  assert 0 < labels.sum() < len(labels)
  for f, label in zip(frames, labels):
    gaps = np.diff(f)
    assert f[H] == W  # centred on the detection's frame
    if label:
      assert gaps.min() >= 1 and gaps.max() <= 2 and gaps.max() > 1
      assert f.min() >= 0 and f.max() <= 2 * W
    else:
      np.testing.assert_array_equal(gaps, np.ones(2 * H))


def test_intermittent_indices_cover_all_gap_patterns():
  keys = jax.random.split(jax.random.PRNGKey(3), 2000)
  idx = np.asarray(jax.vmap(lambda k: tasks.intermittent_indices(k, W, H, 2))(keys))
  gaps = np.diff(idx, axis=1)
  assert (gaps.max(axis=1) == 2).all()           # never consecutive
  assert (gaps == 2).mean() > 0.4                # every gap is random
  assert len({tuple(g) for g in gaps}) == 2 ** (2 * H) - 1  # all patterns occur


def test_middle_box_view_lacks_the_middle_frame():
  views, targets = _views(_batch())
  frames = _frames(views["mbp"])
  expected = [f for f in range(W - H, W + H + 1) if f != W]
  assert views["mbp"].shape[1] == 2 * H
  assert (frames == expected).all()
  middle = np.round(np.asarray(targets["mbp"])[:, 0, 0, 0] * 255).astype(int)
  np.testing.assert_array_equal(middle // 10, W)


def test_kd_view_and_targets():
  batch = _batch()
  views, targets = _views(batch)
  assert (_frames(views["kd"]) == np.arange(W - H, W + H + 1)).all()
  np.testing.assert_allclose(targets["kd"], np.concatenate(
      [batch["teacher_det"], batch["teacher_cls"]], -1))


def test_views_depend_on_global_example_index_only():
  """A shard of the batch with its global offset draws the same views as the
  full batch: what makes pmap, jit and 1 device agree."""
  batch = _batch(16)
  full, full_t = _views(batch, seed=5)
  part, part_t = _views({k: v[8:] for k, v in batch.items()}, seed=5, offset=8)
  np.testing.assert_array_equal(full["mi"][8:], part["mi"])
  np.testing.assert_array_equal(full_t["aot"][8:], part_t["aot"])
  other, _ = _views(batch, seed=6)
  assert not np.array_equal(full["mi"], other["mi"])


def test_too_large_gap_for_window_raises():
  with pytest.raises(ValueError, match="half window"):
    _views(_batch(), max_gap=3)


def test_losses_and_scores():
  b = 4
  outputs = {"aot": jnp.array([[10., -10.], [-10., 10.], [10., -10.], [0., 0.]]),
             "mbp": jnp.full((b, 2, 2, 1), 0.5),
             "kd": jnp.zeros((b, 7))}
  targets = {"aot": jnp.array([0, 1, 1, 0]), "mbp": jnp.zeros((b, 2, 2, 1)),
             "kd": jnp.concatenate([jnp.ones((b, 4)), 2 * jnp.ones((b, 3))], -1)}
  loss, m = tasks.joint_loss(outputs, targets, {"aot": 1.0, "mbp": 2.0, "kd": 0.5},
                             num_det=4)
  m = {k: float(v) for k, v in m.items()}
  assert m["aot_acc"] == pytest.approx(0.75)
  assert m["mbp_loss"] == pytest.approx(0.5)
  assert m["kd_loss"] == pytest.approx(1.0 + 2.0)  # det part + cls part
  assert float(loss) == pytest.approx(m["aot_loss"] + 2 * 0.5 + 0.5 * 3.0, 1e-6)
  # aot_loss: three confident (two right, one wrong by 20 logits), one uniform.
  assert m["aot_loss"] == pytest.approx((20.0 + np.log(2)) / 4, 1e-4)
  scores = tasks.task_scores(
      outputs, jnp.zeros((b, 7, 2, 2, 1)),
      {"teacher_det": jnp.ones((b, 4)), "teacher_cls": 2 * jnp.ones((b, 3))},
      num_det=4, seq_half=3)
  np.testing.assert_allclose(scores["aot"], [0, 1, 0, 0.5], atol=1e-6)
  np.testing.assert_allclose(scores["mbp"], 0.5)
  np.testing.assert_allclose(scores["kd"], 3.0)  # the training loss ...
  np.testing.assert_allclose(scores["kd_det"], 1.0)  # ... = det part
  np.testing.assert_allclose(scores["kd_cls"], 2.0)  # + classifier part
  assert "mi_loss" not in m
