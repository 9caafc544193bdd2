"""SSMTL in PyTorch: the twin of ``ssmtl_jax.model.network`` for the speed comparison.

The same network, layer for layer (see ``ssmtl_jax/model/network.py``): a backbone of
Conv3D 3x3x3 (no bias) + BatchNorm + ReLU stages, each followed by a (1, 2, 2)
max-pool; class heads (Conv3D + BN + ReLU, (1, 2, 2) max-pool, global average,
Linear) for arrow of time, motion irregularity and distillation; the
middle-box decoder (time folded into channels, Conv2D + BN + ReLU, then per
stage nearest x2 upsampling + Conv2D + BN + ReLU, final Conv2D + sigmoid).
Same losses (``ssmtl_jax/model/tasks.py``) and optimisers (``ssmtl_jax/train/trainer.py``).

Layout: PyTorch's NCDHW, i.e. sequences are ``[B, C, T, H, W]`` and middle
crops ``[B, C, H, W]`` (JAX: ``[B, T, H, W, C]`` / ``[B, H, W, C]``). With
``channels_last=True`` activations and conv weights use
``torch.channels_last_3d`` (``channels_last`` in the 2D decoder), which is what
oneDNN on CPU and cuDNN on GPU prefer for these convolutions.

:func:`load_flax_variables` copies Flax ``params`` + ``batch_stats`` into the
twin, so both frameworks can be checked for the same outputs
(``tests/test_benchmarks.py``).

Known, intended differences from the Flax model:

* Running variances: torch updates them with the unbiased batch variance,
  Flax with the biased one (the normalisation itself uses the biased variance
  in both). Batch statistics, outputs, losses and gradients are the same.
* The JAX train step also freezes the state on a non-finite loss; the twin
  does not (a plain PyTorch loop would not either).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

VARIANT_WIDTHS = {"narrow": (16, 32, 32), "wide": (32, 64, 64)}
DEPTH_CONVS = {"shallow": 1, "deep": 2}
# Flax BatchNorm(momentum=0.9) keeps 0.9 of the running value; torch's momentum
# is the weight of the new batch value, so 0.1 is the same update.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5

Tensor = torch.Tensor


class ConvBNReLU(nn.Module):
  """Conv (3x3x3 or 3x3, 'same' padding, no bias) + batch norm + ReLU."""

  def __init__(self, in_features: int, features: int, dims: int):
    super().__init__()
    conv, norm = ((nn.Conv3d, nn.BatchNorm3d) if dims == 3
                  else (nn.Conv2d, nn.BatchNorm2d))
    # No conv bias: the batch norm's shift makes it redundant (as in Flax).
    self.conv = conv(in_features, features, 3, padding=1, bias=False)
    self.bn = norm(features, eps=BN_EPS, momentum=BN_MOMENTUM)

  def forward(self, x: Tensor) -> Tensor:
    return F.relu(self.bn(self.conv(x)), inplace=True)


class Backbone(nn.Module):
  """[B, C, T, H, W] -> [B, widths[-1], T, H / 2^S, W / 2^S], S stages."""

  def __init__(self, in_channels: int, widths: Sequence[int],
               convs_per_stage: int = 1):
    super().__init__()
    layers: list[nn.Module] = []
    c = in_channels
    for width in widths:
      for _ in range(convs_per_stage):
        layers.append(ConvBNReLU(c, width, 3))
        c = width
      # Flax nn.max_pool's default VALID padding == torch's floor mode.
      layers.append(nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2)))
    self.layers = nn.Sequential(*layers)

  def forward(self, x: Tensor) -> Tensor:
    return self.layers(x)


class ClassHead(nn.Module):
  """Conv3D + BN + ReLU, spatial max-pool, global average pool, linear."""

  def __init__(self, in_features: int, width: int, num_outputs: int):
    super().__init__()
    self.block = ConvBNReLU(in_features, width, 3)
    # Flax pools with padding="SAME" here: on odd sizes the last window is cut
    # short, which is exactly torch's ceil_mode.
    self.pool = nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2), ceil_mode=True)
    self.fc = nn.Linear(width, num_outputs)

  def forward(self, x: Tensor) -> Tensor:
    x = self.pool(self.block(x))
    return self.fc(x.mean(dim=(2, 3, 4)))


class MiddleBoxHead(nn.Module):
  """Decoder from the features of the 2k-frame sequence to the middle crop.

  [B, widths[-1], T, h, w] -> [B, out_channels, 2^S h, 2^S w] in [0, 1].
  """

  def __init__(self, in_features: int, frames: int, widths: Sequence[int],
               out_channels: int, channels_last: bool = False):
    super().__init__()
    c = in_features * frames
    blocks = [ConvBNReLU(c, widths[-1], 2)]
    c = widths[-1]
    for width in reversed(widths):
      blocks.append(ConvBNReLU(c, width, 2))
      c = width
    self.blocks = nn.ModuleList(blocks)
    self.out = nn.Conv2d(c, out_channels, 3, padding=1)
    self.memory_format = (torch.channels_last if channels_last
                          else torch.contiguous_format)

  def forward(self, x: Tensor) -> Tensor:
    b, c, t, h, w = x.shape
    # Flax folds time into channels as channel index t * C + c (transpose to
    # [B, h, w, T, C], reshape); [B, T, C, h, w] -> [B, T * C, h, w] is the
    # same order.
    x = x.transpose(1, 2).reshape(b, t * c, h, w)
    x = self.blocks[0](x.contiguous(memory_format=self.memory_format))
    for block in self.blocks[1:]:
      x = block(F.interpolate(x, scale_factor=2, mode="nearest"))
    return torch.sigmoid(self.out(x))


class SSMTL(nn.Module):
  """Shared backbone + the heads of the enabled tasks (twin of network.SSMTL).

  Args:
    widths: backbone stage widths (narrow 16/32/32, wide 32/64/64).
    convs_per_stage: 1 (shallow) or 2 (deep).
    tasks: enabled tasks (subset of TASKS); only their heads exist.
    kd_outputs: width of the distillation head.
    channels: crop channels (input channels and the decoder's output).
    head_width: width of the class-head convolutions (0 = widths[-1]).
    seq_half: sequences have 2 * seq_half + 1 frames; the middle-box view has
      2 * seq_half (Flax infers this from the input; torch needs it up front).
    channels_last: channels_last(_3d) activations and conv weights.
  """

  def __init__(self, *, widths: Sequence[int], convs_per_stage: int,
               tasks: Sequence[str], kd_outputs: int, channels: int,
               head_width: int = 0, seq_half: int = 3,
               channels_last: bool = False):
    super().__init__()
    self.tasks = tuple(tasks)
    self.channels_last = channels_last
    hw = head_width or widths[-1]
    self.backbone = Backbone(channels, widths, convs_per_stage)
    heads: dict[str, nn.Module] = {}
    if "aot" in tasks:
      heads["aot"] = ClassHead(widths[-1], hw, 2)
    if "mi" in tasks:
      heads["mi"] = ClassHead(widths[-1], hw, 2)
    if "mbp" in tasks:
      heads["mbp"] = MiddleBoxHead(widths[-1], 2 * seq_half, widths, channels,
                                   channels_last)
    if "kd" in tasks:
      heads["kd"] = ClassHead(widths[-1], hw, kd_outputs)
    self.heads = nn.ModuleDict(heads)
    self.memory_format = (torch.channels_last_3d if channels_last
                          else torch.contiguous_format)
    if channels_last:
      self.apply_memory_format()

  def apply_memory_format(self) -> None:
    """Puts conv weights in the layout of the activations (call after .to())."""
    if not self.channels_last:
      return
    for module in self.modules():
      if isinstance(module, nn.Conv3d):
        module.weight.data = module.weight.data.contiguous(
            memory_format=torch.channels_last_3d)
      elif isinstance(module, nn.Conv2d):
        module.weight.data = module.weight.data.contiguous(
            memory_format=torch.channels_last)

  def features(self, x: Tensor) -> Tensor:
    return self.backbone(x.contiguous(memory_format=self.memory_format))

  def forward(self, views: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{task: [B, C, T, H, W]} -> {task: output}: logits [B, 2] (aot/mi), crop
    [B, C, H, W] (mbp), [B, kd_outputs] (kd). The backbone runs once per view,
    the 7-frame views in the order of ``views``, then the middle-removed one
    (which fixes the order of running-stat updates, as in Flax)."""
    order = sorted(views, key=lambda t: t == "mbp")
    feats = {task: self.features(views[task]) for task in order}
    return {task: self.heads[task](feats[task]) for task in views}

  def score_heads(self, consecutive: Tensor,
                  middle_removed: Tensor) -> dict[str, Tensor]:
    """Inference: the consecutive sequence goes through the backbone once for
    aot, mi and kd; the middle-removed one feeds mbp."""
    out = {}
    if any(t in self.tasks for t in ("aot", "mi", "kd")):
      feats = self.features(consecutive)
      for task in ("aot", "mi", "kd"):
        if task in self.tasks:
          out[task] = self.heads[task](feats)
    if "mbp" in self.tasks:
      out["mbp"] = self.heads["mbp"](self.features(middle_removed))
    return out


def from_flax_module(model: Any, *, seq_half: int,
                     channels_last: bool = False) -> SSMTL:
  """An (untrained) twin with the architecture of a Flax ``network.SSMTL``."""
  return SSMTL(widths=tuple(model.widths),
               convs_per_stage=int(model.convs_per_stage),
               tasks=tuple(model.tasks), kd_outputs=int(model.kd_outputs),
               channels=int(model.out_channels),
               head_width=int(model.head_width), seq_half=seq_half,
               channels_last=channels_last)


# --- Copying Flax variables -------------------------------------------------


def _copy(dst: Tensor, src: Any, name: str) -> None:
  src = torch.from_numpy(np.array(src, dtype=np.float32))
  if tuple(dst.shape) != tuple(src.shape):
    # copy_ would broadcast silently; a shape mismatch is a wiring bug.
    raise ValueError(f"{name}: torch shape {tuple(dst.shape)} != converted "
                     f"Flax shape {tuple(src.shape)}")
  dst.copy_(src)  # keeps dst's memory format


def _conv_kernel(kernel: Any) -> np.ndarray:
  kernel = np.asarray(kernel)
  if kernel.ndim == 5:  # DHWIO -> OIDHW
    return kernel.transpose(4, 3, 0, 1, 2)
  return kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _load_conv_bn(block: ConvBNReLU, params: Mapping, stats: Mapping,
                  name: str) -> None:
  conv = "conv"  # ConvBNReLU names its convolution explicitly
  _check_keys(params, {conv, "BatchNorm_0"}, name)
  _copy(block.conv.weight, _conv_kernel(params[conv]["kernel"]),
        f"{name}/{conv}/kernel")
  bn_p, bn_s = params["BatchNorm_0"], stats["BatchNorm_0"]
  _copy(block.bn.weight, bn_p["scale"], f"{name}/BatchNorm_0/scale")
  _copy(block.bn.bias, bn_p["bias"], f"{name}/BatchNorm_0/bias")
  _copy(block.bn.running_mean, bn_s["mean"], f"{name}/BatchNorm_0/mean")
  _copy(block.bn.running_var, bn_s["var"], f"{name}/BatchNorm_0/var")


def _blocks(module: nn.Module) -> list[ConvBNReLU]:
  # Registration order == Flax's ConvBNReLU_<i> numbering.
  return [m for m in module.modules() if isinstance(m, ConvBNReLU)]


def flax_named_blocks(model: SSMTL) -> dict[tuple[str, str], ConvBNReLU]:
  """{(flax top module, flax block name): block}, e.g. ("backbone",
  "ConvBNReLU_0") or ("heads_mbp", "ConvBNReLU_3")."""
  named = {("backbone", f"ConvBNReLU_{i}"): b
           for i, b in enumerate(_blocks(model.backbone))}
  for task, head in model.heads.items():
    named.update({(f"heads_{task}", f"ConvBNReLU_{i}"): b
                  for i, b in enumerate(_blocks(head))})
  return named


def _check_keys(flax_tree: Mapping, expected: set[str], name: str) -> None:
  if set(flax_tree) != expected:
    raise ValueError(f"{name}: Flax modules {sorted(flax_tree)} do not match "
                     f"the torch twin's {sorted(expected)}")


@torch.no_grad()
def load_flax_variables(model: SSMTL, variables: Mapping[str, Any]) -> None:
  """Copies Flax ``{"params", "batch_stats"}`` of network.SSMTL into the twin.

  Conv kernels DHWIO/HWIO -> OIDHW/OIHW, Dense [in, out] -> Linear [out, in],
  BatchNorm scale/bias -> weight/bias and mean/var -> running_mean/var.

  Raises:
    ValueError when the trees do not describe the same architecture.
  """
  params, stats = variables["params"], variables.get("batch_stats", {})
  _check_keys(params, {"backbone"} | {f"heads_{t}" for t in model.heads},
              "params")
  blocks = flax_named_blocks(model)
  extra = {"heads_aot": {"Dense_0"}, "heads_mi": {"Dense_0"},
           "heads_kd": {"Dense_0"}, "heads_mbp": {"Conv_0"}}
  for top in params:
    _check_keys(params[top], {name for t, name in blocks if t == top} |
                extra.get(top, set()), top)
  for (top, key), block in blocks.items():
    _load_conv_bn(block, params[top][key], stats[top][key], f"{top}/{key}")
  for task, head in model.heads.items():
    p, name = params[f"heads_{task}"], f"heads_{task}"
    if isinstance(head, ClassHead):
      _copy(head.fc.weight, np.asarray(p["Dense_0"]["kernel"]).T,
            f"{name}/Dense_0/kernel")
      _copy(head.fc.bias, p["Dense_0"]["bias"], f"{name}/Dense_0/bias")
    else:
      _copy(head.out.weight, _conv_kernel(p["Conv_0"]["kernel"]),
            f"{name}/Conv_0/kernel")
      _copy(head.out.bias, p["Conv_0"]["bias"], f"{name}/Conv_0/bias")


def jax_to_torch_layout(x: Any) -> Tensor:
  """A JAX-layout array ([B, T, H, W, C] or [B, H, W, C]) -> torch NC(D)HW."""
  x = torch.from_numpy(np.array(x))
  if x.ndim == 5:
    return x.permute(0, 4, 1, 2, 3).contiguous()
  if x.ndim == 4:
    return x.permute(0, 3, 1, 2).contiguous()
  return x


# --- Views, losses, scores (twins of ssmtl_jax.model.tasks) ----------------------


def _to_float(crops: Tensor) -> Tensor:
  return crops.float() / 255.0


def consecutive_view(crops: Tensor, seq_half: int) -> Tensor:
  """uint8 crops [B, C, 2W+1, S, S] -> float t-h..t+h [B, C, 2h+1, S, S]."""
  w = (crops.shape[2] - 1) // 2
  return _to_float(crops[:, :, w - seq_half:w + seq_half + 1])


def intermittent_indices(batch: int, half_window: int, seq_half: int,
                         max_gap: int, device: torch.device) -> Tensor:
  """[B, 2h+1] sorted frame indices centred on W, gaps 1..max_gap, one > 1."""
  n = 2 * seq_half
  extra = torch.randint(0, max_gap, (batch, n), device=device)
  # Force at least one gap > 1 so that the sequence is never consecutive.
  forced = F.one_hot(torch.randint(0, n, (batch,), device=device), n)
  extra = torch.where(extra.sum(1, keepdim=True) == 0, forced, extra)
  gaps = 1 + extra
  left = half_window - gaps[:, :seq_half].cumsum(1).flip(1)
  right = half_window + gaps[:, seq_half:].cumsum(1)
  middle = torch.full((batch, 1), half_window, device=device,
                      dtype=gaps.dtype)
  return torch.cat([left, middle, right], dim=1)


def make_views(crops: Tensor, teacher: Tensor, *, tasks: Sequence[str],
               seq_half: int, max_gap: int
               ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
  """The four task views on device (torch's RNG; same distribution as JAX).

  Args:
    crops: uint8 [B, C, 2W+1, S, S].
    teacher: float [B, D + K] teacher targets (detector probs, then logits).
  Returns:
    (views {task: [B, C, T, S, S]}, targets: aot/mi int64 [B], mbp
    [B, C, S, S], kd [B, D + K]); views in TASKS order, like the JAX step.
  """
  b, w = crops.shape[0], (crops.shape[2] - 1) // 2
  if seq_half * max_gap > w:
    raise ValueError(f"seq_half * max_gap = {seq_half * max_gap} exceeds the "
                     f"half window {w}")
  consec = consecutive_view(crops, seq_half)
  views, targets = {}, {}
  if "aot" in tasks:
    backward = torch.randint(0, 2, (b,), device=crops.device)
    views["aot"] = torch.where(backward.view(b, 1, 1, 1, 1) == 1,
                               consec.flip(2), consec)
    targets["aot"] = backward
  if "mi" in tasks:
    intermittent = torch.randint(0, 2, (b,), device=crops.device)
    idx = intermittent_indices(b, w, seq_half, max_gap, crops.device)
    gathered = _to_float(torch.take_along_dim(
        crops, idx[:, None, :, None, None], dim=2))
    views["mi"] = torch.where(intermittent.view(b, 1, 1, 1, 1) == 1,
                              gathered, consec)
    targets["mi"] = intermittent
  if "mbp" in tasks:
    views["mbp"] = torch.cat([consec[:, :, :seq_half],
                              consec[:, :, seq_half + 1:]], dim=2)
    targets["mbp"] = consec[:, :, seq_half]
  if "kd" in tasks:
    views["kd"] = consec
    targets["kd"] = teacher
  return views, targets


def inference_views(crops: Tensor, seq_half: int) -> tuple[Tensor, Tensor]:
  """(consecutive [B, C, 2h+1, S, S], middle removed [B, C, 2h, S, S])."""
  consec = consecutive_view(crops, seq_half)
  return consec, torch.cat([consec[:, :, :seq_half],
                            consec[:, :, seq_half + 1:]], dim=2)


def kd_parts(pred: Tensor, target: Tensor, num_det: int,
             kind: str = "l1") -> dict[str, Tensor]:
  """Per-example distance to each teacher [B] (as tasks.kd_parts)."""
  err = (pred - target).abs() if kind == "l1" else (pred - target).square()
  parts = {"det": err[:, :num_det], "cls": err[:, num_det:]}
  return {k: p.mean(dim=-1) for k, p in parts.items() if p.shape[-1] > 0}


def kd_discrepancy(pred: Tensor, target: Tensor, num_det: int,
                   kind: str = "l1") -> Tensor:
  """Per-example distance [B]: detector and classifier parts averaged
  separately, then summed (as tasks.kd_discrepancy)."""
  return sum(kd_parts(pred, target, num_det, kind).values())


def task_losses(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                *, num_det: int, kd_loss: str = "l1") -> dict[str, Tensor]:
  metrics = {}
  for task in ("aot", "mi"):
    if task in outputs:
      logits, labels = outputs[task], targets[task]
      metrics[f"{task}_loss"] = F.cross_entropy(logits, labels)
      metrics[f"{task}_acc"] = (logits.argmax(-1) == labels).float().mean()
  if "mbp" in outputs:
    metrics["mbp_loss"] = (outputs["mbp"] - targets["mbp"]).abs().mean()
  if "kd" in outputs:
    metrics["kd_loss"] = kd_discrepancy(outputs["kd"], targets["kd"], num_det,
                                        kd_loss).mean()
  return metrics


def joint_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
               weights: Mapping[str, float], *, num_det: int,
               kd_loss: str = "l1") -> tuple[Tensor, dict[str, Tensor]]:
  metrics = task_losses(outputs, targets, num_det=num_det, kd_loss=kd_loss)
  total = sum(weights[t] * metrics[f"{t}_loss"] for t in outputs)
  metrics["loss"] = total
  return total, metrics


def task_scores(outputs: Mapping[str, Tensor], consecutive: Tensor,
                teacher: Tensor, *, num_det: int, seq_half: int,
                kd_loss: str = "l1") -> dict[str, Tensor]:
  """Per-object task scores [B] (as tasks.task_scores)."""
  scores = {}
  for task in ("aot", "mi"):
    if task in outputs:
      scores[task] = outputs[task].softmax(-1)[:, 1]
  if "mbp" in outputs:
    middle = consecutive[:, :, seq_half]
    scores["mbp"] = (outputs["mbp"] - middle).abs().mean(dim=(1, 2, 3))
  if "kd" in outputs:
    parts = kd_parts(outputs["kd"], teacher, num_det, kd_loss)
    scores["kd"] = sum(parts.values())
    scores.update({f"kd_{k}": v for k, v in parts.items()})
  return scores


# --- Optimiser (twin of train.create_optimizer) -----------------------------


def lr_factor(step: int, *, schedule: str, warmup_steps: int,
              total_steps: int) -> float:
  """Learning rate / peak at optimiser step ``step`` (optax's schedules)."""
  if schedule == "constant":
    return min(step / warmup_steps, 1.0) if warmup_steps else 1.0
  if schedule == "cosine":
    # optax.warmup_cosine_decay_schedule(0 or lr, lr, warmup, decay_steps).
    decay_steps = max(total_steps, warmup_steps + 1)
    if warmup_steps and step < warmup_steps:
      return step / warmup_steps
    frac = min(step - warmup_steps, decay_steps - warmup_steps) / (
        decay_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * frac))
  raise ValueError(f"schedule={schedule!r}: expected 'cosine' or 'constant'")


