"""Any torchvision CNN classifier, split into fedray's backbone/head contract.

    model:
      _target_: fedray.models.torchvision_split.torchvision_classifier
      arch: resnet18          # the torchvision constructor's name

The network is built by its torchvision constructor with `weights=None` (nothing is ever
downloaded; `model.pretrained` is a local file, see `convert_torchvision_weights`) and re-wired,
module for module, into

- `features`: an `nn.Sequential` of the backbone's blocks, indexed 0..B-1 (for a ResNet: conv1,
  bn1, relu, maxpool, layer1..layer4), so `fl.trainable=classifier` trains the head alone and the
  frozen blocks' output is computed once and cached (`frozen_prefix`, `extract_features`);
- `classifier`: the head on the last block's output (the pooling and flattening torchvision does
  in its forward, then its own classifier layers), giving (N, num_classes) logits.

`forward(x) = classifier(features(x))` is torchvision's forward, the same modules in the same
order (tests/unit/test_torchvision_split.py checks each family against torchvision's own output).
The views of `fedray.models.views` apply too: `model.turns`, `model.zooms` (the head's first layer
takes len(zooms) times the channels) and `model.taps` (one linear layer on the pooled taps).

Families: alexnet, vgg*, resnet*, resnext*, wide_resnet*, squeezenet*, mobilenet_v2,
mobilenet_v3_*, mnasnet*, efficientnet_*, densenet*, shufflenet_v2_*, regnet_*, convnext_*.
GoogLeNet/Inception (auxiliary heads) and the transformers (ViT, Swin, MaxViT) have no
convolutional block sequence to cache and are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedray.config import ConfigError
from fedray.models.views import check_pool, check_taps, head_width, tapped_head, view_features
from fedray.targets import first_line

Blocks = tuple[list[nn.Module], list[nn.Module]]  # (backbone blocks, head layers)


def _flat(module: nn.Module) -> list[nn.Module]:
    """A Sequential's children (its layers, in order), or [module] for any other module."""
    return list(module.children()) if isinstance(module, nn.Sequential) else [module]


def _pool_flatten() -> list[nn.Module]:
    """Global average pooling to (N, C): what torchvision writes as mean([2, 3]) or F.adaptive."""
    return [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1)]


def _features_pool_classifier(m: Any) -> Blocks:
    """features -> avgpool -> flatten -> classifier: AlexNet, VGG, MobileNetV3, EfficientNet."""
    return _flat(m.features), [m.avgpool, nn.Flatten(1), *_flat(m.classifier)]


def _splitters() -> list[tuple[type, Callable[[Any], Blocks]]]:
    """(torchvision class, how its forward splits into blocks + head), one entry per family."""
    from torchvision import models as tv

    return [
        (tv.AlexNet, _features_pool_classifier),
        (tv.VGG, _features_pool_classifier),
        (tv.MobileNetV3, _features_pool_classifier),
        (tv.EfficientNet, _features_pool_classifier),
        (
            tv.ResNet,  # also resnext*, wide_resnet*
            lambda m: (
                [m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4],
                [m.avgpool, nn.Flatten(1), m.fc],
            ),
        ),
        (tv.SqueezeNet, lambda m: (_flat(m.features), [*_flat(m.classifier), nn.Flatten(1)])),
        (tv.MobileNetV2, lambda m: (_flat(m.features), [*_pool_flatten(), *_flat(m.classifier)])),
        (tv.MNASNet, lambda m: (_flat(m.layers), [*_pool_flatten(), *_flat(m.classifier)])),
        (
            tv.DenseNet,  # torchvision applies a ReLU after the last norm: it joins the backbone
            lambda m: ([*_flat(m.features), nn.ReLU()], [*_pool_flatten(), m.classifier]),
        ),
        (
            tv.ShuffleNetV2,
            lambda m: (
                [m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5],
                [*_pool_flatten(), m.fc],
            ),
        ),
        (
            tv.RegNet,
            lambda m: ([m.stem, *_flat(m.trunk_output)], [m.avgpool, nn.Flatten(1), m.fc]),
        ),
        (tv.ConvNeXt, lambda m: (_flat(m.features), [m.avgpool, *_flat(m.classifier)])),
    ]


