"""benchmarks.pod_plan: the HLO and out-of-memory readers, the topology
table, the largest-batch search (on a fake compiler), 'auto' resolved for
the target platform, the CLI's errors; and (slow, where libtpu is installed)
a real XLA:TPU compile of a tiny config for a v5e 2x2 slice."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import pod_plan
from configs import common
from ssmtl_jax.base import errors
from ssmtl_jax.model import network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines as libtpu 0.0.42's optimised HLO writes them (shortened).
_HLO = """
ENTRY %main {
  %all-reduce = (f32[16,3]{1,0:T(8,128)}, f32[5]{0}) all-reduce(%a, %b), channel_id=1, to_apply=%add, metadata={op_name="jit(train_step)/jvp(SSMTL)/backbone/ConvBNReLU_0/BatchNorm_0/reduce_sum"}
  %all-reduce-start.1 = f32[7]{0} all-reduce-start(%c), channel_id=2, to_apply=%add, metadata={op_name="jit(train_step)/transpose(jvp(SSMTL))/backbone/ConvBNReLU_0/BatchNorm_0/reduce_sum"}
  %all-reduce-done.1 = f32[7]{0} all-reduce-done(%all-reduce-start.1), metadata={op_name="jit(train_step)/transpose(jvp(SSMTL))/backbone/ConvBNReLU_0/BatchNorm_0/reduce_sum"}
  %all-reduce.9 = f32[4]{0} all-reduce(%g), channel_id=3, to_apply=%add, metadata={op_name="jit(train_step)/jvp(joint_loss)/reduce_sum"}
  %all-gather-start = (bf16[2,4]{1,0}, bf16[8,4]{1,0}) all-gather-start(%d), dimensions={0}
  %all-gather-done = bf16[8,4]{1,0} all-gather-done(%all-gather-start)
  %reduce-scatter.3 = f32[4]{0} reduce-scatter(%e), dimensions={0}, to_apply=%add
  %fusion.2 = f32[16]{0} fusion(%all-reduce), kind=kLoop, calls=%fused_computation
}
"""


def test_collectives_counts_and_bytes_per_kind():
  got = pod_plan.collectives(_HLO)
  assert {k: (v["count"], v["bytes"]) for k, v in got.items()} == {
      "all-reduce": (3, (16 * 3 + 5) * 4 + 7 * 4 + 4 * 4),
      "all-gather": (1, 8 * 4 * 2),
      "reduce-scatter": (1, 4 * 4)}
  assert got["all-reduce"]["sources"] == {
      "batch-norm forward": {"count": 1, "bytes": (16 * 3 + 5) * 4},
      "batch-norm backward": {"count": 1, "bytes": 7 * 4},
      "gradients, loss, outputs": {"count": 1, "bytes": 4 * 4}}


def test_shape_bytes_sums_tuples_and_reads_every_dtype():
  assert pod_plan.shape_bytes("(f32[16,3]{1,0}, bf16[8]{0}, u8[2,2])") == (
      16 * 3 * 4 + 8 * 2 + 4)
  assert pod_plan.shape_bytes("f32[]") == 4  # a scalar


def test_oom_message_read():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
             "required for HLO temporaries (58.70G) exceeds available HBM "
             "(15.75G).")
  need, avail = pod_plan.oom_bytes(message)
  assert need == pytest.approx(58.70 * 2**30)
  assert avail == pytest.approx(15.75 * 2**30)
  assert pod_plan.oom_bytes("RESOURCE_EXHAUSTED: something else") == (None,
                                                                       None)


def test_topologies():
  t = pod_plan.topology("v5e-16")
  assert (t.chip, t.topology_name, t.chips, t.devices) == ("v5e", "v5e:4x4",
                                                           16, 16)
  t = pod_plan.topology("2xv5e-16")
  assert (t.num_slices, t.devices, t.topology_name) == (2, 32, "v5e:4x4")
  assert pod_plan.topology("v4-32").chip_config_name == "megacore"
  assert pod_plan.topology("v5p-128").devices == 64
  with pytest.raises(errors.ConfigError, match="v9-1"):
    pod_plan.topology("v9-1")


def test_roofline_arithmetic():
  topo = pod_plan.topology("v5e-16")
  c = pod_plan.Compiled(step="train", topology="v5e-16", dtype="float32",
                        per_chip_batch=8, fits=True, compile_s=1.0,
                        flops=197e12 * 0.010, bytes_accessed=819e9 * 0.004,
                        collectives={"all-reduce": {"count": 2,
                                                    "bytes": 200e9 * 0.001}})
  r = pod_plan.roofline(c, topo)
  assert r["compute_s"] == pytest.approx(0.010)
  assert r["hbm_s"] == pytest.approx(0.004)
  assert r["ici_s"] == pytest.approx(0.001 * 2 * 15 / 16)
  assert r["bound_s"] == pytest.approx(0.010 + 0.001 * 2 * 15 / 16)


class _FakeCompiler:
  """Memory = fixed + per_cube x batch; the compiler refuses temporaries
  over its limit at once, saying how much it needed."""

  def __init__(self, fixed, per_cube, limit):
    self.fixed, self.per_cube, self.limit = fixed, per_cube, limit
    self.calls = []

  def temporaries(self, b):
    """(bytes needed, whether the compiler refuses, bytes it reports)."""
    temp = self.per_cube * b
    return temp, temp > self.limit, temp

  def __call__(self, steps, which, b, topo, dtype):
    self.calls.append(b)
    temp, refused, held = self.temporaries(b)
    if refused:
      return pod_plan.Compiled(step=which, topology=topo.name, dtype=dtype,
                               per_chip_batch=b, fits=False, compile_s=0.0,
                               needed_temp_bytes=temp,
                               available_bytes=self.limit)
    return pod_plan.Compiled(step=which, topology=topo.name, dtype=dtype,
                             per_chip_batch=b, fits=True, compile_s=0.0,
                             argument_bytes=self.fixed, temp_bytes=held)


@pytest.mark.parametrize("per_cube_mib", [45.0, 57.3, 130.0, 3.0])
def test_largest_batch_search_finds_the_largest_multiple(monkeypatch,
                                                         per_cube_mib):
  topo = pod_plan.topology("v5e-16")
  fake = _FakeCompiler(fixed=300 * 2**20, per_cube=per_cube_mib * 2**20,
                       limit=15.75 * 2**30)
  monkeypatch.setattr(pod_plan, "compile_step", fake)
  margin = 0.9
  best, tried = pod_plan.largest_batch(None, "train", topo, "float32",
                                       margin=margin, log=lambda m: None)
  budget = 16 * 2**30 * margin
  truth = max(b for b in range(8, 100000, 8)
              if fake.fixed + fake.per_cube * b <= budget
              and fake.per_cube * b <= fake.limit)
  assert best.per_chip_batch == truth
  assert len(tried) <= 4  # start, probe, prediction (+ one step down)


def test_largest_batch_none_when_the_first_probe_does_not_fit(monkeypatch):
  fake = _FakeCompiler(fixed=0, per_cube=3 * 2**30, limit=15.75 * 2**30)
  monkeypatch.setattr(pod_plan, "compile_step", fake)
  best, tried = pod_plan.largest_batch(None, "train",
                                       pod_plan.topology("v5e-16"), "float32",
                                       margin=0.9, log=lambda m: None)
  assert best is None and fake.calls == [8]


def test_auto_switches_resolved_for_the_target_platform():
  config = common.get_config()
  assert config.model.conv_impl == "auto" and config.model.pool_impl == "auto"
  tpu = network.create_model(config, kd_outputs=3, channels=1,
                             platform="tpu")
  assert (tpu.conv_impl, tpu.pool_impl) == ("xla", "reduce_window")
  cpu = network.create_model(config, kd_outputs=3, channels=1,
                             platform="cpu")
  assert cpu.pool_impl == "argmax"
  assert cpu.conv_impl in ("onednn", "fast")
  lazy = network.create_model(config, kd_outputs=3, channels=1)
  assert (lazy.conv_impl, lazy.pool_impl) == ("auto", "auto")


def test_records_geometry_from_the_config():
  config = common.get_config()
  info = pod_plan.records_geometry(config)
  assert info.window == 2 * config.build.half_window + 1
  assert (info.crop_size, info.num_det, info.num_cls) == (
      config.build.crop_size, config.build.num_det_classes, 1000)


def test_flag_values_checked_before_any_compile():
  class Args:
    topologies, dtypes, steps, batches = ["v5e-4"], ["float32"], ["train"], ["8"]
  assert [t.name for t in pod_plan._check_args(Args)] == ["v5e-4"]
  for name, bad in (("dtypes", ["float16"]), ("steps", ["eval"]),
                    ("batches", ["0"]), ("topologies", ["v5e-5"])):
    args = type("A", (Args,), {name: bad})
    with pytest.raises(errors.ConfigError, match=bad[0]):
      pod_plan._check_args(args)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "benchmarks.pod_plan", *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=900, check=False)


def test_cli_errors_are_one_line_and_status_2(tmp_path):
  r = _run("--config", "configs/synthetic.py", "--topologies", "v9-1")
  assert r.returncode == 2, r.stderr
  assert "unknown TPU slice 'v9-1'" in r.stderr
  assert "Traceback" not in r.stderr
  r = _run("--config", "configs/synthetic.py", "--config.model.nope=1")
  assert r.returncode == 2 and "config.model.nope" in r.stderr
  (tmp_path / "a_file").write_text("")
  r = _run("--config", "configs/synthetic.py",
           "--out", str(tmp_path / "a_file" / "plan.json"))
  assert r.returncode == 2 and "--out" in r.stderr


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None,
                    reason="libtpu is installed here")
def test_cli_without_libtpu_names_the_extra():
  r = _run("--config", "configs/synthetic.py")
  assert r.returncode == 2
  assert "tpu-plan" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e "
                    "'.[tpu-plan]' -c constraints.txt)")
def test_tiny_config_compiles_for_a_v5e_2x2_slice(tmp_path):
  out = tmp_path / "plan.json"
  r = _run("--config", "configs/synthetic.py", "--config.model.widths=(4,8,8)",
           "--topologies", "v5e-4", "--dtypes", "float32", "--batches", "8",
           "--out", str(out))
  assert r.returncode == 0, r.stderr[-3000:]
  plan = json.loads(out.read_text())
  rows = {row["step"]: row for row in plan["rows"]}
  train, score = rows["train"], rows["score"]
  assert train["fits"] and score["fits"]
  assert train["chips"] == 4 and train["global_batch"] == 32
  # The state (parameters, batch statistics, two Adam moments) is replicated:
  # every chip holds all of it and its share of the batch, and the step
  # reads them as arguments (TPU layouts may pad them).
  assert train["state_bytes"] > 3 * train["param_bytes"] > 0
  assert train["argument_bytes"] >= train["state_bytes"] + train["batch_bytes"]
  assert train["alias_bytes"] >= train["state_bytes"]  # the donated state
  assert train["temp_bytes"] > 0 and train["peak_bytes"] > train["temp_bytes"]
  assert score["argument_bytes"] >= score["state_bytes"] + score["batch_bytes"]
  assert train["flops"] > score["flops"] > 0
  # Gradients and batch-norm statistics are reduced over the chips: at least
  # one all-reduce, carrying at least every float32 parameter once.
  reduce = train["collectives"]["all-reduce"]
  assert reduce["count"] >= 1
  assert reduce["bytes"] >= train["param_bytes"]
  assert reduce["sources"]["batch-norm forward"]["count"] >= 1
  assert train["roofline"]["bound_s"] > 0


class _RematCompiler(_FakeCompiler):
  """Linear up to ``knee`` cubes, then twice as steep, and above the
  compiler's limit it recomputes activations to stay just under it (peak
  near the limit, over any margin) until 3x the limit would be needed."""

  def __init__(self, fixed, per_cube, limit, knee):
    super().__init__(fixed, per_cube, limit)
    self.knee = knee

  def temporaries(self, b):
    temp = self.per_cube * min(b, self.knee) + 2 * self.per_cube * max(
        0, b - self.knee)
    return temp, temp > 3 * self.limit, min(temp, self.limit * 0.99)


def test_largest_batch_bisects_where_memory_is_not_linear(monkeypatch):
  fake = _RematCompiler(fixed=300 * 2**20, per_cube=60 * 2**20,
                        limit=15.75 * 2**30, knee=120)
  monkeypatch.setattr(pod_plan, "compile_step", fake)
  budget = 16 * 2**30 * 0.9
  truth = max(b for b in range(8, 4000, 8)
              if fake.fixed + min(fake.per_cube * min(b, 120)
                                  + 2 * fake.per_cube * max(0, b - 120),
                                  fake.limit * 0.99) <= budget)
  topo = pod_plan.topology("v5e-16")
  best, _ = pod_plan.largest_batch(None, "train", topo, "float32",
                                   margin=0.9, max_compiles=12,
                                   log=lambda m: None)
  assert best.per_chip_batch == truth
  fake.calls.clear()
  best, tried = pod_plan.largest_batch(None, "train", topo, "float32",
                                       margin=0.9, log=lambda m: None)
  assert len(tried) <= 6 and best.per_chip_batch <= truth
  assert best.peak_bytes <= budget


def test_markdown_rows_have_every_column():
  topo = pod_plan.topology("v5e-16")
  fit = pod_plan.Compiled(
      step="train", topology="v5e-16", dtype="float32", per_chip_batch=8,
      fits=True, compile_s=100.0, argument_bytes=2**30, temp_bytes=2**31,
      flops=4e11, bytes_accessed=2e10,
      collectives=pod_plan.collectives(_HLO))
  oom = pod_plan.Compiled(
      step="train", topology="v5e-16", dtype="float32", per_chip_batch=1024,
      fits=False, compile_s=3.0, needed_temp_bytes=58.7 * 2**30,
      available_bytes=15.75 * 2**30)
  results = {"config": "--config configs/ped2.py", "margin": 0.9,
             "machine": "x86_64, 2 CPUs", "largest": {"train v5e-16 float32": 8},
             "versions": {"jax": "0.10.2", "libtpu": "0.0.42.1"},
             "rows": [pod_plan.row(fit, topo), pod_plan.row(oom, topo)]}
  table = [l for l in pod_plan.markdown(results).splitlines()
           if l.startswith("| train") or l.startswith("| step")]
  assert len(table) == 3
  assert len({l.count("|") for l in table}) == 1, table
  assert "batch-norm forward 1" in table[1] and "| 128 |" in table[1]
  assert "out of memory (temporaries 58.70 of 15.75)" in table[2]
