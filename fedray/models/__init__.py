"""Model factory. Every model exposes `.features` (backbone) and `.classifier` (head), so
`fl.trainable=classifier` and feature caching work the same for all of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedray.config import ConfigError
from fedray.models.squeezenet import build_squeezenet
from fedray.models.tiny_cnn import TinyCNN
from fedray.models.views import VIEW_KEYS, check_turns, check_zooms

MODELS = ("squeezenet", "tiny_cnn")
# model keys that shape only the head fine-tuned on the pretrained backbone: pretraining ignores
# them (one cached backbone serves every value), but for model.taps when pretrain.taps=model
HEAD_KEYS = (*VIEW_KEYS, "dropout")
__all__ = [
    "HEAD_KEYS",
    "MODELS",
    "TinyCNN",
    "build_model",
    "frozen_prefix",
    "load_pretrained",
    "trainable_names",
]


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """Build the model `cfg` names with a `num_classes`-way head; load `pretrained` if given."""
    name = cfg.get("name")
    turns = check_turns(cfg.get("turns", 1))
    zooms = check_zooms(cfg.get("zooms"))
    taps, pool = cfg.get("taps"), cfg.get("pool") or "avg"
    if name == "squeezenet":
        batch_norm = bool(cfg.get("batch_norm", True))
        if not batch_norm and (turns > 1 or zooms != (1.0,) or taps is not None):
            raise ConfigError(
                f"model.turns={turns} / model.zooms={list(zooms)} / model.taps={taps} need "
                "fedray's own backbone; model.batch_norm=false is torchvision's SqueezeNet: use "
                "model.turns=1, model.zooms=[1.0] and model.taps=null"
            )
        model = build_squeezenet(
            num_classes,
            version=str(cfg.get("version", "1_1")),
            batch_norm=batch_norm,
            zooms=zooms,
            taps=taps,
            pool=pool,
        )
    elif name == "tiny_cnn":
        model = TinyCNN(
            num_classes, width=int(cfg.get("width", 16)), zooms=zooms, taps=taps, pool=pool
        )
    else:
        raise ConfigError(f"model.name={name!r} is not a known model; choose one of {MODELS}")
    if turns > 1:
        model.turns = turns
    if cfg.get("dropout") is not None:
        set_dropout(model, cfg["dropout"])
    if cfg.get("pretrained"):
        load_pretrained(model, cfg["pretrained"])
    # channels-last: the same maths, ~1.5x faster SqueezeNet training on CPU at 64-96 px
    # (bench/channels_last.py); travelled arrays are copied out C-ordered all the same
    return model.to(memory_format=torch.channels_last)


def set_dropout(model: nn.Module, p: Any) -> None:
    """Set the rate of every dropout layer (the head's) to p, checked to lie in [0, 1)."""
    try:
        rate = float(p)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"dropout={p!r}: give a rate in [0, 1)")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load local weights, skipping a head of another shape (new classes); returns skipped keys."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model.pretrained={str(path)!r} does not exist. fedray never downloads weights: "
            "run the pretraining stage (stage=pretrain) or point model.pretrained at a local file"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not compatible:
        raise ConfigError(f"model.pretrained={str(path)!r} has no weights that fit this model")
    model.load_state_dict(compatible, strict=False)
    return sorted(set(own) - set(compatible))


def trainable_names(model: nn.Module, spec: str) -> list[str]:
    """Parameter names selected by `fl.trainable`: all | classifier | a regex over names."""
    names = [n for n, _ in model.named_parameters()]
    if spec == "all":
        chosen = names
    elif spec == "classifier":
        chosen = [n for n in names if n.startswith("classifier.")]
    else:
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise ConfigError(f"fl.trainable={spec!r} is not a valid regex: {exc}") from None
        chosen = [n for n in names if pattern.search(n)]
    if not chosen:
        raise ConfigError(f"fl.trainable={spec!r} selects no parameters; the model has {names}")
    return chosen


def frozen_prefix(model: nn.Module, names: list[str]) -> int:
    """How many leading `model.features` blocks have no trainable parameter.

    Their output never changes during training, so it can be computed once and cached; 0 means
    the first block trains (nothing to cache), len(model.features) means only the head trains.
    """
    chosen = set(names)
    for i, block in enumerate(model.features):
        if any(f"features.{i}.{n}" in chosen for n, _ in block.named_parameters()):
            return i
    return len(model.features)
