"""Import real labelled pill datasets into the fedray classification-dataset format.

Two sources:

* YOLO detection datasets (ultralytics `images/{split}` + `labels/{split}`, or the Roboflow export
  `{train,valid,test}/{images,labels}`): every box becomes a square crop centred on the pill. A
  `detection.yaml` (ultralytics format, absolute paths) is written beside the arrays so the detector
  stage trains on the very same images and split.
* ePillID-style CSVs (`all_labels.csv`: a path column and a label column): the images are already
  pill-centred, so each is centre-cropped to a square and resized.

Bad labels are errors that name the file and line; unreadable images are skipped, counted in
meta.json (`skipped_images`) and reported in one warning.

Size: two importers (YOLO folders, ePillID CSVs) on one set of helpers (square
crops, stratified splits, corrupt-file counting, fingerprints) that both must share.
"""

from __future__ import annotations

import csv
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
import yaml

from fedray.data.datasets import (
    DatasetError,
    DatasetInfo,
    cached_build,
    config_hash,
    load_info,
    write_meta,
    write_split,
)
from fedray.data.sources import dataset_builder

log = logging.getLogger(__name__)

# Bump when the importer's output changes for the same input, so old cache entries are not reused.
IMPORTER_VERSION = 1
IMAGE_SUFFIXES = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
# Tolerance for exporters that write 1.0000001 for a box touching the image edge.
COORD_EPS = 1e-6
MAX_NAMED_SKIPS = 5


@dataclass
class _Box:
    label: int  # contiguous class index
    cx: float
    cy: float
    w: float
    h: float


@dataclass
class _Item:
    image: Path
    split: str
    boxes: list[_Box] = field(default_factory=list)
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


def _require_root(cfg: dict, what: str) -> Path:
    root = cfg.get("root")
    if root in (None, "", "???"):
        raise DatasetError(f"data.root is required: set data.root=/path/to/{what}")
    path = Path(str(root)).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"data.root={root!r}: no such directory (expected {what})")
    return path


def _fraction(cfg: dict, key: str, default: float) -> float:
    value = cfg.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"data.{key} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise DatasetError(f"data.{key} must be in [0, 1), got {value}")
    return value


def _image_size(cfg: dict) -> int:
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


def _map_ordered(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    # cv2 decoding releases the GIL, so threads overlap file I/O and decoding; map keeps order.
    workers = min(8, os.cpu_count() or 1, max(len(items), 1))
    if workers == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _report_skipped(source: Path, skipped: list[Path]) -> None:
    if skipped:
        names = ", ".join(p.name for p in skipped[:MAX_NAMED_SKIPS])
        more = ", ..." if len(skipped) > MAX_NAMED_SKIPS else ""
        log.warning(
            "%s: skipped %d unreadable or missing image(s): %s%s", source, len(skipped), names, more
        )


def _empty_images(size: int) -> np.ndarray:
    return np.zeros((0, size, size, 3), dtype=np.uint8)


def _natural_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _cache_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser().resolve()


# --------------------------------------------------------------------------------------------- #
# YOLO / Roboflow


def _load_data_yaml(root: Path) -> tuple[Path, dict]:
    for name in ("data.yaml", "data.yml"):
        path = root / name
        if path.is_file():
            break
    else:
        raise DatasetError(
            f"{root}: no data.yaml; expected a YOLO dataset: data.yaml with `names`, plus "
            "images/{train,val}/ and labels/{train,val}/ (or Roboflow's "
            "{train,valid,test}/{images,labels}/)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{path}: expected a mapping with `names` (a list or {{id: name}})")
    return path, data


def _parse_names(data_yaml: Path, names: Any) -> dict[int, str]:
    if isinstance(names, list):
        parsed = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict):
        try:
            parsed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{data_yaml}: `names` keys must be integer class ids") from None
    else:
        raise DatasetError(f"{data_yaml}: `names` must be a list or {{id: name}}, got {names!r}")
    if not parsed:
        raise DatasetError(f"{data_yaml}: `names` is empty")
    if len(set(parsed.values())) != len(parsed):
        raise DatasetError(f"{data_yaml}: `names` has duplicate class names")
    return dict(sorted(parsed.items()))


