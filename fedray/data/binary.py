"""A procedural binary task: is the shape in the photo round? Learnable, built in seconds.

Class 1 (`round`, the positive class that precision and recall score) is a disc, a ring or a
slightly oval disc; class 0 (`not_round`) a square, a triangle, a cross or a diamond, each turned
at random. Colour, size, position, background and noise are drawn the same way for both classes,
so only the outline tells them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedray.data.datasets import (
    DatasetError,
    DatasetInfo,
    cached_build,
    load_info,
    write_meta,
    write_split,
)
from fedray.data.sources import dataset_builder

VERSION = 1  # bump when the generator changes: it is part of the cache key
CLASS_NAMES = ["not_round", "round"]  # label 1 is the positive class
ROUND = ("disc", "ring", "oval")
NOT_ROUND = ("square", "triangle", "cross", "diamond")


def _polygon(cx: float, cy: float, r: float, corners: int, angle: float) -> np.ndarray:
    """Vertices of a regular polygon of circumradius r, turned by `angle` radians."""
    t = angle + 2 * np.pi * np.arange(corners) / corners
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).round().astype(np.int32)


def draw_shape(kind: str, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One uint8 (size, size, 3) image of a `kind` shape on a noisy background."""
    background = rng.uniform(40, 200, 3)
    img = (background + rng.normal(0, 10 + 30 * noise, (size, size, 3))).clip(0, 255)
    img = img.astype(np.uint8)
    contrast = rng.choice([-1, 1], 3) * rng.uniform(60, 120, 3)  # the shape stands out
    colour = tuple(int(v) for v in (background + contrast).clip(0, 255))
    cx, cy = size / 2 + rng.uniform(-0.15, 0.15, 2) * size
    r = size * rng.uniform(0.18, 0.3)
    angle = rng.uniform(0, 2 * np.pi)
    centre = (int(round(cx)), int(round(cy)))
    if kind == "disc":
        cv2.circle(img, centre, int(r), colour, -1, cv2.LINE_AA)
    elif kind == "ring":
        cv2.circle(img, centre, int(r), colour, max(2, int(r / 3)), cv2.LINE_AA)
    elif kind == "oval":
        axes = (int(r), int(r * rng.uniform(0.75, 0.9)))
        cv2.ellipse(img, centre, axes, float(np.degrees(angle)), 0, 360, colour, -1, cv2.LINE_AA)
    elif kind in ("square", "triangle", "diamond"):
        corners = {"square": 4, "triangle": 3, "diamond": 4}[kind]
        pts = _polygon(cx, cy, r * (1.25 if kind != "triangle" else 1.4), corners, angle)
        if kind == "diamond":  # a rhombus: one diagonal squeezed
            squeeze = np.array([[1.0], [0.55], [1.0], [0.55]])
            pts = (np.array([cx, cy]) + (pts - [cx, cy]) * squeeze).astype(np.int32)
        cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA)
    elif kind == "cross":
        arm = _polygon(cx, cy, r * 1.2, 4, angle)
        for a, b in ((arm[0], arm[2]), (arm[1], arm[3])):
            cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), colour, max(2, int(r / 2.2)))
    else:
        raise ValueError(f"unknown shape {kind!r}")
    speckle = rng.normal(0, 255 * noise * 0.25, img.shape)
    return np.clip(img + speckle, 0, 255).astype(np.uint8)


@dataset_builder
def binary_shapes(cfg: dict[str, Any], seed: int, cache_dir: Path) -> DatasetInfo:
    """The round-vs-not-round dataset `cfg` describes, built into (or found in) the cache."""
    for key in ("image_size", "train_per_class", "val_per_class"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DatasetError(f"data.{key} must be a positive integer, got {value!r}")
    if cfg["image_size"] < 16:
        raise DatasetError(f"data.image_size must be >= 16, got {cfg['image_size']}")
    key = {**cfg, "seed": seed, "version": VERSION}
    return load_info(cached_build(cache_dir, "binary", key, lambda d: build_binary(d, cfg, seed)))


binary_shapes.fedray_keys = (  # type: ignore[attr-defined]
    "name", "image_size", "train_per_class", "val_per_class", "noise")


def build_binary(root: Path, cfg: dict[str, Any], seed: int) -> None:
    """Write the binary shapes dataset (balanced classes, shapes even within a class) into root."""
    size, noise = int(cfg["image_size"]), float(cfg.get("noise", 0.15))
    rng = np.random.default_rng(seed)
    counts = {"train": int(cfg["train_per_class"]), "val": int(cfg["val_per_class"])}
    for split, per_class in counts.items():
        labels = np.repeat([0, 1], per_class)
        kinds = [NOT_ROUND[i % len(NOT_ROUND)] for i in range(per_class)]
        kinds += [ROUND[i % len(ROUND)] for i in range(per_class)]
        images = np.stack([draw_shape(k, size, rng, noise) for k in kinds])
        write_split(root, split, images, labels)
    write_meta(root, "binary", CLASS_NAMES, size, {k: 2 * v for k, v in counts.items()})
