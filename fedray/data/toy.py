"""Procedural placeholder dataset: coloured shapes on noisy backgrounds, learnable in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedray.data.datasets import DatasetInfo, cached_build, load_info, write_meta, write_split
from fedray.data.sources import dataset_builder

VERSION = 2  # bump when the generator changes: it is part of the cache key

_SHAPES = ("circle", "square", "triangle", "cross", "ring")
_COLORS = (
    (230, 60, 60),
    (60, 200, 60),
    (60, 90, 230),
    (230, 210, 60),
    (200, 80, 220),
    (240, 240, 240),
    (60, 220, 220),
    (250, 140, 30),
)


def _draw(
    shape: str, color: tuple[int, int, int], size: int, rng: np.random.Generator, noise: float
) -> np.ndarray:
    img = rng.normal(110, 40 * noise + 5, (size, size, 3)).clip(0, 255).astype(np.uint8)
    c = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    r = size * rng.uniform(0.22, 0.32)
    col = tuple(int(v) for v in np.clip(np.array(color) + rng.normal(0, 15, 3), 0, 255))
    cx, cy = int(c[0]), int(c[1])
    ri = int(r)
    if shape == "circle":
        cv2.circle(img, (cx, cy), ri, col, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(img, (cx - ri, cy - ri), (cx + ri, cy + ri), col, -1)
    elif shape == "triangle":
        pts = np.array([[cx, cy - ri], [cx - ri, cy + ri], [cx + ri, cy + ri]], np.int32)
        cv2.fillConvexPoly(img, pts, col, cv2.LINE_AA)
    elif shape == "cross":
        t = max(1, ri // 3)
        cv2.rectangle(img, (cx - ri, cy - t), (cx + ri, cy + t), col, -1)
        cv2.rectangle(img, (cx - t, cy - ri), (cx + t, cy + ri), col, -1)
    else:
        cv2.circle(img, (cx, cy), ri, col, max(1, ri // 3), cv2.LINE_AA)
    noise_px = rng.normal(0, 255 * noise * 0.3, img.shape)
    return np.clip(img + noise_px, 0, 255).astype(np.uint8)


def check_toy(cfg: dict[str, Any]) -> None:
    """The toy keys (ConfigError naming the key): also what `fedray.validate` runs."""
    from fedray.checks import number

    total = len(_SHAPES) * len(_COLORS)
    offset = cfg.get("class_offset", 0)
    number("data.class_offset", offset, 0, total - 2, integer=True)
    number("data.num_classes", cfg.get("num_classes"), 2, total - offset, integer=True)
    number("data.image_size", cfg.get("image_size"), 8, integer=True)
    number("data.train_per_class", cfg.get("train_per_class"), 1, integer=True)
    number("data.val_per_class", cfg.get("val_per_class"), 1, integer=True)
    number("data.noise", cfg.get("noise"), 0)


@dataset_builder
def toy_dataset(cfg: dict[str, Any], seed: int, cache_dir: Path) -> DatasetInfo:
    """The toy dataset `cfg` describes, built into (or found in) the cache."""
    check_toy(cfg)
    key = {**cfg, "seed": seed, "version": VERSION}
    return load_info(cached_build(cache_dir, "toy", key, lambda d: build_toy(d, cfg, seed)))


toy_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "num_classes", "image_size", "train_per_class", "val_per_class", "noise",
    "class_offset")


def build_toy(root: Path, cfg: dict, seed: int) -> None:
    """Write a toy classification dataset (num_classes shape x colour combinations) into root."""
    n = int(cfg["num_classes"])
    offset = int(cfg.get("class_offset", 0))  # a disjoint "public" toy set starts further on
    size = int(cfg["image_size"])
    classes = [
        (_SHAPES[i % len(_SHAPES)], _COLORS[i // len(_SHAPES)])  # all 40 pairs distinct
        for i in range(offset, offset + n)
    ]
    rng = np.random.default_rng(seed)
    counts = {"train": int(cfg["train_per_class"]), "val": int(cfg["val_per_class"])}
    for split, per_class in counts.items():
        labels = np.repeat(np.arange(n), per_class)
        images = np.stack([_draw(*classes[y], size, rng, float(cfg["noise"])) for y in labels])
        write_split(root, split, images, labels)
    names = [f"{shape}-{'-'.join(map(str, color))}" for shape, color in classes]
    write_meta(root, "toy", names, size, {k: v * n for k, v in counts.items()})


toy_dataset.fedray_check = check_toy  # type: ignore[attr-defined]
toy_dataset.fedray_classes = "num_classes"  # type: ignore[attr-defined]
