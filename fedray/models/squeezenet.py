"""SqueezeNet (torchvision) with an N-way final 1x1 conv, as in the source recipe."""

from __future__ import annotations

from torch import nn
from torchvision.models import squeezenet1_0, squeezenet1_1


def build_squeezenet(num_classes: int, version: str = "1_1") -> nn.Module:
    """torchvision SqueezeNet, randomly initialised (weights=None: nothing is downloaded)."""
    factory = {"1_0": squeezenet1_0, "1_1": squeezenet1_1}.get(version)
    if factory is None:
        from fedray.config import ConfigError

        raise ConfigError(f"model.version={version!r}: choose '1_0' or '1_1'")
    return factory(weights=None, num_classes=num_classes)
