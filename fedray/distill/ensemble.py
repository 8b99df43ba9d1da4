"""Several trained models read as one teacher (`distill.teacher: [run, run, ...]`)."""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    """The members' mean logits: the normalised geometric mean of their class distributions at
    any softmax temperature, so a distillation loss's tau softens the ensemble as it would one
    model (FedDF's server teacher is the same mean). Its parameters, MACs, file and latency are
    all the members' together: the whole inference model a student is compared with."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)
