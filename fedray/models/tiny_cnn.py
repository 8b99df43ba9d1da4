"""A small CNN shaped like SqueezeNet (features -> dropout, 1x1 conv, pool) for tests/benchmarks."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from fedray.models.dropout import Dropout
from fedray.models.views import check_pool, check_taps, head_width, tapped_head, view_features


class TinyCNN(nn.Module):
    """Three conv blocks and a 1x1-conv classifier head."""

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        zooms: tuple = (1.0,),
        taps: list | None = None,
        pool: str = "avg",
    ) -> None:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"model.width={width!r}: an integer >= 1 (the first conv's channels)")
        super().__init__()
        self.turns = 1  # quarter-turn averaging of the backbone (model.turns, fedray.models.views)
        self.zooms = tuple(zooms)  # centre zooms stacked on channels (model.zooms)
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 4 * w))
        self.taps = check_taps(taps, len(self.features))  # pooled blocks for the head (views.py)
        self.pool = check_pool(pool, self.taps)
        width = head_width(self.features, self.zooms, self.taps, self.pool)
        if self.taps is None:
            self.classifier = nn.Sequential(
                Dropout(0.2),
                nn.Conv2d(width, num_classes, 1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        else:
            self.classifier = tapped_head(width, num_classes, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = view_features(self.features, x, self.turns, self.zooms, self.taps, self.pool)
        return self.classifier(feats)
