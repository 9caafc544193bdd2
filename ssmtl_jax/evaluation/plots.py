"""Evaluation figures (matplotlib, Agg) and annotated videos (OpenCV)."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn import metrics as sk_metrics


def roc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
        path: str, title: str = "") -> None:
  """Frame-level ROC over all videos (micro)."""
  y = np.concatenate([labels[v] for v in scores])
  s = np.concatenate([scores[v] for v in scores])
  fpr, tpr, _ = sk_metrics.roc_curve(y, s)
  fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
  ax.plot(fpr, tpr, lw=2)
  ax.plot([0, 1], [0, 1], "k--", lw=0.8)
  ax.set(xlabel="false positive rate", ylabel="true positive rate",
         title=title, xlim=(0, 1), ylim=(0, 1.01))
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def score_curve(scores: np.ndarray, labels: Optional[np.ndarray], path: str,
                title: str = "") -> None:
  """Frame scores over time with the ground-truth abnormal frames shaded
  (none shaded when ``labels`` is None: a video without frame labels)."""
  fig, ax = plt.subplots(figsize=(6, 2.2), dpi=100)
  t = np.arange(len(scores))
  lo, hi = float(np.min(scores)), float(np.max(scores))
  if labels is not None:
    ax.fill_between(t, lo, hi, where=np.asarray(labels) > 0, step="mid",
                    color="tab:red", alpha=0.2, lw=0, label="abnormal (GT)")
  ax.plot(t, scores, color="tab:blue", lw=1.2, label="score")
  ax.set(xlabel="frame", ylabel="anomaly score", title=title,
         xlim=(0, max(1, len(scores) - 1)))
  ax.legend(loc="upper left", fontsize=7, frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def render_videos(gt, objs, combined, frame_scores, out_dir: str, settings,
                  read_frames: Callable[[str], Iterable[np.ndarray]], *,
                  context: int = 0) -> None:
  """Annotated test videos: boxes coloured by object score (blue = lowest,
  red = highest of the test set) over the smoothed anomaly map.

  Args:
    gt: {video_id: ground_truth.VideoGT} (a video without frame labels gets
      no normal/ABNORMAL caption).
    objs: the test split's ScoredObjects; combined: float [N] object scores.
    frame_scores: {video_id: float [T]}.
    out_dir: where <video_id>.mp4 go (a local folder: OpenCV writes them).
    settings: frame_scoring.Settings (map scale and smoothing).
    read_frames: video_id -> its frames, uint8 RGB [H, W, 3], in order (the
      caller reads the videos; this module knows nothing of their format).
    context: the records' context (``frame_scoring.fill_borders``).
  """
  import cv2  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  lo, hi = float(combined.min()), float(combined.max())
  norm = lambda v: np.clip((v - lo) / max(hi - lo, 1e-9), 0, 1)
  for vid, g in gt.items():
    idx = np.flatnonzero(objs.video_id == vid)
    _, maps = frame_scoring.video_frame_scores(
        objs.box[idx], objs.frame_index[idx], combined[idx], g.frames,
        g.height, g.width, background=lo, return_maps=True,
        sigma=settings.sigma, scale=settings.map_scale,
        temporal_sigma=settings.temporal_sigma, context=context)
    path = os.path.join(out_dir, f"{vid}.mp4")
    writer = cv2.VideoWriter(path + ".tmp.mp4", cv2.VideoWriter_fourcc(*"mp4v"),
                             10, (g.width, g.height))
    for t, frame in enumerate(read_frames(vid)):
      heat = cv2.applyColorMap((255 * norm(cv2.resize(
          maps[t], (g.width, g.height)))).astype(np.uint8), cv2.COLORMAP_JET)
      img = cv2.addWeighted(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), 0.65,
                            heat, 0.35, 0)
      for i in idx[objs.frame_index[idx] == t]:
        x1, y1, x2, y2 = (int(round(v)) for v in objs.box[i])
        c = norm(combined[i])
        cv2.rectangle(img, (x1, y1), (x2, y2),
                      (int(255 * (1 - c)), 0, int(255 * c)), 1)
      label = ("" if g.labels is None
               else " ABNORMAL" if g.labels[t] else " normal")
      cv2.putText(img, f"{t}{label} {frame_scores[vid][t]:.2f}", (4, 14),
                  cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
      writer.write(img)
    writer.release()
    os.replace(path + ".tmp.mp4", path)
