"""Evaluation: object scores -> smoothed anomaly maps -> frame scores -> metrics.

Shaped like a big_vision evaluator: ``Evaluator(config, workdir, step)``
restores a checkpoint and ``run()`` yields ``(name, value)`` metrics
(``micro_auc``, ``macro_auc``, ``macro_auc_single_class_as_1``, ``rbdc``,
``tbdc``, ``pixel_auc``, ``per_task/<task>``, ``per_task_macro/<task>``);
:func:`evaluate` is the thin driver that writes them to ``report.json`` and
to TensorBoard (``eval/<name>`` at the checkpoint step, in the trainer's
event directory), and draws the plots.

Writes under ``WORKDIR/eval/`` (``WORKDIR/eval_<split>/`` for another
split, e.g. ``data.val_split``): ``report.json`` (docs/DESIGN.md §8), ``scores/<video>.npy``
(float32 frame scores aligned with ``gt_frame/<video>.npy``), ``roc.png``,
``scores_<video>.png``, on request annotated videos, and two per-checkpoint
caches: ``train_stats_step<N>.json`` (normalisation statistics) and
``object_scores_step<N>.npz`` (raw per-task test object scores), so that a
re-evaluation with other ``eval.*`` settings does not rerun the model.

Decisions (see also ssmtl_jax/evaluation/frame_scoring.py and ssmtl_jax/evaluation/metrics.py):

* object score = weighted mean of the per-task scores of the trained tasks,
  each normalised (z-score with training-object statistics by default);
* the first and last C frames of a video (C = the records' ``context``),
  which cannot hold cubes, take the map of the nearest frame that can
  (``frame_scoring.fill_borders``); other frames without any object get the
  background value: the lowest object score of the whole test set, the same
  for every video so that micro AUC compares like with like;
* RBDC/TBDC predicted regions are the scored object boxes themselves (one per
  detection, score = its object score); GT regions are connected components
  of the pixel masks, GT tracks link regions that overlap in consecutive
  frames (the masks carry no track ids);
* macro AUC skips videos with one class only and reports how many;
  ``macro_auc_single_class_as_1`` is the other convention (such videos count
  as 1.0);
* a video without frame labels (no ``gt_frame/<video>.npy``) is scored like
  the others (frame scores, score plot, annotated video) but not measured:
  the label metrics cover the labelled videos only, and are null, with the
  reason in the report, when no video is labelled or the labelled frames are
  all of one class.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import time
from typing import Callable, Iterable, Iterator, Optional

from absl import logging
from etils import epath
import jax
import numpy as np

from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.base import schema
from ssmtl_jax.base import summaries
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.evaluation import frame_scoring
from ssmtl_jax.evaluation import inference
from ssmtl_jax.evaluation import metrics

# video_id -> its frames in order, uint8 RGB [H, W, 3] (for eval.render_video).
FrameReader = Callable[[str], Iterable[np.ndarray]]


class EvalDataError(errors.DataError):
  """Records and ground truth that disagree (ground-truth files themselves
  raise ``ground_truth.GroundTruthError``)."""


# --------------------------------------------------------------------------
# Per-checkpoint caches.


def eval_dir_path(workdir: str, config, split: str) -> epath.Path:
  """``WORKDIR/eval`` for the test split, ``WORKDIR/eval_<split>`` else."""
  name = "eval" if split == config.data.test_split else f"eval_{split}"
  return epath.Path(workdir) / name


def _cache_key(scorer, config, split: str) -> str:
  """Identifies what the cached scores depend on: the checkpoint's variables,
  how the model scores (tasks, sequence length, KD loss form, dtype) and the
  records (their split metadata), not only the step number."""
  digest = hashlib.sha256(b"scores-v3")  # v2: + kd_det, kd_cls; v3: + cfg
  cfg = scorer.cfg
  digest.update(repr((cfg.tasks, cfg.seq_half, cfg.num_det, cfg.kd_loss,
                      str(scorer.model.dtype))).encode())
  for leaf in jax.tree.leaves(jax.device_get(scorer.variables)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  for name in (config.data.train_split, split):
    digest.update(epath.Path(schema.meta_path(config.data.records,
                                              name)).read_bytes())
  return digest.hexdigest()


def cached_train_stats(scorer, config, eval_dir: epath.Path, key: str) -> dict:
  """Per-task (mean, std) of training-object scores, cached per checkpoint in
  ``eval/train_stats_step<N>.json``."""
  path = eval_dir / f"train_stats_step{scorer.step}.json"
  key = f"{key}:{int(config.eval.norm_max_objects)}"
  if path.exists():
    cached = schema.read_json(str(path))
    if cached.get("cache_key") == key:
      return {k: tuple(v) for k, v in cached["stats"].items()}
  info = input_pipeline.records_info(config.data.records,
                                     config.data.train_split)
  train_scores = scorer.score_split(
      info, int(config.eval.batch_size),
      max_objects=int(config.eval.norm_max_objects), desc="train stats")
  stats = frame_scoring.fit_stats(train_scores.scores)
  schema.write_json_atomic(str(path), {"cache_key": key, "stats": {
      k: list(v) for k, v in stats.items()}})
  return stats


def cached_test_scores(scorer, config, eval_dir: epath.Path, key: str,
                       split: Optional[str] = None
                       ) -> inference.ScoredObjects:
  """The raw per-task scores of every test object, cached per checkpoint in
  ``eval/object_scores_step<N>.npz`` so that re-evaluating with other eval.*
  settings (normalisation, task weights, sigma) skips the model."""
  path = eval_dir / f"object_scores_step{scorer.step}.npz"
  if path.exists():
    with path.open("rb") as fh, np.load(fh) as f:
      if str(f["cache_key"]) == key:
        return inference.ScoredObjects(
            video_id=f["video_id"], frame_index=f["frame_index"], box=f["box"],
            scores={k[len("score_"):]: f[k] for k in f.files
                    if k.startswith("score_")},
            seconds=float(f["seconds"]))
  split = split or config.data.test_split
  info = input_pipeline.records_info(config.data.records, split)
  objs = scorer.score_split(info, int(config.eval.batch_size), desc=split)
  tmp = path.with_name(path.name + ".tmp.npz")
  with tmp.open("wb") as f:
    np.savez(f, video_id=objs.video_id, frame_index=objs.frame_index,
             box=objs.box, seconds=objs.seconds, cache_key=key,
             **{f"score_{k}": v for k, v in objs.scores.items()})
  tmp.replace(path)
  return objs


# --------------------------------------------------------------------------
# The evaluator.


@dataclasses.dataclass
class Outputs:
  """What one evaluation computed; the report and figures are made from it."""
  step: int                                  # the checkpoint's step
  split: str                                 # the scored split
  context: int                               # its records' context C
  gt: dict[str, ground_truth.VideoGT]        # per test video
  objs: inference.ScoredObjects           # raw per-task test scores
  tasks: tuple[str, ...]                     # scored tasks, schema.TASKS order
  weights: dict[str, float]                  # their weights in the combination
  combined: np.ndarray                       # float64 [N] object scores
  frame_scores: dict[str, np.ndarray]        # {video: float32 [T]}
  per_video: dict[str, Optional[float]]      # {video: AUC or None}
  num_single_class: int                      # labelled videos macro skipped
  notes: list[str]
  maps_seconds: float                        # maps + frame scores, combined
  metrics: dict[str, Optional[float]]        # see Evaluator.run
  # Why the label metrics are all null (no labelled video, or labelled
  # frames of one class only); None when they were computed.
  metrics_unavailable: Optional[str] = None

  @property
  def labels(self) -> dict[str, np.ndarray]:
    """{video: frame labels} of the labelled videos."""
    return {vid: g.labels for vid, g in self.gt.items()
            if g.labels is not None}

  @property
  def unlabeled(self) -> list[str]:
    """The videos without frame labels (scored, not measured)."""
    return [vid for vid, g in self.gt.items() if g.labels is None]


class Evaluator:
  """Scores the test split with one checkpoint and measures the frame scores.

  ``Evaluator(config, workdir, step).run()`` yields ``(name, value)``:
  ``micro_auc``, ``macro_auc``, ``rbdc``, ``tbdc``, ``pixel_auc`` and
  ``per_task/<task>`` (the micro AUC of each task alone), measured on the
  videos with frame labels; a metric that cannot be computed (RBDC/TBDC and
  pixel AUC without pixel masks,
  macro AUC without a two-class video, every label metric without a labelled
  video) is left out. ``outputs`` holds everything else one evaluation
  computed.

  The constructor checks the config, the test records and the ground truth,
  so mistakes surface before the model is restored. ``require_labels``: a
  video without frame labels is an error (``ground_truth.GroundTruthError``)
  instead of a video that is scored but not measured.
  """

  def __init__(self, config, workdir: str, step: Optional[int] = None, *,
               split: Optional[str] = None, require_labels: bool = False):
    kd_mode = str(config.eval.get("kd_score", "balanced"))
    if kd_mode not in frame_scoring.KD_SCORES:
      raise errors.ConfigError(
          f"config.eval.kd_score must be one of {frame_scoring.KD_SCORES}, got "
          f"{kd_mode!r}")
    if str(config.eval.normalize) not in frame_scoring.NORMALIZATIONS:
      raise errors.ConfigError(
          f"config.eval.normalize must be one of {frame_scoring.NORMALIZATIONS}, "
          f"got {config.eval.normalize!r}")
    try:
      self.settings = frame_scoring.Settings.from_config(config)
    except ValueError as e:
      raise errors.ConfigError(f"config.eval: {e}") from None
    self.config = config
    self.workdir = workdir
    self.split = split or config.data.test_split
    self.eval_dir = eval_dir_path(workdir, config, self.split)
    self.step = inference.requested_step(config, step)
    self.meta_file = schema.meta_path(config.data.records, self.split)
    if not epath.Path(self.meta_file).exists():
      raise input_pipeline.DataError(
          f"no {self.split!r} split in config.data.records="
          f"{config.data.records!r} ({self.meta_file} missing)")
    self.meta = schema.read_json(self.meta_file)
    # Objects exist for frames C <= t < T-C and hold real frames t-C..t+C
    # (ssmtl_jax.perception.cubes); records from before 2026-12 have C = W.
    self.context = int(self.meta.get("context", self.meta["half_window"]))
    if int(config.tasks.seq_half) > self.context:
      raise errors.ConfigError(
          f"config.tasks.seq_half={config.tasks.seq_half} exceeds the "
          f"context {self.context} the {self.split!r} records were built "
          f"with ({self.meta_file}): scoring would read padded frames; "
          "rebuild with build.test_context >= tasks.seq_half")
    self.root = config.data.root or self.meta.get("root", "")
    self.gt = ground_truth.load_split(self.root, self.meta["videos"],
                                      require_labels=require_labels)

  def run(self) -> Iterator[tuple[str, float]]:
    for name, value in self.outputs.metrics.items():
      if value is not None:
        yield name, value

  @functools.cached_property
  def _scorer(self):
    """(scorer, cache key): the restored checkpoint."""
    scorer = inference.restore_scorer(self.config, self.workdir, self.step)
    return scorer, _cache_key(scorer, self.config, self.split)

  @functools.cached_property
  def objects(self) -> inference.ScoredObjects:
    """The raw per-task scores of every object of the split (cached on disk
    per checkpoint)."""
    scorer, key = self._scorer
    (self.eval_dir / "scores").mkdir(parents=True, exist_ok=True)
    objs = cached_test_scores(scorer, self.config, self.eval_dir, key,
                              self.split)
    unknown = sorted(set(objs.video_id) - set(self.gt))
    if unknown:
      raise EvalDataError(f"records hold objects of videos {unknown[:5]} that "
                          f"{self.meta_file} does not list")
    return objs

  @property
  def checkpoint_step(self) -> int:
    """The restored checkpoint's step."""
    return self._scorer[0].step

  @functools.cached_property
  def _train_stats(self) -> dict:
    scorer, key = self._scorer
    return cached_train_stats(scorer, self.config, self.eval_dir, key)

  def train_stats(self) -> dict:
    """Per-task (mean, std) of training-object scores (cached on disk)."""
    return self._train_stats

  def object_scores(self, settings: frame_scoring.Settings, keep=None):
    """(normalised task scores, combined score) of the split's objects
    (those where ``keep`` [N] bool is set, default all) under ``settings``;
    the training statistics are loaded only for z-scoring."""
    raw = self.objects.scores
    if keep is not None:
      raw = {k: v[keep] for k, v in raw.items()}
    stats = self.train_stats() if settings.normalize == "zscore" else None
    return frame_scoring.object_anomaly_scores(raw, settings, stats)

  def frame_scores(self, values, settings: frame_scoring.Settings, *, keep=None,
                   context: Optional[int] = None,
                   on_maps=None) -> dict[str, np.ndarray]:
    """Frame scores of every video from one value per (kept) object, with
    the records' border context unless ``context`` is given (``on_maps``:
    as ``frame_scoring.frame_scores_by_video``)."""
    objs = self.objects
    sel = slice(None) if keep is None else keep
    return frame_scoring.frame_scores_by_video(
        objs.video_id[sel], objs.frame_index[sel], objs.box[sel], values,
        self.videos, settings,
        context=self.context if context is None else context, on_maps=on_maps)

  @property
  def videos(self) -> dict[str, tuple[int, int, int]]:
    """{video_id: (frames, height, width)} of the split."""
    return {vid: (g.frames, g.height, g.width) for vid, g in self.gt.items()}

  @functools.cached_property
  def outputs(self) -> Outputs:
    config, settings, gt = self.config, self.settings, self.gt
    objs = self.objects
    scorer, _ = self._scorer
    tasks = tuple(t for t in frame_scoring.TASKS if t in objs.scores)
    weights = settings.weights_for(tasks)
    if not any(weights.values()):
      raise errors.ConfigError(
          f"config.eval.task_weights gives weight 0 to every trained task "
          f"{tasks}")

    # --- Object scores: normalise per task, combine.
    normed, combined = self.object_scores(settings)

    # --- Maps -> frame scores, per video (combined, and each task alone);
    # the combined maps also give the pixel-level AUC where every labelled
    # video has masks.
    labelled = {vid: g for vid, g in gt.items() if g.labels is not None}
    pixels = None
    if labelled and all(g.mask_path for g in labelled.values()):
      # Maps hold the object scores and their minimum (the background).
      pixels = metrics.PixelAUC(*((float(np.min(combined)),
                                   float(np.max(combined)))
                                  if np.size(combined) else (0.0, 0.0)))

    def add_pixels(vid, maps):
      if pixels is not None and vid in labelled:
        pixels.add(maps, labelled[vid].masks())

    by_video = functools.partial(self.frame_scores, settings=settings)
    t_maps = time.perf_counter()
    frame_scores = by_video(combined, on_maps=add_pixels)
    maps_seconds = time.perf_counter() - t_maps

    # --- Metrics, on the labelled videos only.
    labels = {vid: g.labels for vid, g in labelled.items()}
    on_labelled = lambda scores: {vid: scores[vid] for vid in labels}
    values = dict.fromkeys(("micro_auc", "macro_auc",
                            "macro_auc_single_class_as_1", "rbdc", "tbdc",
                            "pixel_auc"))
    for t in tasks:
      values[f"per_task/{t}"] = values[f"per_task_macro/{t}"] = None
    per_video = dict.fromkeys(gt)
    single, notes = 0, []
    unavailable = self._why_no_label_metrics(labels)
    if unavailable:
      notes.append("micro/macro AUC, per-task AUCs, RBDC, TBDC: null, "
                   + unavailable)
    else:
      if len(labelled) < len(gt):
        unlabeled = [vid for vid in gt if vid not in labelled]
        notes.append(
            f"frame labels for {len(labelled)} of {len(gt)} videos: the "
            "AUCs, RBDC and TBDC cover those only; no "
            f"{ground_truth.frame_labels_path(self.root, '<video>')} for "
            f"{_first(unlabeled)} (all in unlabeled_videos)")
      scores = on_labelled(frame_scores)
      values["micro_auc"] = metrics.micro_auc(scores, labels)
      values["macro_auc"], labelled_auc, single = metrics.macro_auc(scores,
                                                                    labels)
      per_video.update(labelled_auc)
      values["macro_auc_single_class_as_1"] = (
          metrics.macro_auc_single_as_one(labelled_auc))
      if single:
        notes.append(f"macro_auc: {single} single-class video(s) skipped; "
                     "macro_auc_single_class_as_1 counts them as 1.0")
      values["rbdc"], values["tbdc"], note = _detection_metrics(
          objs, combined, labelled, extend=bool(config.eval.extend_curves))
      notes.append(note)
      values["pixel_auc"] = pixels.value() if pixels is not None else None
      notes.append(
          "pixel_auc: every pixel of the labelled videos' smoothed anomaly "
          "maps (resized to the masks) against gt_pixel" if pixels is not None
          else "pixel_auc: null, not every labelled video has gt_pixel masks")
      for t in tasks:
        task_frames = on_labelled(by_video(normed[t]))
        values[f"per_task/{t}"] = metrics.micro_auc(task_frames, labels)
        values[f"per_task_macro/{t}"] = metrics.macro_auc(task_frames,
                                                          labels)[0]
    return Outputs(step=scorer.step, split=self.split, context=self.context,
                   gt=gt, objs=objs, tasks=tasks,
                   weights=weights, combined=combined,
                   frame_scores=frame_scores, per_video=per_video,
                   num_single_class=single, notes=notes,
                   maps_seconds=maps_seconds, metrics=values,
                   metrics_unavailable=unavailable)

  def _why_no_label_metrics(self, labels: dict[str, np.ndarray]
                            ) -> Optional[str]:
    """Why no label metric can be computed from ``labels`` (those of the
    labelled videos), or None."""
    if not labels:
      return (f"no frame labels: "
              f"{ground_truth.frame_labels_path(self.root, '<video>')} "
              f"missing for all {len(self.gt)} {self.split!r} videos")
    frames = np.concatenate(list(labels.values()))
    if frames.size == 0 or frames.min() == frames.max():
      kind = "abnormal" if frames.size and frames[0] else "normal"
      return (f"the {frames.size} labelled frames ({len(labels)} "
              f"video(s)) are all {kind}: no ROC curve")
    return None


