"""Local training and evaluation, shared by clients, the centralized baseline and pretraining."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fedray.config import ConfigError
from fedray.data.datasets import to_tensor_batch
from fedray.fl.types import Params
from fedray.models.fold import fold_batchnorm
from fedray.models.views import has_views, view_args, view_features
from fedray.progress import Progress
from fedray.tasks.base import Task

PRECISIONS = ("fp32", "bf16", "auto")


def torch_device(want: Any = "auto") -> str:
    """fedray's `device` setting (auto | cpu | cuda) as a torch device: `auto` is CUDA where torch
    sees a GPU, else the CPU; `cuda` without one is a config error, not a crash mid-stage."""
    want = str(want)
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {want!r} but torch sees no CUDA device here (torch.cuda.is_available() is "
            "False); use device=auto or device=cpu"
        )
    return want


def bf16_native(device: str = "cpu") -> bool:
    """Whether `device` runs bfloat16 convolutions natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs);
    elsewhere bfloat16 is emulated and slower than float32."""
    if str(device).startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: Any, key: str, device: str = "cpu") -> str:
    """`fp32` or `bf16` for a precision setting; `auto` is bf16 where the device has it natively."""
    name = str(name)
    if name not in PRECISIONS:
        raise ConfigError(f"{key}={name!r}: choose one of {PRECISIONS}")
    if name == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return name


def autocast(precision: str, device: str = "cpu") -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `bf16` (convolutions and matmuls; the loss and the optimizer's
    master weights stay float32), nothing for `fp32`."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", torch.bfloat16)


def travel_names(model: nn.Module, trainable: list[str]) -> list[str]:
    """State entries that travel: trainable params plus float buffers (BN stats) of modules whose
    parameters all train, so a fully trained BN layer brings its running statistics along."""
    chosen = set(trainable)
    names = list(trainable)
    for mod_name, module in model.named_modules():
        own = [
            f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)
        ]
        if not own or not all(p in chosen for p in own):
            continue
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point():
                names.append(f"{mod_name}.{buf_name}" if mod_name else buf_name)
    order = {k: i for i, k in enumerate(model.state_dict())}
    return sorted(set(names), key=order.__getitem__)


def get_params(
    model: nn.Module, names: list[str], state: dict[str, torch.Tensor] | None = None
) -> Params:
    """Copy the named state entries out as float32 NumPy arrays (what travels).

    `state`: the model's state_dict() if the caller keeps it (its tensors alias the model's).
    """
    state = model.state_dict() if state is None else state
    return {
        n: state[n].detach().cpu().numpy().astype(np.float32, order="C", copy=True) for n in names
    }


def set_params(
    model: nn.Module, params: Params, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Load travelled arrays into the model in place (`state`: as in get_params)."""
    state = model.state_dict() if state is None else state
    with torch.no_grad():
        for n, v in params.items():
            state[n].copy_(torch.from_numpy(np.require(v, requirements="W")))


def freeze_except(model: nn.Module, trainable: list[str]) -> None:
    """requires_grad only on `trainable`; modules with no trainable parameter run in eval mode."""
    key = tuple(trainable)
    plan = getattr(model, "_fedray_freeze_plan", None)
    if plan is None or plan[0] != key:  # walk the modules once per trainable set, not per fit
        chosen = set(trainable)
        params = [(p, n in chosen) for n, p in model.named_parameters()]
        frozen = []
        for mod_name, module in model.named_modules():
            own = [
                f"{mod_name}.{p}" if mod_name else p
                for p, _ in module.named_parameters(recurse=False)
            ]
            if own and not any(p in chosen for p in own):
                frozen.append(module)
        plan = (key, params, frozen)
        model._fedray_freeze_plan = plan
    for p, on in plan[1]:
        p.requires_grad_(on)
    model.train()
    for module in plan[2]:
        module.eval()  # frozen BN keeps its running statistics


