r"""Our RBDC/TBDC vs py-ssvad-metrics on an evaluated workdir's object boxes.

  python scripts/rbdc_vs_oracle.py --config configs/synthetic.py \
      --workdir DIR [--checkpoint STEP] [--mapping linked|video] \
      [--config.key=value ...]

Loads the test objects and their combined scores through
``ssmtl_jax.evaluation.evaluator.Evaluator(config, workdir).outputs`` (the per-checkpoint
score cache makes this cheap after ``ssmtl_jax.evaluate``), computes
RBDC/TBDC with ``ssmtl_jax.evaluation.metrics.detection_curves`` and with the
independent oracle py-ssvad-metrics (``CurrentCriteriaAccumulator``) on the
same predicted boxes and scores, prints a table and writes
``DIR/eval/rbdc_vs_oracle.json``.

Inputs, the same for both sides
-------------------------------
* Predicted regions: the scored object boxes, rasterised like
  ``metrics.detection_curves`` does (``frame_scoring.rasterize_boxes``; boxes with
  no pixel in the frame dropped), handed to the oracle as integer
  ``anomalous_regions``.
* Scores: the combined object scores min-max normalised over all test
  objects to [0, 1] (the oracle requires [0, 1]; our curve only depends on
  the scores' order, so this does not change our numbers). All scores equal:
  all 1.0. The lowest-scored object(s), at 0.0, are active for the oracle
  only at its thresholds <= 0, where its whole frame is one region: it never
  sees them as regions of their own (one object of thousands on real data;
  ``ours_oracle_grid`` below does the same).
* GT regions: 8-connected components of each frame's pixel mask (both).

GT tracks: the mapping (``--mapping``)
--------------------------------------
The oracle takes one track id per *frame* (every GT region of frame t belongs
to track ``anomaly_track_id[t]``); the masks carry no track ids, and our
evaluator derives tracks per *region* with ``metrics.link_tracks`` (regions of
consecutive frames that share a pixel). The oracle cannot express two tracks
in one frame.

* ``linked`` (default): our own linked tracks, made per-frame: tracks that
  occur together in some frame are merged (connected components of "share a
  frame"), and each frame with GT takes its merged track's id (frames without
  GT: -1). It reuses our linking, so where no frame holds two tracks the
  oracle and we count the very same tracks and only the RBDC/TBDC computation
  differs; where frames do hold several tracks the merge is the finest
  per-frame partition consistent with ours (each merged track is a union of
  whole linked tracks). On UCSD Ped2 every test video with two or three
  anomalous objects has them in the same frames (videos 03, 04, 06, 07, 09,
  11), so there it coincides with ``video``.
* ``video``: one track per video (every frame with GT: id 0), the coarse
  Ped2-style convention.

TBDC then differs for two reasons, reported separately: the tracks (ours:
linked per region; oracle: merged per frame) and the computation. The JSON
holds, beside ``ours`` (exactly the evaluator's computation, ``extended`` and
``unextended``) and ``oracle``, two intermediate computations of ours that
split the difference into its causes:

* ``ours_frame_tracks``: ours with the oracle's per-frame tracks (RBDC is
  unchanged; TBDC moves by the track mapping alone);
* ``ours_oracle_grid``: that, on the oracle's threshold grid with float32
  scores, plus its whole-frame operating point (thresholds <= 0 reach the
  painted map's zero background: each frame becomes one frame-sized region;
  see ssmtl_jax/evaluation/metrics.py, difference 2). It equals the oracle exactly
  (to float rounding) when no two predicted boxes of a frame overlap or touch
  (8-connectivity); otherwise the oracle merges them into one region (scores
  averaged where they overlap) and ``oracle - ours_oracle_grid`` is the
  effect of that merge.

So ``oracle - ours.unextended`` = track mapping + (grid and whole-frame
point) + box merging, each listed under ``differences``.

The oracle runs per video (one ``update`` per video, with a progress bar):
it re-labels every frame at each of its 103 thresholds, twice for frames in
tracks, so it is slow on large sets: measured on one UCSD Ped2 test video
(240x360, ~8 boxes per frame, 2 CPU cores) 0.19 s per frame, i.e. ~6 min for
Ped2's ~2000 test frames; 0.14 s per frame with ``--oracle_jit`` (numba
compiles its helpers once, ~10 s, same numbers). Otherwise they run as plain
numpy (``NUMBA_DISABLE_JIT`` at import, as in tests/test_metrics.py), faster
on small sets. Its GT maps are written as float32 ``.npy`` files (its only
mask input) to a temporary directory, one video at a time.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as `python scripts/rbdc_vs_oracle.py`
  sys.path.insert(0, _REPO)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssmtl_jax.evaluation import frame_scoring  # pylint: disable=g-import-not-at-top,wrong-import-position
from ssmtl_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

MAPPINGS = ("linked", "video")
OUTPUT = "rbdc_vs_oracle.json"


# --------------------------------------------------------------------------
# The oracle.


def import_oracle(jit: bool = False):
  """py-ssvad-metrics' (criteria, data_schema) modules.

  Without ``jit`` its numba helpers run as plain numpy: compiling them costs
  ~10 s, more than they save on small frames. The flag is read when the
  helpers are decorated, i.e. at the package's first import (a later call
  cannot change it).
  """
  if "ssvad_metrics" not in sys.modules and "numba" not in sys.modules and (
      not jit):
    old = os.environ.get("NUMBA_DISABLE_JIT")
    os.environ["NUMBA_DISABLE_JIT"] = "1"
    try:
      import ssvad_metrics  # pylint: disable=g-import-not-at-top,unused-import
    finally:
      if old is None:
        del os.environ["NUMBA_DISABLE_JIT"]
      else:
        os.environ["NUMBA_DISABLE_JIT"] = old
  from ssvad_metrics import criteria, data_schema  # pylint: disable=g-import-not-at-top
  return criteria, data_schema


def _version(dist: str) -> Optional[str]:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


# --------------------------------------------------------------------------
# Inputs shared by both sides.


def normalize_scores(scores: np.ndarray) -> np.ndarray:
  """Min-max to [0, 1] over all objects (all equal: all 1.0)."""
  scores = np.asarray(scores, np.float64).reshape(-1)
  if scores.size == 0:
    return scores
  if not np.all(np.isfinite(scores)):
    raise ValueError("object scores hold non-finite values")
  lo, hi = scores.min(), scores.max()
  if hi == lo:
    return np.ones_like(scores)
  return np.clip((scores - lo) / (hi - lo), 0.0, 1.0)


def frame_track_ids(gt: metrics.GroundTruth, mapping: str = "linked"
                    ) -> Tuple[np.ndarray, Dict[str, int]]:
  """One track id per frame for the oracle (module doc: the mapping).

  Args:
    gt: one video's GT regions (``GroundTruth.from_masks``, no track ids).
    mapping: "linked" or "video".
  Returns:
    (int [T] track id per frame, -1 where the frame has no GT region; info:
    num_linked_tracks (ours), num_frame_tracks (the oracle's),
    frames_with_several_linked_tracks).
  """
  if mapping not in MAPPINGS:
    raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
  ids = np.full(gt.num_frames, -1, np.int64)
  linked = metrics.link_tracks(gt).track_ids
  num_linked = int(linked.max()) + 1 if linked.size else 0
  by_frame: Dict[int, set] = {}
  for t, k in zip(gt.frame_index.tolist(), linked.tolist()):
    by_frame.setdefault(t, set()).add(k)
  several = sum(len(ks) > 1 for ks in by_frame.values())
  if mapping == "video":
    ids[list(by_frame)] = 0
  else:
    # Tracks that share a frame are one oracle track: connected components
    # of the graph "linked track k and k' occur in the same frame".
    edges = np.array([(min(ks), k) for ks in by_frame.values() for k in ks],
                     np.int64).reshape(-1, 2)
    graph = sparse.coo_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
        shape=(num_linked, num_linked))
    _, component = csgraph.connected_components(graph, directed=False)
    new: Dict[int, int] = {}
    for t in sorted(by_frame):  # ids in order of first appearance
      ids[t] = new.setdefault(int(component[min(by_frame[t])]), len(new))
  return ids, {"num_linked_tracks": num_linked,
               "num_frame_tracks": len(set(ids[ids >= 0].tolist())),
               "frames_with_several_linked_tracks": int(several)}


def _frames_with_touching_boxes(frame_index: np.ndarray, px: np.ndarray
                                ) -> int:
  """Frames where two predicted pixel boxes overlap or 8-touch (the oracle
  merges those into one region when both are active)."""
  count = 0
  for t in np.unique(frame_index):
    b = px[frame_index == t]
    if b.shape[0] < 2:
      continue
    # Pixels x1..x2-1: boxes a, b touch or overlap iff b.x1 <= a.x2 and
    # a.x1 <= b.x2 (same for y).
    near = ((b[:, None, 0] <= b[None, :, 2]) & (b[None, :, 0] <= b[:, None, 2])
            & (b[:, None, 1] <= b[None, :, 3]) & (b[None, :, 1] <= b[:, None, 3]))
    np.fill_diagonal(near, False)
    count += bool(near.any())
  return count


def _masks_of(g) -> np.ndarray:
  """bool [T, H, W] from a ground_truth.VideoGT (masks()) or an array."""
  if hasattr(g, "masks") and callable(g.masks):
    if getattr(g, "mask_path", True) is None:
      raise ValueError("RBDC/TBDC need gt_pixel masks for every test video")
    return np.asarray(g.masks()).astype(bool, copy=False)
  return np.asarray(g).astype(bool, copy=False)


# --------------------------------------------------------------------------
# The oracle's side.


def _oracle_video(data_schema, acc, masks: np.ndarray, frames: np.ndarray,
                  px: np.ndarray, scores: np.ndarray, track_ids: np.ndarray,
                  tmp: str) -> None:
  """One ``acc.update`` for one video: masks bool [T, H, W] (written as
  float32 .npy maps under tmp), the kept predictions (frame [P], int pixel
  boxes [P, 4], scores in [0, 1] [P]) and per-frame track ids [T]."""
  t_total, h, w = masks.shape
  zeros = os.path.join(tmp, "zeros.npy")
  np.save(zeros, np.zeros((h, w), np.float32))
  gt_frames, pred_frames = [], []
  order = np.argsort(frames, kind="stable")
  bounds = np.searchsorted(frames[order], np.arange(t_total + 1))
  for t in range(t_total):
    if masks[t].any():
      path = os.path.join(tmp, f"gt_{t}.npy")
      np.save(path, masks[t].astype(np.float32))
    else:
      path = zeros
    gt_frames.append(dict(frame_id=t + 1, pixel_level_scores_map=path,
                          anomaly_track_id=int(track_ids[t])))
    idx = order[bounds[t]:bounds[t + 1]]
    pred_frames.append(dict(frame_id=t + 1, anomalous_regions=[
        dict(bounding_box=[int(v) for v in px[i]], score=float(scores[i]))
        for i in idx]))
  common = dict(frames_count=t_total, is_anomalous_regions_available=True,
                frame_width=w, frame_height=h)
  preds = data_schema.VADAnnotation(
      is_gt=False, is_anomaly_track_id_available=False, frames=pred_frames,
      **common)
  gts = data_schema.VADAnnotation(
      is_gt=True, is_anomaly_track_id_available=True, frames=gt_frames,
      **common)
  # Its painted map divides 0 / 0 where no box is (then zeroes the NaNs).
  with np.errstate(invalid="ignore", divide="ignore"):
    acc.update(preds, gts)


# --------------------------------------------------------------------------
# Ours, computed the oracle's way.


def _ours_oracle_grid(dets, gts, grid: np.ndarray) -> Tuple[float, float]:
  """Our curves on the oracle's thresholds > 0 with float32 scores, plus its
  whole-frame point (one frame-sized region per frame), integrated its way
  (no extension past the last point)."""
  dets32 = {v: metrics.Detections(d.frame_index, d.boxes,
                                  d.scores.astype(np.float32)
                                  .astype(np.float64))
            for v, d in dets.items()}
  c = metrics.detection_curves(dets32, gts, thresholds=grid[grid > 0],
                               extend_to_fpr_max=False)
  full = {v: metrics.Detections(np.arange(g.num_frames),
                                [(0, 0, g.width, g.height)] * g.num_frames,
                                np.zeros(g.num_frames))
          for v, g in gts.items()}
  f = metrics.detection_curves(full, gts, extend_to_fpr_max=False)
  fpr = np.append(c.fpr, f.fpr[-1])

  def area(y, yf):
    return metrics.curve_area(fpr, np.append(y, yf[-1]),
                              extend_to_fpr_max=False)

  return area(c.rbdr, f.rbdr), area(c.tbdr, f.tbdr)


def _pair(rbdc: Optional[float], tbdc: Optional[float]) -> Dict[str, Any]:
  return {"rbdc": None if rbdc is None else float(rbdc),
          "tbdc": None if tbdc is None else float(tbdc)}


def _minus(a: Mapping[str, Optional[float]], b: Mapping[str, Optional[float]]
           ) -> Dict[str, Optional[float]]:
  return {k: (None if a[k] is None or b[k] is None else float(a[k] - b[k]))
          for k in ("rbdc", "tbdc")}


def compare(objs, combined: np.ndarray, gt: Mapping[str, Any], *,
            mapping: str = "linked", alpha: float = 0.1, beta: float = 0.1,
            progress: bool = True, oracle_jit: bool = False) -> dict:
  """Our RBDC/TBDC and py-ssvad-metrics' on the same boxes, scores and GT.

  Args:
    objs: the test objects: ``video_id`` str [N], ``frame_index`` int [N],
      ``box`` float [N, 4] (x1, y1, x2, y2) px (``inference.ScoredObjects``
      or anything with these attributes).
    combined: float [N] object scores (higher = more anomalous).
    gt: {video: ground_truth.VideoGT (with masks) or bool [T, H, W] masks},
      every test video (videos without objects count their frames).
    mapping: GT tracks for the oracle, "linked" or "video" (module doc).
    alpha, beta: the criteria's track and IoU thresholds (both sides).
    progress: a tqdm bar over the videos while the oracle runs.
    oracle_jit: let numba compile the oracle's helpers (first import only).
  Returns:
    The JSON-ready comparison (see the module doc; the keys of ``ours``,
    ``ours_frame_tracks``, ``ours_oracle_grid`` and ``oracle`` are rbdc and
    tbdc, ``differences`` holds their pairwise differences).
  """
  if mapping not in MAPPINGS:
    raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
  criteria, data_schema = import_oracle(oracle_jit)
  video_id = np.asarray(objs.video_id).astype(str)
  frame_index = np.asarray(objs.frame_index, np.int64).reshape(-1)
  boxes = np.asarray(objs.box, np.float64).reshape(-1, 4)
  combined = np.asarray(combined, np.float64).reshape(-1)
  if not video_id.shape[0] == frame_index.shape[0] == boxes.shape[0] == (
      combined.shape[0]):
    raise ValueError(f"{video_id.shape[0]} objects but {combined.shape[0]} "
                     "scores")
  unknown = sorted(set(video_id.tolist()) - set(gt))
  if unknown:
    raise ValueError(f"objects of videos {unknown[:5]} without ground truth")
  scores = normalize_scores(combined)

  acc = criteria.CurrentCriteriaAccumulator(alpha=alpha, beta=beta)
  dets, gts, gts_frame = {}, {}, {}
  track_info = {"num_linked_tracks": 0, "num_frame_tracks": 0,
                "frames_with_several_linked_tracks": 0}
  touching = num_frames = num_dets = 0
  oracle_seconds = 0.0
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(list(gt), desc="py-ssvad-metrics", unit="video",
             disable=not progress, file=sys.stderr)
  with tempfile.TemporaryDirectory(prefix="rbdc_oracle_") as tmp_root:
    for vid in bar:
      masks = _masks_of(gt[vid])
      t_total, h, w = masks.shape
      idx = np.flatnonzero(video_id == vid)
      dets[vid] = metrics.Detections(frame_index[idx], boxes[idx], scores[idx])
      g = metrics.GroundTruth.from_masks(masks)
      gts[vid] = g
      ids, info = frame_track_ids(g, mapping)
      for k in track_info:
        track_info[k] += info[k]
      gts_frame[vid] = dataclasses.replace(g, track_ids=ids[g.frame_index])
      # The boxes our side keeps (detection_curves drops empty ones and
      # raises on frames outside the video, before the oracle runs).
      fi = frame_index[idx]
      if fi.size and (fi.min() < 0 or fi.max() >= t_total):
        raise ValueError(f"video {vid!r}: object frame_index outside "
                         f"[0, {t_total})")
      px = frame_scoring.rasterize_boxes(boxes[idx], h, w)
      keep = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
      touching += _frames_with_touching_boxes(fi[keep], px[keep])
      num_frames += t_total
      num_dets += int(keep.sum())
      bar.set_postfix(video=vid, frames=t_total)
      tmp = os.path.join(tmp_root, "video")
      os.makedirs(tmp)
      t0 = time.perf_counter()
      _oracle_video(data_schema, acc, masks, fi[keep], px[keep],
                    scores[idx][keep], ids, tmp)
      oracle_seconds += time.perf_counter() - t0
      for name in os.listdir(tmp):
        os.remove(os.path.join(tmp, name))
      os.rmdir(tmp)
      del masks
  t0 = time.perf_counter()
  out = acc.summarize()
  oracle_seconds += time.perf_counter() - t0
  oracle = _pair(out["region_roc_auc"], out["track_roc_auc"])

  kw = dict(alpha=alpha, beta=beta)
  unext = metrics.detection_curves(dets, gts, extend_to_fpr_max=False, **kw)
  ext = metrics.detection_curves(dets, gts, extend_to_fpr_max=True, **kw)
  ours = {"unextended": _pair(unext.rbdc, unext.tbdc),
          "extended": _pair(ext.rbdc, ext.tbdc)}
  frame_tracks = metrics.detection_curves(dets, gts_frame,
                                          extend_to_fpr_max=False, **kw)
  ours_frame_tracks = _pair(frame_tracks.rbdc, frame_tracks.tbdc)
  grid = np.asarray(criteria.ANOMALY_SCORE_THRESHOLDS, np.float64)
  ours_grid = _pair(*_ours_oracle_grid(dets, gts_frame, grid))

  # Compiled helpers are numba dispatchers (they keep the Python function).
  jit = hasattr(sys.modules["ssvad_metrics._utils"].mask_iou, "py_func")
  return {
      "ours": ours,
      "ours_frame_tracks": ours_frame_tracks,
      "ours_oracle_grid": ours_grid,
      "oracle": oracle,
      "differences": {
          # |oracle - ours| as asked; signed parts explain it.
          "abs_oracle_minus_ours_unextended": {
              k: None if v is None else abs(v)
              for k, v in _minus(oracle, ours["unextended"]).items()},
          "abs_oracle_minus_ours_extended": {
              k: None if v is None else abs(v)
              for k, v in _minus(oracle, ours["extended"]).items()},
          "oracle_minus_ours_unextended": _minus(oracle, ours["unextended"]),
          "oracle_minus_ours_extended": _minus(oracle, ours["extended"]),
          "track_mapping": _minus(ours_frame_tracks, ours["unextended"]),
          "grid_and_whole_frame_point": _minus(ours_grid, ours_frame_tracks),
          "box_merging": _minus(oracle, ours_grid),
      },
      "mapping": {
          "name": mapping,
          "description": (
              "oracle GT track per frame: our linked tracks "
              "(metrics.link_tracks) merged where they share a frame"
              if mapping == "linked" else
              "oracle GT track per frame: one track per video"),
          **track_info,
      },
      "scores": "combined object scores min-max normalised to [0, 1] over "
                "all test objects (both sides)",
      "alpha": alpha, "beta": beta,
      "num_videos": len(gt),
      "num_frames": int(num_frames),
      "num_objects": int(combined.shape[0]),
      "num_detections": int(num_dets),
      "num_gt_regions": int(unext.num_gt_regions),
      "num_gt_tracks_ours": int(unext.num_gt_tracks),
      "frames_with_touching_boxes": int(touching),
      # Below 1: the unextended curve stops early (a detector with few false
      # positives), where the extension and the oracle's whole-frame point
      # matter most.
      "ours_last_fpr": float(unext.fpr[-1]),
      "oracle_seconds": oracle_seconds,
      "versions": {
          "py-ssvad-metrics": _version("py-ssvad-metrics"),
          "ssmtl-jax": _version("ssmtl-jax"),
          "numpy": np.__version__,
          "opencv": _version("opencv-python")
                    or _version("opencv-python-headless"),
          "python": platform.python_version(),
          "oracle_numba_jit": jit,
      },
  }


# --------------------------------------------------------------------------
# Output.


def table(result: dict) -> str:
  """The comparison as a small fixed-width table."""
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
  rows = [
      ("ours, unextended (oracle's convention)", result["ours"]["unextended"]),
      ("ours, extended to FPR 1 (evaluator default)",
       result["ours"]["extended"]),
      ("ours, oracle's per-frame tracks", result["ours_frame_tracks"]),
      ("ours, + oracle's grid and whole-frame point",
       result["ours_oracle_grid"]),
      (f"py-ssvad-metrics {result['versions']['py-ssvad-metrics']}",
       result["oracle"]),
      ("|oracle - ours unextended|",
       result["differences"]["abs_oracle_minus_ours_unextended"]),
      ("|oracle - ours extended|",
       result["differences"]["abs_oracle_minus_ours_extended"]),
      ("  of which: track mapping", result["differences"]["track_mapping"]),
      ("  grid + whole-frame point",
       result["differences"]["grid_and_whole_frame_point"]),
      ("  overlapping boxes merged", result["differences"]["box_merging"]),
  ]
  width = max(len(r[0]) for r in rows)
  m = result["mapping"]
  lines = [f"{result['num_videos']} videos, {result['num_frames']} frames, "
           f"{result['num_objects']} objects ({result['num_detections']} "
           f"boxes in frame), {result['num_gt_regions']} GT regions; "
           f"frames with touching boxes: "
           f"{result['frames_with_touching_boxes']}",
           f"GT tracks: ours {m['num_linked_tracks']} linked, oracle "
           f"{m['num_frame_tracks']} per-frame (mapping {m['name']!r}; "
           f"{m['frames_with_several_linked_tracks']} frames hold several "
           "linked tracks)",
           f"{'':<{width}}  {'RBDC':>8}  {'TBDC':>8}"]
  lines += [f"{name:<{width}}  {fmt(v['rbdc']):>8}  {fmt(v['tbdc']):>8}"
            for name, v in rows]
  lines.append(f"oracle time {result['oracle_seconds']:.1f} s")
  return "\n".join(lines)


def run(config, workdir: str, step: Optional[int] = None, *,
        mapping: str = "linked", progress: bool = True,
        oracle_jit: bool = False) -> dict:
  """Evaluator outputs of workdir -> compare() -> WORKDIR/eval/OUTPUT (the
  evaluator's eval directory); returns the comparison."""
  from ssmtl_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  ev = evaluator.Evaluator(config, workdir, step, require_labels=True)
  out = ev.outputs
  missing = [v for v, g in out.gt.items() if g.mask_path is None]
  if missing:
    raise ValueError(f"RBDC/TBDC need gt_pixel masks; videos {missing[:5]} "
                     "have none")
  result = compare(out.objs, out.combined, out.gt, mapping=mapping,
                   progress=progress, oracle_jit=oracle_jit)
  result["workdir"] = os.path.abspath(workdir)
  result["checkpoint_step"] = int(out.step)
  result["evaluator_metrics"] = {
      "rbdc": out.metrics.get("rbdc"), "tbdc": out.metrics.get("tbdc"),
      "extend_curves": bool(config.eval.extend_curves)}
  result["output"] = os.path.join(str(ev.eval_dir), OUTPUT)
  from ssmtl_jax.base import schema  # pylint: disable=g-import-not-at-top
  schema.write_json_atomic(result["output"], result)
  return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """The command line (argv without the program name; default sys.argv[1:]);
  returns the comparison written to WORKDIR/eval/rbdc_vs_oracle.json."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.base import cli  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.jobs import config_checks  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.jobs import steps  # pylint: disable=g-import-not-at-top

  prog = "rbdc_vs_oracle.py"
  # Own FlagValues: main() can run several times in one process (tests).
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "An evaluated training workdir.",
                      flag_values=fv)
  flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: "
                       "config.eval.checkpoint_step, -1 = latest).",
                       flag_values=fv)
  flags.DEFINE_enum("mapping", "linked", list(MAPPINGS),
                    "GT tracks for the oracle (see the script's doc).",
                    flag_values=fv)
  flags.DEFINE_bool("progress", True, "Progress bar over videos.",
                    flag_values=fv)
  flags.DEFINE_bool("oracle_jit", False, "Let numba compile the oracle's "
                    "helpers (~10 s; pays off only on large sets).",
                    flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                  flag_values=fv, lock_config=True)
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--help" in argv or "-h" in argv:
    print(f"usage: {prog} --config CONFIG --workdir DIR [flags]\n\n"
          f"{fv.get_help()}")
    sys.exit(0)
  rest = cli.parse_flags([prog] + argv, fv)
  if len(rest) > 1:
    cli._exit(f"unexpected arguments: {rest[1:]}")  # pylint: disable=protected-access
  if fv.config is None or fv.workdir is None:
    cli._exit("--config and --workdir are required")  # pylint: disable=protected-access
  cli.quiet_library_logs()
  config = fv.config
  cli.run_reporting_user_errors(lambda: config_checks.check(config))
  steps.resolve_paths(config, fv.workdir)
  result = cli.run_reporting_user_errors(lambda: run(
      config, fv.workdir, fv.checkpoint, mapping=fv.mapping,
      progress=fv.progress, oracle_jit=fv.oracle_jit))
  print(table(result))
  print(f"wrote {result['output']}")
  return result


if __name__ == "__main__":
  main()
