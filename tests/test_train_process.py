"""The trainer binary (`python -m ssmtl_jax.main`) in subprocesses.

kill -9 and resume (bitwise), SIGTERM (save and exit 0), resume from a
SIGTERM checkpoint with the default cosine schedule (bitwise), resume on a
different device count (8 -> 4 fake devices; the data order continues), user
errors (bad config key, missing records) and the non-finite-loss guard.

Every training run here compiles the same two programs (same model, shapes and
device count; a constant learning rate keeps total_steps out of the program),
so a persistent compilation cache shared by the module makes all runs but the
first start in ~10 s instead of ~25 s on 2 CPU cores.
"""

from __future__ import annotations

import re
import signal

import numpy as np
import pytest

from tests import process_helpers as ph
from tests import record_helpers

NUM_DEVICES = 2
BATCH = 8
# On top of record_helpers.tiny_config (which has async saves off).
BASE = {"optim.schedule": "constant", "checkpoint.async_save": True}


def _write_config(path, records, **overrides):
  return ph.write_config(path, records, **dict(BASE, **overrides))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_compile_cache")


def _assert_same_end(tmp_path, total):
  """The uninterrupted run (workdir straight/) and the interrupted and
  resumed one (resumed/) end with bitwise equal checkpoints at step `total`
  and the same last logging window of losses; returns both checkpoints."""
  a = ph.load_checkpoint(tmp_path / "straight", total)
  b = ph.load_checkpoint(tmp_path / "resumed", total)
  assert a.keys() == b.keys()
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, (
      f"{len(different)} of {len(a)} leaves differ: {different[:10]}")
  assert ph.summary(tmp_path / "straight")["losses"] == ph.summary(
      tmp_path / "resumed")["losses"]
  return a, b


# --- kill -9 and resume. -----------------------------------------------------


def test_kill9_and_resume_is_bitwise_identical(tmp_path, compile_cache):
  records = tmp_path / "records"
  record_helpers.write_records(str(records), num_videos=2, objects_per_video=24)
  total = 20
  config = _write_config(tmp_path / "config.py", records, total_steps=total,
                         **{"checkpoint.every_steps": 2})
  run = lambda name, wd: ph.Run(name, config, tmp_path / wd, log_dir=tmp_path,
                              cache_dir=compile_cache)
  straight = run("straight", "straight")
  killed = run("killed", "resumed")
  try:
    # Kill once a checkpoint at step >= 4 is committed (later async saves may
    # be in flight: the kill can leave a temporary checkpoint directory).
    ph.poll_until(
        lambda: any(s >= 4 for s in ph.committed_steps(tmp_path / "resumed")),
        killed, "a checkpoint at step >= 4")
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait()
    assert killed.proc.returncode == -signal.SIGKILL, killed.tail()
    steps_at_kill = ph.committed_steps(tmp_path / "resumed")
    assert max(steps_at_kill) < total, (
        f"the run finished before it was killed ({steps_at_kill}); nothing "
        "to resume")
    assert not (tmp_path / "resumed" / "train_summary.json").exists()
    resumed = run("resumed", "resumed")
    codes = ph.wait(straight, resumed)
  finally:
    straight.kill()
    killed.kill()
  assert codes == [0, 0], straight.tail() + "\n" + resumed.tail()

  m = re.search(r"Resumed from checkpoint at step (\d+)", resumed.stderr())
  assert m, resumed.tail()
  assert int(m.group(1)) == max(steps_at_kill) >= 4
  assert "Resumed from checkpoint" not in straight.stderr()
  assert ph.committed_steps(tmp_path / "straight")[-1] == total
  assert ph.committed_steps(tmp_path / "resumed")[-1] == total

  a, b = _assert_same_end(tmp_path, total)
  for prefix in ("['params']", "['batch_stats']", "['opt_state']", "['step']"):
    assert any(k.startswith(prefix) for k in a), (prefix, sorted(a))
  assert int(b["['step']"]) == total and int(b["['bad_step']"]) == -1
  assert ph.summary(tmp_path / "straight")["step"] == ph.summary(
      tmp_path / "resumed")["step"] == total


# --- SIGTERM. ---------------------------------------------------------------


