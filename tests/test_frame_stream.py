"""frame_scoring.FrameScoreStream (the streaming scorer's frame scores) equals
frame_scoring.video_frame_scores over the whole video bit for bit, whatever the
smoothing, border context and video length, emits every frame once and in
order, within its stated latency, and keeps a bounded number of maps."""

import itertools

import numpy as np
import pytest

from ssmtl_jax.evaluation import frame_scoring

H, W = 37, 50


def _video(rng, num_frames, context):
  """Random objects on the frames that can hold them (C <= t < T - C)."""
  counts = rng.integers(0, 3, num_frames)
  fi = np.repeat(np.arange(num_frames), counts).astype(np.int64)
  if context:
    fi = fi[(fi >= context) & (fi < num_frames - context)]
  xy = rng.uniform(-5, 40, (len(fi), 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, 25, (len(fi), 2))], 1)
  return fi, boxes, rng.normal(size=len(fi))


def _stream(fi, boxes, scores, num_frames, context, **kw):
  fs = frame_scoring.FrameScoreStream(H, W, context=context, **kw)
  pushes = num_frames - context if num_frames > 2 * context else (
      num_frames if not context else 0)
  out, lags = [], []
  for t in range(pushes):
    m = fi == t
    got = fs.push(boxes[m], scores[m])
    # Frames before C take frame C's map: final with frame C at the earliest.
    lags += [t - max(f, context) for f, _ in got]
    out += got
  out += fs.close(num_frames)
  return fs, out, lags


@pytest.mark.parametrize(
    "num_frames,context,sigma_t,temporal_sigma,scale",
    [c for c in itertools.product([1, 6, 7, 40], [0, 3], [0.0, 3.0],
                                  [0.0, 2.0], [0.5])] +
    [(25, 3, 1.3, 0.7, 1.0), (13, 2, 3.0, 0.0, 0.25)])
def test_stream_equals_whole_video_bit_for_bit(num_frames, context, sigma_t,
                                              temporal_sigma, scale):
  rng = np.random.default_rng(num_frames * 7 + context)
  fi, boxes, scores = _video(rng, num_frames, context)
  kw = dict(sigma=(sigma_t, 3.0, 2.0), scale=scale, background=-1.25,
            temporal_sigma=temporal_sigma)
  want = frame_scoring.video_frame_scores(boxes, fi, scores, num_frames, H, W,
                                    context=context, **kw)
  fs, out, lags = _stream(fi, boxes, scores, num_frames, context, **kw)
  assert [t for t, _ in out] == list(range(num_frames))
  got = np.asarray([s for _, s in out], np.float32)
  np.testing.assert_array_equal(got, want)
  # A frame is final `latency_frames` pushes after its own (or earlier).
  assert not lags or max(lags) <= fs.latency_frames
  assert fs.latency_frames == (int(4 * sigma_t + 0.5) if sigma_t else 0) + (
      int(4 * temporal_sigma + 0.5) if temporal_sigma else 0)


def test_memory_is_bounded_on_a_long_video():
  rng = np.random.default_rng(0)
  fs = frame_scoring.FrameScoreStream(H, W, sigma=(3.0, 3.0, 3.0), scale=0.5,
                                background=0.0, temporal_sigma=2.0, context=3)
  most = 0
  for t in range(2000):
    fs.push(np.array([[5.0, 5.0, 20.0, 20.0]]), rng.normal(size=1))
    most = max(most, len(fs._raw), len(fs._s1))  # pylint: disable=protected-access
  assert most <= 2 * 12 + 2


def test_keep_maps_gives_the_smoothed_map_of_each_final_frame():
  rng = np.random.default_rng(3)
  fi, boxes, scores = _video(rng, 20, 3)
  kw = dict(sigma=(3.0, 3.0, 3.0), scale=0.5, background=-1.0,
            temporal_sigma=0.0)
  _, maps = frame_scoring.video_frame_scores(boxes, fi, scores, 20, H, W, context=3,
                                       return_maps=True, **kw)
  fs = frame_scoring.FrameScoreStream(H, W, context=3, keep_maps=True, **kw)
  seen = {}
  for t in range(17):
    m = fi == t
    for f, _ in fs.push(boxes[m], scores[m]):
      seen[f] = fs.pop_map(f)
  for f, _ in fs.close(20):
    seen[f] = fs.pop_map(f)
  for t in range(20):
    np.testing.assert_array_equal(seen[t], maps[t])


def test_push_after_close_and_short_close_are_errors():
  fs = frame_scoring.FrameScoreStream(H, W, sigma=3.0, scale=0.5, background=0.0)
  fs.push(np.zeros((0, 4)), np.zeros(0))
  fs.push(np.zeros((0, 4)), np.zeros(0))
  with pytest.raises(ValueError, match="num_frames=1 < 2"):
    fs.close(1)
  fs.close(2)
  with pytest.raises(ValueError, match="push after close"):
    fs.push(np.zeros((0, 4)), np.zeros(0))
