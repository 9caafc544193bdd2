"""scripts/reproduce_ped2.sh end to end on real UCSD Ped2 frames, shrunk to 3
training videos (one held out for the pseudo-anomaly validation split) and 2
test videos and a short schedule (marked slow: ~10 min on 2 cores; run with
``pytest -m slow -k ped2``)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.paths import PED2, REPO

TRAIN_VIDEOS = ("01", "02", "08")
HOLDOUT = "08"  # its pseudo-anomalies make the validation split
TEST_VIDEOS = ("02", "12")  # both hold normal and abnormal frames


def _subset_root(tmp: pathlib.Path) -> pathlib.Path:
  root = tmp / "ped2_subset"
  for split, vids in (("train", TRAIN_VIDEOS), ("test", TEST_VIDEOS)):
    (root / split).mkdir(parents=True)
    for vid in vids:
      (root / split / vid).symlink_to(os.path.join(PED2, split, vid))
  for kind, ext in (("gt_frame", "npy"), ("gt_pixel", "npz")):
    (root / kind).mkdir()
    for vid in TEST_VIDEOS:
      (root / kind / f"{vid}.{ext}").symlink_to(
          os.path.join(PED2, kind, f"{vid}.{ext}"))
  return root


def _run(root, workdir):
  cmd = ["bash", os.path.join(REPO, "scripts", "reproduce_ped2.sh"), str(root),
         str(workdir), "configs/ped2_cpu.py", "--config.total_steps=120",
         "--config.input.batch_size=32", "--config.optim.warmup_steps=20",
         "--config.checkpoint.every_steps=60", "--config.progress_bar=False"]
  # The script runs `python`: make it this interpreter (venv not activated).
  # As a user runs it: one CPU device, not conftest's 8 fake ones (whose
  # collectives hung for minutes when another job loaded both cores).
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get("PATH", ""), SSMTL_HOLDOUT=HOLDOUT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=1800, env=env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(PED2, "test")),
                    reason=f"{PED2} not available")
def test_reproduce_ped2_subset(tmp_path):
  root, workdir = _subset_root(tmp_path), tmp_path / "work"
  _run(root, workdir)
  report = json.loads((workdir / "eval" / "report.json").read_text())
  for key in ("micro_auc", "macro_auc", "rbdc", "tbdc"):
    assert report[key] is not None, key
  assert set(report["per_task_micro_auc"]) == {"aot", "mi", "mbp", "kd"}
  assert set(report["per_video_auc"]) == set(TEST_VIDEOS)
  assert report["checkpoint_step"] == 120
  assert report["fps"]["model"] > 0 and report["fps"]["end_to_end"] > 0
  assert report["micro_auc"] > 0.5, report
  for name in ["roc.png", "detector_recall.json", "wall_time.txt"] + [
      f"scores_{v}.png" for v in TEST_VIDEOS]:
    assert (workdir / "eval" / name).stat().st_size > 0, name
  recall = json.loads((workdir / "eval" / "detector_recall.json").read_text())
  assert 0 < recall["frame_recall"] <= 1, recall
  assert 0.5 <= recall["auc_bound"]["micro"] <= 1, recall
  # Settings chosen on the validation split (never the test labels) and
  # applied to the test evaluation.
  selection = json.loads((workdir / "eval_val" / "selection.json").read_text())
  assert selection["num_videos"] == 2 and selection["num_abnormal_frames"] > 0
  for key, value in selection["chosen"].items():
    assert report[key] == value, key
  assert report["split"] == "test" and report["context"] == 3
  # The model never trained on the held-out video.
  train_meta = json.loads((workdir / "records" / "meta" / "train.json")
                          .read_text())
  assert sorted(train_meta["videos"]) == ["01", "02"]
  # Resumable: a rerun builds and trains nothing and reports the same numbers.
  _run(root, workdir)
  again = json.loads((workdir / "eval" / "report.json").read_text())
  assert again["micro_auc"] == report["micro_auc"]
