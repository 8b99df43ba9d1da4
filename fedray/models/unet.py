"""A small UNet (Ronneberger et al. 2015) for 64-128 px masks on CPU: ~0.5 M parameters at
width 16, three poolings, GroupNorm by default (statistics per sample, so nothing about one
site's batches is averaged into another's under FedAvg)."""

from __future__ import annotations

import torch
from torch import nn

from fedray.config import ConfigError

NORMS = ("group", "batch", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels // 4) or 1, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) twice."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Encoder of `depth` poolings (width doubling each), mirrored decoder with skip links,
    1x1 head to `num_classes` logits per pixel: (B, 3, H, W) -> (B, num_classes, H, W).
    H and W must be divisible by 2**depth."""

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3,
                 norm: str = "group") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"model.norm={norm!r}: choose one of {NORMS}")
        if int(depth) < 1 or int(width) < 4:
            raise ConfigError(f"model.depth={depth}, model.width={width}: need depth >= 1, "
                              "width >= 4")
        self.depth = int(depth)
        widths = [int(width) * 2**i for i in range(self.depth + 1)]
        self.down = nn.ModuleList()
        cin = 3
        for w in widths[:-1]:
            self.down.append(DoubleConv(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1], norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(w_hi, w, 2, stride=2))
            self.dec.append(DoubleConv(2 * w, w, norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2**self.depth
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"UNet with depth {self.depth} needs sides divisible by {side}, "
                             f"got {tuple(x.shape[-2:])}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