def test_sigterm_saves_and_exits_cleanly(tmp_path, compile_cache):
  records = tmp_path / "records"
  record_helpers.write_records(str(records), num_videos=2, objects_per_video=24)
  total = 10_000  # never reached: the test stops it
  config = _write_config(
      tmp_path / "config.py", records, total_steps=total,
      **{"checkpoint.every_steps": 100_000})
  workdir = tmp_path / "work"
  run = ph.Run("sigterm", config, workdir, log_dir=tmp_path,
             cache_dir=compile_cache)
  try:
    ph.poll_until(lambda: re.search(r"step \d+/%d" % total, run.stderr()),
                run, "a logged train step")
    run.proc.send_signal(signal.SIGTERM)
    [code] = ph.wait(run)
  finally:
    run.kill()
  assert code == 0, run.tail()
  summary = ph.summary(workdir)
  assert summary["preempted"] is True
  steps = ph.committed_steps(workdir)
  # The latest (normally the only) checkpoint is SIGTERM's.
  assert steps and steps[-1] == summary["step"], (steps, summary)
  assert 2 <= summary["step"] < total
  assert f"SIGTERM: saved checkpoint at step {summary['step']}" in run.stderr()
  state = (ph.load_checkpoint(workdir, steps[-1]))
  assert int(state["['step']"]) == summary["step"]


def test_sigterm_checkpoint_resumes_bitwise_with_cosine_schedule(
    tmp_path, compile_cache):
  """The default (cosine) schedule depends on total_steps and on the step the
  optimiser state counts: a run stopped by SIGTERM at an arbitrary step (not
  a multiple of every_steps) and resumed ends bitwise where an uninterrupted
  run ends."""
  records = tmp_path / "records"
  record_helpers.write_records(str(records), num_videos=2, objects_per_video=24)
  total = 150
  config = _write_config(
      tmp_path / "config.py", records, total_steps=total,
      **{"optim.schedule": "cosine", "optim.warmup_steps": 3,
         "optim.learning_rate": 3e-3, "checkpoint.every_steps": 100_000,
         "log_every_steps": 1})
  run = lambda name, wd: ph.Run(name, config, tmp_path / wd, log_dir=tmp_path,
                              cache_dir=compile_cache)
  straight = run("straight", "straight")
  stopped = run("stopped", "resumed")
  try:
    ph.poll_until(lambda: re.search(r"step \d+/%d" % total, stopped.stderr()),
                  stopped, "a logged train step")
    stopped.proc.send_signal(signal.SIGTERM)
    assert ph.wait(stopped) == [0], stopped.tail()
    at = ph.summary(tmp_path / "resumed")
    assert at["preempted"] is True and 0 < at["step"] < total, at
    assert ph.committed_steps(tmp_path / "resumed") == [at["step"]]
    resumed = run("resumed", "resumed")
    codes = ph.wait(straight, resumed)
  finally:
    straight.kill()
    stopped.kill()
  assert codes == [0, 0], straight.tail() + "\n" + resumed.tail()
  assert f"Resumed from checkpoint at step {at['step']}" in resumed.stderr()
  _assert_same_end(tmp_path, total)


