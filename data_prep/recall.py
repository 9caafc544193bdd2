r"""Detector recall on anomalies: how many anomalies have a detection at all.

What the model never sees as an object it cannot score, so this bounds the
final AUC. Reads the test records (the detections that became cubes), the
pixel masks and, where present, the frame labels:

  python -m data_prep.recall --records DIR/records --root ../shared/data/ped2

* frame recall: abnormal frames (mask not empty) with at least one box
  overlapping the mask;
* region recall: mask components (8-connected) found, with docs/DESIGN.md §3's
  criterion: a box covers at least half of the component, or has IoU >= 0.1
  with the component's bounding box.

Objects exist only for the centre frames c <= t < T-c, where c is the
records' "context" (their "half_window" W when the metadata has no
"context"). Only those frames count for recall; the abnormal frames outside
that range (the first and last c frames of each video, "border frames") are
reported separately, per video and in total.

AUC bound ("auc_bound"): the frame-level AUC a *perfect object scorer* would
reach with these boxes and this border handling. The perfect scorer knows
which boxes are abnormal: it gives 1 to every object whose box (rounded as
``frame_scoring.rasterize_boxes``) overlaps the anomaly mask of its frame and 0 to
every other object. A frame's score is the max over its objects (0 when it
has none); border frames take the score of the nearest frame that can hold
objects (t < c: frame c; t >= T-c: frame T-c-1; when T <= 2c no frame holds
objects and every frame scores 0).
The bound is then micro AUC over all frames of all videos, per-video AUC
(None for a single-class video) and macro AUC over the two-class videos
(``metrics.micro_auc`` / ``metrics.macro_auc``; sklearn, ties count 1/2), and
the macro with single-class videos counted as 1.0. Frame labels are
ROOT/gt_frame/<video_id>.npy (what the evaluator scores against), or "mask
not empty" for a video without that file ("videos_labelled_from_masks").

What the bound ignores: the spatial/temporal smoothing of the maps (which can
spread a hit to a missed neighbour frame or blur a hit away), the map scale,
and every imperfection of a real scorer; it only says what is lost because
the detector never boxed an anomaly, or because border frames copy their
neighbour. It is not an upper bound for a scorer with smoothing.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

from absl import flags
from etils import epath
import numpy as np
from scipy import ndimage

from ssmtl_jax.base import cli
from ssmtl_jax.base import errors
from ssmtl_jax.base import ground_truth
from ssmtl_jax.base import schema
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.evaluation import frame_scoring
from ssmtl_jax.evaluation import metrics


def _iou(a, b) -> float:
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def context_of(meta: Mapping) -> int:
  """c: objects exist for centre frames c <= t < T-c (records metadata
  "context", else "half_window")."""
  return int(meta.get("context", meta["half_window"]))


def border_copy(scores: np.ndarray, context: int) -> np.ndarray:
  """Frames t < c take frame c's score, frames t >= T-c frame T-c-1's, as
  the evaluator's maps (``frame_scoring.fill_borders``); unchanged when no frame
  can hold objects (T <= 2c: every score is 0 then). Returns a new float64
  [T]."""
  scores = np.array(scores, np.float64)
  return frame_scoring.fill_borders(scores[:, None, None], int(context))[:, 0, 0]


def _video(masks: np.ndarray, boxes_at, c: int) -> tuple[dict, np.ndarray]:
  """Recall counts of one video and its perfect-scorer frame scores [T].

  boxes_at(t) -> float [N, 4] boxes of frame t.
  """
  t_len, height, width = masks.shape
  scores = np.zeros(t_len, np.float64)
  v = {"abnormal_frames": 0, "hit": 0, "border_abnormal": 0, "regions": 0,
       "regions_found": 0}
  for t in range(t_len):
    if not masks[t].any():
      continue  # no object here overlaps a mask: score 0
    if not c <= t < t_len - c:
      v["border_abnormal"] += 1
      continue
    px = frame_scoring.rasterize_boxes(boxes_at(t), height, width).tolist()
    labels, _ = ndimage.label(masks[t], structure=np.ones((3, 3)))
    frame_hit = False
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
      comp = labels[sl] == i
      cbox = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
      found = False
      for x1, y1, x2, y2 in px:
        inside = (labels[y1:y2, x1:x2] == i).sum()
        frame_hit |= bool(inside > 0)
        if inside >= 0.5 * comp.sum() or _iou((x1, y1, x2, y2), cbox) >= 0.1:
          found = True
      v["regions"] += 1
      v["regions_found"] += int(found)
    v["abnormal_frames"] += 1
    v["hit"] += int(frame_hit)
    # The perfect scorer gives 1 to the objects overlapping the mask, so the
    # frame's max is 1 exactly when the frame is hit.
    scores[t] = float(frame_hit)
  v["frame_recall"] = (v["hit"] / v["abnormal_frames"]
                       if v["abnormal_frames"] else None)
  return v, border_copy(scores, c)


def _boxes_by_frame(records: str, split: str) -> dict[tuple[str, int], list]:
  info = input_pipeline.records_info(records, split)
  boxes: dict[tuple[str, int], list] = {}
  for batch in input_pipeline.eval_dataset(
      info, batch_size=1024, keys=("video_id", "frame_index", "box")
  ).as_numpy_iterator():
    for v, t, b in zip(batch["video_id"], batch["frame_index"], batch["box"]):
      boxes.setdefault((v.decode(), int(t)), []).append(b)
  return boxes


def auc_bound(scores: Mapping[str, np.ndarray],
              labels: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
  """({"micro", "macro", "macro_single_class_as_1"}, {video: AUC or None})
  of the given frame scores; micro is None when all frames share one label,
  macro None when no video has both labels."""
  try:
    micro = metrics.micro_auc(scores, labels)
  except ValueError:
    micro = None  # one class over all frames
  macro, per_video, _ = metrics.macro_auc(scores, labels)
  return ({"micro": micro, "macro": macro,
           "macro_single_class_as_1": metrics.macro_auc_single_as_one(
               per_video)}, per_video)


def anomaly_recall(records: str, root: str, split: str = "test", *,
                   skip_unmasked: bool = False) -> dict:
  """The recall and bound of the module doc for one split of ``records``.

  ``skip_unmasked``: videos without pixel masks are left out (listed in
  "videos_without_masks": e.g. the 'fast' and 'reverse' videos of a
  validation split, beside its 'paste' ones) instead of an error.
  """
  meta = schema.read_json(schema.meta_path(records, split))
  c = context_of(meta)
  boxes = _boxes_by_frame(records, split)
  per_video, scores, labels = {}, {}, {}
  from_masks = 0
  unmasked = []
  for vid, v in meta["videos"].items():
    shape = (int(v["frames"]), int(v["height"]), int(v["width"]))
    masks = ground_truth.load_pixel_masks(root, vid, shape)
    if masks is None and skip_unmasked:
      unmasked.append(vid)
      continue
    if masks is None:
      raise ground_truth.GroundTruthError(
          f"{split} video {vid!r} has no pixel masks "
          f"({ground_truth.pixel_masks_path(root, vid)}): recall needs "
          "ROOT/gt_pixel/<video_id>.npz (--skip_unmasked leaves such "
          "videos out)")
    per_video[vid], scores[vid] = _video(
        masks, lambda t, vid=vid: np.asarray(boxes.get((vid, t), []),
                                             np.float64).reshape(-1, 4), c)
    lab = ground_truth.load_frame_labels(root, vid, shape[0])
    if lab is None:
      lab = masks.reshape(shape[0], -1).any(axis=1).astype(np.uint8)
      from_masks += 1
    labels[vid] = lab
  if not per_video:
    raise ground_truth.GroundTruthError(
        f"no {split} video has pixel masks in {root}/gt_pixel: nothing to "
        "measure recall on")
  bound, bound_per_video = auc_bound(scores, labels)
  bound["videos_labelled_from_masks"] = from_masks
  for vid, a in bound_per_video.items():
    per_video[vid]["auc_bound"] = a

  def total(key):
    return sum(p[key] for p in per_video.values())

  frames, frames_hit = total("abnormal_frames"), total("hit")
  regions, regions_hit = total("regions"), total("regions_found")
  return {"frame_recall": frames_hit / max(frames, 1),
          "region_recall": regions_hit / max(regions, 1),
          "abnormal_frames": frames, "abnormal_frames_hit": frames_hit,
          "regions": regions, "regions_found": regions_hit,
          "abnormal_border_frames_without_cubes": total("border_abnormal"),
          "context": c,
          "videos_without_masks": unmasked,
          "auc_bound": bound,
          "per_video": per_video}


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("records", None, "records directory (data_prep.build)",
                      flag_values=fv, required=True)
  flags.DEFINE_string("root", None, "data root with gt_pixel/ (and gt_frame/)",
                      flag_values=fv, required=True)
  flags.DEFINE_string("split", "test", "split to check", flag_values=fv)
  flags.DEFINE_bool("skip_unmasked", False, "leave out videos without pixel "
                    "masks (else an error)", flag_values=fv)
  return fv


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = cli.parse_tool_flags("python -m data_prep.recall", _flags(), argv)

  def run():
    meta = epath.Path(schema.meta_path(args.records, args.split))
    if not meta.exists():
      raise errors.DataError(
          f"--records={args.records}: no {args.split!r} split there ({meta} "
          "missing); build the records with `python -m data_prep.build`")
    return anomaly_recall(args.records, args.root, args.split,
                          skip_unmasked=args.skip_unmasked)

  result = cli.run_reporting_user_errors(run)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
