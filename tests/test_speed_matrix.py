"""benchmarks.compare --matrix (benchmarks/matrix.py): every combination of
the speed switches gets a row, each compared with the torch rows of its own
section, dtype and batch; XLA's cost and memory analyses are recorded; the
profile parser picks device ops; bad --matrix_* values fail with one line.
Rates are not checked (no timing assertions), only that they are measured
and that the ratios are the quotients of the recorded rates.
"""

import pytest

from tests import optional  # pylint: disable=g-import-not-at-top,wrong-import-position

torch = optional.import_or_skip("torch", "torch")

from benchmarks import compare  # pylint: disable=g-import-not-at-top
from benchmarks import harness  # pylint: disable=g-import-not-at-top
from benchmarks import matrix  # pylint: disable=g-import-not-at-top
from benchmarks import torch_ssmtl  # pylint: disable=g-import-not-at-top


def _tiny_settings():
  settings = harness.BenchSettings.quick_preset()
  settings.batch, settings.crop, settings.repeats = 8, 16, 1
  settings.warmup, settings.min_repeat_s, settings.max_steps = 0, 0.0, 1
  settings.torch_compile = False
  return settings


@pytest.fixture(scope="module")
def tiny_matrix():
  settings = _tiny_settings()
  device = harness.torch_device()
  m = harness.build_models(settings, device)
  # Two switch values (fused or not) keep it short; every pool_impl x
  # fuse_views combination is checked for equal maths in
  # test_speed_switches.py.
  axes = matrix.Axes(dtypes=("float32",), pool_impls=("argmax",),
                     fuse_views=(False, True), max_batch=16, profile=True)
  return settings, matrix.matrix_section(settings, m, device, axes)


def test_every_combination_has_a_row_with_ratios_and_xla_costs(tiny_matrix):
  settings, result = tiny_matrix
  rows = result["rows"]
  jax_train = [r for r in rows if r["section"] == "train"
               and r["framework"] == "jax"]
  jax_infer = [r for r in rows if r["section"] == "infer"
               and r["framework"] == "jax"]
  assert sorted((r["pool_impl"], r["fuse_views"]) for r in jax_train) == [
      ("argmax", False), ("argmax", True)]
  assert [r["pool_impl"] for r in jax_infer] == ["argmax"]
  eager = {r["section"]: r for r in rows if r["framework"] == "torch_eager"}
  assert set(eager) == {"train", "infer"}
  analytic = result["analytic_flops_per_cube"]
  for r in jax_train + jax_infer:
    assert "error" not in r, r
    assert r["cubes_per_s"] > 0 and r["batch"] == settings.batch
    ref = eager[r["section"]]
    assert r["over_torch_eager"] == pytest.approx(
        r["cubes_per_s"] / ref["cubes_per_s"])
    assert r["over_torch_compile"] is None   # torch.compile not run here
    xla = r["xla"]
    # XLA's FLOP count and the analytic one agree to within a few tens of
    # percent (XLA also counts elementwise ops, and the analytic count
    # takes backward = 2 x forward).
    assert 0.5 < xla["flops_per_cube"] / analytic[r["section"]] < 2.0
    assert xla["temp_bytes_per_cube"] > 0
    assert xla["peak_bytes"] >= xla["temp_bytes"]
  # torch on the CPU: no allocator statistics, recorded as such.
  assert eager["train"]["peak_bytes"] is None
  lb = result["largest_batch"]
  assert lb["jax"]["estimate"] > 0 and "unmeasured" in lb["torch_eager"]
  prof = result["profile"]
  assert prof["top"] and prof["total_ms"] > 0
  assert abs(sum(o["share"] for o in prof["top"]) - 1) < 1 or len(
      prof["top"]) == 15
  table = matrix.markdown(result)
  assert table.count("| float32 | 8 | auto |") == 3
  assert "Largest train batch" in table and "Top ops" in table


