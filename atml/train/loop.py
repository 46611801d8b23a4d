"""The training loop of :func:`atml.train.fit`: one configuration, no Optuna, no storage, plain tensors.

Training runs where the data is (or on ``device``): the model, each batch and the
augmentation live there, with mixed precision when ``cfg.precision`` asks for it. What
leaves :func:`fit` is on the CPU (the kept weights) or numpy (predictions), so a checkpoint,
an ONNX export and int8 calibration never see a GPU tensor.

Early stopping follows ATML's rule: stop once the validation loss has not improved for
``patience`` epochs *and* the training loss is below the validation loss by more than
``gap`` (the model overfits rather than still learning). The study objective is reported
after every epoch through ``report``, which may raise to prune the trial.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from atml.config import TrainConfig
from atml.device import check_precision
from atml.metrics import task_metrics
from atml.models.prototype import draw_partners, pair_sources
from atml.models.transfer import keep_frozen_eval, param_groups

__all__ = ["TrainConfig", "TrainResult", "Interrupted", "train_loop", "cpu_state", "predict_proba", "evaluate",
           "augment", "stretch"]

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised inside the training loop when the worker was asked to stop (Ctrl-C, SIGTERM)."""


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False
    epoch_seconds: float = 0.0
    # train.prune: the layer shapes that changed (atml.models.shapes); None: not pruned
    shapes: dict[str, dict[str, int]] | None = None
    # train.qat: the weights before quantisation-aware fine-tuning (what post-training int8 would quantise)
    float_state: dict[str, torch.Tensor] | None = None
    compression: list[dict[str, Any]] = field(default_factory=list)  # what each phase after training did

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("state_dict")
        d.pop("float_state")
        return d


def _objective(metrics: dict[str, float], metric: str) -> float:
    return float(metrics["val_loss"] if metric == "val_loss" else metrics[metric])


def _better(a: float, b: float, direction: str) -> bool:
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if direction == "maximize" else a < b


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # A warm start's backbone learns at lr * lr_scale (atml.models.transfer).
    params = model.parameters() if cfg.lr_scale == 1 else param_groups(model, cfg.lr, cfg.lr_scale)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )


def augment(xb: torch.Tensor, strength: float, gen: torch.Generator,
            noise_gen: torch.Generator | None = None) -> torch.Tensor:
    """Random ECG-like perturbations of a training batch (``strength`` 0 = none, 1 = strong).

    Amplitude scaling, a time shift, Gaussian noise and a slow baseline wander: the things
    that differ between subjects and recordings, so the model leans on rhythm, not on them.
    The per-segment draws come from the CPU generator ``gen`` and move to the batch's
    device (a few numbers); the noise, as large as the batch, is drawn where the batch is,
    from ``noise_gen`` (a generator on that device; default ``gen``, for a CPU batch).
    """
    if strength <= 0:
        return xb
    b, c, n = xb.shape
    dev = xb.device
    scale = (1 + 0.5 * strength * (2 * torch.rand(b, 1, 1, generator=gen) - 1)).to(dev)
    shift = int(torch.randint(0, n, (1,), generator=gen))
    out = torch.roll(xb, shifts=shift, dims=2) * scale
    out = out + 0.1 * strength * torch.randn(out.shape, generator=gen if noise_gen is None else noise_gen, device=dev)
    cycles = (0.5 + 1.5 * torch.rand(b, 1, 1, generator=gen)).to(dev)  # 0.5-2 cycles per segment
    phase = (2 * math.pi * torch.rand(b, 1, 1, generator=gen)).to(dev)
    t = torch.linspace(0, 2 * math.pi, n, device=dev).view(1, 1, n)
    wander = (0.3 * strength * torch.rand(b, 1, 1, generator=gen)).to(dev)
    return out + wander * torch.sin(cycles * t + phase)


