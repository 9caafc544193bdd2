"""Evaluation: object scores -> smoothed anomaly maps -> frame scores -> metrics.

Writes under ``WORKDIR/eval/``: ``report.json`` (DESIGN §8), ``scores/<video>.npy``
(float32 frame scores aligned with ``gt_frame/<video>.npy``), ``roc.png``,
``scores_<video>.png``, on request annotated videos, and two per-checkpoint
caches: ``train_stats_step<N>.json`` (normalisation statistics) and
``object_scores_step<N>.npz`` (raw per-task test object scores), so that a
re-evaluation with other ``eval.*`` settings does not rerun the model.

Decisions (see also ssmtl_jax/scoring.py and ssmtl_jax/metrics.py):

* object score = weighted mean of the per-task scores of the trained tasks,
  each normalised (z-score with training-object statistics by default);
* frames without any object (including the first/last W frames of a video,
  which have no cube) get the background value: the lowest object score of
  the whole test set, the same for every video so that micro AUC compares
  like with like;
* RBDC/TBDC predicted regions are the scored object boxes themselves (one per
  detection, score = its object score); GT regions are connected components
  of the pixel masks, GT tracks link regions that overlap in consecutive
  frames (the masks carry no track ids);
* macro AUC skips videos with one class only and reports how many.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import time
from typing import Optional

from absl import logging
import jax
import numpy as np

from ssmtl_jax import errors
from ssmtl_jax import input_pipeline
from ssmtl_jax import metrics
from ssmtl_jax import models
from ssmtl_jax import object_scores
from ssmtl_jax import schema
from ssmtl_jax import scoring


class EvalDataError(errors.DataError):
  """Ground truth missing or inconsistent with the scores."""


@dataclasses.dataclass
class VideoGT:
  frames: int
  height: int
  width: int
  labels: np.ndarray            # uint8 [T]
  mask_path: Optional[str]      # gt_pixel/<id>.npz, if present


def _machine() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor()
          or platform.machine(), "cpu_count": os.cpu_count(),
          "device_kind": jax.devices()[0].device_kind,
          "num_devices": jax.device_count()}


def load_test_gt(config, meta: dict) -> dict[str, VideoGT]:
  """Frame labels (required) and pixel-mask paths (optional) per test video."""
  root = config.data.root or meta.get("root", "")
  out = {}
  for vid, v in meta["videos"].items():
    path = os.path.join(root, "gt_frame", f"{vid}.npy")
    if not os.path.exists(path):
      raise EvalDataError(
          f"test video {vid!r} has no frame labels ({path}): the test split "
          "needs ROOT/gt_frame/<video_id>.npy (config.data.root)")
    labels = np.load(path).reshape(-1)
    if labels.shape[0] != v["frames"]:
      raise EvalDataError(f"{path} has {labels.shape[0]} labels but video "
                          f"{vid!r} has {v['frames']} frames")
    mask_path = os.path.join(root, "gt_pixel", f"{vid}.npz")
    out[vid] = VideoGT(v["frames"], v["height"], v["width"],
                       labels.astype(np.uint8),
                       mask_path if os.path.exists(mask_path) else None)
  return out


def _cache_key(scorer, config) -> str:
  """Identifies what the cached scores depend on: the checkpoint's variables
  and the records (their split metadata), not only the step number."""
  digest = hashlib.sha256(b"scores-v2")  # v2: + kd_det, kd_cls
  for leaf in jax.tree.leaves(jax.device_get(scorer.variables)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  for split in (config.data.train_split, config.data.test_split):
    with open(schema.meta_path(config.data.records, split), "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def _train_stats(scorer, config, eval_dir: str) -> dict:
  path = os.path.join(eval_dir, f"train_stats_step{scorer.step}.json")
  key = f"{_cache_key(scorer, config)}:{int(config.eval.norm_max_objects)}"
  if os.path.exists(path):
    cached = schema.read_json(path)
    if cached.get("cache_key") == key:
      return {k: tuple(v) for k, v in cached["stats"].items()}
  info = input_pipeline.records_info(config.data.records,
                                     config.data.train_split)
  train_scores = scorer.score_split(
      info, int(config.eval.batch_size),
      max_objects=int(config.eval.norm_max_objects), desc="train stats")
  stats = scoring.fit_stats(train_scores.scores)
  schema.write_json_atomic(path, {"cache_key": key, "stats": {
      k: list(v) for k, v in stats.items()}})
  return stats


def _test_scores(scorer, info, config, eval_dir: str
                 ) -> object_scores.ObjectScores:
  """The raw per-task scores of every test object, cached per checkpoint in
  ``eval/object_scores_step<N>.npz`` so that re-evaluating with other eval.*
  settings (normalisation, task weights, sigma) skips the model."""
  path = os.path.join(eval_dir, f"object_scores_step{scorer.step}.npz")
  key = _cache_key(scorer, config)
  if os.path.exists(path):
    with np.load(path) as f:
      if str(f["cache_key"]) == key:
        return object_scores.ObjectScores(
            video_id=f["video_id"], frame_index=f["frame_index"], box=f["box"],
            scores={k[len("score_"):]: f[k] for k in f.files
                    if k.startswith("score_")},
            seconds=float(f["seconds"]))
  objs = scorer.score_split(info, int(config.eval.batch_size), desc="test")
  tmp = path + ".tmp.npz"
  np.savez(tmp, video_id=objs.video_id, frame_index=objs.frame_index,
           box=objs.box, seconds=objs.seconds, cache_key=key,
           **{f"score_{k}": v for k, v in objs.scores.items()})
  os.replace(tmp, path)
  return objs


def evaluate(config, workdir: str, step: Optional[int] = None) -> dict:
  """Evaluates checkpoint `step` (default config.eval.checkpoint_step, -1 =
  latest) of workdir on the test split; returns the report."""
  t_start = time.perf_counter()
  kd_mode = str(config.eval.get("kd_score", "balanced"))
  if kd_mode not in scoring.KD_SCORES:
    raise errors.ConfigError(
        f"config.eval.kd_score must be one of {scoring.KD_SCORES}, got "
        f"{kd_mode!r}")
  eval_dir = os.path.join(workdir, "eval")
  os.makedirs(os.path.join(eval_dir, "scores"), exist_ok=True)
  if step is None and int(config.eval.checkpoint_step) >= 0:
    step = int(config.eval.checkpoint_step)
  split = config.data.test_split
  meta_file = schema.meta_path(config.data.records, split)
  if not os.path.exists(meta_file):
    raise input_pipeline.DataError(
        f"no test split in config.data.records={config.data.records!r} "
        f"({meta_file} missing)")
  meta = schema.read_json(meta_file)
  gt = load_test_gt(config, meta)

  scorer = object_scores.restore_scorer(config, workdir, step)
  info = input_pipeline.records_info(config.data.records, split)
  objs = _test_scores(scorer, info, config, eval_dir)
  tasks = tuple(t for t in models.TASKS if t in objs.scores)

  # --- Object scores: normalise per task, combine.
  method = config.eval.normalize
  stats = _train_stats(scorer, config, eval_dir) if method == "zscore" else None
  normed = scoring.normalize_scores(objs.scores, stats, method)
  normed = scoring.kd_score(normed, kd_mode)
  weights = {t: float(config.eval.task_weights.get(t, 0.0)) for t in tasks}
  if not any(weights.values()):
    raise errors.ConfigError(
        f"config.eval.task_weights gives weight 0 to every trained task {tasks}")
  combined = scoring.combine(normed, weights)

  # --- Maps -> frame scores, per video (combined, and each task alone).
  t_maps = time.perf_counter()
  by_video = {vid: np.flatnonzero(objs.video_id == vid) for vid in gt}
  unknown = sorted(set(objs.video_id) - set(gt))
  if unknown:
    raise EvalDataError(f"records hold objects of videos {unknown[:5]} that "
                        f"{meta_file} does not list")
  map_kw = dict(sigma=tuple(config.eval.sigma), scale=float(config.eval.map_scale),
                temporal_sigma=float(config.eval.temporal_sigma))

  def frame_scores_of(values):
    background = float(values.min())
    return {vid: scoring.video_frame_scores(
        objs.box[idx], objs.frame_index[idx], values[idx], g.frames, g.height,
        g.width, background=background, **map_kw) for (vid, idx), g in
        zip(by_video.items(), gt.values())}

  frame_scores = frame_scores_of(combined)
  maps_seconds = time.perf_counter() - t_maps
  labels = {vid: g.labels for vid, g in gt.items()}
  for vid, s in frame_scores.items():
    np.save(os.path.join(eval_dir, "scores", f"{vid}.npy"), s.astype(np.float32))

  notes = []
  micro = metrics.micro_auc(frame_scores, labels)
  macro, per_video, single = metrics.macro_auc(frame_scores, labels)
  if single:
    notes.append(f"macro_auc: {single} single-class video(s) skipped")
  per_task = {t: metrics.micro_auc(frame_scores_of(normed[t]), labels)
              for t in tasks}

  # --- RBDC / TBDC from the scored object boxes vs the pixel masks.
  rbdc = tbdc = None
  if all(g.mask_path for g in gt.values()):
    dets = {vid: metrics.Detections(objs.frame_index[idx], objs.box[idx],
                                    combined[idx])
            for vid, idx in by_video.items()}
    gts = {vid: metrics.GroundTruth.from_masks(np.load(g.mask_path)["mask"])
           for vid, g in gt.items()}
    curves = metrics.detection_curves(
        dets, gts, extend_to_fpr_max=bool(config.eval.extend_curves))
    rbdc, tbdc = curves.rbdc, curves.tbdc
    notes.append("rbdc/tbdc: predicted regions = scored object boxes; GT "
                 "tracks linked from overlapping mask regions")
  else:
    notes.append("rbdc, tbdc: null, the test split has no gt_pixel masks")

  num_frames = sum(g.frames for g in gt.values())
  build_seconds = meta.get("build_seconds")
  fps = {"model": num_frames / objs.seconds if objs.seconds > 0 else None,
         "maps_and_metrics": num_frames / max(maps_seconds, 1e-9),
         "objects_per_second": len(combined) / objs.seconds if objs.seconds > 0
                               else None}
  if build_seconds:
    fps["build_detect_crop_teachers"] = num_frames / build_seconds
    fps["end_to_end"] = num_frames / (build_seconds + objs.seconds + maps_seconds)
  report = {
      "micro_auc": micro, "macro_auc": macro, "rbdc": rbdc, "tbdc": tbdc,
      "per_task_micro_auc": per_task,
      "per_video_auc": per_video,
      "num_single_class_videos": single,
      "fps": fps,
      "num_frames": num_frames, "num_videos": len(gt),
      "num_objects": int(len(combined)),
      "checkpoint_step": scorer.step,
      "tasks": list(tasks), "task_weights": weights, "normalize": method,
      "kd_score": kd_mode if "kd" in tasks else None,
      "sigma": list(config.eval.sigma), "map_scale": float(config.eval.map_scale),
      "machine": _machine(),
      "records": config.data.records,
      "seconds": time.perf_counter() - t_start,
      "notes": notes,
  }
  schema.write_json_atomic(os.path.join(eval_dir, "report.json"), report)
  if config.eval.plots:
    from ssmtl_jax import plots  # pylint: disable=g-import-not-at-top
    plots.roc(frame_scores, labels, os.path.join(eval_dir, "roc.png"),
              title=f"micro AUC {micro:.3f}")
    for vid in gt:
      plots.score_curve(frame_scores[vid], labels[vid],
                        os.path.join(eval_dir, f"scores_{vid}.png"),
                        title=f"{vid}: AUC "
                        f"{'n/a' if per_video[vid] is None else f'{per_video[vid]:.3f}'}")
  if config.eval.render_video:
    from ssmtl_jax import plots  # pylint: disable=g-import-not-at-top
    plots.render_videos(config, gt, objs, combined, frame_scores,
                        os.path.join(eval_dir, "videos"), map_kw)
  logging.info("Evaluation report: %s", os.path.join(eval_dir, "report.json"))
  print(summary_table(report))
  return report


def summary_table(report: dict) -> str:
  fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
  rows = [("micro AUC", fmt(report["micro_auc"])),
          ("macro AUC", fmt(report["macro_auc"])),
          ("RBDC", fmt(report["rbdc"])), ("TBDC", fmt(report["tbdc"]))]
  rows += [(f"  {t} alone (micro AUC)", fmt(v))
           for t, v in report["per_task_micro_auc"].items()]
  fps = report["fps"]
  rows += [("model FPS", f"{fps['model']:.1f}" if fps["model"] else "n/a")]
  if "end_to_end" in fps:
    rows += [("end-to-end FPS", f"{fps['end_to_end']:.1f}")]
  width = max(len(r[0]) for r in rows)
  lines = [f"checkpoint step {report['checkpoint_step']}, "
           f"{report['num_videos']} videos, {report['num_frames']} frames, "
           f"{report['num_objects']} objects"]
  lines += [f"{name:<{width}}  {value:>7}" for name, value in rows]
  return "\n".join(lines)
