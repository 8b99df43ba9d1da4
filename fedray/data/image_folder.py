"""A folder of images, one subfolder per class (torchvision's ImageFolder conventions).

    root/<class>/**/*.jpg|png|...                 a seeded, stratified val split is carved out
    root/train/<class>/...  root/val/<class>/...   the split is yours (`valid` works too)
    root/train/<class>/...  (no val/)              val is carved out of train/

A root/test/ folder is left out (never read). A split folder (train, val, valid, validation, test)
holding class folders beside class folders, or split folders without train/, is an error; one
holding images itself is a class of that name (CIFAR-100 has a "train").

Class names are the subfolder names, sorted (label i = the i-th name). Every image is decoded to
RGB, cut to its centred square (or stretched, `data.resize: stretch`) and resized to
`data.image_size`. Unreadable files are skipped, counted in meta.json (`skipped`) and logged.
The build is cached under a key that includes a fingerprint of the file list (paths, sizes,
mtimes): adding, removing or editing an image rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
from fedray.data.materialize import square_resize
from fedray.data.sources import dataset_builder

log = logging.getLogger("fedray")

VERSION = 1  # bump when decoding or resizing changes: it is part of the cache key
# torchvision's IMG_EXTENSIONS
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TRAIN_DIRS = ("train",)
VAL_DIRS = ("val", "valid", "validation")
TEST_DIRS = ("test",)
RESIZES = ("crop", "stretch")


@dataset_builder
def image_folder_dataset(cfg: dict[str, Any], seed: int, cache_dir: Path) -> DatasetInfo:
    """data=image_folder: the folder `data.root` as a (cached) dataset directory."""
    root = _require_root(cfg.get("root"))
    size = cfg.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise DatasetError(f"data.image_size must be an integer >= 8, got {size!r}")
    resize = str(cfg.get("resize", "crop"))
    if resize not in RESIZES:
        raise DatasetError(f"data.resize={resize!r}: choose one of {RESIZES}")
    val_fraction = _fraction(cfg.get("val_fraction", 0.2))
    layout = find_layout(root)
    classes = sorted(layout["train"])
    files = [p for split in layout.values() for paths in split.values() for p in paths]
    key = {
        **{k: v for k, v in cfg.items() if k != "root"},
        "root": str(root),
        "files": fingerprint(root, files),
        "version": VERSION,
    }
    if "val" not in layout:  # the carved split depends on the seed; a given val split does not
        key["seed"] = seed

    def build(tmp: Path) -> None:
        build_image_folder(tmp, layout, classes, size, resize, val_fraction, seed, cfg)

    return load_info(cached_build(cache_dir, "image_folder", key, build))


image_folder_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "root", "image_size", "resize", "val_fraction")


def _require_root(root: Any) -> Path:
    if root in (None, "", "???"):
        raise DatasetError("data.root is required: set data.root=/path/to/images (root/<class>/*)")
    path = Path(str(root)).expanduser().resolve()
    if path.is_file():
        raise DatasetError(f"data.root={root!r}: a file; give the folder of class folders "
                           "(root/<class>/*.jpg)")
    if not path.is_dir():
        raise DatasetError(
            f"data.root={root!r}: no such directory (expected root/<class>/*.jpg, or "
            "root/train/<class>/ and root/val/<class>/)"
        )
    return path


def _fraction(value: Any) -> float:
    try:
        frac = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"data.val_fraction must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < frac < 1.0:
        raise DatasetError(f"data.val_fraction must be in (0, 1), got {frac}")
    return frac


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image paths} for each subfolder of `folder` (searched recursively)."""
    out, seen = {}, {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        same = seen.setdefault(sub.resolve(), sub.name)
        if same != sub.name:  # a symlink to another class's folder: its images twice, 2 labels
            raise DatasetError(f"class folders {folder / same} and {sub} are one folder (a "
                               "symlink): each class needs a folder of its own")
        out[sub.name] = sorted(
            p
            for p in sub.rglob("*")
            if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
    return out


def find_layout(root: Path) -> dict[str, dict[str, list[Path]]]:
    """{"train": {class: files}} and, when root has a val/ folder beside train/, {"val": ...}."""
    train, val = _split_dirs(root)
    if train is None:
        where, layout = root, {"train": _class_files(root)}
    elif val is None:
        where, layout = train, {"train": _class_files(train)}
    else:
        where, layout = train, {"train": _class_files(train), "val": _class_files(val)}
    if not layout["train"]:
        raise DatasetError(f"data.root={str(root)!r}: no class subfolders in {where}")
    empty = [c for c, files in layout["train"].items() if not files]
    if empty:
        raise DatasetError(
            f"data.root={str(root)!r}: class folder {where / empty[0]} has no images "
            f"({', '.join(EXTENSIONS)})"
        )
    if len(layout["train"]) < 2:
        raise DatasetError(f"data.root={str(root)!r}: one class folder only; need two or more")
    unknown = sorted(set(layout.get("val", {})) - set(layout["train"]))
    if unknown:
        raise DatasetError(f"{val}: class folder {unknown[0]!r} is not in {train}")
    return layout


def _split_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """(train/, val/ or None) of a split-structured root; (None, None) for a root of classes."""
    dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    kinds = {"train": TRAIN_DIRS, "val": VAL_DIRS, "test": TEST_DIRS}
    found: dict[str, list[Path]] = {k: [] for k in kinds}
    others = []
    for d in dirs:
        kind = next((k for k, names in kinds.items() if d.name.lower() in names), None)
        (found[kind] if kind else others).append(d)
    splits = [d.name for k in kinds for d in found[k]]
    if not splits:
        return None, None
    where = f"data.root={str(root)!r}"
    if others and not any(p.is_dir() for k in kinds for d in found[k] for p in d.iterdir()):
        return None, None  # a class that happens to be called so (CIFAR-100's "train"): flat
    if others:
        raise DatasetError(
            f"{where}: split folder(s) {', '.join(splits)} beside class folder(s) "
            f"{', '.join(d.name for d in others[:3])}: give root/<class>/ or root/train/<class>/ "
            "(+ root/val/<class>/), not both"
        )
    for kind, paths in found.items():
        if len(paths) > 1:
            raise DatasetError(f"{where}: {' and '.join(p.name for p in paths)} are both a "
                               f"{kind} split: keep one")
    if not found["train"]:
        raise DatasetError(f"{where}: has {', '.join(splits)}/ but no train/ (root/train/<class>/)")
    if found["test"]:
        log.info("%s: %s/ is left out (fedray trains on train/ and validates on val/ or a carved "
                 "split)", where, found["test"][0].name)
    return found["train"][0], (found["val"] or [None])[0]


def fingerprint(root: Path, files: Sequence[Path]) -> dict[str, Any]:
    """Count and digest of (relative path, size, mtime) of the files: any edit changes it."""
    digest = hashlib.sha256()
    for path in sorted(files):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"count": len(files), "digest": digest.hexdigest()[:16]}


def read_image(path: Path, size: int, resize: str) -> np.ndarray | None:
    """uint8 (size, size, 3) RGB from an image file; None when it cannot be decoded."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except (OSError, cv2.error):
        return None
    if bgr is None or bgr.ndim != 3 or 0 in bgr.shape[:2]:
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if resize == "stretch":
        interp = cv2.INTER_AREA if min(rgb.shape[:2]) > size else cv2.INTER_LINEAR
        return cv2.resize(rgb, (size, size), interpolation=interp)
    return square_resize(rgb, size)


def _read_all(
    files: list[Path], size: int, resize: str
) -> tuple[list[np.ndarray | None], list[Path]]:
    # cv2 decoding releases the GIL: threads overlap reading and decoding; map keeps the order
    workers = max(1, min(8, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(lambda p: read_image(p, size, resize), files))
    return images, [p for p, img in zip(files, images, strict=True) if img is None]


def stratified_val(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded val indices: round(fraction * n) of each class, at least one left for train."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        take = min(int(round(fraction * len(idx))), len(idx) - 1)
        picked.extend(idx[:take])
    return np.sort(np.asarray(picked, dtype=np.int64))


def build_image_folder(
    root: Path,
    layout: dict[str, dict[str, list[Path]]],
    classes: list[str],
    size: int,
    resize: str,
    val_fraction: float,
    seed: int,
    cfg: dict[str, Any],
) -> None:
    """Decode, resize and write the folder's images (train + val) into the dataset dir `root`."""
    index = {c: i for i, c in enumerate(classes)}
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped: list[Path] = []
    for split, by_class in layout.items():
        files = [p for c in classes for p in by_class.get(c, [])]
        labels = np.asarray([index[c] for c in classes for _ in by_class.get(c, [])], np.int64)
        images, bad = _read_all(files, size, resize)
        skipped += bad
        keep = [i for i, img in enumerate(images) if img is not None]
        if not keep:
            raise DatasetError(f"data.root: no readable image in the {split} split ({len(files)})")
        stacked = np.stack([images[i] for i in keep])
        arrays[split] = (stacked, labels[keep])
    if skipped:
        names = ", ".join(str(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning("data.root: skipped %d unreadable image(s): %s", len(skipped), names)
    if "val" not in arrays:
        images, labels = arrays["train"]
        val = stratified_val(labels, val_fraction, seed)
        if len(val) == 0:
            raise DatasetError(
                f"data.root: {len(labels)} images are too few to carve a val split of "
                f"data.val_fraction={val_fraction}: add images or a root/val/ folder"
            )
        train = np.setdiff1d(np.arange(len(labels)), val)
        arrays = {"train": (images[train], labels[train]), "val": (images[val], labels[val])}
    for split, (images, labels) in arrays.items():
        write_split(root, split, images, labels)
    write_meta(
        root,
        str(cfg.get("name") or "image_folder"),
        classes,
        size,
        {split: len(labels) for split, (_, labels) in arrays.items()},
        skipped=len(skipped),
        source=str(cfg.get("root")),
    )
