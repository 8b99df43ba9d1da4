"""The one dataset interface every source (synthetic, imported, toy) writes and every client reads.

A classification dataset is a directory:

    meta.json               {"format", "name", "num_classes", "class_names", "image_size", "splits"}
    {split}_images.npy      uint8 (N, S, S, 3) RGB, memory-mapped on read
    {split}_labels.npy      int64 (N,)
    {split}_masks.npy       uint8 (N, S, S) class ids (segmentation datasets only)
    {split}_groups.npy      int64 (N,) site/device id per sample (optional; natural partitions)

Datasets are built once into a cache entry named by a hash of the config that made them; a build
goes into a temporary sibling and is renamed into place only when complete, so an interrupted build
never leaves an entry that a later run mistakes for finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedray.kernels import MEAN, STD, normalize  # noqa: F401  (MEAN, STD re-exported)

FORMAT = "fedray-cls-v1"
COMPLETE_MARKER = ".complete"



class DatasetError(ValueError):
    """A dataset that is missing, empty or malformed; the message names the file."""


@dataclass(frozen=True)
class DatasetInfo:
    """Where a built dataset lives and what it holds."""

    root: str
    name: str
    num_classes: int
    class_names: list[str]
    image_size: int
    splits: dict[str, int]


def file_digest(*paths: str | Path) -> str:
    """Short sha256 of the bytes of `paths` (in the order given), each prefixed by its name."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).name}\0".encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def config_hash(config: Any) -> str:
    """Stable short hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_dir() -> Path:
    """Per-user cache: $FEDRAY_CACHE, else $XDG_CACHE_HOME/fedray, else ~/.cache/fedray."""
    if env := os.environ.get("FEDRAY_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedray"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_complete(root: str | Path) -> bool:
    """True when `root` is a finished cache entry."""
    return (Path(root) / COMPLETE_MARKER).exists()


def cached_build(
    cache_dir: str | Path, kind: str, config: Any, build: Callable[[Path], None]
) -> Path:
    """Return `cache_dir/kind-<hash(config)>`, calling `build(tmp_dir)` first if it is not complete.

    Concurrent callers (Tune trials, parallel tests) serialise on a lock file; the loser of the race
    finds the entry complete and returns it without rebuilding.
    """
    cache_dir = Path(cache_dir).expanduser()
    root = cache_dir / f"{kind}-{config_hash(config)}"
    if is_complete(root):
        return root
    with _file_lock(cache_dir / f".{root.name}.lock"):
        if is_complete(root):
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=cache_dir))
        try:
            build(tmp)
            (tmp / "build_config.json").write_text(
                json.dumps(config, indent=2, sort_keys=True, default=str)
            )
            (tmp / COMPLETE_MARKER).write_text("")
            if root.exists():  # an incomplete leftover from a killed build
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_split(root: str | Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split's arrays (uint8 NHWC images, int labels)."""
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(
            f"{split}: images must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}"
        )
    if len(images) != len(labels):
        raise DatasetError(f"{split}: {len(images)} images but {len(labels)} labels")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"{split}_images.npy", np.ascontiguousarray(images))
    np.save(root / f"{split}_labels.npy", labels)


def write_meta(
    root: str | Path,
    name: str,
    class_names: list[str],
    image_size: int,
    splits: dict[str, int],
    **extra: Any,
) -> None:
    """Write meta.json for a dataset directory."""
    meta = {
        "format": FORMAT,
        "name": name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "image_size": int(image_size),
        "splits": {k: int(v) for k, v in splits.items()},
        **extra,
    }
    Path(root, "meta.json").write_text(json.dumps(meta, indent=2))


def load_info(root: str | Path) -> DatasetInfo:
    """Read a dataset directory's meta.json."""
    path = Path(root) / "meta.json"
    if not path.exists():
        raise DatasetError(f"{path}: no meta.json — not a fedray dataset directory")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return DatasetInfo(
        root=str(root),
        name=meta["name"],
        num_classes=int(meta["num_classes"]),
        class_names=list(meta["class_names"]),
        image_size=int(meta["image_size"]),
        splits={k: int(v) for k, v in meta["splits"].items()},
    )


def load_labels(root: str | Path, split: str) -> np.ndarray:
    """Labels of one split (small; read fully)."""
    return np.load(Path(root) / f"{split}_labels.npy")


def load_images(root: str | Path, split: str, mmap: bool = True) -> np.ndarray:
    """Images of one split, memory-mapped by default so a client touches only its own shard."""
    return np.load(Path(root) / f"{split}_images.npy", mmap_mode="r" if mmap else None)


def write_masks(root: str | Path, split: str, masks: np.ndarray) -> None:
    """Write one split's segmentation masks: uint8 (N, S, S) class ids, beside its images."""
    masks = np.asarray(masks)
    if masks.dtype != np.uint8 or masks.ndim != 3:
        raise DatasetError(
            f"{split}: masks must be uint8 (N, S, S), got {masks.dtype} {masks.shape}"
        )
    images = Path(root) / f"{split}_images.npy"
    if images.exists():
        shape = np.load(images, mmap_mode="r").shape
        if masks.shape != shape[:3]:
            raise DatasetError(f"{split}: masks {masks.shape} do not match images {shape}")
    np.save(Path(root) / f"{split}_masks.npy", np.ascontiguousarray(masks))


def load_masks(root: str | Path, split: str, mmap: bool = True) -> np.ndarray:
    """Segmentation masks of one split (uint8 (N, S, S)), memory-mapped by default."""
    path = Path(root) / f"{split}_masks.npy"
    if not path.exists():
        raise DatasetError(f"{path}: no masks; this dataset directory has no segmentation targets")
    return np.load(path, mmap_mode="r" if mmap else None)


def write_groups(root: str | Path, split: str, groups: np.ndarray) -> None:
    """Write one split's per-sample group ids (int64 (N,): the site or device a sample is from)."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or not np.issubdtype(groups.dtype, np.integer) or (
        groups.size and groups.min() < 0
    ):
        raise DatasetError(f"{split}: groups must be non-negative ints (N,), got {groups.dtype} "
                           f"{groups.shape}")
    np.save(Path(root) / f"{split}_groups.npy", groups.astype(np.int64))


def load_groups(root: str | Path, split: str) -> np.ndarray | None:
    """Per-sample group ids of one split, or None when the dataset has none."""
    path = Path(root) / f"{split}_groups.npy"
    return np.load(path) if path.exists() else None


def to_tensor_batch(images: np.ndarray):
    """uint8 (N, H, W, 3) -> normalised float32 torch tensor (N, 3, H, W) in channels-last memory
    order, the layout the models use (oneDNN convolutions run ~1.5x faster in it on CPU)."""
    import torch


    x = torch.from_numpy(normalize(np.asarray(images)))
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
