"""Stochastic weight averaging for the public pretraining (Izmailov et al., UAI 2018).

`pretrain.swa: {start: S, lr: L}`: the schedule anneals to L x its peak by S x the steps instead
of to zero and holds there (`fedray.fl.train.held_factor`); from that epoch on the weights are
averaged at every epoch's end (torch's `AveragedModel`), and the average, its BatchNorm
statistics recomputed on the public training images (`update_bn`), is the pretrained backbone.
`pretrain.swa: null` is the plain schedule to zero and its last weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fedray.config import ConfigError


def swa_knobs(pcfg: dict[str, Any]) -> tuple[float, float] | None:
    """(start, lr) of `pretrain.swa`, or None when it is off."""
    swa = pcfg.get("swa")
    if swa is None:
        return None
    return float(swa["start"]), float(swa["lr"])


def check_swa(pcfg: dict[str, Any]) -> None:
    """`pretrain.swa` is null or {start in (0, 1), lr in (0, 1]}, with an epoch left to average."""
    from fedray.checks import mapping, number

    swa = pcfg.get("swa")
    if swa is None:
        return
    swa = mapping("pretrain.swa", swa)
    unknown = sorted(set(swa) - {"start", "lr"})
    if unknown:
        raise ConfigError(f"pretrain.swa.{unknown[0]}: no such key (start, lr)")
    missing = [k for k in ("start", "lr") if k not in swa]
    if missing:
        raise ConfigError(f"pretrain.swa.{missing[0]}: missing; give both, e.g. "
                          "pretrain.swa={start: 0.75, lr: 0.1}")
    number("pretrain.swa.start", swa.get("start"), 0, 1, low_open=True, high_open=True)
    number("pretrain.swa.lr", swa.get("lr"), 0, 1, low_open=True)


def first_averaged_epoch(start: float, epochs: int) -> int:
    """The first epoch (1-based count of epochs done) whose end is averaged: where the lr holds."""
    return min(max(int(start * epochs), 1), epochs)


class Averager:
    """The running average of a model's weights from epoch `first_averaged_epoch` on."""

    def __init__(self, model: nn.Module, start: float, epochs: int) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.first = first_averaged_epoch(start, epochs)
        self.averaged = AveragedModel(model)

    def epoch_done(self, model: nn.Module, done: int) -> None:
        if done >= self.first:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)

    def finish(self, images: np.ndarray, device: torch.device, batch_size: int = 256) -> nn.Module:
        """The averaged model, its BatchNorm statistics recomputed on `images` (no augmentation)."""
        from torch.optim.swa_utils import update_bn

        from fedray.data.datasets import to_tensor_batch

        batches = (to_tensor_batch(images[i : i + batch_size])
                   for i in range(0, len(images), batch_size))
        with torch.no_grad():
            update_bn(batches, self.averaged, device)
        model = self.averaged.module
        model.eval()
        return model