def create_optimizer(model: nn.Module, optim: Any, total_steps: int
                     ) -> tuple[torch.optim.Optimizer,
                                torch.optim.lr_scheduler.LRScheduler]:
  """Adam / AdamW / SGD(0.9) with the cosine or constant schedule of
  ``config.optim`` (fields name, learning_rate, schedule, warmup_steps,
  weight_decay). Gradient clipping is the Trainer's job."""
  lr = float(optim.learning_rate)
  params = model.parameters()
  if optim.name == "adam":
    # optax.adam defaults: b1 0.9, b2 0.999, eps 1e-8 (added to sqrt(v_hat)).
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
  elif optim.name == "adamw":
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=float(optim.weight_decay))
  elif optim.name == "sgd":
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
  else:
    raise ValueError(f"optim.name={optim.name!r}: expected adam, adamw or sgd")
  schedule, warmup = str(optim.schedule), int(optim.warmup_steps)
  lr_factor(0, schedule=schedule, warmup_steps=warmup,
            total_steps=total_steps)  # validates the schedule name
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: lr_factor(step, schedule=schedule,
                                  warmup_steps=warmup, total_steps=total_steps))
  return opt, sched


# --- Train step and scorer --------------------------------------------------


def _autocast(dtype: Optional[torch.dtype], tensors: Mapping[str, Tensor]):
  """torch.autocast to `dtype` on the tensors' device; no-op for None."""
  if dtype is None:
    return contextlib.nullcontext()
  device = next(iter(tensors.values())).device.type
  return torch.autocast(device_type=device, dtype=dtype)


