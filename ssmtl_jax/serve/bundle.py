"""A portable model bundle: what scoring new video needs, and nothing else.

``python -m ssmtl_jax.export`` writes one from a training workdir;
``python -m ssmtl_jax.score`` (and :func:`load`) reads it on any machine,
without the workdir or the records::

    BUNDLE/bundle.json   format, checkpoint step, the config, the model's
                         input shapes and step settings, the detector and
                         teacher identities, the scoring settings and the
                         calibration statistics
    BUNDLE/variables/    orbax checkpoint of {"params", "batch_stats"}

Identities: the sha256 of the detector's weights and cfg and of the
classifier teacher's weights, their input sizes and thresholds, and every
other setting that shaped the scored objects (the test split's build
fingerprint, ``ssmtl_jax.data.builder.BuildSettings``). Scoring refuses other
weight files (:meth:`Bundle.check_weights`): a different detector or teacher
would silently change what the distillation scores measure.

Calibration (training data only, no test video): the per-task statistics of
the raw scores of training objects, exactly those the evaluator z-scores with
(``frame_scoring.fit_stats`` over the same evenly spaced subset of at most
``eval.norm_max_objects`` objects), and the distribution of the combined
(z-scored, weighted) score of those normal objects: its minimum is the
background of frames without objects, its 99.9th percentile the default
alert threshold. Scores are therefore comparable across videos and cameras
without seeing a test set; a bundle always scores with ``normalize='zscore'``
(min-max needs the whole test set).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import shutil
import tempfile
from typing import Optional

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ssmtl_jax.base import errors
from ssmtl_jax.base import files
from ssmtl_jax.base import schema
from ssmtl_jax.data import input_pipeline
from ssmtl_jax.evaluation import frame_scoring
from ssmtl_jax.evaluation import inference
from ssmtl_jax.model import network
from ssmtl_jax.model import tasks as tasks_lib

FORMAT = "ssmtl-jax-bundle/1"
QUANTILES = (50.0, 90.0, 99.0, 99.9)
THRESHOLD_QUANTILE = 99.9


class BundleError(errors.DataError):
  """A missing or malformed bundle, or weights it was not trained with."""


@dataclasses.dataclass
class Bundle:
  """A loaded bundle (see the module docstring)."""
  path: str
  meta: dict
  config: ml_collections.ConfigDict
  model: network.SSMTL
  variables: dict
  cfg: tasks_lib.StepConfig

  @property
  def step(self) -> int:
    return int(self.meta["step"])

  @property
  def build(self) -> dict:
    """The build fingerprint of the scored split (detector, teacher, crops)."""
    return self.meta["build"]

  @functools.cached_property
  def settings(self) -> frame_scoring.Settings:
    s = self.meta["scoring"]
    return frame_scoring.Settings(
        normalize="zscore", kd_score=s["kd_score"],
        task_weights=tuple((t, float(w)) for t, w in s["task_weights"]),
        sigma=tuple(s["sigma"]), map_scale=float(s["map_scale"]),
        temporal_sigma=float(s["temporal_sigma"]))

  @functools.cached_property
  def task_stats(self) -> dict[str, tuple[float, float]]:
    return {k: tuple(v) for k, v in
            self.meta["calibration"]["task_stats"].items()}

  @property
  def background(self) -> float:
    return float(self.meta["calibration"]["background"])

  @property
  def threshold(self) -> float:
    return float(self.meta["calibration"]["threshold"])

  def object_scores(self, raw: dict[str, np.ndarray]) -> np.ndarray:
    """Raw per-task scores of objects -> their calibrated combined scores."""
    return frame_scoring.object_anomaly_scores(raw, self.settings,
                                         self.task_stats)[1]

  def check_weights(self, kind: str, path: str,
                    cfg_path: Optional[str] = None) -> None:
    """Refuses weight files other than those the model was trained with.

    Args:
      kind: 'detector' or 'classifier'.
      path: the weight file to use.
      cfg_path: the detector's darknet cfg (checked too when given).
    Raises:
      BundleError naming the file and both hashes.
    """
    b = self.build
    wanted = [("det_weights_sha256", path), ("det_cfg_sha256", cfg_path)] if (
        kind == "detector") else [("classifier_sha256", path)]
    for key, file in wanted:
      if file is None or not b.get(key):
        continue
      got = files.sha256_file(file)
      if got != b[key]:
        raise BundleError(
            f"{file}: sha256 {got[:16]}... differs from the {kind} this model "
            f"was trained with ({b[key][:16]}..., bundle {self.path}); pass "
            "the same weights (see bundle.json 'build' and 'weights')")


def _calibration(scorer: inference.ObjectScorer, config, settings: frame_scoring.Settings,
                 info: input_pipeline.RecordsInfo) -> dict:
  """Training-object statistics and combined-score distribution."""
  objs = scorer.score_split(info, int(config.eval.batch_size),
                            max_objects=int(config.eval.norm_max_objects),
                            desc="calibration")
  stats = frame_scoring.fit_stats(objs.scores)
  _, combined = frame_scoring.object_anomaly_scores(objs.scores, settings, stats)
  q = np.percentile(combined, QUANTILES)
  return {
      "objects": int(len(combined)),
      "split": config.data.train_split,
      "task_stats": {k: [float(a), float(b)] for k, (a, b) in stats.items()},
      "combined": {"mean": float(combined.mean()),
                   "std": float(combined.std()),
                   "min": float(combined.min()), "max": float(combined.max()),
                   "quantiles": {f"p{p:g}": float(v)
                                 for p, v in zip(QUANTILES, q)}},
      "background": float(combined.min()),
      "threshold": float(np.percentile(combined, THRESHOLD_QUANTILE)),
      "threshold_rule": f"p{THRESHOLD_QUANTILE:g} of the combined scores of "
                        "normal training objects",
  }


def export(config, workdir: str, out: str, step: Optional[int] = None
           ) -> dict:
  """Writes the bundle of checkpoint ``step`` (default
  ``config.eval.checkpoint_step``, -1 = latest) to ``out``
  (which must not exist; written to a temporary sibling, then renamed).

  Returns:
    The bundle.json content.
  """
  out_path = epath.Path(out)
  if out_path.exists():
    raise BundleError(f"{out} exists; choose a new directory for the bundle")
  scorer = inference.restore_scorer(config, workdir,
                                    inference.requested_step(config, step))
  records = config.data.records
  train_meta = schema.read_json(schema.meta_path(records,
                                                 config.data.train_split))
  test_file = schema.meta_path(records, config.data.test_split)
  # Scored objects are built like the test split's (context C, teacher on
  # every object); without test records, like training's with C = seq_half.
  if epath.Path(test_file).exists():
    build = dict(schema.read_json(test_file)["settings"])
  else:
    build = dict(train_meta["settings"],
                 context=int(config.tasks.seq_half), stride=1)
  settings = dataclasses.replace(frame_scoring.Settings.from_config(config),
                                 normalize="zscore")
  info = input_pipeline.records_info(records, config.data.train_split)
  meta = {
      "format": FORMAT,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "jax": jax.__version__,
      "step": scorer.step,
      "config": json.loads(config.to_json_best_effort()),
      "model": {"kd_outputs": info.kd_outputs, "channels": info.channels,
                "crop_size": info.crop_size, "window": info.window,
                "num_det": info.num_det, "num_cls": info.num_cls,
                "dtype": str(config.model.dtype)},
      "step_config": dataclasses.asdict(scorer.cfg),
      "build": build,
      "weights": train_meta.get("weights", {}),
      "scoring": {"normalize": "zscore", "kd_score": settings.kd_score,
                  "task_weights": [list(tw) for tw in settings.task_weights],
                  "sigma": list(settings.sigma),
                  "map_scale": settings.map_scale,
                  "temporal_sigma": settings.temporal_sigma,
                  "note": ("eval.normalize is always 'zscore' here (training "
                           "statistics below); the other eval.* settings "
                           "are the config's")},
      "calibration": _calibration(scorer, config, settings, info),
  }
  parent = out_path.parent
  parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-",
                                    dir=os.fspath(parent)))
  try:
    variables = jax.device_get(scorer.variables)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.fspath(tmp / "variables"), variables)
      ckptr.wait_until_finished()
    schema.write_json_atomic(os.fspath(tmp / "bundle.json"), meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(os.fspath(tmp), 0o777 & ~umask)   # mkdtemp made it 0700
    tmp.rename(out_path)
  except BaseException:
    shutil.rmtree(os.fspath(tmp), ignore_errors=True)
    raise
  return meta


def load(path: str) -> Bundle:
  """Reads a bundle written by :func:`export` (BundleError if it is not)."""
  return _load(os.fspath(path))


def _load(path: str) -> Bundle:
  meta_file = epath.Path(path) / "bundle.json"
  if not meta_file.exists():
    raise BundleError(f"{path}: not a bundle (no bundle.json); make one with "
                      "python -m ssmtl_jax.export")
  meta = schema.read_json(os.fspath(meta_file))
  if meta.get("format") != FORMAT:
    raise BundleError(f"{meta_file}: format {meta.get('format')!r}, this "
                      f"version reads {FORMAT!r}")
  config = ml_collections.ConfigDict(meta["config"])
  m = meta["model"]
  sc = meta["step_config"]
  cfg = tasks_lib.StepConfig(
      tasks=tuple(sc["tasks"]),
      weights=tuple((t, float(w)) for t, w in sc["weights"]),
      seq_half=int(sc["seq_half"]), max_gap=int(sc["max_gap"]),
      num_det=int(sc["num_det"]), kd_loss=str(sc["kd_loss"]),
      kd_scales=tuple(float(v) for v in sc["kd_scales"]))
  model = network.create_model(config, kd_outputs=int(m["kd_outputs"]),
                              channels=int(m["channels"]))
  views = network.init_views(cfg.tasks, seq_half=cfg.seq_half,
                            crop_size=int(m["crop_size"]),
                            channels=int(m["channels"]))
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.PRNGKey(0), views)
  target = {"params": abstract["params"],
            "batch_stats": abstract.get("batch_stats", {})}
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(os.fspath(epath.Path(path) / "variables"),
                                target)
  except (FileNotFoundError, ValueError) as e:
    raise BundleError(f"{path}/variables: cannot restore the model "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                      ) from None
  return Bundle(path=path, meta=meta, config=config, model=model,
                variables=variables, cfg=cfg)


def scorer(bundle: Bundle) -> inference.ObjectScorer:
  """An inference.ObjectScorer (jitted over this machine's devices) for a bundle."""
  from ssmtl_jax.model import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  variables = jax.device_put(bundle.variables, sharding.replicated(mesh))
  return inference.ObjectScorer(model=bundle.model, variables=variables, mesh=mesh,
                          cfg=bundle.cfg, step=bundle.step)