def _first(ids: list[str], n: int = 10) -> str:
  return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n
                               else "")


def _detection_metrics(objs, combined, gt, *, extend: bool):
  """(RBDC, TBDC, note) from the scored object boxes vs the pixel masks of
  the videos of ``gt``; (None, None, note) when one of them has no masks."""
  if not all(g.mask_path for g in gt.values()):
    return None, None, ("rbdc, tbdc: null, not every labelled video has "
                        "gt_pixel masks")
  dets, gts = {}, {}
  for vid, g in gt.items():
    idx = np.flatnonzero(objs.video_id == vid)
    dets[vid] = metrics.Detections(objs.frame_index[idx], objs.box[idx],
                                   combined[idx])
    gts[vid] = metrics.GroundTruth.from_masks(g.masks())
  curves = metrics.detection_curves(dets, gts, extend_to_fpr_max=extend)
  return curves.rbdc, curves.tbdc, (
      "rbdc/tbdc: predicted regions = scored object boxes; GT tracks linked "
      "from overlapping mask regions")


# --------------------------------------------------------------------------
# Outputs: report, TensorBoard, figures.


def _machine() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor()
          or platform.machine(), "cpu_count": os.cpu_count(),
          "device_kind": jax.devices()[0].device_kind,
          "num_devices": jax.device_count()}