class TorchvisionSplit(nn.Module):
    """A torchvision classifier as `features` (backbone blocks) + `classifier` (head)."""

    def __init__(
        self,
        arch: str,
        features: nn.Sequential,
        classifier: nn.Sequential,
        zooms: Sequence[float] = (1.0,),
        taps: tuple[int, ...] | None = None,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.turns = 1  # quarter-turn averaging of the backbone (model.turns, fedray.models.views)
        self.zooms = tuple(zooms)  # centre zooms stacked on channels (model.zooms)
        self.taps = taps  # pooled backbone blocks feeding a linear head (model.taps)
        self.pool = pool
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = view_features(self.features, x, self.turns, self.zooms, self.taps, self.pool)
        return self.classifier(feats)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"


def split_torchvision(
    model: nn.Module,
    zooms: Sequence[float] = (1.0,),
    taps: Sequence[int] | int | None = None,
    pool: str = "avg",
    arch: str | None = None,
) -> TorchvisionSplit:
    """Re-wire a built torchvision classifier (its own modules, weights shared) into the split."""
    for cls, split in _splitters():
        if isinstance(model, cls):
            blocks, head = split(model)
            break
    else:
        raise ConfigError(
            f"model: {type(model).__name__} is not a torchvision CNN classifier fedray can split "
            f"({', '.join(sorted(c.__name__ for c, _ in _splitters()))}); give the model a "
            "`features` nn.Sequential and a `classifier` head yourself, or train it whole "
            "(fl.trainable=all)"
        )
    features = nn.Sequential(*blocks)  # indexed 0..B-1: frozen_prefix counts blocks by index
    zooms = tuple(zooms)
    tap_idx = check_taps(taps, len(features))
    pool = check_pool(pool, tap_idx)
    name = arch or type(model).__name__.lower()
    if tap_idx is not None:
        width = head_width(features, zooms, tap_idx, pool)
        rate = next((m.p for m in head if isinstance(m, nn.Dropout)), 0.0)
        num_classes = _out_features(head)
        classifier = tapped_head(width, num_classes, rate)
    else:
        classifier = nn.Sequential(*head)
        if len(zooms) > 1:
            _widen_first_layer(classifier, len(zooms), name)
    return TorchvisionSplit(name, features, classifier, zooms, tap_idx, pool)


def _out_features(head: list[nn.Module]) -> int:
    """Classes of a head: the output size of its last Linear / Conv2d."""
    last = [m for m in head if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def _widen_first_layer(head: nn.Sequential, factor: int, arch: str) -> None:
    """Give the head's first weighted layer `factor` times the input channels (stacked zooms)."""
    for i, layer in enumerate(head):
        if not any(True for _ in layer.parameters()):
            continue  # pooling, flatten, dropout, activations: channel-agnostic
        if isinstance(layer, nn.Linear):
            bias = layer.bias is not None
            head[i] = nn.Linear(layer.in_features * factor, layer.out_features, bias)
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
            head[i] = nn.Conv2d(
                layer.in_channels * factor,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                bias=layer.bias is not None,
            )
        else:
            raise ConfigError(
                f"model.zooms with arch={arch}: its head starts with {type(layer).__name__}, "
                "which cannot take stacked zooms; set model.taps (e.g. [-1]) or model.zooms=[1.0]"
            )
        return


def torchvision_classifier(
    arch: str,
    num_classes: int,
    zooms: Sequence[float] = (1.0,),
    taps: Sequence[int] | int | None = None,
    pool: str = "avg",
    options: dict[str, Any] | None = None,
) -> TorchvisionSplit:
    """torchvision's `arch` with a `num_classes`-way head, untrained (weights=None), split.

    `options`: further keyword arguments of the torchvision constructor (e.g. `width_mult`).
    """
    from torchvision import models as tv

    names = tv.list_models(module=tv)
    if arch not in names:
        raise ConfigError(
            f"model.arch={arch!r} is not a torchvision classifier; choose one of {sorted(names)}"
        )
    options = dict(options or {})
    if "weights" in options:
        raise ConfigError(
            "model.options.weights: fedray never downloads weights; point model.pretrained at a "
            "local file (python -m fedray.models.convert ARCH TORCHVISION.pth OUT.pt)"
        )
    try:
        model = tv.get_model_builder(arch)(weights=None, num_classes=int(num_classes), **options)
    except TypeError as exc:
        raise ConfigError(
            f"model.options={options!r} does not fit torchvision {arch}: {exc}"
        ) from None
    return split_torchvision(model, zooms, taps, pool, arch=arch)


def convert_torchvision_weights(arch: str, src: str | Path, dst: str | Path) -> Path:
    """Rename a torchvision state dict (e.g. ImageNet weights saved offline) to the split's
    names, so `model.pretrained=dst` loads it (the 1000-way head is skipped when num_classes
    differs)."""
    from torchvision import models as tv

    names = tv.list_models(module=tv)
    if arch not in names:
        raise ConfigError(f"{arch!r} is not a torchvision classifier; choose one of "
                          f"{', '.join(sorted(names))}")
    model = tv.get_model_builder(arch)(weights=None)
    src = Path(src).expanduser()
    if not src.is_file():
        raise ConfigError(f"{src}: no such file (torchvision's .pth, saved on this machine)")
    try:
        blob = torch.load(src, map_location="cpu", weights_only=True)
        model.load_state_dict(blob.get("state_dict", blob) if isinstance(blob, dict) else blob)
    except Exception as exc:  # noqa: BLE001 - not torch weights, or another network's
        raise ConfigError(f"{src}: not {arch}'s torchvision weights ({type(exc).__name__}: "
                          f"{first_line(exc)[:160]})") from None
    dst = Path(dst).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(split_torchvision(model, arch=arch).state_dict(), dst)
    return dst
