"""Quarter-turn averaging of a backbone: pills have no canonical orientation.

`model.turns=4` runs the backbone on the image turned by 0, 90, 180 and 270 degrees, turns each
feature map back and averages them, so the features (and a globally pooled head on them) no longer
depend on how the phone was held. For a linear head on pooled features it is the same as averaging
the logits of the four turned images (test-time augmentation), but it also holds while training
and in the cached features every client computes once. Costs `turns` backbone passes.
"""

from __future__ import annotations

import torch
from torch import nn

from fedray.config import ConfigError

TURNS = (1, 2, 4)


def check_turns(turns: int) -> int:
    """model.turns as an int in TURNS, or a clear error."""
    if int(turns) not in TURNS:
        raise ConfigError(f"model.turns={turns!r}: choose one of {TURNS}")
    return int(turns)


def turn_mean(features: nn.Module, x: torch.Tensor, turns: int = 1) -> torch.Tensor:
    """mean over k of rot(-k) features(rot(k) x), k = 0 .. turns-1 steps of 360/turns degrees."""
    if turns == 1:
        return features(x)
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"model.turns={turns} needs square images, got {tuple(x.shape[-2:])}")
    step = 4 // turns
    out = features(x)
    for k in range(1, turns):
        q = k * step
        out = out + torch.rot90(features(torch.rot90(x, q, (2, 3))), -q, (2, 3))
    return out / turns
