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

`model.taps=[4, 5, 7, 8, 10, 11, 12, 13]` feeds the head the globally pooled outputs of those
backbone blocks (indices into `model.features`; for SqueezeNet these are its 8 Fire modules)
instead of the last block's feature map alone: a hypercolumn of every scale the backbone sees.
An imprint a few pixels high is resolved by the early blocks' 15 x 15 and 7 x 7 maps and averaged
away by the last 3 x 3 one. `model.pool` pools each tap: `avg`, `max` (the strongest response
anywhere: is there an imprint stroke like this one) or `avgmax` (both, twice the width). The head
is one linear layer on that vector (`tapped_head`); no extra backbone pass is run, and cached
features shrink to one vector per image. `taps: null` is the plain SqueezeNet head on the last
block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedray.config import ConfigError

TURNS = (1, 2, 4)
POOLS = ("avg", "max", "avgmax")
# model config keys that choose views and the head's inputs, not the backbone's weights:
# pretraining ignores them (it augments instead), but for taps with pretrain.taps=model
VIEW_KEYS = ("turns", "zooms", "taps", "pool")


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


def check_taps(taps: Any, num_blocks: int) -> tuple[int, ...] | None:
    """model.taps as sorted distinct block indices in [0, num_blocks) (negative ones count from
    the end), or None for the plain head on the last block; a clear error otherwise."""
    if taps is None:
        return None
    if isinstance(taps, int):
        taps = [taps]
    ok = isinstance(taps, list | tuple) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in taps
    )
    idx = list(taps) if ok else []
    out = sorted({i + num_blocks if i < 0 else i for i in idx})
    if not ok or not out or any(not 0 <= i < num_blocks for i in out) or len(out) != len(idx):
        raise ConfigError(
            f"model.taps={taps!r}: give distinct indices of backbone blocks in "
            f"[0, {num_blocks}) (or negative, from the end), e.g. [-1]; null for the plain head"
        )
    return tuple(out)


def check_pool(pool: Any, taps: tuple[int, ...] | None) -> str:
    """model.pool as one of POOLS; anything but `avg` needs model.taps."""
    pool = "avg" if pool is None else str(pool)
    if pool not in POOLS:
        raise ConfigError(f"model.pool={pool!r}: choose one of {POOLS}")
    if pool != "avg" and taps is None:
        raise ConfigError(
            f"model.pool={pool} pools the tapped blocks' outputs: set model.taps too "
            "(e.g. [-1] for the last block alone)"
        )
    return pool


def centre_box(h: int, w: int, zoom: float) -> tuple[slice, slice]:
    """Row and column slices of the centre 1/zoom of an h x w image."""
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    return slice(top, top + ch), slice(left, left + cw)


def centre_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The centre 1/zoom of each (N, C, H, W) image, resized (bilinear) back to H x W."""
    if zoom == 1.0:
        return x
    h, w = (int(v) for v in x.shape[-2:])  # plain ints also under ONNX tracing (fixed size)
    rows, cols = centre_box(h, w, zoom)
    crop = x[..., rows, cols]
    out = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """torch.rot90(x, k, (2, 3)) as flips and a transpose: the same values, and exportable to
    ONNX (the TorchScript exporter has no rot90)."""
    k %= 4
    if k == 0:
        return x
    if k == 2:
        return x.flip(2).flip(3)
    if k == 1:
        return x.flip(3).transpose(2, 3)
    return x.transpose(2, 3).flip(3)


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
        out = out + rot90(features(rot90(x, q)), -q)
    return out / turns


def tapped(
    features: nn.Sequential, x: torch.Tensor, taps: Sequence[int], pool: str
) -> torch.Tensor:
    """The pooled outputs of blocks `taps` of `features` on x, stacked: (N, D)."""
    out = []
    for i, block in enumerate(features[: taps[-1] + 1]):
        x = block(x)
        if i in taps:
            if pool in ("avg", "avgmax"):
                out.append(x.mean((2, 3)))
            if pool in ("max", "avgmax"):
                out.append(x.amax((2, 3)))
    return torch.cat(out, 1)


def view_features(
    features: nn.Module,
    x: torch.Tensor,
    turns: int = 1,
    zooms: Sequence[float] = (1.0,),
    taps: Sequence[int] | None = None,
    pool: str = "avg",
) -> torch.Tensor:
    """The backbone's output over the views: turn-averaged per zoom, zooms stacked on channels.

    With `taps`, each view's tapped blocks are pooled (global pooling does not care which way
    the view was turned, so the pooled vectors are averaged as they are): (N, D).
    """
    if taps is None:
        maps = [turn_mean(features, centre_zoom(x, z), turns) for z in zooms]
        return maps[0] if len(maps) == 1 else torch.cat(maps, 1)
    if turns > 1 and x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"model.turns={turns} needs square images, got {tuple(x.shape[-2:])}")
    step = 4 // turns
    vecs = []
    for z in zooms:
        view = centre_zoom(x, z)
        acc = tapped(features, view, taps, pool)
        for k in range(1, turns):
            acc = acc + tapped(features, rot90(view, k * step), taps, pool)
        vecs.append(acc / turns)
    out = vecs[0] if len(vecs) == 1 else torch.cat(vecs, 1)
    return out


def tapped_head(
    width: int, num_classes: int, dropout: float, hidden: int | None = None
) -> nn.Sequential:
    """The head on tapped features: dropout, then one linear map of the pooled vector (a 1x1
    conv on a 1 x 1 map is the same maths at ten times the cost per small batch on CPU), or
    with `hidden` an MLP (Linear, ReLU, Linear): a head that is not linear in the features, so
    that averaging heads is not the same as averaging their logits (what FedDF distils)."""
    from fedray.models.dropout import Dropout

    if hidden is None:
        return nn.Sequential(Dropout(dropout), nn.Linear(width, num_classes))
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        from fedray.config import ConfigError

        raise ConfigError(f"model.hidden={hidden!r}: a positive integer (the MLP head's width)")
    return nn.Sequential(
        Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )  # fmt: skip


@torch.no_grad()
def head_width(
    features: nn.Module, zooms: Sequence[float], taps: Sequence[int] | None, pool: str
) -> int:
    """Channels of view_features' output: what the head's 1x1 conv takes in."""
    was_training = features.training
    features.eval()  # a probe, not a batch: BatchNorm's running statistics stay as they are
    try:
        probe = torch.zeros(1, 3, 64, 64)
        return int(view_features(features, probe, 1, zooms, taps, pool).shape[1])
    finally:
        features.train(was_training)


def has_views(model: nn.Module) -> bool:
    """True when the head sees more than the last block's output on the one plain view."""
    return (
        int(getattr(model, "turns", 1)) > 1
        or tuple(getattr(model, "zooms", (1.0,))) != (1.0,)
        or getattr(model, "taps", None) is not None
    )


def view_args(model: nn.Module) -> tuple[int, tuple[float, ...], tuple[int, ...] | None, str]:
    """(turns, zooms, taps, pool) of a model, for view_features."""
    return (
        int(getattr(model, "turns", 1)),
        tuple(getattr(model, "zooms", (1.0,))),
        getattr(model, "taps", None),
        str(getattr(model, "pool", "avg")),
    )
