"""Every config value checked before any data is read or model compiled.

Each entry point (``ssmtl_jax.main``, ``evaluate``, ``validate``, ``export``,
``data_prep.build``) calls :func:`check` first (a build also
:func:`check_build`); a bad value ends the run with one line that names the
key, the value and what is allowed (``errors.ConfigError``, exit status
2), and nothing is written. The checks are a table, one row per key, so a new
key gets its rule next to its neighbours; the table covers every key of
``configs/common.py`` (a test walks the config and fails on a key without a
rule). Checks that need the machine (batch size vs device count:
``sharding.check_batch_size``) run as soon as the devices are known, and
checks that need the records (the records' half window) where the records'
metadata is read; both still before anything is written.

The allowed values come from the modules that use them (``network``,
``frame_scoring``, ``tasks``...), so this table cannot drift from the code.
This is the one place that checks config values: the library below (the
builder, the trainer) trusts a checked config; a few library constructors
keep a guard on the key they dispatch on (``network.create_model``...), with
the allowed values taken from the same constants.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional, Sequence

from etils import epath

from ssmtl_jax.base import errors
from ssmtl_jax.base import schema
from ssmtl_jax.evaluation import frame_scoring

# A rule returns None when the value is fine, else what is expected.
Rule = Callable[[Any], Optional[str]]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def one_of(*allowed) -> Rule:
  return lambda v: None if v in allowed else (
      "one of " + ", ".join(repr(a) for a in allowed))


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Rule:
  def rule(v):
    if _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi):
      return None
    if lo is not None and hi is not None:
      return f"an integer in [{lo}, {hi}]"
    return f"an integer >= {lo}" if lo is not None else "an integer"
  return rule


def number(lo: Optional[float] = None, hi: Optional[float] = None, *,
           lo_open: bool = False) -> Rule:
  def rule(v):
    ok = _is_number(v)
    if ok and lo is not None:
      ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
      ok = v <= hi
    if ok:
      return None
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else f"<= {hi}"
    return "a finite number " + " and ".join(s for s in (lo_s, hi_s) if s)
  return rule


def boolean(v) -> Optional[str]:
  return None if isinstance(v, bool) else "True or False"


def string(v) -> Optional[str]:
  return None if isinstance(v, str) else "a string"


def nonempty_string(v) -> Optional[str]:
  return None if isinstance(v, str) and v else "a non-empty string"


def numbers(n: int, lo: float = 0.0) -> Rule:
  def rule(v):
    if (isinstance(v, (tuple, list)) and len(v) == n
        and all(_is_number(x) and x >= lo for x in v)):
      return None
    return f"{n} finite numbers >= {lo}"
  return rule


def _input_size(v) -> Optional[str]:
  if (isinstance(v, (tuple, list)) and len(v) == 2
      and all(_is_int(x) and x >= 32 and x % 32 == 0 for x in v)):
    return None
  return "(width, height), two multiples of 32 (>= 32)"


def _widths(v) -> Optional[str]:
  if isinstance(v, (tuple, list)) and (
      not v or all(_is_int(x) and x >= 1 for x in v)):
    return None
  return "() for the variant's widths, or positive integers per stage"


def _distributed_initialize(v) -> Optional[str]:
  return None if isinstance(v, bool) or v == "auto" else "True, False or 'auto'"


def _rules() -> dict[str, Rule]:
  # Imported here: models pulls in flax, which the table's users load anyway.
  from ssmtl_jax.model import network  # pylint: disable=g-import-not-at-top
  from ssmtl_jax.model import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  return {
      "seed": integer(0),
      "parallelism": one_of("jit", "pmap"),
      "total_steps": integer(0),
      "num_epochs": number(0, lo_open=True),
      "data.root": string,
      "data.records": string,
      "data.synthetic": boolean,
      "data.build_missing": boolean,
      "data.train_split": nonempty_string,
      "data.test_split": nonempty_string,
      "data.val_split": string,
      "build.half_window": integer(1),
      "build.test_context": integer(0),
      "build.crop_size": integer(8),
      "build.channels": one_of(1, 3),
      "build.padding": number(0),
      "build.min_box_size": number(0),
      "build.square": boolean,
      "build.workers": integer(1),
      "build.engine": one_of("local", "beam"),
      "build.beam_options": string,
      "build.chunk_frames": integer(0),
      "build.device": one_of("auto", "cpu", "gpu"),
      "build.proposals": one_of("detector", "detector+motion"),
      "build.motion.threshold": number(0, 255, lo_open=True),
      "build.motion.min_area": integer(1),
      "build.motion.max_cover": number(0, 1),
      "build.train_stride": integer(1),
      "build.num_det_classes": integer(1),
      "build.conv_impl": one_of("auto", "xla", "onednn"),
      "build.detector.kind": one_of("yolov3", "file"),
      "build.detector.cfg": string,
      "build.detector.weights": string,
      "build.detector.input_size": _input_size,
      "build.detector.min_score": number(0, 1),
      "build.detector.nms_threshold": number(0, 1, lo_open=True),
      "build.detector.batch_size": integer(1),
      "build.detector.path": string,
      "build.classifier.kind": one_of("efficientnet_lite0", "resnet50", "none"),
      "build.classifier.weights": string,
      "build.classifier.batch_size": integer(1),
      "build.classifier.input_size": integer(32, 1024),
      "build.classifier.crop": one_of("frame", "cube"),
      "model.variant": one_of(*sorted(network.VARIANT_WIDTHS)),
      "model.depth": one_of(*sorted(network.DEPTH_CONVS)),
      "model.widths": _widths,
      "model.head_width": integer(0),
      "model.dtype": one_of("float32", "bfloat16"),
      "model.conv_impl": one_of(*network.CONV_IMPLS),
      "model.pool_impl": one_of(*network.POOL_IMPLS),
      "model.fuse_views": boolean,
      "tasks.seq_half": integer(1),
      "tasks.max_gap": integer(2),
      **{f"tasks.{t}.weight": number(0) for t in schema.TASKS},
      "tasks.kd.loss": one_of("l1", "l2"),
      "tasks.kd.balance": one_of(*tasks_lib.KD_BALANCES),
      "optim.name": one_of("adam", "adamw", "sgd"),
      "optim.learning_rate": number(0, lo_open=True),
      "optim.schedule": one_of("cosine", "constant"),
      "optim.warmup_steps": integer(0),
      "optim.weight_decay": number(0),
      "optim.grad_clip_norm": number(0),
      "input.batch_size": integer(1),
      "input.shuffle_buffer": integer(1),
      "input.num_pipelines": integer(0),
      "input.prefetch": integer(1),
      "checkpoint.every_steps": integer(1),
      "checkpoint.keep": integer(1),
      "checkpoint.async_save": boolean,
      "log_every_steps": integer(1),
      "progress_bar": boolean,
      "distributed.initialize": _distributed_initialize,
      "distributed.coordinator_address": string,
      "distributed.num_processes": integer(0),
      "distributed.process_id": integer(-1),
      "distributed.local_device_ids": string,
      "eval.after_training": boolean,
      "eval.checkpoint_step": integer(-1),
      "eval.batch_size": integer(1),
      "eval.normalize": one_of(*frame_scoring.NORMALIZATIONS),
      "eval.norm_max_objects": integer(1),
      "eval.kd_score": one_of(*frame_scoring.KD_SCORES),
      **{f"eval.task_weights.{t}": number(0) for t in schema.TASKS},
      "eval.sigma": numbers(3),
      "eval.map_scale": number(0, 1, lo_open=True),
      "eval.temporal_sigma": number(0),
      "eval.extend_curves": boolean,
      "eval.plots": boolean,
      "eval.render_video": boolean,
  }


# Keys whose values are free-form (the synthetic generator's own settings are
# checked by data_prep.synthetic when it generates).
_FREE_FORM = ("synthetic",)


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def leaf_keys(config, prefix: str = "") -> list[str]:
  """Dotted names of the config's leaves."""
  out = []
  for key in config.keys():
    name = f"{prefix}{key}"
    value = config[key]
    if hasattr(value, "keys"):
      out.extend(leaf_keys(value, name + "."))
    else:
      out.append(name)
  return out