def make_report(config, out: Outputs, values: dict[str, float],
                build_seconds: Optional[float], seconds: float) -> dict:
  """report.json (docs/DESIGN.md §8) from the evaluator's outputs and its metrics
  ``values`` (as ``Evaluator.run`` yields them; absent ones are null).
  ``labels`` says which videos have frame labels ('all', 'partial', 'none'),
  ``unlabeled_videos`` names the others and ``metrics_unavailable`` says why
  every label metric is null (else null)."""
  num_frames = sum(g.frames for g in out.gt.values())
  unlabeled = out.unlabeled
  objs = out.objs
  fps = {"model": num_frames / objs.seconds if objs.seconds > 0 else None,
         "maps_and_metrics": num_frames / max(out.maps_seconds, 1e-9),
         "objects_per_second": len(out.combined) / objs.seconds
                               if objs.seconds > 0 else None}
  if build_seconds:
    fps["build_detect_crop_teachers"] = num_frames / build_seconds
    fps["end_to_end"] = num_frames / (build_seconds + objs.seconds
                                      + out.maps_seconds)
  return {
      "micro_auc": values.get("micro_auc"),
      "macro_auc": values.get("macro_auc"),
      "macro_auc_single_class_as_1": values.get("macro_auc_single_class_as_1"),
      "rbdc": values.get("rbdc"), "tbdc": values.get("tbdc"),
      "pixel_auc": values.get("pixel_auc"),
      "per_task_micro_auc": {t: values.get(f"per_task/{t}") for t in out.tasks},
      "per_task_macro_auc": {t: values.get(f"per_task_macro/{t}")
                             for t in out.tasks},
      "split": out.split,
      "context": out.context,
      "per_video_auc": out.per_video,
      "num_single_class_videos": out.num_single_class,
      "labels": ("none" if len(unlabeled) == len(out.gt)
                 else "partial" if unlabeled else "all"),
      "unlabeled_videos": unlabeled,
      "metrics_unavailable": out.metrics_unavailable,
      "fps": fps,
      "num_frames": num_frames, "num_videos": len(out.gt),
      "num_objects": int(len(out.combined)),
      "checkpoint_step": out.step,
      "tasks": list(out.tasks), "task_weights": out.weights,
      "normalize": config.eval.normalize,
      "kd_score": (str(config.eval.get("kd_score", "balanced"))
                   if "kd" in out.tasks else None),
      "sigma": list(config.eval.sigma),
      "temporal_sigma": float(config.eval.temporal_sigma),
      "map_scale": float(config.eval.map_scale),
      "machine": _machine(),
      "records": config.data.records,
      "seconds": seconds,
      "notes": out.notes,
  }


