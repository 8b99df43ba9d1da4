"""What a model costs on a device: parameters, multiply-accumulates, file size, CPU latency."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters of the whole inference model."""
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (Conv2d and Linear layers, by hooks).

    A conv costs out_elements * (in_channels / groups) * kh * kw, a linear out * in; norms,
    activations and pooling are not counted (the usual convention).
    """
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, channels, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def save_size(model: nn.Module, path: str | Path | None = None) -> int:
    """Bytes of the saved state_dict (written to `path`, or to a temporary file)."""
    if path is not None:
        torch.save(model.state_dict(), path)
        return Path(path).stat().st_size
    with tempfile.TemporaryDirectory() as d:
        return save_size(model, os.path.join(d, "model.pt"))


@torch.no_grad()
def latency_ms(
    model: nn.Module, image_size: int, runs: int = 50, warmup: int = 5, threads: int = 1
) -> float:
    """Median CPU time of one forward pass at batch 1, in milliseconds, on `threads` threads."""
    was_training = model.training
    model.eval()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, image_size, image_size)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(max(1, runs)):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def profile(
    model: nn.Module, image_size: int, path: str | Path | None = None, runs: int = 50
) -> dict[str, float]:
    """{params, macs, size_bytes, latency_ms_p50} of `model` (saved to `path` if given)."""
    cpu = model.to("cpu")
    return {
        "params": count_params(cpu),
        "macs": count_macs(cpu, image_size),
        "size_bytes": save_size(cpu, path),
        "latency_ms_p50": latency_ms(cpu, image_size, runs=runs),
    }
