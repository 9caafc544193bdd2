"""scripts/accelerator_run.sh (the one-command GPU/TPU run) and the benchmark's
detector section where OpenCV has no darknet importer (OpenCV 5).

Fast: the script's argument checks (one line, exit 2, nothing written), its
settings, stage commands and budget arithmetic (``--dry_run``), and
``benchmarks.detector_vs_opencv.detector_section`` with ``cv2.dnn.readNetFromDarknet``
removed. Slow (``pytest -m slow -k accelerator``, ~6-8 min on 2 cores): the
whole script on CPU over a Ped2 subset (training videos 01, 02 and 08, 08
held out for the validation split; test videos 02, 12) with a small config
and a 7-minute budget.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.paths import PED2, REPO
from tests import optional

SCRIPT = os.path.join(REPO, "scripts", "accelerator_run.sh")


def _env(**extra):
  """This interpreter's python first on PATH; no 8-fake-device XLA_FLAGS
  (tests/conftest.py) for the script's JAX processes; no SSMTL_* leaking in."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("SSMTL_") or k == "SSMTL_WEIGHTS"}
  env.pop("XLA_FLAGS", None)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _run(args, timeout=60, **env):
  return subprocess.run(["bash", SCRIPT, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=_env(**env))


def _fake_root(tmp_path):
  root = tmp_path / "ped2"
  (root / "train").mkdir(parents=True, exist_ok=True)
  (root / "test").mkdir(exist_ok=True)
  return root


@pytest.mark.parametrize("args,env,message", [
    ([], {}, "OUT_DIR missing"),
    (["OUT", "abc"], {}, "MINUTES must be a positive number"),
    (["OUT", "0"], {}, "MINUTES must be a positive number"),
    (["OUT", "3", "extra"], {}, "unexpected argument 'extra'"),
    (["--bogus", "OUT"], {}, "unknown option --bogus"),
    (["OUT", "3", "--config.total_steps=5"], {},
     "--config.total_steps=5 is set by this script"),
    (["OUT", "3", "--config.input.batch_size=8"], {},
     "--config.input.batch_size=8 is set by this script"),
    (["OUT", "3", "--config.data.val_split=test"], {},
     "--config.data.val_split=test is set by this script"),
    (["OUT", "3", "--config.eval.normalize=minmax"], {},
     "is chosen on the validation split by ssmtl_jax.validate"),
    (["OUT"], {"SSMTL_BATCH": "-4"}, "SSMTL_BATCH must be a positive integer"),
    (["OUT"], {"SSMTL_BENCH": "fast"}, "SSMTL_BENCH must be full, quick or skip"),
    (["OUT"], {"SSMTL_HOLDOUT": ""}, "SSMTL_HOLDOUT must be comma-separated"),
    (["OUT"], {"SSMTL_HOLDOUT": "08,,16"},
     "SSMTL_HOLDOUT must be comma-separated training video ids"),
    (["OUT"], {"SSMTL_HOLDOUT": "08 16"}, "got '08 16'"),
    (["OUT"], {"SSMTL_BACKEND": "gpu", "SSMTL_MEASURE_STEPS": "200"},
     "SSMTL_MEASURE_STEPS=200 exceeds the warm-up (125 steps)"),
    (["OUT"], {"SSMTL_PED2": "MISSING"}, "Ped2 data root not found"),
])
def test_bad_arguments_fail_early_with_one_line(tmp_path, args, env, message):
  env = dict(env)
  if env.get("SSMTL_PED2") == "MISSING":
    env["SSMTL_PED2"] = str(tmp_path / "nowhere")
  else:
    env.setdefault("SSMTL_PED2", str(_fake_root(tmp_path)))
  out = tmp_path / "out"
  args = [str(out) if a == "OUT" else a for a in args]
  proc = _run(args, **env)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("accelerator_run.sh: error: "), (
      proc.stderr)
  assert message in lines[0]
  assert not out.exists()


def _dry_run(tmp_path, *args, **env):
  env.setdefault("SSMTL_PED2", str(_fake_root(tmp_path)))
  proc = _run(["--dry_run", str(tmp_path / "out"), *args], **env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert not (tmp_path / "out").exists()
  return proc.stdout


def test_dry_run_scales_batch_learning_rate_and_warmup_on_an_accelerator(
    tmp_path):
  out = _dry_run(tmp_path, "9", "--config.eval.plots=False",
                 SSMTL_BACKEND="gpu", SSMTL_ASSUME_ELAPSED_S=200,
                 SSMTL_ASSUME_MEASURE_WALL_S=30, SSMTL_ASSUME_STEPS_PER_S=10)
  # configs/ped2.py: batch 64, lr 1e-3, 500 warm-up steps -> x4 / x1/4.
  assert ("backend gpu; batch 256 (config 64), lr 0.004, warm-up 125 steps, "
          "measuring 100 steps; budget 9 min; eval reserve 90 s; benchmark "
          "full") in out
  cmds = [l.strip() for l in out.splitlines() if l.startswith("  python")]
  assert [c.split()[2] for c in cmds] == [
      "data_prep.detector.weights", "data_prep.validation", "data_prep.build",
      "benchmarks.compare", "ssmtl_jax.main", "ssmtl_jax.main",
      "ssmtl_jax.validate", "ssmtl_jax.evaluate", "data_prep.recall"]
  validation, build, bench, measure, train, validate, evaluate, recall = (
      cmds[1:])
  # The validation root: training videos minus the held-out ones (default
  # 08,16), their pseudo-anomalies as 'val', the test split.
  assert validation.endswith("--out SCRATCH/data --holdout 08,16")
  assert "held out for validation: 08,16" in out
  for cmd in (build, measure, train, validate, evaluate):
    assert "--config configs/ped2.py" in cmd
    assert "--config.data.root=SCRATCH/data" in cmd
    assert "--config.data.val_split=val" in cmd
    assert "--config.model.dtype=bfloat16" in cmd
    # User overrides come after the script's defaults (the last one wins).
    assert cmd.index("--config.model.dtype") < cmd.index("--config.eval.plots")
  # Eval settings chosen on 'val' by ssmtl_jax.validate go to the test
  # evaluation, after the user's overrides; both use the trained workdir.
  assert validate.endswith("--workdir SCRATCH/train")
  assert evaluate.endswith("CHOSEN_FLAGS --workdir SCRATCH/train")
  assert evaluate.index("--config.eval.plots") < evaluate.index("CHOSEN_FLAGS")
  assert "CHOSEN_FLAGS = the --config.eval.* flags ssmtl_jax.validate" in out
  assert "SCRATCH/train/eval_val/selection.json" in out
  assert recall.endswith("--root SCRATCH/data")
  assert "--quick" not in bench
  assert "--matrix --matrix_batches=256 --repeats=3" in bench
  for cmd in (measure, train):
    assert "--config.optim.learning_rate=0.004" in cmd
    assert "--config.optim.warmup_steps=125" in cmd
    assert "--config.input.batch_size=256" in cmd
  assert measure.endswith("--config.total_steps=100")
  assert train.endswith("--config.total_steps=TOTAL_STEPS")
  # 540 s - 200 elapsed - 90 eval - (30 - 99/10) start-up - 27 margin
  # = 202.9 s at 10 steps/s, after the 100 measured steps.
  assert "total_steps=2129" in out.splitlines()


def test_dry_run_caps_at_the_config_epochs_and_defaults_on_cpu(tmp_path):
  out = _dry_run(tmp_path, "9", SSMTL_BACKEND="gpu",
                 SSMTL_ASSUME_ELAPSED_S=200, SSMTL_ASSUME_STEPS_PER_S=10,
                 SSMTL_ASSUME_OBJECTS=5000)
  assert "total_steps=585" in out.splitlines()  # 30 epochs x 5000 // 256
  # A measuring run that compiled for 80 s: the resumed run's start-up is
  # capped at 30 s (the compiled step comes from the JAX cache) ...
  out = _dry_run(tmp_path, "9", SSMTL_BACKEND="gpu",
                 SSMTL_ASSUME_ELAPSED_S=200, SSMTL_ASSUME_STEPS_PER_S=10,
                 SSMTL_ASSUME_MEASURE_WALL_S=110)
  # 540 - 200 - 90 - min(110 - 9.9, 30) - 27 = 193 s at 10 steps/s + 100.
  assert "total_steps=2030" in out.splitlines()
  out = _dry_run(tmp_path, "9", SSMTL_BACKEND="gpu",
                 SSMTL_ASSUME_ELAPSED_S=200, SSMTL_ASSUME_STEPS_PER_S=10,
                 SSMTL_ASSUME_MEASURE_WALL_S=110, SSMTL_RESUME_STARTUP_S=60)
  assert "total_steps=1730" in out.splitlines()  # ... or at what it says
  out = _dry_run(tmp_path, "2.5", SSMTL_BACKEND="cpu",
                 SSMTL_ASSUME_STEPS_PER_S=0.5, SSMTL_ASSUME_MEASURE_WALL_S=60)
  assert ("backend cpu; batch 64 (config 64), lr 0.001, warm-up 500 steps, "
          "measuring 100 steps; budget 2.5 min; eval reserve 60 s; benchmark "
          "quick") in out
  assert "--quick" in out
  assert "--config.model.dtype" not in out
  # 150 - 0 - 60 - (60 - 99 / 0.5 < 0 -> 0) - 7.5 = 82.5 s at 0.5 steps/s.
  assert "total_steps=141" in out.splitlines()
  # Nothing left for training: only the measured steps.
  out = _dry_run(tmp_path, "1", SSMTL_BACKEND="cpu", SSMTL_ASSUME_ELAPSED_S=100)
  assert "total_steps=100" in out.splitlines()


def test_dry_run_holds_out_08_of_the_subset_and_takes_ssmtl_holdout(tmp_path):
  out = _dry_run(tmp_path, "3", SSMTL_BACKEND="cpu", SSMTL_SUBSET=1)
  assert "held out for validation: 08" in out.splitlines()[0]
  assert ("  python -m data_prep.validation --root SCRATCH/ped2_subset --out "
          "SCRATCH/data --holdout 08") in out.splitlines()
  out = _dry_run(tmp_path, "3", SSMTL_BACKEND="cpu", SSMTL_HOLDOUT="03,05")
  assert "--out SCRATCH/data --holdout 03,05" in out


# --- benchmarks.compare without OpenCV's darknet importer -------------------


def test_detector_benchmark_without_opencv_darknet_importer(monkeypatch):
  optional.import_or_skip("torch", "torch", module_level=False)
  import cv2  # pylint: disable=g-import-not-at-top
  from benchmarks import detector_vs_opencv  # pylint: disable=g-import-not-at-top
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  if hasattr(cv2.dnn, "readNetFromDarknet"):
    monkeypatch.delattr(cv2.dnn, "readNetFromDarknet")
  settings = harness.BenchSettings.quick_preset()
  settings.det_input, settings.det_batch, settings.det_frames = (96, 64), 2, 2
  settings.repeats, settings.warmup, settings.min_repeat_s = 1, 0, 0.0
  settings.frames_dir = os.path.join(PED2, "test", "01")
  det = detector_vs_opencv.detector_section(settings)
  if "error" in det:
    pytest.skip(f"no YOLOv3-tiny weights here: {det['error']}")
  for name in ("flax_network", "flax_end_to_end"):
    assert det[name]["frames_per_s"] > 0, det[name]
  for name in ("opencv_network", "opencv_end_to_end", "max_abs_row_diff"):
    assert set(det[name]) == {"unavailable"}, det[name]
    assert "readNetFromDarknet" in det[name]["unavailable"]
  results = {
      "machine": {"cpu": "x", "cpu_count": 2, "jax": "0", "jax_devices": 1,
                  "jax_device_kind": "cpu", "jax_backend": "cpu",
                  "torch": "0", "torch_device": "cpu", "torch_num_threads": 2,
                  "opencv": cv2.__version__, "opencv_num_threads": 2},
      "config": {"quick": True, "batch": 8, "frames": 7, "crop": 32,
                 "channels": 1, "variant": "narrow", "depth": "shallow",
                 "widths": [16, 32, 32], "repeats": 1, "det_input": [96, 64],
                 "det_batch": 2},
      "detector": det,
  }
  results["ratios"] = report.ratios(results)
  assert results["ratios"]["detector_network_flax_over_opencv"] is None
  table = report.markdown(results)
  rows = [l for l in table.splitlines() if l.startswith(("| network",
                                                          "| end_to_end"))]
  assert len(rows) == 2
  for row in rows:
    assert row.endswith("| unavailable | - |") and "error" not in row, row
  assert "OpenCV dnn unavailable: OpenCV" in table


# --- The whole script on CPU ------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(PED2, "test")),
                    reason=f"{PED2} not available")
def test_accelerator_script_on_cpu_with_a_ped2_subset(tmp_path):
  out, tmp = tmp_path / "out", tmp_path / "tmp"
  tmp.mkdir()
  proc = _run(
      [str(out), "7", "--config.build.detector.input_size=(416, 416)",
       "--config.build.crop_size=32", "--config.build.train_stride=4",
       "--config.build.classifier.input_size=64",
       "--config.model.variant=narrow", "--config.model.depth=shallow",
       "--config.log_every_steps=10", "--config.eval.plots=False"],
      timeout=1200, SSMTL_PED2=PED2, SSMTL_SUBSET=1, SSMTL_BATCH=32,
      SSMTL_WARMUP_STEPS=10, SSMTL_EVAL_RESERVE_S=60, SSMTL_BENCH="quick",
      SSMTL_BENCH_FLAGS="--notorch_compile", TMPDIR=tmp)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # The scratch dir (records, checkpoints, caches) is gone; OUT_DIR holds
  # only small files.
  assert not list(tmp.glob("ssmtl_accel.*"))
  files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
  assert {"report.json", "train_summary.json", "selection.json",
          "budget.json", "benchmark.json", "benchmark.md",
          "detector_recall.json", "summary.md", "wall_times.json"} <= files
  assert all(f.endswith((".json", ".md")) or f.startswith("logs/")
             for f in files), files
  assert all((out / f).stat().st_size < 1_000_000 for f in files)
  report = json.loads((out / "report.json").read_text())
  assert report["micro_auc"] is not None and report["rbdc"] is not None
  assert set(report["per_video_auc"]) == {"02", "12"}
  # Eval settings chosen on the pseudo-anomalies of held-out video 08 (2
  # videos: fast, reverse), applied to the test evaluation.
  selection = json.loads((out / "selection.json").read_text())
  assert selection["split"] == "val" and selection["num_videos"] == 2
  assert selection["num_abnormal_frames"] > 0
  for key, value in selection["chosen"].items():
    assert report[key] == value, key
  assert report["split"] == "test"
  plan = json.loads((out / "budget.json").read_text())
  summary = json.loads((out / "train_summary.json").read_text())
  # Trained to the planned step, which follows the budget arithmetic (how
  # many steps fit depends on this shared machine's load, so no number).
  assert plan["measure_steps"] == 10 and plan["budget_s"] == 420
  fit = 10 + max(0, math.floor(plan["train_s"] * plan["steps_per_s"]))
  assert plan["total_steps"] == min(fit, plan["epoch_cap_steps"])
  assert plan["epoch_cap_steps"] == 30 * plan["train_objects"] // 32
  assert summary["step"] == report["checkpoint_step"] == plan["total_steps"]
  assert summary["global_batch"] == 32
  walls = json.loads((out / "wall_times.json").read_text())
  assert list(walls) == ["weights", "validation", "build", "benchmark",
                         "measure", "train", "validate", "evaluate", "recall",
                         "total"]
  assert walls["total"] >= sum(v for k, v in walls.items() if k != "total")
  bench = json.loads((out / "benchmark.json").read_text())
  assert bench["config"]["quick"] and bench["train"]["jax"]["cubes_per_s"] > 0
  md = (out / "summary.md").read_text()
  for text in ("micro AUC %", "Budget plan: 420 s", "| train |",
               "| validate |", "Eval settings chosen on the validation split",
               "held-out training videos 08", "## Benchmark"):
    assert text in md, text