def write_frame_scores(eval_dir: epath.Path, out: Outputs) -> None:
  """``scores/<video>.npy``: float32 [T], aligned with gt_frame/<video>.npy."""
  (eval_dir / "scores").mkdir(parents=True, exist_ok=True)
  for vid, s in out.frame_scores.items():
    with (eval_dir / "scores" / f"{vid}.npy").open("wb") as f:
      np.save(f, s.astype(np.float32))


def write_scalars(workdir: str, step: int, values: dict[str, float], *,
                  prefix: str = "eval") -> None:
  """``<prefix>/<name>`` scalars (``eval/`` for the test split,
  ``eval_<split>/`` for another) at the checkpoint step, in the event directory
  the trainer writes ``train/...`` to (train/trainer.py: the workdir); process 0
  writes, the others only log. Nothing when no metric exists (no labels)."""
  scalars = {f"{prefix}/{k}": v for k, v in values.items() if v is not None}
  if not scalars:
    return
  with summaries.create_default_writer(
      workdir, just_logging=jax.process_index() > 0) as writer:
    writer.write_scalars(step, scalars)


def write_plots(eval_dir: epath.Path, out: Outputs) -> None:
  """roc.png (micro, all labelled frames; none, and an earlier one removed,
  without a micro AUC) and scores_<video>.png per test video."""
  from ssmtl_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
  labels = out.labels
  roc_path = eval_dir / "roc.png"
  if out.metrics["micro_auc"] is None:
    if roc_path.exists():
      roc_path.unlink()
  else:
    plots.roc({vid: out.frame_scores[vid] for vid in labels}, labels,
              str(roc_path), title=f"micro AUC {out.metrics['micro_auc']:.3f}")
  for vid in out.gt:
    auc = out.per_video[vid]
    if vid not in labels:
      title = f"{vid}: no frame labels"
    else:
      title = f"{vid}: AUC {'n/a' if auc is None else f'{auc:.3f}'}"
    plots.score_curve(out.frame_scores[vid], labels.get(vid),
                      str(eval_dir / f"scores_{vid}.png"), title=title)


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None, *,
             read_frames: Optional[FrameReader] = None,
             split: Optional[str] = None) -> dict:
  """Evaluates checkpoint `step` (default config.eval.checkpoint_step, -1 =
  latest) of workdir on the test split; returns the report.

  read_frames: video_id -> its RGB frames; required by
    ``config.eval.render_video`` (the binaries pass
    ``steps.test_frame_reader(config)``).
  split: the split to score (default config.data.test_split); another
    split's outputs go to ``WORKDIR/eval_<split>/``.
  """
  t_start = time.perf_counter()
  if config.eval.render_video and read_frames is None:
    raise errors.ConfigError(
        "config.eval.render_video needs the test videos' frames: evaluate "
        "with `python -m ssmtl_jax.evaluate` (or steps.evaluate_with_videos)")
  evaluator = Evaluator(config, workdir, step, split=split)
  values = dict(evaluator.run())
  out = evaluator.outputs
  eval_dir = evaluator.eval_dir
  write_frame_scores(eval_dir, out)
  report = make_report(config, out, values, evaluator.meta.get("build_seconds"),
                       time.perf_counter() - t_start)
  schema.write_json_atomic(str(eval_dir / "report.json"), report)
  write_scalars(workdir, out.step, values, prefix=eval_dir.name)
  if config.eval.plots:
    write_plots(eval_dir, out)
  if config.eval.render_video:
    from ssmtl_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
    plots.render_videos(out.gt, out.objs, out.combined, out.frame_scores,
                        str(eval_dir / "videos"), evaluator.settings,
                        read_frames, context=out.context)
  logging.info("Evaluation report: %s", eval_dir / "report.json")
  print(summary_table(report))
  return report


def summary_table(report: dict) -> str:
  fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
  rows = [("micro AUC", fmt(report["micro_auc"])),
          ("macro AUC", fmt(report["macro_auc"])),
          ("  single-class videos as 1.0",
           fmt(report.get("macro_auc_single_class_as_1"))),
          ("RBDC", fmt(report["rbdc"])), ("TBDC", fmt(report["tbdc"])),
          ("pixel AUC", fmt(report.get("pixel_auc")))]
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
  unlabeled = report.get("unlabeled_videos") or []
  if report.get("metrics_unavailable"):
    lines.append("label metrics unavailable: " + report["metrics_unavailable"])
  elif unlabeled:
    lines.append(f"label metrics on the {report['num_videos'] - len(unlabeled)}"
                 f" labelled videos ({len(unlabeled)} without frame labels)")
  lines += [f"{name:<{width}}  {value:>7}" for name, value in rows]
  return "\n".join(lines)