def test_default_rows_feed_the_summary_table(tiny_matrix):
  settings, result = tiny_matrix
  train, infer, xla = matrix.default_sections(result, settings.batch)
  assert set(train) == {"jax", "torch_eager"} == set(infer)
  row = next(r for r in result["rows"] if r["section"] == "train"
             and r["framework"] == "jax" and r["pool_impl"] == "argmax"
             and not r["fuse_views"])
  assert train["jax"]["cubes_per_s"] == row["cubes_per_s"]
  assert xla["xla_flops_per_step"] == pytest.approx(
      row["xla"]["flops_per_cube"] * settings.batch)
  assert matrix.default_sections(result, settings.batch + 1) is None


def test_top_ops_prefers_device_streams_and_skips_python_frames():
  meta = [
      {"ph": "M", "pid": 1, "name": "process_name",
       "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name",
       "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name",
       "args": {"name": "python"}},
  ]
  ops = [
      {"ph": "X", "pid": 2, "tid": 1, "name": "conv_fwd", "dur": 30.0},
      {"ph": "X", "pid": 2, "tid": 1, "name": "conv_fwd", "dur": 30.0},
      {"ph": "X", "pid": 2, "tid": 2, "name": "fusion.3", "dur": 40.0},
      {"ph": "X", "pid": 1, "tid": 3, "name": "host_thing", "dur": 999.0},
  ]
  out = matrix.top_ops(meta + ops)
  assert out["source"] == "device"
  assert [(o["op"], o["ms"], o["calls"]) for o in out["top"]] == [
      ("conv_fwd", 0.06, 2), ("fusion.3", 0.04, 1)]
  assert out["top"][0]["share"] == pytest.approx(0.6)
  # No device process: the host's XLA threads, without Python frames.
  host = matrix.top_ops(meta[:1] + meta[2:] + [
      {"ph": "X", "pid": 1, "tid": 3, "name": "ynn_fusion", "dur": 5.0},
      {"ph": "X", "pid": 1, "tid": 3, "name": "$profiler.py:1 f", "dur": 9.0},
      {"ph": "X", "pid": 1, "tid": 7, "name": "PjitFunction", "dur": 9.0}])
  assert host["source"] == "host XLA threads"
  assert [o["op"] for o in host["top"]] == ["ynn_fusion"]


@pytest.mark.parametrize("flag", ["--matrix_dtypes=float16",
                                  "--matrix_convs=cudnn",
                                  "--matrix_pools=avg",
                                  "--matrix_fuse=maybe",
                                  "--matrix_batches=0"])
def test_bad_matrix_flags_fail_with_one_line(flag, capsys):
  assert compare.main(["--quick", "--matrix", flag]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and flag.split("=")[0] in err[0], err


def test_twin_bfloat16_autocast_step_matches_float32():
  """The torch rows of a bfloat16 matrix group: autocast around views +
  forward, loss in float32; the first step's loss as float32's within 2 %
  (as the JAX bfloat16 test)."""
  settings = _tiny_settings()
  device = torch.device("cpu")
  m = harness.build_models(settings, device)
  records = harness.bench_records(settings)
  config = harness.bench_config(settings)
  losses = {}
  for name, dtype in (("f32", None), ("bf16", torch.bfloat16)):
    torch.manual_seed(0)
    twin = __import__("copy").deepcopy(m.twin)
    opt, sched = torch_ssmtl.create_optimizer(twin, config.optim, 10)
    trainer = torch_ssmtl.Trainer(
        twin, tasks=m.cfg.tasks, weights=dict(m.cfg.weights),
        seq_half=m.cfg.seq_half, max_gap=m.cfg.max_gap, num_det=m.cfg.num_det,
        optimizer=opt, scheduler=sched, autocast=dtype)
    crops, teacher = harness.torch_batch(records, device)
    losses[name] = float(trainer.step(crops, teacher)["loss"].detach())
    assert all(p.dtype == torch.float32 for p in twin.parameters())
  assert losses["bf16"] == pytest.approx(losses["f32"], rel=0.02)
