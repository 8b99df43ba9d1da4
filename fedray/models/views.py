"""Views of the photo the backbone runs on: quarter turns (averaged) and centre zooms (stacked).

`model.turns=4` runs the backbone on the image turned by 0, 90, 180 and 270 degrees, turns each
feature map back and averages them, so the features (and a globally pooled head on them) no longer
depend on how the phone was held. For a linear head on pooled features it is the same as averaging
the logits of the four turned images (test-time augmentation), but it also holds while training
and in the cached features every client computes once. Costs `turns` backbone passes.

`model.zooms=[1.0, 1.6]` also runs the backbone on the photo's centre, cut to 1/1.6 of its side
and resized back, and stacks those feature maps along the channels: the head sees the pill at two
scales. A pill photographed from afar fills a third of its crop, and a backbone pretrained on
studio crops reads its imprint better when it is enlarged; a pill that fills the crop is still
seen whole at zoom 1. Costs `turns` passes per zoom, and the head grows to D x len(zooms) inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedray.config import ConfigError

TURNS = (1, 2, 4)
# model config keys that choose views, not weights: pretraining ignores them (it augments instead)
VIEW_KEYS = ("turns", "zooms")


def check_turns(turns: Any) -> int:
    """model.turns as an int in TURNS, or a clear error."""
    if not isinstance(turns, int | str) or str(turns) not in {str(t) for t in TURNS}:
        raise ConfigError(f"model.turns={turns!r}: choose one of {TURNS}")
    return int(turns)


def check_zooms(zooms: Any) -> tuple[float, ...]:
    """model.zooms as a tuple of distinct floats >= 1 (null: no zoom, (1.0,)), or a clear error."""
    if zooms is None:
        return (1.0,)
    if isinstance(zooms, int | float):
        zooms = [zooms]
    try:
        out = tuple(float(z) for z in zooms)
    except (TypeError, ValueError):
        raise ConfigError(
            f"model.zooms={zooms!r}: give a list of numbers >= 1, e.g. [1.0, 1.6]"
        ) from None
    if not out or any(not z >= 1.0 for z in out) or len(set(out)) != len(out):
        raise ConfigError(
            f"model.zooms={list(out)!r}: give distinct zoom factors >= 1 (1.0 = the whole crop), "
            "e.g. [1.0, 1.6]"
        )
    return out


def centre_box(h: int, w: int, zoom: float) -> tuple[slice, slice]:
    """Row and column slices of the centre 1/zoom of an h x w image."""
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    return slice(top, top + ch), slice(left, left + cw)


def centre_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The centre 1/zoom of each (N, C, H, W) image, resized (bilinear) back to H x W."""
    if zoom == 1.0:
        return x
    h, w = x.shape[-2:]
    rows, cols = centre_box(h, w, zoom)
    crop = x[..., rows, cols]
    out = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


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


def view_features(
    features: nn.Module, x: torch.Tensor, turns: int = 1, zooms: Sequence[float] = (1.0,)
) -> torch.Tensor:
    """The backbone's output over the views: turn-averaged per zoom, zooms stacked on channels."""
    maps = [turn_mean(features, centre_zoom(x, z), turns) for z in zooms]
    return maps[0] if len(maps) == 1 else torch.cat(maps, 1)


def has_views(model: nn.Module) -> bool:
    """True when the model's backbone runs on more than the one plain view."""
    return int(getattr(model, "turns", 1)) > 1 or tuple(getattr(model, "zooms", (1.0,))) != (1.0,)
