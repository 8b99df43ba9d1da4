"""Ready-made small students: torchvision's MobileNetV3-Small at a width multiplier < 1.

(The narrow TinyCNN needs no builder: `fedray.models.tiny_cnn.TinyCNN` with a small `width`.)
"""

from __future__ import annotations

import torch
from torch import nn


class _SplitMobileNetV3(nn.Module):
    """MobileNetV3 under fedray's backbone/head contract: `features` + `classifier` (pool, MLP)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.classifier = nn.Sequential(net.avgpool, nn.Flatten(1), *net.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.features(x))


def mobilenet_v3_small(
    num_classes: int, width_mult: float = 0.5, dropout: float = 0.2
) -> nn.Module:
    """torchvision's mobilenet_v3_small, randomly initialised (weights=None: nothing downloads)."""
    from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small

    if not 0.0 < float(width_mult) <= 4.0:
        raise ValueError(f"distill.student.width_mult must be in (0, 4], got {width_mult!r}")
    net = tv_mobilenet_v3_small(
        weights=None, num_classes=num_classes, width_mult=float(width_mult), dropout=dropout
    )
    return _SplitMobileNetV3(net)