def forward_from(model: nn.Module, feats: torch.Tensor, start: int) -> torch.Tensor:
    """Logits from the output of model.features[:start] (the rest of features, then the head)."""
    return torch.flatten(model.classifier(model.features[start:](feats)), 1)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: np.ndarray,
    upto: int | None = None,
    batch_size: int = 128,
    device: str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Output of model.features[:upto] (all of it by default) for uint8 NHWC images, in eval
    mode: those blocks are frozen, so this is computed once and cached. `precision`: fp32, bf16
    (autocast; the features are returned as float32) or auto (`resolve_precision`)."""
    precision = resolve_precision(precision, "fl.cache_precision", device)
    whole = upto is None or upto >= len(model.features)
    if has_views(model) and not whole:
        raise ConfigError(
            f"model.turns={model.turns} / model.zooms={list(model.zooms)} / model.taps="
            f"{model.taps} run the whole backbone on turned and zoomed views of the photo and "
            f"pool its blocks, but only its first {upto} blocks are frozen (fl.trainable): use "
            "model.turns=1, model.zooms=[1.0] and model.taps=null, or train only the classifier"
        )
    # an eval-mode copy with BatchNorm folded into the convs: the same features, cheaper
    blocks = fold_batchnorm(model.features if whole else model.features[:upto])
    views = view_args(model)
    out = []
    # a long pass (thousands of images) shows progress: a bar on a terminal, else log lines
    bar = Progress(len(images), "backbone features", "img") if len(images) >= 1024 else None
    for i in range(0, len(images), batch_size):
        with autocast(precision, device):
            feats = view_features(
                blocks, to_tensor_batch(images[i : i + batch_size]).to(device), *views
            )
        out.append(feats.float().cpu())
        if bar is not None:
            bar.update(len(feats))
    if bar is not None:
        bar.close()
    return torch.cat(out) if out else torch.empty(0)


def augment_turns_flips(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 90-degree turns and flips, per image (for subjects with no canonical orientation)."""
    out = np.empty_like(batch)
    turns = rng.integers(0, 4, len(batch))
    flips = rng.integers(0, 2, len(batch))
    for i, img in enumerate(batch):
        img = np.rot90(img, turns[i])
        out[i] = img[:, ::-1] if flips[i] else img
    return out


MIXES = ("mixup", "cutmix", "both")


def batch_mixer(
    kind: str | None, alpha: float, num_classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """Batch mixing `kind` (one of MIXES; None: none) as a callable (images, labels) -> (mixed
    images, soft targets), or None.

    torchvision's MixUp (the batch blended with itself shifted by one) and CutMix (a box of the
    shifted batch pasted in), the targets mixed in the same proportion; `both` picks one of the
    two per batch. They draw from torch's generator, so a resumed pretraining mixes as an
    uninterrupted one would."""
    from torchvision.transforms import v2

    if kind is None:
        return None
    mixes = {
        "mixup": [v2.MixUp(alpha=alpha, num_classes=num_classes)],
        "cutmix": [v2.CutMix(alpha=alpha, num_classes=num_classes)],
        "both": [v2.MixUp(alpha=alpha, num_classes=num_classes),
                 v2.CutMix(alpha=alpha, num_classes=num_classes)],
    }[kind]
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


SCHEDULES = ("constant", "cosine", "onecycle")
ROUND_SCHEDULES = ("constant", "cosine")


def round_lr_scale(name: str, round_idx: int, rounds: int) -> float:
    """Factor on the client learning rate in round `round_idx` (0-based) of `rounds`.

    `cosine` anneals it from 1 towards 0 across the rounds (never exactly 0: the last round still
    trains), the server-side decay FedAvg needs to settle on non-IID clients instead of hopping
    between their local optima; `constant` keeps the optimizer's lr every round.
    """
    if name == "constant":
        return 1.0
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * round_idx / max(rounds, 1)))
    raise ConfigError(f"client.lr_schedule={name!r}: choose one of {ROUND_SCHEDULES}")


def held_factor(name: str, steps: int, start: float, floor: float) -> Callable[[int], float]:
    """The lr factor at each step of `name` (cosine or onecycle) when it holds at `floor` x its
    peak from `start` x `steps` on, the constant phase of stochastic weight averaging.

    onecycle warms up from 1/25 of the peak over the first quarter as OneCycleLR does, then
    anneals (cosine) to `floor` by `start`; cosine anneals from the peak to `floor` by `start`.
    The optimizer's momentum stays as configured (OneCycleLR would cycle it).
    """
    warm = int(0.25 * steps) if name == "onecycle" else 0
    end = max(int(start * steps), warm + 1)

    def factor(step: int) -> float:
        if step < warm:
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * step / warm)) / 2
        if step < end:
            return floor + (1 - floor) * (1 + math.cos(math.pi * (step - warm) / (end - warm))) / 2
        return floor

    return factor