def stretch(xb: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Resample a training batch in time by one random factor in ``[1/(1+amount), 1+amount]``
    (log-uniform) and cut it back to its length at a random offset.

    Heart rate varies far more between people than within the few dozen in a training
    set: a slow atrial fibrillation looks unlike every fast one the model has seen. A
    stretched batch keeps what matters (how regular the beats are, the waveform's shape)
    at another rate. A shrunk batch is continued by its own start, as the time shift in
    :func:`augment` already does.
    """
    if amount <= 0:
        return xb
    n = xb.shape[-1]
    span = math.log1p(amount)
    factor = math.exp(span * (2 * float(torch.rand(1, generator=gen)) - 1))
    m = max(2, round(n * factor))
    out = nn.functional.interpolate(xb, size=m, mode="linear", align_corners=False)
    if m < n:
        out = torch.cat([out] * (n // m + 1), dim=-1)
    start = int(torch.randint(0, out.shape[-1] - n + 1, (1,), generator=gen))
    return out[..., start : start + n]


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for ``precision`` bf16/fp16 on ``device``; fp32 changes nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def predict_proba(
    model: nn.Module, x: torch.Tensor, batch_size: int = 1024, task: str = "binary", precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (sigmoid for multilabel, else softmax) and logits (eval, no grad), as
    numpy; the model runs where it is (a batch of ``x`` elsewhere is moved there)."""
    model.eval()
    dev = _device_of(model)
    logits = []
    with torch.no_grad(), _autocast(dev, precision):
        for i in range(0, len(x), batch_size):
            logits.append(model(x[i : i + batch_size].to(dev)))
    out = (torch.cat(logits) if logits else torch.empty(0, 2)).float().cpu()
    proba = torch.sigmoid(out) if task == "multilabel" else torch.softmax(out, dim=1)
    return proba.numpy(), out.numpy()


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module | None = None,
    task: str = "binary", classes: tuple[str, ...] = (), precision: str = "fp32",
) -> dict[str, float]:
    """Validation metrics of the task (binary: class 1 positive) and mean loss (on the CPU)."""
    proba, logits = predict_proba(model, x, task=task, precision=precision)
    loss_fn = loss_fn or _loss(task)
    y = y.cpu()
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(logits), y)) if len(y) else math.nan
    m = task_metrics(task, y.numpy(), proba, classes)
    m["val_loss"] = loss
    return m


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict on the CPU (what a checkpoint stores and ONNX export loads)."""
    sd = module.state_dict()
    if all(v.device.type == "cpu" for v in sd.values()):
        return copy.deepcopy(sd)
    out: OrderedDict[str, torch.Tensor] = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)  # the modules' state versions, which load_state_dict reads
    if meta is not None:
        out._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return out


def _loss(task: str, y_train: torch.Tensor | None = None, n_classes: int = 2, weighted: bool = False,
          smoothing: float = 0.0) -> nn.Module:
    if task == "multilabel":
        pos_weight = None
        if weighted and y_train is not None:
            pos = y_train.sum(0).clamp(min=1)
            pos_weight = (len(y_train) - pos).clamp(min=1) / pos
        return _SmoothedBCE(pos_weight, smoothing)
    weight = None
    if weighted and y_train is not None:
        counts = torch.bincount(y_train, minlength=n_classes).clamp(min=1).float()
        weight = counts.sum() / (n_classes * counts)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)


class _SmoothedBCE(nn.Module):
    """BCE-with-logits with optional per-class positive weights and label smoothing."""

    def __init__(self, pos_weight: torch.Tensor | None, smoothing: float) -> None:
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        if self.smoothing:
            y = y * (1 - self.smoothing) + self.smoothing / 2
        return self.loss(logits, y)


def _ema_step(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """Exponential moving average with a warm-up: step ``n`` uses ``min(decay, (1 + n) / (10 + n))``,
    so the average follows the fast early training instead of dragging the random start along
    (a fixed 0.999 still holds 60 % of the initial weights after 500 steps)."""

    def step(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg * d + new * (1.0 - d)

    return step


def train_loop(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: TrainConfig,
    report: Callable[[int, float, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    classes: tuple[str, ...] = (),
    device: str | torch.device | None = None,
    distill: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    state_of: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None,
    subjects: np.ndarray | None = None,
) -> TrainResult:
    """One training run of :func:`atml.train.fit` (training, or one fine-tuning phase after
    it); ``state_of`` takes the kept weights (default: a CPU copy of the state dict)."""
    state_of = state_of or cpu_state
    dev = torch.device(device) if device is not None else x_train.device
    check_precision((cfg.precision,), str(dev))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest kernels
    model.to(dev)
    x_train, y_train, x_val, y_val = (t.to(dev) for t in (x_train, y_train, x_val, y_val))
    # Indices and per-segment draws come from a CPU generator (a CPU run is the same as ever);
    # noise as large as a batch is drawn on the device, from its own generator.
    gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = gen if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(cfg.seed)
    scaler = torch.amp.GradScaler(dev.type) if cfg.precision == "fp16" else None
    # Summed on the device without a sync per batch; float64 is exactly what float() summed.
    acc_dtype = torch.float32 if dev.type == "mps" else torch.float64
    model.eval()
    with torch.no_grad():  # eval mode: a probe must not touch BatchNorm statistics
        n_classes = int(model(x_train[:2]).shape[1]) if len(x_train) else 2
    loss_fn = _loss(cfg.task, y_train, n_classes, cfg.class_weighted, cfg.label_smoothing)
    eval_loss = _loss(cfg.task)
    opt = _optimizer(model, cfg)
    # The moving average (BatchNorm statistics included) is what gets scored and kept: it
    # smooths the batch-to-batch noise that makes a small model's epochs swing on new subjects.
    averaged = None
    if cfg.ema > 0:
        averaged = torch.optim.swa_utils.AveragedModel(model, avg_fn=_ema_step(cfg.ema), use_buffers=True)
    scored = model if averaged is None else averaged.module
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.lr_factor or 0.5, patience=cfg.lr_patience
    )
    best_obj, best_epoch, best_loss = math.nan, -1, math.inf
    best_state: dict[str, torch.Tensor] = {}
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    since_loss_improved = 0
    stopped_early = False
    n = len(x_train)
    pairs = pair_sources(model, y_train, subjects) if cfg.mode == "comparator" else None
    t_epochs = 0.0
    epoch = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        keep_frozen_eval(model)  # a warm start's frozen blocks keep their BatchNorm statistics
        perm = torch.randperm(n, generator=gen).to(dev)
        total, seen = torch.zeros((), dtype=acc_dtype, device=dev), 0
        for i in range(0, n, cfg.batch_size):
            if should_stop is not None and should_stop():
                raise Interrupted("worker asked to stop")
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2 and seen:  # a batch of one breaks BatchNorm in train mode
                continue
            xb, yb = x_train.index_select(0, idx), y_train.index_select(0, idx)
            if pairs is not None:  # each segment and its partner, augmented alike
                partner = draw_partners(pairs[0], idx, gen, pairs[1]).to(dev)
                xb = torch.cat([xb, x_train.index_select(0, partner)])
                yb = torch.cat([yb, y_train.index_select(0, partner)])
            xb = augment(stretch(xb, cfg.stretch, gen), cfg.augment, gen, noise_gen)
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, cfg.precision):
                if pairs is not None:  # comparator: the pair loss of segments and partners
                    loss = model.pair_loss(xb, yb)  # type: ignore[operator]
                else:
                    out = model(xb)
                    loss = loss_fn(out, yb) if distill is None else distill(out, loss_fn(out, yb), xb, idx)
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # fp16: scaled gradients, steps with inf/nan gradients skipped
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            if averaged is not None:
                averaged.update_parameters(model)
            total += loss.detach().to(acc_dtype) * len(idx)
            seen += len(idx)
        train_loss = float(total) / max(seen, 1)
        if pairs is not None:  # the prototypes of this epoch's encoder, before it is scored
            scored.set_prototypes(x_train, y_train)  # type: ignore[operator]
        m = evaluate(scored, x_val, y_val, eval_loss, task=cfg.task, classes=classes, precision=cfg.precision)
        t_epochs += time.perf_counter() - t0
        m["train_loss"] = train_loss
        m["epoch"] = epoch
        m["lr"] = opt.param_groups[0]["lr"]
        history.append(m)
        obj = _objective(m, cfg.metric)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch}")
        if best_epoch < 0 or _better(obj, best_obj, cfg.direction) or (
                cfg.keep == "last" and epoch == cfg.epochs - 1):
            best_obj, best_epoch, best_metrics = obj, epoch, dict(m)
            best_state = state_of(scored)
        sched.step(m["val_loss"])
        if m["val_loss"] < best_loss - 1e-6:
            best_loss, since_loss_improved = m["val_loss"], 0
        else:
            since_loss_improved += 1
        log.debug("epoch %d train_loss=%.4f val_loss=%.4f %s=%.4f", epoch, train_loss,
                  m["val_loss"], cfg.metric, obj)
        if report is not None:
            report(epoch, obj, m)
        # A pair loss is not on the validation loss's scale: comparator mode stops on patience alone.
        overfitting = m["val_loss"] - train_loss > cfg.gap or pairs is not None
        if epoch + 1 >= cfg.min_epochs and since_loss_improved >= cfg.patience and overfitting:
            stopped_early = True
            break
    return TrainResult(
        best_epoch=best_epoch,
        epochs_run=epoch + 1,
        metrics=best_metrics,
        history=history,
        state_dict=best_state,
        stopped_early=stopped_early,
        epoch_seconds=t_epochs,
    )