def test_resume_on_fewer_devices_continues_the_data_order(tmp_path,
                                                          compile_cache):
  """8 fake devices to step 4, then 4 devices to step 8 (cosine schedule).

  The global batch, hence the data order, does not depend on the device
  count, so the resumed run must end where an 8-device run ends, up to the
  float noise of other reduction orders. The bound is relative to how far 4
  steps move the parameters: a run that restarted the data (or the schedule)
  at step 4 would be off by about that much.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  records = tmp_path / "records"
  record_helpers.write_records(str(records), num_videos=2, objects_per_video=24)
  config = _write_config(
      tmp_path / "config.py", records, total_steps=8,
      **{"optim.schedule": "cosine", "checkpoint.every_steps": 4,
         "checkpoint.async_save": False, "checkpoint.keep": 5})
  straight = ph.Run("straight8", config, tmp_path / "straight", devices=8,
                    log_dir=tmp_path, cache_dir=compile_cache)
  try:
    assert ph.wait(straight) == [0], straight.tail()
  finally:
    straight.kill()
  assert ph.committed_steps(tmp_path / "straight") == [4, 8]
  # The 8-device run as it stood at step 4.
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
  (tmp_path / "resumed" / "train_summary.json").unlink()
  resumed = ph.Run("resumed4", config, tmp_path / "resumed", devices=4,
                   log_dir=tmp_path, cache_dir=compile_cache)
  try:
    assert ph.wait(resumed) == [0], resumed.tail()
  finally:
    resumed.kill()
  assert "Resumed from checkpoint at step 4" in resumed.stderr()
  summary = ph.summary(tmp_path / "resumed")
  assert summary["num_devices"] == 4 and summary["step"] == 8
  assert ph.summary(tmp_path / "straight")["num_devices"] == 8
  at4 = ph.load_checkpoint(tmp_path / "straight", 4)
  want = ph.load_checkpoint(tmp_path / "straight", 8)
  got = ph.load_checkpoint(tmp_path / "resumed", 8)
  assert got.keys() == want.keys()
  params = [k for k in want if k.startswith("['params']")]
  moved = max(np.abs(want[k] - at4[k]).max() for k in params)
  off = max(np.abs(got[k] - want[k]).max() for k in params)
  assert moved > 1e-3, moved
  assert off < 0.01 * moved, (off, moved)
  assert int(got["['step']"]) == 8


# --- User errors. -----------------------------------------------------------


def test_unknown_config_key_fails_naming_it(tmp_path):
  config = _write_config(tmp_path / "config.py", tmp_path / "records")
  run = ph.Run("bad_key", config, tmp_path / "work",
             "--config.optim.no_such_key=1", log_dir=tmp_path)
  [code] = ph.wait(run, timeout=120)
  assert code == 2, run.tail()
  stderr = run.stderr()
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "no_such_key" in last, run.tail()
  assert "Traceback" not in stderr, run.tail()
  assert not (tmp_path / "work").exists()


def test_missing_records_is_a_one_line_error(tmp_path):
  config = _write_config(tmp_path / "config.py", tmp_path / "records")
  run = ph.Run("no_data", config, tmp_path / "work",
             "--config.data.records=/nonexistent", log_dir=tmp_path)
  [code] = ph.wait(run, timeout=120)
  assert code == 2, run.tail()
  stderr = run.stderr()
  errors = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "/nonexistent" in errors[0], run.tail()
  assert "Traceback" not in stderr, run.tail()


# --- Non-finite loss guard. -------------------------------------------------


def _first_step_with_inf(records) -> int:
  """The (0-based) step whose global batch holds the corrupted example, per
  the trainer's own input pipeline (one process, one pipeline)."""
  from ssmtl_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  info = input_pipeline.records_info(str(records), "train")
  it = input_pipeline.train_iterator(
      info, global_batch=BATCH, num_pipelines=1, seed=0, start_step=0,
      shuffle_buffer=1)
  for step, batch in zip(range(2 * info.num_examples // BATCH), it):
    if not np.isfinite(batch["teacher_cls"]).all():
      return step
  raise AssertionError("no corrupted example in two epochs")


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path,
                                                         compile_cache):
  # One shard, no shuffling: example i is in step i // BATCH of the first
  # epoch. Case "late": bad at step 3, after a good checkpoint at 2; the guard
  # fires at the next log/checkpoint step, 4. Case "first": bad at step 0, so
  # nothing may be saved at all.
  cases = {"late": 3 * BATCH + 2, "first": 0}
  runs = {}
  for name, index in cases.items():
    records = tmp_path / f"records_{name}"
    record_helpers.write_records(str(records), num_videos=1,
                                 objects_per_video=5 * BATCH,
                                 corrupt_teacher_at=index)
    config = _write_config(
        tmp_path / f"config_{name}.py", records, total_steps=6,
        **{"input.shuffle_buffer": 1, "checkpoint.every_steps": 2,
           "log_every_steps": 2})
    runs[name] = ph.Run(name, config, tmp_path / name, log_dir=tmp_path,
                      cache_dir=compile_cache)
  try:
    # Check the premise in this process while the trainers run.
    expected = {name: _first_step_with_inf(tmp_path / f"records_{name}")
                for name in cases}
    assert expected == {"late": 3, "first": 0}
    codes = ph.wait(*runs.values())
  finally:
    for r in runs.values():
      r.kill()

  for (name, run), code in zip(runs.items(), codes):
    assert code == 2, run.tail()
    errors = [l for l in run.stderr().splitlines() if l.startswith("error:")]
    assert len(errors) == 1, run.tail()
    m = re.search(r"non-finite loss at step (\d+)", errors[0])
    assert m and int(m.group(1)) == expected[name], run.tail()
    steps = ph.committed_steps(tmp_path / name)
    assert not (tmp_path / name / "train_summary.json").exists()
    if name == "first":
      assert steps == [], steps
      assert "Last good checkpoint: none" in errors[0], errors[0]
    else:
      assert steps and steps[-1] <= expected[name], steps
      assert f"Last good checkpoint: step {steps[-1]}" in errors[0], errors[0]
      state = (ph.load_checkpoint(tmp_path / name, steps[-1]))
      assert int(state["['bad_step']"]) == -1
      assert int(state["['step']"]) == steps[-1]
      for key, value in state.items():
        if value.dtype.kind == "f":
          assert np.isfinite(value).all(), key
