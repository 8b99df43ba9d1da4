"""SqueezeNet with an N-way final 1x1 conv, as in the source recipe.

`batch_norm: false` is torchvision's SqueezeNet exactly. The source fine-tuned ImageNet weights,
which cannot be downloaded here; trained from scratch (for the public-pill pretraining stage) plain
SqueezeNet often collapses to a dead final ReLU, so `batch_norm: true` (the default) adds BN after
every conv and drops the ReLU on the logits — same Fire topology, same parameter budget (+BN).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import squeezenet1_0, squeezenet1_1

from fedray.models.dropout import Dropout
from fedray.models.views import check_pool, check_taps, head_width, tapped_head, view_features


class Fire(nn.Module):
    """Squeeze 1x1 -> expand 1x1 + 3x3 (concatenated), each conv followed by BN + ReLU."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(
            nn.Conv2d(cin, squeeze, 1), nn.BatchNorm2d(squeeze), nn.ReLU(inplace=True)
        )
        self.expand1x1 = nn.Sequential(
            nn.Conv2d(squeeze, e1, 1), nn.BatchNorm2d(e1), nn.ReLU(inplace=True)
        )
        self.expand3x3 = nn.Sequential(
            nn.Conv2d(squeeze, e3, 3, padding=1), nn.BatchNorm2d(e3), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNetBN(nn.Module):
    """SqueezeNet 1.1 topology with BatchNorm; `.features` backbone, `.classifier` head."""

    def __init__(
        self,
        num_classes: int,
        dropout: float = 0.5,
        zooms: tuple = (1.0,),
        taps: list | None = None,
        pool: str = "avg",
        hidden: int | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        c = _width(width)
        self.turns = 1  # quarter-turn averaging of the backbone (model.turns, fedray.models.views)
        self.zooms = tuple(zooms)  # centre zooms stacked on channels (model.zooms)
        down = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, c(64), 3, stride=2), nn.BatchNorm2d(c(64)), nn.ReLU(inplace=True), down,
            Fire(c(64), c(16), c(64), c(64)), Fire(2 * c(64), c(16), c(64), c(64)), down,
            Fire(2 * c(64), c(32), c(128), c(128)), Fire(2 * c(128), c(32), c(128), c(128)), down,
            Fire(2 * c(128), c(48), c(192), c(192)), Fire(2 * c(192), c(48), c(192), c(192)),
            Fire(2 * c(192), c(64), c(256), c(256)), Fire(2 * c(256), c(64), c(256), c(256)),
        )  # fmt: skip
        # pooled outputs of these blocks feed the head (model.taps; None: the last block's map)
        self.taps = check_taps(taps, len(self.features))
        self.pool = check_pool(pool, self.taps)
        width = head_width(self.features, self.zooms, self.taps, self.pool)
        if self.taps is None:
            if hidden is not None:
                from fedray.config import ConfigError

                raise ConfigError("model.hidden (an MLP head) needs model.taps (a pooled head)")
            self.classifier = nn.Sequential(
                Dropout(dropout), nn.Conv2d(width, num_classes, 1), nn.AdaptiveAvgPool2d(1)
            )
        else:
            self.classifier = tapped_head(width, num_classes, dropout, hidden)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = view_features(self.features, x, self.turns, self.zooms, self.taps, self.pool)
        return torch.flatten(self.classifier(feats), 1)


def _width(multiplier: float):
    """Channels at a width multiplier: a multiple of 8 (at least 8), as MobileNets round them."""
    if not isinstance(multiplier, int | float) or not 0 < multiplier <= 4:
        from fedray.config import ConfigError

        raise ConfigError(f"model.width={multiplier!r}: a channel multiplier in (0, 4]")
    return lambda n: n if multiplier == 1 else max(8, int(n * multiplier + 4) // 8 * 8)


def build_squeezenet(
    num_classes: int,
    version: str = "1_1",
    batch_norm: bool = True,
    zooms: tuple = (1.0,),
    taps: list | None = None,
    pool: str = "avg",
    hidden: int | None = None,
    width: float = 1.0,
) -> nn.Module:
    """SqueezeNet, randomly initialised (nothing is downloaded); `hidden`: an MLP head of that
    width on the tapped features (None: one linear map); `width`: a channel multiplier of the
    BatchNorm layout (0.3: a phone-sized student with about a tenth of the parameters)."""
    zooms = tuple(zooms)
    if width != 1.0 and not batch_norm:
        from fedray.config import ConfigError

        raise ConfigError("model.width needs the BatchNorm layout (model.batch_norm=true)")
    if not batch_norm and (zooms != (1.0,) or taps is not None or hidden is not None):
        from fedray.config import ConfigError

        raise ConfigError(
            f"model.zooms={list(zooms)} / model.taps={taps} need fedray's own backbone; "
            "model.batch_norm=false is torchvision's SqueezeNet: use model.zooms=[1.0] and "
            "model.taps=null"
        )
    if batch_norm:
        if version != "1_1":
            from fedray.config import ConfigError

            raise ConfigError(
                "model.batch_norm=true is the SqueezeNet 1.1 layout: model.version=1_1"
            )
        return SqueezeNetBN(num_classes, zooms=zooms, taps=taps, pool=pool, hidden=hidden,
                            width=width)
    factory = {"1_0": squeezenet1_0, "1_1": squeezenet1_1}.get(version)
    if factory is None:
        from fedray.config import ConfigError

        raise ConfigError(f"model.version={version!r}: choose '1_0' or '1_1'")
    return factory(weights=None, num_classes=num_classes)
