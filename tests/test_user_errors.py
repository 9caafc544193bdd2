"""A user's mistakes end in one line and exit status 2, nothing written
(issue #22): config files that are missing, unparsable or raise; outputs
that cannot be written; the streaming scorer's bad inputs and values, which
are answered before the bundle loads or JAX is imported; a damaged video
named by the builder's preflight; a batch the input pipelines cannot split
refused before the model is built.

Each binary runs its cases in one subprocess (tests/cli_driver.py) with one
CPU device, as a user runs it.
"""

import os

import cv2
import numpy as np
import pytest

from data_prep import validation as validation_command
from ssmtl_jax.perception import video_io
from tests import cli_driver
from tests import optional
from tests.paths import REPO

SYNTHETIC = os.path.join(REPO, "configs", "synthetic.py")


_run = cli_driver.run


def _one_line(result, *needles):
  lines = [l for l in result["stderr"].strip().splitlines() if l.strip()]
  assert result["code"] == 2, result
  assert len(lines) == 1 and lines[0].startswith("error: "), result
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
  """Config files a user can get wrong: path -> text expected in the error."""
  d = tmp_path_factory.mktemp("configs")
  (d / "syntax.py").write_text("def get_config(:\n  pass\n")
  (d / "raises.py").write_text(
      "from configs import common\n\n\ndef get_config():\n"
      "  c = common.get_config()\n  return c.no_such_group.value\n")
  (d / "noget.py").write_text("X = 1\n")
  return {str(d / "missing.py"): "not found",
          str(d / "syntax.py"): "line 1: syntax error",
          str(d / "raises.py"): "line 6: AttributeError",
          str(d / "noget.py"): "defines no get_config()"}


@pytest.fixture()
def blocked(tmp_path):
  """A path that cannot be a folder: its parent is a file."""
  f = tmp_path / "a_file"
  f.write_text("x")
  return f


# module -> argv after --config FILE: every binary that takes a config.
CONFIG_BINARIES = {
    "ssmtl_jax.main": lambda t: ["--workdir", f"{t}/work"],
    "ssmtl_jax.evaluate": lambda t: ["--workdir", f"{t}/work"],
    "ssmtl_jax.validate": lambda t: ["--workdir", f"{t}/work"],
    "ssmtl_jax.export": lambda t: ["--workdir", f"{t}/work", "--out", f"{t}/b"],
    "data_prep.build": lambda t: [f"--config.data.records={t}/records"],
}
# module -> (argv with an unwritable output under BLOCKED, the flag named).
UNWRITABLE = {
    "ssmtl_jax.main": (["--config", SYNTHETIC, "--workdir", "BLOCKED/w"],
                       "--workdir"),
    "ssmtl_jax.evaluate": (["--config", SYNTHETIC, "--workdir", "BLOCKED/w"],
                           "--workdir"),
    "ssmtl_jax.validate": (["--config", SYNTHETIC, "--workdir", "BLOCKED/w"],
                           "--workdir"),
    "ssmtl_jax.export": (["--config", SYNTHETIC, "--workdir", "TMP/w",
                          "--out", "BLOCKED/b"], "--out"),
    "data_prep.build": (["--config", SYNTHETIC, "--config.data.root=TMP/root",
                         "--config.data.records=BLOCKED/r"],
                        "config.data.records"),
}


@pytest.mark.parametrize("module", sorted(CONFIG_BINARIES))
def test_config_file_mistakes_and_unwritable_outputs(module, configs,
                                                     tmp_path, blocked):
  out = tmp_path / "out"
  out.mkdir()
  cases = [["--config", path] + CONFIG_BINARIES[module](out)
           for path in configs]
  # A mistaken override on top of a config that cannot load: the file is named.
  cases.append(["--config", next(iter(configs)),
                "--config.model.variant=wide"] + CONFIG_BINARIES[module](out))
  argv, flag = UNWRITABLE[module]
  cases.append([a.replace("BLOCKED", str(blocked)).replace("TMP", str(out))
                for a in argv])
  results = _run(module, cases)
  for (path, why), result in zip(configs.items(), results):
    _one_line(result, path, why)
  _one_line(results[len(configs)], next(iter(configs)), "not found")
  _one_line(results[-1], flag, str(blocked), "is a file")
  assert os.listdir(out) == []  # nothing written
  assert blocked.read_text() == "x"


