"""CIFAR-10 when on disk, else a synthetic stand-in of the same shape (cross-device benchmarks).

The stand-in has CIFAR-10's shape: 32x32x3 uint8 images, 10 classes, 50,000 train / 10,000 val by
default. Each class is a smooth random colour template (a coarse grid upsampled); a sample is its
class template shifted, rescaled in contrast and buried in pixel noise. A small CNN learns it to
well above chance in a few rounds, and 60,000 images are generated in seconds (vectorised, in
chunks), so benchmarks measure the federated loop, not the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedray.data.datasets import DatasetInfo, cached_build, load_info, write_meta, write_split
from fedray.data.sources import dataset_builder

VERSION = 1  # bump when the generator changes: it is part of the cache key
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip


def cifar_on_disk(root: Any) -> Path | None:
    """The folder holding torchvision's `cifar-10-batches-py`, or None when it is not there."""
    if root in (None, ""):
        return None
    path = Path(str(root)).expanduser()
    return path if (path / "cifar-10-batches-py").is_dir() else None


@dataset_builder
def cifar_like_dataset(cfg: dict[str, Any], seed: int, cache_dir: Path) -> DatasetInfo:
    """CIFAR-10 from `cfg.cifar_root` when on disk (never downloaded), else the synthetic twin."""
    real = cifar_on_disk(cfg.get("cifar_root"))
    if real is not None:
        from fedray.data.torchvision_disk import torchvision_dataset

        tv = {"dataset": "CIFAR10", "name": "cifar10", "root": str(real), "image_size": None}
        return torchvision_dataset({**tv, "options": {}}, seed, cache_dir)
    keys = ("num_classes", "image_size", "train_size", "val_size", "noise")
    key = {**{k: cfg[k] for k in keys}, "seed": seed, "version": VERSION}
    return load_info(cached_build(cache_dir, "cifar_like", key, lambda d: build(d, cfg, seed)))


cifar_like_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "cifar_root", "num_classes", "image_size", "train_size", "val_size", "noise")


def _templates(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) float32 class templates in [-1, 1]: 4x4 colour grids, upsampled."""
    coarse = rng.uniform(-1, 1, (n, 4, 4, 3)).astype(np.float32)
    rep = -(-size // 4)
    return np.repeat(np.repeat(coarse, rep, 1), rep, 2)[:, :size, :size]


def build(root: Path, cfg: dict[str, Any], seed: int) -> None:
    """Write the synthetic CIFAR-shaped dataset into `root`."""
    n, size, noise = int(cfg["num_classes"]), int(cfg["image_size"]), float(cfg["noise"])
    if n < 2 or size < 4:
        raise ValueError(f"data.num_classes must be >= 2 and data.image_size >= 4, got {n}, {size}")
    rng = np.random.default_rng(seed)
    templates = _templates(rng, n, size)
    for split, count in (("train", int(cfg["train_size"])), ("val", int(cfg["val_size"]))):
        labels = np.arange(count) % n  # balanced, like CIFAR-10
        rng.shuffle(labels)
        images = np.empty((count, size, size, 3), np.uint8)
        for s in range(0, count, 5000):  # chunks keep the float32 working set ~60 MB
            y = labels[s : s + 5000]
            x = templates[y] * rng.uniform(0.4, 1.0, (len(y), 1, 1, 1)).astype(np.float32)
            x = np.roll(x, int(rng.integers(-3, 4)), axis=2)  # a shared jitter per chunk
            x += noise * rng.standard_normal(x.shape, dtype=np.float32)
            images[s : s + len(y)] = np.clip(x * 64 + 128, 0, 255).astype(np.uint8)
        write_split(root, split, images, labels)
    names = list(CIFAR_CLASSES[:n]) if n <= 10 else [f"class{i}" for i in range(n)]
    counts = {"train": int(cfg["train_size"]), "val": int(cfg["val_size"])}
    write_meta(root, "cifar_like", names, size, counts)
