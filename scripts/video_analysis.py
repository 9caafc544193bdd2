r"""Why a video scores low: per task, per object, over time.

  python scripts/video_analysis.py --config configs/ped2_cpu.py --workdir W \
      --config.data.root=W/data --config.data.records=W/records \
      [--config.eval.* as chosen on validation] --videos=12 [--split=test]

For each named video of an evaluated workdir (cached object scores, no model
run) and its pixel masks, writes ``W/eval[_<split>]/analysis_<ids>.json`` and
prints a summary:

* objects: how many, how many *on the anomaly* (at least ``--on_fraction``
  of the box's rasterised pixels inside the mask of its frame), from the
  detector or from motion proposals (``det_class`` -1), and the anomalous
  boxes' median width and height against the crop size;
* per task (normalised as configured) and the combined score: the AUC of
  anomalous against normal objects *of that video* (does the task rank the
  anomaly above the video's other objects?), the same against the normal
  objects of *every* video of the split (is it above the split's normal
  level, what micro AUC needs?), and the video's frame AUC from that task
  alone with the configured smoothing and with no 1D smoothing;
* over time: on the abnormal frames, the fraction whose highest-scoring
  object is on the anomaly, and the frame AUC of the raw per-frame max
  (no maps, no smoothing) against the configured one.

This reads test labels: it is for analysis, never for choosing a setting
(a fix is checked on the validation split).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app
from absl import flags
import numpy as np
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmtl_jax import validate  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssmtl_jax.base import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssmtl_jax.base import schema  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssmtl_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssmtl_jax.evaluation import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top,wrong-import-position

# --config and --workdir are ssmtl_jax.validate's flags (defined on import).
_VIDEOS = flags.DEFINE_list("videos", None, "video ids to analyse")
_SPLIT = flags.DEFINE_string("split", None, "split (default: the test split)")
_ON = flags.DEFINE_float("on_fraction", 0.2, "an object is on the anomaly "
                         "when this fraction of its box is inside the mask")
flags.mark_flags_as_required(["videos"])


def _auc(pos: np.ndarray, neg: np.ndarray):
  if not len(pos) or not len(neg):
    return None
  y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
  return float(skm.roc_auc_score(y, np.r_[pos, neg]))


def _frame_auc(scores: np.ndarray, labels: np.ndarray):
  if labels.min() == labels.max():
    return None
  return float(skm.roc_auc_score(labels, scores))


def _det_class(config, split: str, objs) -> np.ndarray:
  """det_class of every object, in the scored objects' (record) order."""
  info = input_pipeline.records_info(config.data.records, split)
  vids, frames, classes = [], [], []
  for batch in input_pipeline.eval_dataset(
      info, batch_size=1024, keys=("video_id", "frame_index", "det_class")
  ).as_numpy_iterator():
    vids.extend(v.decode() for v in batch["video_id"])
    frames.append(batch["frame_index"])
    classes.append(batch["det_class"])
  if (list(objs.video_id) != vids or
      not np.array_equal(np.concatenate(frames), objs.frame_index)):
    raise RuntimeError("records and cached scores are not in the same order")
  return np.concatenate(classes)


def on_anomaly(ev, vid: str, sel: np.ndarray, fraction: float) -> np.ndarray:
  """bool per selected object: its box is on the mask of its frame."""
  g = ev.gt[vid]
  masks = g.masks()
  px = frame_scoring.rasterize_boxes(ev.objects.box[sel], g.height, g.width)
  out = np.zeros(len(px), bool)
  for i, ((x1, y1, x2, y2), t) in enumerate(
      zip(px.tolist(), ev.objects.frame_index[sel].tolist())):
    area = max((x2 - x1) * (y2 - y1), 1)
    out[i] = masks[t, y1:y2, x1:x2].sum() >= fraction * area
  return out


