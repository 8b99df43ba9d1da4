"""What the real-dataset importers (importers.py: YOLO, epillid.py: ePillID CSVs) share.

Image helpers (square crops around a box or the centre, decoding), the seeded stratified split
(also the synthetic build's), config checks, parallel ordered loading, the skipped-file report,
and the file fingerprint that keys the import cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedray.data.datasets import DatasetError

log = logging.getLogger("fedray.pill.importers")  # the importers' one logger, wherever they live

# Bump when the importer's output changes for the same input, so old cache entries are not reused.
IMPORTER_VERSION = 1
IMAGE_SUFFIXES = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
MAX_NAMED_SKIPS = 5


@dataclass
class Box:
    """One labelled box: contiguous class index, normalised YOLO centre and size."""

    label: int  # contiguous class index
    cx: float
    cy: float
    w: float
    h: float


@dataclass
class Item:
    """One image to import: its split, and its boxes (YOLO) or its one label (ePillID)."""

    image: Path
    split: str
    boxes: list[Box] = field(default_factory=list)
    label: int = -1  # ePillID: one class per image


# --------------------------------------------------------------------------------------------- #
# pure image helpers


def crop_box(
    image: np.ndarray, cx: float, cy: float, w: float, h: float, pad_ratio: float, size: int
) -> np.ndarray:
    """Square crop centred on a normalised YOLO box, padded by `pad_ratio` per side, resized.

    Parts of the square outside the image are filled by replicating the border so the object
    stays centred.
    """
    height, width = image.shape[:2]
    side = max(w * width, h * height) * (1.0 + 2.0 * pad_ratio)
    side_px = max(1, int(round(side)))
    x0 = int(round(cx * width - side_px / 2))
    y0 = int(round(cy * height - side_px / 2))
    x1, y1 = x0 + side_px, y0 + side_px
    crop = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pads = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, borderType=cv2.BORDER_REPLICATE)
    return _resize_square(crop, size)


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to the largest square and resize to `size` x `size`."""
    height, width = image.shape[:2]
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return _resize_square(image[y0 : y0 + side, x0 : x0 + side], size)


def _resize_square(square: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA avoids aliasing when shrinking; it degrades to nearest-like blocks when enlarging.
    interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def read_rgb(path: str | Path) -> np.ndarray | None:
    """Decode an image file to uint8 RGB (H, W, 3); None when it is missing or unreadable."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except (OSError, cv2.error):
        return None
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------- #
# splitting


def stratified_split(
    strata: Sequence[int] | np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Seeded stratified split of indices into `train` plus held-out splits of the given fractions.

    Each held-out split gets round(N * fraction) items in total, allocated to strata by largest
    remainder, and every stratum keeps at least one item in train.
    """
    strata = np.asarray(strata)
    n = len(strata)
    for name, frac in fractions.items():
        if not 0.0 <= frac < 1.0:
            raise DatasetError(f"{name} fraction must be in [0, 1), got {frac}")
    if sum(fractions.values()) >= 1.0:
        raise DatasetError(f"held-out fractions {fractions} leave nothing for train")
    rng = np.random.default_rng(seed)
    classes = np.unique(strata)
    pools = {c: list(rng.permutation(np.flatnonzero(strata == c))) for c in classes}
    out: dict[str, np.ndarray] = {}
    for name, frac in fractions.items():
        spare = {c: max(len(pools[c]) - 1, 0) for c in classes}
        quota = {c: (strata == c).sum() * frac for c in classes}
        take = {c: min(int(math.floor(quota[c])), spare[c]) for c in classes}
        missing = int(round(n * frac)) - sum(take.values())
        # Largest fractional part first; the random key breaks ties without favouring low ids.
        order = sorted(classes, key=lambda c: (-(quota[c] - math.floor(quota[c])), rng.random()))
        while missing > 0:
            grew = False
            for c in order:
                if missing > 0 and take[c] < spare[c]:
                    take[c] += 1
                    missing -= 1
                    grew = True
            if not grew:
                break
        picked = []
        for c in classes:
            picked += pools[c][: take[c]]
            pools[c] = pools[c][take[c] :]
        out[name] = np.sort(np.asarray(picked, dtype=np.int64))
    out["train"] = np.sort(np.asarray([i for c in classes for i in pools[c]], dtype=np.int64))
    return {"train": out.pop("train"), **out}


# --------------------------------------------------------------------------------------------- #
# shared plumbing


def require_root(cfg: dict, what: str) -> Path:
    root = cfg.get("root")
    if root in (None, "", "???"):
        raise DatasetError(f"data.root is required: set data.root=/path/to/{what}")
    path = Path(str(root)).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"data.root={root!r}: no such directory (expected {what})")
    return path


def fraction(cfg: dict, key: str, default: float) -> float:
    value = cfg.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"data.{key} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise DatasetError(f"data.{key} must be in [0, 1), got {value}")
    return value


def image_size(cfg: dict) -> int:
    size = cfg.get("image_size", 96)
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise DatasetError(f"data.image_size must be an integer >= 8, got {size!r}")
    return size


def fingerprint(paths: Iterable[Path]) -> dict[str, Any]:
    """Count and digest of (path, size, mtime) of files: an edited folder gets a new cache key."""
    digest = hashlib.sha256()
    count = 0
    for path in sorted({Path(p) for p in paths}):
        try:
            st = path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{path}\0{stamp}\n".encode())
        count += 1
    return {"files": count, "digest": digest.hexdigest()}


def map_ordered(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    # cv2 decoding releases the GIL, so threads overlap file I/O and decoding; map keeps order.
    workers = min(8, os.cpu_count() or 1, max(len(items), 1))
    if workers == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def report_skipped(source: Path, skipped: list[Path]) -> None:
    if skipped:
        names = ", ".join(p.name for p in skipped[:MAX_NAMED_SKIPS])
        more = ", ..." if len(skipped) > MAX_NAMED_SKIPS else ""
        log.warning(
            "%s: skipped %d unreadable or missing image(s): %s%s", source, len(skipped), names, more
        )


def resolve_cache_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser().resolve()