def _list_images(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(
            p for p in source.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    # An ultralytics split may be a .txt list of image paths ("./x" relative to the list file).
    out = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if line:
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else (source.parent / p).resolve())
    return out


def _yaml_split_candidates(root: Path, data: dict, entry: str) -> list[Path]:
    bases = [root]
    if data.get("path"):
        base = Path(str(data["path"])).expanduser()
        bases.insert(0, base if base.is_absolute() else root / base)
    cands = [b / entry for b in bases]
    # Roboflow writes `train: ../train/images` relative to a folder that does not exist here.
    stripped = entry
    while stripped.startswith("../"):
        stripped = stripped[3:]
    cands.append(root / stripped)
    return cands


def _find_yolo_splits(root: Path, data_yaml: Path, data: dict) -> dict[str, list[Path]]:
    """Map split name -> list of image sources (directories or .txt lists)."""
    found: dict[str, list[Path]] = {}
    for split in SPLITS:
        entry = data.get(split)
        if entry:
            entries = entry if isinstance(entry, list) else [entry]
            sources = []
            for e in entries:
                hit = next(
                    (c for c in _yaml_split_candidates(root, data, str(e)) if c.exists()), None
                )
                if hit is not None:
                    sources.append(hit.resolve())
                elif split == "train":
                    raise DatasetError(f"{data_yaml}: train: {e!r} not found under {root}")
                else:
                    log.warning("%s: %s: %r not found; ignoring that split", data_yaml, split, e)
            if sources:
                found[split] = sources
                continue
        for alias in SPLIT_ALIASES[split]:
            for cand in (root / "images" / alias, root / alias / "images"):
                if cand.is_dir():
                    found[split] = [cand.resolve()]
                    break
            if split in found:
                break
    if not found and (root / "images").is_dir():
        # A flat images/ + labels/ folder with no splits: everything is train; val is carved.
        found["train"] = [(root / "images").resolve()]
    if "train" not in found:
        raise DatasetError(
            f"{root}: no training images; expected images/train/ + labels/train/, Roboflow's "
            f"train/images/ + train/labels/, or a `train:` entry in {data_yaml.name}"
        )
    return found


def label_path_for(image: Path) -> Path:
    """YOLO label file of an image: the last `images` folder becomes `labels`, suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_yolo_labels(path: Path, class_index: dict[int, int]) -> tuple[list[_Box], int]:
    """Parse one YOLO label file into boxes; returns (boxes, degenerate boxes dropped).

    Lines are `cls cx cy w h` or a segmentation polygon `cls x1 y1 x2 y2 ...` (reduced to its
    bounding box). Any malformed line raises DatasetError naming the file and 1-based line.
    """
    boxes: list[_Box] = []
    degenerate = 0
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read label file ({err})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {lineno}"
        if not (len(fields) == 5 or (len(fields) >= 7 and len(fields) % 2 == 1)):
            raise DatasetError(
                f"{where}: expected `cls cx cy w h` (5 fields) or a polygon `cls x1 y1 x2 y2 x3 y3"
                f" ...`, got {len(fields)} field(s): {line.strip()!r}"
            )
        try:
            cls_f = float(fields[0])
            coords = np.array([float(v) for v in fields[1:]], dtype=np.float64)
        except ValueError:
            raise DatasetError(f"{where}: non-numeric value in {line.strip()!r}") from None
        if not cls_f.is_integer() or int(cls_f) not in class_index:
            ids = sorted(class_index)
            raise DatasetError(
                f"{where}: class id {fields[0]} is not in data.yaml names (ids {ids[0]}..{ids[-1]})"
            )
        finite = np.all(np.isfinite(coords))
        if not finite or coords.min() < -COORD_EPS or coords.max() > 1 + COORD_EPS:
            raise DatasetError(
                f"{where}: coordinates must be normalised to [0, 1], got {' '.join(fields[1:])}"
            )
        coords = np.clip(coords, 0.0, 1.0)
        if len(coords) == 4:
            cx, cy, w, h = coords
        else:
            xs, ys = coords[0::2], coords[1::2]
            cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
            w, h = xs.max() - xs.min(), ys.max() - ys.min()
        if w <= 0 or h <= 0:
            degenerate += 1
            continue
        boxes.append(_Box(class_index[int(cls_f)], float(cx), float(cy), float(w), float(h)))
    return boxes, degenerate


@dataset_builder
def yolo_dataset(cfg: dict, seed: int, cache_dir: Path) -> DatasetInfo:
    """data=yolo_import: the builder behind `data._target_` (seed: the carved val split's)."""
    return import_yolo({**cfg, "seed": cfg.get("seed", seed)}, cache_dir)


@dataset_builder
def epillid_dataset(cfg: dict, seed: int, cache_dir: Path) -> DatasetInfo:
    """data=epillid: the builder behind `data._target_` (seed: the stratified split's)."""
    return import_epillid({**cfg, "seed": cfg.get("seed", seed)}, cache_dir)


def import_yolo(cfg: dict, cache_dir: str | Path) -> DatasetInfo:
    """Import a YOLO/Roboflow detection dataset as per-box square crops (cached)."""
    root = _require_root(cfg, "a YOLO dataset (data.yaml + images/ + labels/)")
    data_yaml, data = _load_data_yaml(root)
    names = _parse_names(data_yaml, data["names"])
    class_index = {cid: i for i, cid in enumerate(names)}
    size = _image_size(cfg)
    val_fraction = _fraction(cfg, "val_fraction", 0.15)
    pad_ratio = float(cfg.get("pad_ratio", 0.1))
    if pad_ratio < 0:
        raise DatasetError(f"data.pad_ratio must be >= 0, got {pad_ratio}")
    seed = int(cfg.get("seed") or 0)
    name = str(cfg.get("name") or root.name)

    split_sources = _find_yolo_splits(root, data_yaml, data)
    items: list[_Item] = []
    seen: set[Path] = set()
    for split, sources in split_sources.items():
        for source in sources:
            for image in _list_images(source):
                if image not in seen:  # an image listed by two splits counts once, first split
                    seen.add(image)
                    items.append(_Item(image=image, split=split))
    if not any(it.split == "train" for it in items):
        where = ", ".join(str(s) for s in split_sources["train"])
        raise DatasetError(
            f"{root}: no training images in {where} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    label_files = [label_path_for(it.image) for it in items]
    key = {
        "importer": "yolo", "version": IMPORTER_VERSION, "name": name, "root": str(root),
        "image_size": size, "pad_ratio": pad_ratio, "val_fraction": val_fraction, "seed": seed,
        "files": fingerprint([data_yaml, *(it.image for it in items), *label_files]),
    }
    cache = _cache_dir(cache_dir)
    final_root = cache / f"yolo-{config_hash(key)}"

    def build(tmp: Path) -> None:
        _build_yolo(tmp, final_root, root, data_yaml, names, items, label_files, class_index, size,
                    pad_ratio, val_fraction, seed, name)

    built = cached_build(cache, "yolo", key, build)
    if built != final_root:  # detection.yaml embeds final_root, so the naming must agree
        raise RuntimeError(f"cache entry {built} is not the expected {final_root}")
    return load_info(built)


def _build_yolo(
    tmp: Path, final_root: Path, root: Path, data_yaml: Path, names: dict[int, str],
    items: list[_Item], label_files: list[Path], class_index: dict[int, int], size: int,
    pad_ratio: float, val_fraction: float, seed: int, name: str,
) -> None:
    # Labels first: they are cheap to check, and a bad line should fail before any decoding.
    degenerate = background = 0
    for item, lbl in zip(items, label_files, strict=True):
        if lbl.is_file():
            item.boxes, dropped = parse_yolo_labels(lbl, class_index)
            degenerate += dropped
        if not item.boxes:
            background += 1
    if degenerate:
        log.warning("%s: dropped %d zero-area box(es)", root, degenerate)

    def crops_of(item: _Item) -> np.ndarray | None:
        image = read_rgb(item.image)
        if image is None:
            return None
        if not item.boxes:
            return _empty_images(size)
        return np.stack([crop_box(image, b.cx, b.cy, b.w, b.h, pad_ratio, size)
                         for b in item.boxes])

    crops = _map_ordered(crops_of, items)
    skipped = [it.image for it, c in zip(items, crops, strict=True) if c is None]
    _report_skipped(root, skipped)
    good = [i for i, c in enumerate(crops) if c is not None]
    if not any(len(crops[i]) for i in good):
        raise DatasetError(
            f"{root}: no labelled boxes in any readable image ({len(items)} image(s), "
            f"{len(skipped)} unreadable, {background} without labels); nothing to import"
        )

    split_of = {i: items[i].split for i in good}
    val_carved = False
    has_val = any(s == "val" and len(crops[i]) for i, s in split_of.items())
    if not has_val and val_fraction > 0:
        train_idx = [i for i, s in split_of.items() if s == "train"]
        # Carve by image, not by crop, so no photo contributes to both train and val; an image is
        # stratified by its most frequent class (-1: background).
        strata = [_primary_class(items[i].boxes) for i in train_idx]
        carved = stratified_split(strata, {"val": val_fraction}, seed)["val"]
        for j in carved:
            split_of[train_idx[j]] = "val"
        val_carved = len(carved) > 0

    splits: dict[str, int] = {}
    det_lists: dict[str, list[str]] = {}
    for split in SPLITS:
        idx = [i for i in good if split_of[i] == split]
        det_lists[split] = [str(items[i].image) for i in idx]
        parts = [crops[i] for i in idx if len(crops[i])]
        if not parts:
            if split == "train":
                raise DatasetError(f"{root}: no labelled boxes in the train split")
            if idx:
                log.warning("%s: %s split has no labelled boxes; left out", root, split)
            continue
        labels = np.array([b.label for i in idx for b in items[i].boxes], dtype=np.int64)
        images = np.concatenate(parts)
        write_split(tmp, split, images, labels)
        splits[split] = len(labels)

    _write_detection_yaml(tmp, final_root, root, names, det_lists)
    write_meta(
        tmp, name, list(names.values()), size, splits,
        source="yolo", source_root=str(root), data_yaml=str(data_yaml),
        skipped_images=len(skipped), skipped_image_files=[str(p) for p in skipped[:20]],
        background_images=background, degenerate_boxes=degenerate, val_carved=val_carved,
        class_ids=list(names), detection="detection.yaml",
    )


def _primary_class(boxes: list[_Box]) -> int:
    if not boxes:
        return -1
    counts = np.bincount([b.label for b in boxes])
    return int(np.argmax(counts))


def _write_detection_yaml(
    tmp: Path, final_root: Path, root: Path, names: dict[int, str], lists: dict[str, list[str]]
) -> None:
    # Image lists rather than folders: a carved val split exists only as a subset of train/.
    det: dict[str, Any] = {"path": str(root)}
    for split in SPLITS:
        if lists[split]:
            (tmp / f"detection_{split}.txt").write_text("\n".join(lists[split]) + "\n")
            det[split] = str(final_root / f"detection_{split}.txt")
    det.setdefault("val", det["train"])  # ultralytics requires a val entry
    det["nc"] = len(names)
    det["names"] = dict(names)
    (tmp / "detection.yaml").write_text(yaml.safe_dump(det, sort_keys=False))


# --------------------------------------------------------------------------------------------- #
# ePillID CSV


def _normalise_split(value: str) -> str | None:
    value = value.strip().lower()
    for split, aliases in SPLIT_ALIASES.items():
        if value in aliases:
            return split
    return None


def import_epillid(cfg: dict, cache_dir: str | Path) -> DatasetInfo:
    """Import an ePillID-style CSV of pill-centred images (path + label columns), cached."""
    root = _require_root(cfg, "an ePillID folder (all_labels.csv + images)")
    csv_path = Path(str(cfg.get("csv") or "all_labels.csv")).expanduser()
    csv_path = csv_path if csv_path.is_absolute() else root / csv_path
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: label CSV not found (set data.csv, relative to data.root)")
    image_dir = Path(str(cfg.get("image_dir") or root)).expanduser()
    image_dir = image_dir if image_dir.is_absolute() else root / image_dir
    path_col = str(cfg.get("path_column") or "image_path")
    label_col = str(cfg.get("label_column") or "label")
    split_col = cfg.get("split_column") or None
    size = _image_size(cfg)
    val_fraction = _fraction(cfg, "val_fraction", 0.15)
    test_fraction = _fraction(cfg, "test_fraction", 0.15)
    seed = int(cfg.get("seed") or 0)
    name = str(cfg.get("name") or "epillid")

    rows = _read_label_csv(csv_path, path_col, label_col, split_col)
    class_names = sorted({r[1] for r in rows}, key=_natural_key)
    class_index = {c: i for i, c in enumerate(class_names)}
    items = [
        _Item(image=_resolve(image_dir, p), split=s or "", label=class_index[lbl])
        for p, lbl, s in rows
    ]
    key = {
        "importer": "epillid", "version": IMPORTER_VERSION, "name": name, "root": str(root),
        "csv": str(csv_path), "image_dir": str(image_dir), "path_column": path_col,
        "label_column": label_col, "split_column": split_col, "image_size": size,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
        "files": fingerprint([csv_path, *(it.image for it in items)]),
    }

    def build(tmp: Path) -> None:
        _build_epillid(tmp, csv_path, class_names, items, size, split_col,
                       {"val": val_fraction, "test": test_fraction}, seed, name)

    return load_info(cached_build(_cache_dir(cache_dir), "epillid", key, build))


def _resolve(image_dir: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else image_dir / p


def _read_label_csv(
    csv_path: Path, path_col: str, label_col: str, split_col: str | None
) -> list[tuple[str, str, str | None]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for key, col in (("path_column", path_col), ("label_column", label_col),
                         ("split_column", split_col)):
            if col is not None and col not in columns:
                raise DatasetError(
                    f"{csv_path}: no column {col!r} (data.{key}); available columns: "
                    f"{', '.join(columns) or '(none)'}"
                )
        rows = []
        for row in reader:
            where = f"{csv_path}, line {reader.line_num}"
            path, label = (row.get(path_col) or "").strip(), (row.get(label_col) or "").strip()
            if not path or not label:
                raise DatasetError(f"{where}: empty {path_col if not path else label_col!r}")
            split = None
            if split_col is not None:
                split = _normalise_split(row.get(split_col) or "")
                if split is None:
                    raise DatasetError(
                        f"{where}: {split_col}={row.get(split_col)!r} is not one of "
                        "train, val (valid, validation), test"
                    )
            rows.append((path, label, split))
    if not rows:
        raise DatasetError(f"{csv_path}: no rows; nothing to import")
    return rows


def _build_epillid(
    tmp: Path, csv_path: Path, class_names: list[str], items: list[_Item], size: int,
    split_col: str | None, fractions: dict[str, float], seed: int, name: str,
) -> None:
    def load(item: _Item) -> np.ndarray | None:
        image = read_rgb(item.image)
        return None if image is None else center_square(image, size)

    crops = _map_ordered(load, items)
    skipped = [it.image for it, c in zip(items, crops, strict=True) if c is None]
    missing = sum(not p.exists() for p in skipped)
    _report_skipped(csv_path, skipped)
    good = [i for i, c in enumerate(crops) if c is not None]
    if not good:
        raise DatasetError(
            f"{csv_path}: none of the {len(items)} listed image(s) could be read "
            f"({missing} missing); check data.root / data.image_dir"
        )
    labels = np.array([items[i].label for i in good], dtype=np.int64)
    if split_col is not None:
        index = {s: np.array([j for j, i in enumerate(good) if items[i].split == s], dtype=np.int64)
                 for s in SPLITS}
    else:
        index = stratified_split(labels, fractions, seed)
    splits: dict[str, int] = {}
    for split in SPLITS:
        idx = index.get(split, np.zeros(0, dtype=np.int64))
        if len(idx) == 0:
            if split == "train":
                raise DatasetError(f"{csv_path}: no readable images in the train split")
            continue
        write_split(tmp, split, np.stack([crops[good[j]] for j in idx]), labels[idx])
        splits[split] = len(idx)
    write_meta(
        tmp, name, class_names, size, splits,
        source="epillid", csv=str(csv_path),
        skipped_images=len(skipped), missing_images=missing,
        skipped_image_files=[str(p) for p in skipped[:20]],
    )