def make_schedule(
    optimizer: torch.optim.Optimizer, name: str, steps: int, hold: tuple[float, float] | None = None
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step learning-rate schedule `name` (one of SCHEDULES) over `steps` steps.

    `hold=(start, floor)`: instead of annealing to zero, the schedule reaches `floor` x its peak
    at `start` x `steps` and stays there (`held_factor`; a constant schedule is unchanged).
    """
    if name == "constant":
        return None
    if hold is not None and name in SCHEDULES:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, held_factor(name, steps, *hold))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    if name == "onecycle":
        peak = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            peak,
            total_steps=max(steps, 8),  # tiny runs: no zero-step warm-up phase
            pct_start=0.25,
        )
    raise ConfigError(f"schedule={name!r}: choose one of {SCHEDULES}")


def train_local(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    trainable: list[str],
    epochs: int,
    batch_size: int,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    seed: int,
    cached: int = 0,
    proximal_mu: float = 0.0,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    device: str = "cpu",
    schedule: str = "constant",
    label_smoothing: float = 0.0,
    lr_scale: float = 1.0,
    precision: str = "fp32",
    task: Task | None = None,
) -> dict[str, float]:
    """Train `trainable` params for `epochs` on (inputs, labels); returns mean loss and count.

    `inputs` is uint8 NHWC images, or when `cached > 0` the cached output of the frozen blocks
    model.features[:cached] (only the rest of the network runs). FedProx: `proximal_mu > 0` adds
    mu/2 * ||w - w_start||^2 over the trainable params. `schedule`: `constant` (the optimizer's
    lr), `cosine` (decays to zero over all steps) or `onecycle` (warms up to the optimizer's lr over
    the first quarter, then anneals: the fast from-scratch recipe of the pretraining stage).
    `lr_scale` multiplies the optimizer's lr (the round's factor, `round_lr_scale`).
    `precision="bf16"` runs the forward pass under bfloat16 autocast (`resolve_precision`).
    `task` gives the loss and what `labels` are (`fedray.tasks`: class ids, masks, ...); None is
    classification with cross-entropy (`label_smoothing`).
    """
    n = len(labels)
    if n == 0:
        return {"loss": float("nan"), "num_samples": 0}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    freeze_except(model, trainable)
    named = dict(model.named_parameters())
    params = [named[k] for k in trainable]
    optimizer = optimizer_factory(params)
    for group in optimizer.param_groups:
        group["lr"] *= float(lr_scale)
    steps = epochs * -(-n // batch_size)
    scheduler = make_schedule(optimizer, schedule, steps)
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    y_all = torch.as_tensor(np.asarray(labels))  # int64 per batch: masks stay uint8 until then
    if task is not None:
        task = task.local(labels)
    ce = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = np.sort(order[start : start + batch_size])  # sorted: mmap reads stay sequential
            y = y_all[idx].to(device, torch.long)
            xb = None
            with autocast(precision, device):
                if cached:
                    logits = forward_from(model, inputs[idx].to(device), cached)
                else:
                    batch = inputs[idx]
                    if augment is not None:
                        batch = augment(batch, rng)
                    xb = to_tensor_batch(batch).to(device)
                    logits = model(xb)
            if task is None:
                loss = ce(logits.float(), y)
            else:
                loss = task.train_loss(logits.float(), y, xb)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    return {"loss": total / max(seen, 1), "num_samples": n}


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    cached: int = 0,
    device: str = "cpu",
) -> torch.Tensor:
    """Logits for uint8 images (or cached features), in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        if cached:
            out.append(forward_from(model, inputs[i : i + batch_size].to(device), cached).cpu())
        else:
            out.append(model(to_tensor_batch(inputs[i : i + batch_size]).to(device)).cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int = 256,
    cached: int = 0,
    device: str = "cpu",
    task: Task | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The task's metrics dict and its confusion matrix (None if it has none) on (inputs, labels).

    Classification (`task=None`): acc, loss, macro P/R/F1, top5 and the (C, C) confusion matrix.
    """
    from fedray.metrics import MetricAccumulator

    acc = MetricAccumulator(num_classes) if task is None else task.accumulator(num_classes)
    y = torch.as_tensor(np.asarray(labels))
    for i in range(0, len(labels), batch_size):
        logits = predict_logits(model, inputs[i : i + batch_size], batch_size, cached, device)
        acc.update(logits, y[i : i + batch_size].long())
    return acc.compute(), acc.confusion