def check(config) -> None:
  """Raises errors.ConfigError for the first bad value, naming its key.

  Keys missing from a config (one not built on configs/common.py) are not
  checked here; the code that reads them reports them.
  """
  rules = _rules()
  for key, rule in rules.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue
    expected = rule(value)
    if expected is not None:
      raise errors.ConfigError(
          f"config.{key}={_show(value)}: expected {expected}")
  _check_combinations(config)


def check_build(config) -> None:
  """What building records needs beyond :func:`check`'s values: the videos'
  folder and the records' folder named (``data_prep.build`` and a run that
  builds its missing records call it before the builder, after
  :func:`check`)."""
  if not config.data.root:
    raise errors.ConfigError("config.data.root is empty: point it at the "
                             "videos (ROOT/{train,test}/<video_id>/)")
  if not (epath.Path(config.data.root).is_dir()
          if "://" in config.data.root else os.path.isdir(config.data.root)):
    raise errors.ConfigError(
        f"config.data.root={config.data.root!r} is not a directory")
  if not config.data.records:
    raise errors.ConfigError("config.data.records is empty: where should "
                             "the records be written?")


def _show(value) -> str:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return repr(value)


def _check_combinations(config) -> None:
  """Rules that tie two keys together."""
  try:
    seq_half, max_gap = int(config.tasks.seq_half), int(config.tasks.max_gap)
    half_window = int(config.build.half_window)
  except (KeyError, AttributeError):
    return
  from ssmtl_jax.model import tasks  # pylint: disable=g-import-not-at-top
  tasks.check_window(seq_half, max_gap, half_window,
                     source=f"config.build.half_window={half_window}")
  context = int(config.build.get("test_context", 0))
  if context and not seq_half <= context <= half_window:
    raise errors.ConfigError(
        f"config.build.test_context={context}: must lie in [tasks.seq_half, "
        f"build.half_window] = [{seq_half}, {half_window}] (0 = "
        "tasks.seq_half): scoring reads frames t-seq_half..t+seq_half")
  splits = [str(config.data[k]) for k in ("train_split", "test_split",
                                          "val_split") if config.data.get(k)]
  if len(set(splits)) != len(splits):
    raise errors.ConfigError(
        f"config.data.train_split / test_split / val_split = {splits}: the "
        "splits must differ")
  if not any(float(config.tasks[t].weight) > 0 for t in schema.TASKS):
    raise errors.ConfigError(
        "config.tasks.{aot,mi,mbp,kd}.weight are all 0: enable at least one "
        "task")
  weights = dict(config.eval.task_weights)
  if not any(float(weights.get(t, 0)) > 0 for t in schema.TASKS
             if float(config.tasks[t].weight) > 0):
    raise errors.ConfigError(
        f"config.eval.task_weights={weights} gives weight 0 to every trained "
        "task (config.tasks.*.weight > 0): no object would get a score")


def unchecked_keys(config, ignore: Sequence[str] = _FREE_FORM) -> list[str]:
  """Leaves of ``config`` that no rule covers (for the completeness test)."""
  rules = _rules()
  return [k for k in leaf_keys(config)
          if k not in rules and k.split(".")[0] not in ignore]
