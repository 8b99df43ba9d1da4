"""Pretraining on the public pill set: the offline stand-in for ImageNet weights.

The public set is built exactly like the private one but from disjoint catalog ids (or disjoint
toy classes), so the backbone never sees a private class. The full model trains centrally; the
weights land in the dataset cache, keyed by everything that determines them, so the next run (and
every Tune trial) reuses them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray.config import ConfigError
from fedray.data.datasets import cached_build, load_images, load_labels
from fedray.data.sources import build_dataset, cache_dir_for
from fedray.models import HEAD_KEYS

log = logging.getLogger("fedray")
WEIGHTS = "model.pt"


def public_data_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """The public dataset's config.

    `pretrain.data` with a `name` is a dataset config of its own (e.g. the synthetic public pills
    while the private data is imported); otherwise it overlays the main data config together with
    that source's `data.public_set` (disjoint classes: synthetic pills with offset ids, other toy
    classes).
    """
    extra = dict(cfg["pretrain"].get("data") or {})
    if "_target_" in extra:
        return extra
    data = cfg["data"]
    public = data.get("public_set") or {}
    if "_target_" in public:  # another source altogether (imported data pretrains on synthetic pills)
        return {**public, "image_size": data.get("image_size", 64), **extra}
    if not data.get("public_set"):
        raise ConfigError(
            f"data={data.get('name')} has no public pill set (data.public_set) to pretrain on; "
            "set pretrain.data to a dataset config (e.g. {_target_: fedray.pill.synth.build_synthetic, name: synthetic, public: true}) or "
            "model.pretrained to a local weights file"
        )
    return {**data, **data["public_set"], **extra, "public_set": None}


def pretrain_head(cfg: dict[str, Any]) -> tuple[Any, str]:
    """The head the backbone is pretrained under: (taps, pool).

    `pretrain.taps: model` takes the private model's `model.taps` (null there: the plain head on
    the last block), so the blocks the private head reads are the ones pretraining trains to tell
    pills apart; a list of block indices or null chooses them outright. `pretrain.pool` pools each
    tap (avg by default).
    """
    from fedray.models.views import POOLS

    pcfg = cfg["pretrain"]
    taps = pcfg.get("taps")
    if taps == "model":
        taps = cfg["model"].get("taps")
    pool = pcfg.get("pool") or "avg"
    if pool not in POOLS:
        raise ConfigError(f"pretrain.pool={pool!r}: choose one of {POOLS}")
    if taps is None:
        pool = "avg"  # the plain head pools its own way: nothing to choose
    return (list(taps) if isinstance(taps, list | tuple) else taps), pool


def _train(cfg: dict[str, Any], root: Path) -> None:
    from hydra.utils import instantiate

    from fedray.fl.train import augment_turns_flips, evaluate, resolve_precision, train_local
    from fedray.models import build_model

    pcfg = cfg["pretrain"]
    info = build_dataset(public_data_cfg(cfg), int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    # augmentation turns the images already; turned and zoomed views are for the private model.
    # The head is pretrain.taps/pool's (`pretrain_head`), its dropout pretrain.dropout (null: the
    # architecture's own rate)
    taps, pool = pretrain_head(cfg)
    model_cfg = {
        **cfg["model"],
        "pretrained": None,
        "turns": 1,
        "zooms": None,
        "taps": taps,
        "pool": pool,
        "dropout": pcfg.get("dropout"),
    }
    model = build_model(model_cfg, info.num_classes)
    x = np.asarray(load_images(info.root, "train"))
    y = load_labels(info.root, "train")
    names = [n for n, _ in model.named_parameters()]
    log.info(
        "pretraining %s on the public set (%d classes, %d images) for %d epochs",
        model_cfg["name"],
        info.num_classes,
        len(y),
        pcfg["epochs"],
    )
    t0 = time.perf_counter()
    stats = train_local(
        model,
        x,
        y,
        names,
        int(pcfg["epochs"]),
        int(pcfg["batch_size"]),
        instantiate(pcfg["optimizer"]),
        seed=int(cfg["seed"]),
        augment=augment_turns_flips if pcfg.get("augment", True) else None,
        schedule=str(pcfg.get("schedule", "cosine")),
        label_smoothing=float(pcfg.get("label_smoothing", 0.0)),
        precision=resolve_precision(pcfg.get("precision", "fp32"), "pretrain.precision"),
    )
    metrics, _ = evaluate(
        model,
        np.asarray(load_images(info.root, "val")),
        load_labels(info.root, "val"),
        info.num_classes,
    )
    torch.save({"model": model.state_dict()}, root / WEIGHTS)
    report = {
        "public/val_acc": metrics["acc"],
        "public/train_loss": stats["loss"],
        "public/classes": info.num_classes,
        "time/pretrain_s": time.perf_counter() - t0,
    }
    (root / "metrics.json").write_text(json.dumps(report, indent=2))
    log.info("pretrained: public val/acc %.4f in %.0fs", metrics["acc"], report["time/pretrain_s"])


def pretrained_weights(cfg: dict[str, Any]) -> Path:
    """Path to public-pill weights for cfg's model, training them first if not cached."""
    from fedray.fl.train import resolve_precision

    taps, pool = pretrain_head(cfg)
    key = {
        "data": {k: v for k, v in public_data_cfg(cfg).items() if k != "cache_dir"},
        "model": {k: v for k, v in cfg["model"].items() if k not in ("pretrained", *HEAD_KEYS)},
        # `auto` as what it resolves to here: a bf16 and an fp32 backbone are different weights;
        # `taps: model` as the taps it stands for
        "pretrain": {
            **{k: v for k, v in cfg["pretrain"].items() if k not in ("data", "_target_", "name")},
            "taps": taps,
            "pool": pool,
            "precision": resolve_precision(
                cfg["pretrain"].get("precision", "fp32"), "pretrain.precision"
            ),
        },
        "seed": int(cfg["seed"]),
    }
    root = cached_build(cache_dir_for(cfg["data"]), "pretrain", key, lambda d: _train(cfg, d))
    return root / WEIGHTS


def resolve_pretrained(cfg: dict[str, Any]) -> dict[str, Any]:
    """The pretrain group's `_target_`: `model.pretrained` set to the cached public-pill weights."""
    return {**cfg, "model": {**cfg["model"], "pretrained": str(pretrained_weights(cfg))}}
