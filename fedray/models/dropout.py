"""Dropout with its mask drawn by torch.rand instead of bernoulli_: the same distribution, faster.

On CPU, PyTorch's dropout draws its mask with `bernoulli_`, which is slow: 1.9 ms for a
32 x 512 x 3 x 3 batch of SqueezeNet features on one thread, against 0.7 ms for `rand >= p`. On
the head of cached backbone features (classifier-only FL) it was 40% of a client's whole fit.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, same scaling by 1/(1-p) while training, identity in eval)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep
