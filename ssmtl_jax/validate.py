r"""Chooses evaluation settings on validation data, never on test labels.

  python -m ssmtl_jax.validate --config configs/ped2_cpu.py --workdir W \
      --config.data.root=VAL_ROOT --config.data.val_split=val

scores the ``config.data.val_split`` split of the records (e.g. the
pseudo-anomaly videos that ``data_prep.validation`` makes from held-out
*training* videos, whose labels are known by construction) with the trained
checkpoint, measures the frame-level micro AUC of every combination in
:data:`GRID` (the eval settings that earlier runs chose on Ped2's test
labels: per-task normalisation, the KD score's form, 1D smoothing of frame
scores), and writes ``W/eval_<val_split>/selection.json``: every
combination's micro and macro AUC on the validation split, the chosen one
(highest micro AUC; ties: higher macro, then the earlier row of the grid) and
the ``--config.eval.*`` flags that apply it. The last line printed is those
flags, so a script can pass them to ``ssmtl_jax.evaluate`` for the test split
(``scripts/reproduce_ped2.sh`` does).

Settings not in the grid (the 3D map smoothing sigma, the map scale, task
weights) keep their config values, fixed a priori. The object scores of the
validation split are computed once per checkpoint and cached like the test
split's (``eval_<val_split>/object_scores_step<N>.npz``).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np
import tqdm

from ssmtl_jax.base import cli
from ssmtl_jax.base import errors
from ssmtl_jax.base import schema
from ssmtl_jax.evaluation import evaluator as evaluator_lib
from ssmtl_jax.evaluation import metrics

# The combinations tried, in order (ties go to the earlier one).
GRID = {
    "normalize": ("zscore", "minmax"),
    "kd_score": ("balanced", "sum", "det", "cls"),
    "temporal_sigma": (0.0, 3.0, 5.0, 7.0),
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def combinations(grid=None) -> list[dict]:
  grid = GRID if grid is None else grid
  keys = list(grid)
  return [dict(zip(keys, values))
          for values in itertools.product(*(grid[k] for k in keys))]


def sweep(ev: evaluator_lib.Evaluator, grid=None, *, progress: bool = True
          ) -> list[dict]:
  """Micro and macro frame AUC of ``ev``'s split for every combination.

  Args:
    ev: an Evaluator of the validation split (``split=config.data.val_split``).
    grid: {eval key: values} (default :data:`GRID`).
  Returns:
    [{"settings": {key: value}, "micro_auc": float, "macro_auc": float or
    None}] in grid order.
  """
  labels = {vid: g.labels for vid, g in ev.gt.items()}
  rows = []
  combos = combinations(grid)
  for combo in tqdm.tqdm(combos, desc="settings", unit="setting",
                         disable=not progress, dynamic_ncols=True):
    settings = dataclasses.replace(ev.settings, **combo)
    try:
      _, combined = ev.object_scores(settings)
    except ValueError as e:  # e.g. kd_score='cls' without a classifier
      rows.append({"settings": combo, "micro_auc": None, "macro_auc": None,
                   "skipped": str(e)})
      continue
    frames = ev.frame_scores(combined, settings)
    rows.append({"settings": combo,
                 "micro_auc": metrics.micro_auc(frames, labels),
                 "macro_auc": metrics.macro_auc(frames, labels)[0]})
  return rows


def choose(rows: Sequence[dict]) -> dict:
  """The row with the highest micro AUC (ties: higher macro, then earlier)."""
  scored = [(i, r) for i, r in enumerate(rows) if r["micro_auc"] is not None]
  if not scored:
    raise errors.DataError("no setting could be scored on the validation "
                           "split")
  return max(scored, key=lambda ir: (
      ir[1]["micro_auc"], -1.0 if ir[1]["macro_auc"] is None
      else ir[1]["macro_auc"], -ir[0]))[1]


def flags_for(settings: dict) -> list[str]:
  return [f"--config.eval.{k}={v}" for k, v in settings.items()]


def select(config, workdir: str, step: Optional[int] = None, grid=None
           ) -> dict:
  """Scores the validation split, sweeps, writes selection.json; returns it."""
  split = str(config.data.get("val_split", "") or "")
  if not split:
    raise errors.ConfigError(
        "config.data.val_split is empty: name the validation split (e.g. "
        "'val', made by `python -m data_prep.validation`)")
  t0 = time.perf_counter()
  # Every validation video needs frame labels (else GroundTruthError).
  ev = evaluator_lib.Evaluator(config, workdir, step, split=split,
                               require_labels=True)
  labels = np.concatenate([g.labels for g in ev.gt.values()])
  if labels.size == 0 or labels.min() == labels.max():
    raise errors.DataError(
        f"the {split!r} split has only one class of frames: nothing to "
        "choose settings on")
  rows = sweep(ev, grid)
  best = choose(rows)
  result = {
      "split": split, "checkpoint_step": ev.checkpoint_step,
      "num_videos": len(ev.gt),
      "num_frames": int(sum(g.frames for g in ev.gt.values())),
      "num_abnormal_frames": int(sum(int(g.labels.sum())
                                     for g in ev.gt.values())),
      "num_objects": int(len(ev.objects.video_id)),
      "criterion": "micro AUC on the validation split (ties: macro AUC, "
                   "then grid order)",
      "fixed": {"sigma": list(ev.settings.sigma),
                "map_scale": ev.settings.map_scale,
                "task_weights": dict(ev.settings.task_weights)},
      "chosen": best["settings"],
      "chosen_micro_auc": best["micro_auc"],
      "chosen_macro_auc": best["macro_auc"],
      "flags": flags_for(best["settings"]),
      "rows": rows,
      "seconds": time.perf_counter() - t0,
  }
  ev.eval_dir.mkdir(parents=True, exist_ok=True)
  schema.write_json_atomic(str(ev.eval_dir / "selection.json"), result)
  return result


def table(result: dict) -> str:
  fmt = lambda v: "  n/a" if v is None else f"{100 * v:5.1f}"
  keys = list(result["chosen"])
  lines = ["  ".join(f"{k:>14}" for k in keys) + "  micro  macro"]
  for r in result["rows"]:
    mark = " <" if r["settings"] == result["chosen"] else ""
    lines.append("  ".join(f"{str(r['settings'][k]):>14}" for k in keys)
                 + f"  {fmt(r['micro_auc'])}  {fmt(r['macro_auc'])}{mark}")
  return "\n".join(lines)


# Without --config, the training run's own (WORKDIR/config.json).
PARSE_FLAGS = cli.parse_flags_config_from_workdir


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssmtl_jax.jobs import steps  # pylint: disable=g-import-not-at-top
  cli.quiet_library_logs()
  config = _CONFIG.value
  cli.run_reporting_user_errors(lambda: steps.check_reader(
      config, _WORKDIR.value, _WORKDIR.value, "--workdir"))
  result = cli.run_reporting_user_errors(
      lambda: select(config, _WORKDIR.value))
  logging.info("Selection: %s", result["chosen"])
  print(table(result))
  print(f"chosen on {result['split']!r} ({result['num_videos']} videos, "
        f"{result['num_abnormal_frames']}/{result['num_frames']} abnormal "
        f"frames): micro {100 * result['chosen_micro_auc']:.1f}")
  print(" ".join(result["flags"]))


if __name__ == "__main__":
  app.run(main, flags_parser=PARSE_FLAGS)
