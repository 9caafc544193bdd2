r"""Detector recall on anomalies: how many anomalies have a detection at all.

What the model never sees as an object it cannot score, so this bounds the
final AUC. Reads the test records (the detections that became cubes) and the
pixel masks:

  python -m data_prep.recall --records DIR/records --root ../shared/data/ped2

* frame recall: abnormal frames with at least one box overlapping the mask;
* region recall: mask components (8-connected) found, with docs/DESIGN.md §3's
  criterion: a box covers at least half of the component, or has IoU >= 0.1
  with the component's bounding box.

Only frames that can hold cubes (W <= t < T-W) count; the first and last W
frames of each video are reported separately.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from absl import flags
from etils import epath
import numpy as np
from scipy import ndimage

from ssmtl_jax import cli
from ssmtl_jax import errors
from ssmtl_jax import ground_truth
from ssmtl_jax import input_pipeline
from ssmtl_jax import schema
from ssmtl_jax import scoring


def _iou(a, b) -> float:
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def anomaly_recall(records: str, root: str, split: str = "test") -> dict:
  meta = schema.read_json(schema.meta_path(records, split))
  w = int(meta["half_window"])
  info = input_pipeline.records_info(records, split)
  boxes: dict[tuple[str, int], list] = {}
  for batch in input_pipeline.eval_dataset(
      info, batch_size=1024, keys=("video_id", "frame_index", "box")
  ).as_numpy_iterator():
    for v, t, b in zip(batch["video_id"], batch["frame_index"], batch["box"]):
      boxes.setdefault((v.decode(), int(t)), []).append(b)
  frames = frames_hit = regions = regions_hit = border_abnormal = 0
  per_video = {}
  for vid, v in meta["videos"].items():
    masks = ground_truth.load_pixel_masks(
        root, vid, (v["frames"], v["height"], v["width"]))
    if masks is None:
      raise ground_truth.GroundTruthError(
          f"test video {vid!r} has no pixel masks "
          f"({ground_truth.pixel_masks_path(root, vid)}): recall needs "
          "ROOT/gt_pixel/<video_id>.npz")
    v_frames = v_hit = 0
    for t in range(masks.shape[0]):
      if not masks[t].any():
        continue
      if not w <= t < masks.shape[0] - w:
        border_abnormal += 1
        continue
      px = scoring.rasterize_boxes(np.asarray(boxes.get((vid, t), [])),
                                   *masks.shape[1:]) if (vid, t) in boxes else []
      labels, n = ndimage.label(masks[t], structure=np.ones((3, 3)))
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
        regions += 1
        regions_hit += int(found)
      v_frames += 1
      v_hit += int(frame_hit)
    frames += v_frames
    frames_hit += v_hit
    per_video[vid] = {"abnormal_frames": v_frames, "hit": v_hit}
  return {"frame_recall": frames_hit / max(frames, 1),
          "region_recall": regions_hit / max(regions, 1),
          "abnormal_frames": frames, "abnormal_frames_hit": frames_hit,
          "regions": regions, "regions_found": regions_hit,
          "abnormal_border_frames_without_cubes": border_abnormal,
          "per_video": per_video}


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("records", None, "records directory (data_prep.build)",
                      flag_values=fv, required=True)
  flags.DEFINE_string("root", None, "data root with gt_pixel/", flag_values=fv,
                      required=True)
  flags.DEFINE_string("split", "test", "split to check", flag_values=fv)
  return fv


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = cli.parse_tool_flags("python -m data_prep.recall", _flags(), argv)

  def run():
    meta = epath.Path(schema.meta_path(args.records, args.split))
    if not meta.exists():
      raise errors.DataError(
          f"--records={args.records}: no {args.split!r} split there ({meta} "
          "missing); build the records with `python -m data_prep.build`")
    return anomaly_recall(args.records, args.root, args.split)

  result = cli.run_reporting_user_errors(run)
  print(json.dumps({k: v for k, v in result.items() if k != "per_video"},
                   indent=1))


if __name__ == "__main__":
  main()