def test_validation_out_unwritable(tmp_path, blocked, capsys):
  root = tmp_path / "root"
  for split in ("train", "test"):
    (root / split / "01").mkdir(parents=True)
  with pytest.raises(SystemExit) as e:
    validation_command.main(["--root", str(root), "--out", f"{blocked}/v",
                     "--holdout", "01"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--out" in err[0] and "is a file" in err[0], err


def _frames_folder(path, n=3):
  path.mkdir()
  for i in range(n):
    cv2.imwrite(str(path / f"{i:03d}.png"), np.full((24, 32), 40 * i, np.uint8))
  return path


def test_scorer_checks_everything_before_loading_the_bundle(tmp_path, blocked):
  """Bad values, outputs and inputs are refused before the bundle loads:
  the bundle given is damaged (a truncated bundle.json), so an error about
  the input proves the input was checked first, and JAX is never imported.
  The seconds each case took are printed (no timing assertion)."""
  bundle = tmp_path / "bundle"
  bundle.mkdir()
  (bundle / "bundle.json").write_text('{"format": 1, "config": {"mod')
  good = _frames_folder(tmp_path / "good")
  text = tmp_path / "text.mp4"
  text.write_text("not a video")
  empty_file = tmp_path / "empty.mp4"
  empty_file.write_bytes(b"")
  empty_dir = tmp_path / "empty_dir"
  empty_dir.mkdir()
  out = str(tmp_path / "out")
  base = ["--bundle", str(bundle), "--out", out, "--noprogress"]
  cases = {
      "text .mp4": ([f"--input={text}"], [str(text)]),
      "zero-byte .mp4": ([f"--input={empty_file}"], [str(empty_file)]),
      "empty folder": ([f"--input={empty_dir}"], [str(empty_dir)]),
      "no such path": ([f"--input={tmp_path}/nope"], ["--input", "nope"]),
      "fps": ([f"--input={good}", "--fps=-5"], ["--fps=-5"]),
      "stall": ([f"--input={good}", "--stall_timeout_s=0"],
                ["--stall_timeout_s"]),
      "threshold": ([f"--input={good}", "--threshold=nan"], ["--threshold"]),
      "batch": ([f"--input={good}", "--batch_size=0"], ["--batch_size"]),
      "max_frames": ([f"--input={good}", "--max_frames=-1"], ["--max_frames"]),
      "out": ([f"--input={good}", f"--out={blocked}/s"], ["--out"]),
  }
  results = _run("ssmtl_jax.score", [base + argv for argv, _ in cases.values()]
                 + [base + [f"--input={good}"]])
  for (name, (_, needles)), result in zip(cases.items(), results):
    _one_line(result, *needles)
    assert not result["jax_imported"], name
    print(f"{name}: {result['seconds']:.2f} s")
  # A good input: now the damaged bundle is reached, and named.
  _one_line(results[-1], "bundle.json", "not valid JSON")
  assert not os.path.exists(out)


def test_preflight_names_a_video_whose_frames_stop_decoding(tmp_path):
  """An MJPG .avi whose frames after the first are zeroed opens and decodes
  its first frame: the preflight decodes on and names it as damaged; the
  scorer's lighter check (count=False) accepts it (it scores what decodes)."""
  path = str(tmp_path / "damaged.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
  rng = np.random.default_rng(0)
  for _ in range(40):
    writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
  writer.release()
  src = video_io.VideoSource("damaged", "test", path, "file")
  assert video_io.probe(src).frames == 40  # intact
  data = bytearray(open(path, "rb").read())
  starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xd8"]
  for s in starts[1:]:
    e = data.index(b"\xff\xd9", s) + 2
    data[s:e] = bytes(e - s)
  open(path, "wb").write(bytes(data))
  with pytest.raises(video_io.VideoInputError,
                     match=r"damaged: only 1 of its 40 frames decode"):
    video_io.probe(src)
  assert video_io.probe(src, count=False).frames == 40


def test_a_failed_start_leaves_nothing_behind(tmp_path):
  """A batch the input pipelines cannot split is refused before the model is
  built and before the workdir exists; reading a workdir without a
  checkpoint (evaluate, export) makes no empty checkpoints/ folder."""
  from ssmtl_jax.base import errors  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.evaluation import inference  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.model import network  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.train import trainer  # pylint: disable=g-import-not-at-top
  from tests import record_helpers  # pylint: disable=g-import-not-at-top
  records = str(tmp_path / "records")
  record_helpers.write_records(records)
  config = record_helpers.tiny_config(records, **{"input.num_pipelines": 3})
  workdir = tmp_path / "work"
  built = []
  real = network.create_model
  network.create_model = lambda *a, **k: built.append(1) or real(*a, **k)
  try:
    with pytest.raises(errors.ConfigError, match="num_pipelines|pipelines"):
      trainer.train(config, str(workdir))
  finally:
    network.create_model = real
  assert not built and not workdir.exists()
  empty = tmp_path / "no_checkpoints"
  empty.mkdir()
  with pytest.raises(errors.CheckpointError, match="no checkpoint"):
    inference.restore_scorer(record_helpers.tiny_config(records), str(empty))
  assert os.listdir(empty) == []


def test_the_training_bar_counts_finished_steps():
  """trainer.FinishedSteps moves the bar only for steps whose results are
  ready; the newest step stays in flight; wait_all counts the rest."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.train import trainer  # pylint: disable=g-import-not-at-top

  class Bar:
    n = 0

    def update(self, k):
      self.n += k

  slow = jax.jit(lambda x: jax.lax.fori_loop(
      0, 50, lambda i, a: jnp.tanh(a @ a + 0.01), x))
  bar, outs = Bar(), []
  steps = trainer.FinishedSteps(bar)
  for k in range(5):
    outs.append(slow(jnp.full((192, 192), 0.001 * k)))
    steps.dispatched(outs[-1])
    assert bar.n == k  # every step but the newest, and only finished ones
    assert all(o.is_ready() for o in outs[:bar.n])
  steps.wait_all()
  assert bar.n == 5 and all(o.is_ready() for o in outs)


def test_a_workdir_remembers_its_config(tmp_path):
  """main's trainer writes the resolved config to WORKDIR/config.json;
  evaluate without --config uses it (overrides apply on top); a --config
  whose model/task settings differ is refused naming the keys, as is a
  resume with other settings; speed switches may differ."""
  from ssmtl_jax.base import errors  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.base import run_config  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.train import trainer  # pylint: disable=g-import-not-at-top
  from tests import process_helpers  # pylint: disable=g-import-not-at-top
  from tests import record_helpers  # pylint: disable=g-import-not-at-top
  records = str(tmp_path / "records")
  record_helpers.write_records(records)
  config = record_helpers.tiny_config(records, **{"total_steps": 2})
  workdir = str(tmp_path / "work")
  trainer.train(config, workdir)
  saved = run_config.load(workdir)
  assert saved.to_dict() == config.to_dict()  # tuples come back as tuples
  other = record_helpers.tiny_config(records, **{"model.widths": (4, 8, 16)})
  with pytest.raises(errors.ConfigError, match=r"config\.model\.widths"):
    trainer.train(other, workdir)
  fast = record_helpers.tiny_config(records, **{"model.dtype": "bfloat16"})
  assert run_config.differences(fast, saved) == []
  cfg = process_helpers.write_config(tmp_path / "tiny.py", records)
  empty = tmp_path / "empty"
  empty.mkdir()
  results = _run("ssmtl_jax.evaluate", [
      ["--workdir", workdir, "--config.eval.batch_size=0"],
      ["--config", str(cfg), "--workdir", workdir,
       "--config.model.variant=wide", "--config.tasks.aot.weight=0.5"],
      ["--workdir", str(empty)],
  ])
  # The run's config was loaded (no --config) and the override applied.
  line = _one_line(results[0], "config.eval.batch_size")
  assert "flag" not in line.lower(), line  # a config value, not a bad flag
  _one_line(results[1], "config.model.variant (run: 'narrow', given: 'wide')",
            "config.tasks.aot.weight")
  _one_line(results[2], "config.json not found", "pass --config")


def test_benchmark_output_files_checked_before_the_work(tmp_path, blocked,
                                                        capsys):
  """benchmarks.compare --out/--markdown under a file: one line, exit 2,
  before any model is built."""
  optional.import_or_skip("torch", "torch", module_level=False)
  from benchmarks import compare  # pylint: disable=g-import-not-at-top
  for flag in ("--out", "--markdown"):
    with pytest.raises(SystemExit) as e:
      compare.main(["--quick", f"{flag}={blocked}/r.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}"), err
