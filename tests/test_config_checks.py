"""Every config value is checked before any work (ssmtl_jax/jobs/config_checks.py),
and every binary reports a bad value or key as one line, exit status 2,
having written nothing."""

import importlib
import os

import pytest

from ssmtl_jax.base import cli
from ssmtl_jax.base import errors
from ssmtl_jax.jobs import config_checks
from tests import cli_driver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("common", "synthetic", "ped2", "ped2_cpu", "avenue",
           "shanghaitech", "folder")

# (override key, bad value, text the message must hold) - one or more per
# key family of configs/common.py.
BAD = [
    ("seed", -1, "an integer >= 0"),
    ("parallelism", "tpu", "'jit', 'pmap'"),
    ("num_epochs", 0, "> 0"),
    ("data.train_split", "", "non-empty"),
    ("build.half_window", 0, ">= 1"),
    ("build.crop_size", 4, ">= 8"),
    ("build.channels", 2, "one of 1, 3"),
    ("build.padding", -0.5, ">= 0"),
    ("build.detector.kind", "ssd", "'yolov3', 'file'"),
    ("build.detector.input_size", (400, 416), "multiples of 32"),
    ("build.detector.min_score", 1.5, "<= 1"),
    ("build.detector.nms_threshold", 0.0, "> 0"),
    ("build.classifier.kind", "vit", "'efficientnet_lite0'"),
    ("build.classifier.input_size", 16, "[32, 1024]"),
    ("model.variant", "huge", "'narrow', 'wide'"),
    ("model.depth", "medium", "'deep', 'shallow'"),
    ("model.widths", (8, 0, 8), "positive integers"),
    ("model.dtype", "float16", "'float32', 'bfloat16'"),
    ("model.conv_impl", "cudnn", "'auto'"),
    ("tasks.seq_half", 0, ">= 1"),
    ("tasks.max_gap", 1, ">= 2"),
    ("tasks.aot.weight", -1.0, ">= 0"),
    ("tasks.kd.loss", "kl", "'l1', 'l2'"),
    ("optim.name", "lamb", "'adam', 'adamw', 'sgd'"),
    ("optim.learning_rate", 0.0, "> 0"),
    ("optim.schedule", "step", "'cosine', 'constant'"),
    ("optim.grad_clip_norm", -1.0, ">= 0"),
    ("input.batch_size", 0, ">= 1"),
    ("input.prefetch", 0, ">= 1"),
    ("checkpoint.keep", 0, ">= 1"),
    ("checkpoint.every_steps", 0, ">= 1"),
    ("eval.checkpoint_step", -2, ">= -1"),
    ("eval.normalize", "foo", "'zscore', 'minmax', 'none'"),
    ("eval.kd_score", "max", "'balanced'"),
    ("eval.sigma", (1.0, 2.0), "3 finite numbers"),
    ("eval.sigma", (1.0, -2.0, 3.0), "3 finite numbers"),
    ("eval.map_scale", -1.0, "> 0 and <= 1"),
    ("eval.temporal_sigma", float("nan"), ">= 0"),
    ("eval.norm_max_objects", 0, ">= 1"),
    ("eval.task_weights.kd", -1.0, ">= 0"),
]


def _config(name="synthetic"):
  return importlib.import_module(f"configs.{name}").get_config()


def _set(config, key, value):
  *groups, leaf = key.split(".")
  node = config
  for g in groups:
    node = node[g]
  node[leaf] = value


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes_and_every_key_has_a_rule(name):
  config = _config(name)
  config_checks.check(config)
  assert config_checks.unchecked_keys(config) == []


def test_a_new_key_without_a_rule_is_found():
  config = _config()
  config.eval.new_knob = 3
  assert config_checks.unchecked_keys(config) == ["eval.new_knob"]


@pytest.mark.parametrize("key,value,expected", BAD,
                         ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_names_key_and_allowed_values(key, value, expected):
  config = _config()
  _set(config, key, value)
  with pytest.raises(errors.ConfigError) as e:
    config_checks.check(config)
  message = str(e.value)
  assert message.startswith(f"config.{key}="), message
  assert expected in message, message
  assert "\n" not in message


def test_key_combinations():
  config = _config()
  config.tasks.max_gap = 3  # 3 * 3 > half_window 6
  with pytest.raises(errors.ConfigError, match="build.half_window=6"):
    config_checks.check(config)
  config = _config()
  for t in ("aot", "mi", "mbp", "kd"):
    config.tasks[t].weight = 0.0
  with pytest.raises(errors.ConfigError, match="all 0"):
    config_checks.check(config)
  config = _config()
  config.eval.task_weights.aot = 0.0
  config.eval.task_weights.mi = 0.0
  for t in ("aot", "mi"):
    config.tasks[t].weight = 1.0
  for t in ("mbp", "kd"):
    config.tasks[t].weight = 0.0
  with pytest.raises(errors.ConfigError, match="every trained task"):
    config_checks.check(config)


def test_unknown_override_is_named_at_any_depth():
  config = _config()
  assert cli.unknown_override(config, "config.eval.sigma") is None
  assert "did you mean config.eval" in cli.unknown_override(
      config, "config.evall.sigma")
  assert "config.eval has no 'nope'" in cli.unknown_override(
      config, "config.eval.nope")
  assert "is a value, not a group" in cli.unknown_override(
      config, "config.eval.sigma.x")


def _run_binary(module, cases):
  return cli_driver.run(module, cases)


# One bad value per key family, and one unknown key, for every binary.
BINARY_CASES = [
    ("eval.normalize", "foo"), ("eval.map_scale", "-1"), ("eval.sigma", "(1,2)"),
    ("build.crop_size", "4"), ("build.detector.min_score", "2"),
    ("model.variant", "huge"), ("tasks.max_gap", "5"), ("optim.name", "lamb"),
    ("input.batch_size", "0"), ("checkpoint.keep", "0"),
    ("eval.task_weights.aot", "-1"), ("evall.sigma", "1"),
    ("eval.sigma.x", "1"),
]


@pytest.mark.parametrize("module,needs_workdir", [
    ("ssmtl_jax.main", True), ("ssmtl_jax.evaluate", True),
    ("ssmtl_jax.validate", True), ("data_prep.build", False)])
def test_binaries_report_bad_values_in_one_line_and_write_nothing(
    tmp_path, module, needs_workdir):
  cases = []
  for i, (key, value) in enumerate(BINARY_CASES):
    argv = ["--config", os.path.join(REPO, "configs", "synthetic.py"),
            f"--config.data.root={tmp_path}/root{i}",
            f"--config.data.records={tmp_path}/records{i}"]
    if needs_workdir:
      argv.append(f"--workdir={tmp_path}/work{i}")
    argv.append(f"--config.{key}={value}")
    cases.append(argv)
  results = _run_binary(module, cases)
  for (key, _), result in zip(BINARY_CASES, results):
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, (key, result)
    assert len(lines) == 1 and lines[0].startswith("error: "), (key, result)
    assert f"config.{key.split('.x')[0]}" in lines[0], (key, lines)
  assert os.listdir(tmp_path) == []  # no workdir, records or data root