def analyse(ev, vid: str, fraction: float, det_class: np.ndarray) -> dict:
  settings = ev.settings
  objs = ev.objects
  normed, combined = ev.object_scores(settings)
  values = {**normed, "combined": combined}
  sel = objs.video_id == vid
  on = on_anomaly(ev, vid, sel, fraction)
  g = ev.gt[vid]
  labels = g.labels.astype(int)
  # Normal objects of every video: those of the other videos on normal
  # frames, and this video's off the anomaly.
  normal_all = np.zeros(len(objs.video_id), bool)
  for other, og in ev.gt.items():
    if other == vid or og.labels is None:
      continue
    o = objs.video_id == other
    normal_all[o] = og.labels[objs.frame_index[o]] == 0
  normal_all[np.flatnonzero(sel)[~on]] = True
  boxes = objs.box[sel][on]
  crop = int(ev.config.build.crop_size)
  tasks = {}
  no_smooth = dataclasses.replace(settings, temporal_sigma=0.0)
  for name, v in values.items():
    s = v[sel]
    frames = ev.frame_scores(v, settings)[vid]
    frames0 = ev.frame_scores(v, no_smooth)[vid]
    tasks[name] = {
        "object_auc_in_video": _auc(s[on], s[~on]),
        "object_auc_vs_all_normal": _auc(s[on], v[normal_all]),
        "anomalous_median": float(np.median(s[on])) if on.any() else None,
        "normal_in_video_p95": float(np.percentile(s[~on], 95))
                               if (~on).any() else None,
        "frame_auc": _frame_auc(frames, labels),
        "frame_auc_no_temporal_smoothing": _frame_auc(frames0, labels),
    }
  # Over time: which object is the frame's maximum on abnormal frames.
  t_idx = objs.frame_index[sel]
  c = combined[sel]
  raw_max = np.full(g.frames, np.nan)
  top_on = []
  for t in range(g.frames):
    here = np.flatnonzero(t_idx == t)
    if not len(here):
      continue
    raw_max[t] = c[here].max()
    if labels[t]:
      top_on.append(bool(on[here[np.argmax(c[here])]]))
  filled = np.where(np.isnan(raw_max), np.nanmin(raw_max), raw_max)
  dc = det_class[sel]
  return {
      "frames": g.frames, "abnormal_frames": int(labels.sum()),
      "objects": int(sel.sum()), "objects_on_anomaly": int(on.sum()),
      "on_anomaly_from_proposals": int((dc[on] == -1).sum()),
      "proposals": int((dc == -1).sum()),
      "anomalous_box_median_wh": ([float(np.median(boxes[:, 2] - boxes[:, 0])),
                                   float(np.median(boxes[:, 3] - boxes[:, 1]))]
                                  if len(boxes) else None),
      "crop_size": crop,
      "abnormal_frames_with_objects": len(top_on),
      "abnormal_frames_top_object_on_anomaly": (float(np.mean(top_on))
                                                if top_on else None),
      "frame_auc_raw_max": _frame_auc(filled, labels),
      "tasks": tasks,
  }


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  split = _SPLIT.value or config.data.test_split
  ev = cli.run_reporting_user_errors(
      lambda: evaluator_lib.Evaluator(config, workdir, split=split))
  det_class = _det_class(config, split, ev.objects)
  result = {"split": split, "checkpoint_step": ev.checkpoint_step,
            "settings": {"normalize": ev.settings.normalize,
                         "kd_score": ev.settings.kd_score,
                         "temporal_sigma": ev.settings.temporal_sigma,
                         "sigma": list(ev.settings.sigma)},
            "on_fraction": _ON.value, "videos": {}}
  for vid in _VIDEOS.value:
    result["videos"][vid] = analyse(ev, vid, _ON.value, det_class)
  path = ev.eval_dir / f"analysis_{'_'.join(_VIDEOS.value)}.json"
  schema.write_json_atomic(str(path), result)
  fmt = lambda v: "  n/a" if v is None else f"{100 * v:5.1f}"
  for vid, r in result["videos"].items():
    print(f"video {vid}: {r['objects']} objects, {r['objects_on_anomaly']} on "
          f"the anomaly ({r['on_anomaly_from_proposals']} from proposals), "
          f"median box {r['anomalous_box_median_wh']} px, crop "
          f"{r['crop_size']}; abnormal frames whose top object is on it: "
          f"{fmt(r['abnormal_frames_top_object_on_anomaly'])} %; frame AUC "
          f"of the raw max {fmt(r['frame_auc_raw_max'])}")
    print(f"{'task':>10}  obj AUC video  obj AUC all  frame AUC  no 1D smooth")
    for name, t in r["tasks"].items():
      print(f"{name:>10}  {fmt(t['object_auc_in_video']):>13}  "
            f"{fmt(t['object_auc_vs_all_normal']):>11}  "
            f"{fmt(t['frame_auc']):>9}  "
            f"{fmt(t['frame_auc_no_temporal_smoothing']):>12}")
  print(path)


if __name__ == "__main__":
  app.run(main, flags_parser=validate.PARSE_FLAGS)