class Trainer:
  """The torch train step: views on device, forward, joint loss, backward,
  optimiser + schedule step. ``compiled=True`` runs views + forward + loss
  through ``torch.compile`` (backward via AOTAutograd); the optimiser step
  stays eager.

  Args:
    model: the twin.
    tasks, weights, seq_half, max_gap, num_det, kd_loss: as tasks.StepConfig.
    optimizer, scheduler: from :func:`create_optimizer`.
    grad_clip_norm: clip the global gradient norm (0 = off).
    compiled: use torch.compile.
    autocast: None (float32) or a dtype (torch.bfloat16) for
      ``torch.autocast`` around views + forward + loss (mixed precision:
      float32 parameters and optimiser; the twin of ``model.dtype``).
  """

  def __init__(self, model: SSMTL, *, tasks: Sequence[str],
               weights: Mapping[str, float], seq_half: int, max_gap: int,
               num_det: int, kd_loss: str = "l1",
               optimizer: torch.optim.Optimizer,
               scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
               grad_clip_norm: float = 0.0, compiled: bool = False,
               autocast: Optional[torch.dtype] = None):
    self.model = model
    self.autocast = autocast
    self.tasks = tuple(tasks)
    self.weights = dict(weights)
    self.seq_half, self.max_gap = seq_half, max_gap
    self.num_det, self.kd_loss = num_det, kd_loss
    self.optimizer, self.scheduler = optimizer, scheduler
    self.grad_clip_norm = grad_clip_norm
    self._loss = self._views_and_loss
    self._loss_on_views = self.loss_on_views
    if compiled:
      self._loss = torch.compile(self._views_and_loss)
      self._loss_on_views = torch.compile(self.loss_on_views)

  def loss_on_views(self, views: Mapping[str, Tensor],
                    targets: Mapping[str, Tensor]):
    with _autocast(self.autocast, views):
      outputs = self.model(views)
    # The loss in float32, as the JAX heads cast their outputs.
    outputs = {k: v.float() for k, v in outputs.items()}
    return joint_loss(outputs, targets, self.weights, num_det=self.num_det,
                      kd_loss=self.kd_loss)

  def _views_and_loss(self, crops: Tensor, teacher: Tensor):
    views, targets = make_views(crops, teacher, tasks=self.tasks,
                                seq_half=self.seq_half, max_gap=self.max_gap)
    return self.loss_on_views(views, targets)

  def _update(self, loss: Tensor) -> None:
    loss.backward()
    if self.grad_clip_norm:
      nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
    self.optimizer.step()
    if self.scheduler is not None:
      self.scheduler.step()

  def step(self, crops: Tensor, teacher: Tensor) -> dict[str, Tensor]:
    """One step on a batch: crops uint8 [B, C, 2W+1, S, S], teacher [B, D+K].
    Returns the metrics as (unsynchronised) tensors."""
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    loss, metrics = self._loss(crops, teacher)
    self._update(loss)
    return metrics

  def step_on_views(self, views: Mapping[str, Tensor],
                    targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """One step on pre-built views/targets (torch layout)."""
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    loss, metrics = self._loss_on_views(views, targets)
    self._update(loss)
    return metrics


class Scorer:
  """Inference: uint8 crops -> per-task object scores (as the JAX Scorer:
  inference views, score_heads, task_scores), under inference_mode."""

  def __init__(self, model: SSMTL, *, seq_half: int, num_det: int,
               kd_loss: str = "l1", compiled: bool = False,
               autocast: Optional[torch.dtype] = None):
    self.model = model
    self.autocast = autocast
    self.seq_half, self.num_det, self.kd_loss = seq_half, num_det, kd_loss
    self._fn = torch.compile(self._score) if compiled else self._score

  def _score(self, crops: Tensor, teacher: Tensor) -> dict[str, Tensor]:
    consec, middle_removed = inference_views(crops, self.seq_half)
    with _autocast(self.autocast, {"crops": crops}):
      outputs = self.model.score_heads(consec, middle_removed)
    outputs = {k: v.float() for k, v in outputs.items()}
    return task_scores(outputs, consec, teacher, num_det=self.num_det,
                       seq_half=self.seq_half, kd_loss=self.kd_loss)

  def __call__(self, crops: Tensor, teacher: Tensor) -> dict[str, Tensor]:
    self.model.eval()
    with torch.inference_mode():
      return self._fn(crops, teacher)
