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

This module holds the YOLO importer and both `data._target_` builders; the ePillID importer is
in epillid.py, the helpers both share in import_common.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
from fedray.pill.epillid import import_epillid
from fedray.pill.import_common import (
    IMAGE_SUFFIXES,
    IMPORTER_VERSION,
    SPLIT_ALIASES,
    SPLITS,
    Box,
    Item,
    crop_box,
    fingerprint,
    fraction,
    image_size,
    map_ordered,
    read_rgb,
    report_skipped,
    require_root,
    resolve_cache_dir,
    stratified_split,
)

log = logging.getLogger(__name__)

# Tolerance for exporters that write 1.0000001 for a box touching the image edge.
COORD_EPS = 1e-6


def _empty_images(size: int) -> np.ndarray:
    return np.zeros((0, size, size, 3), dtype=np.uint8)


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


def _find_yolo_splits(root: Path, data_yaml: Path, data: dict,
                      need_train: bool = True) -> dict[str, list[Path]]:
    """Map split name -> list of image sources (directories or .txt lists); an import needs a
    train split, an eval folder (`need_train=False`: a real photo set to score on) does not."""
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
                elif split == "train" and need_train:
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
    if "train" not in found and (need_train or not found):
        split = "train" if need_train else "<split>"
        raise DatasetError(
            f"{root}: no {'training ' if need_train else ''}images; expected images/{split}/ + "
            f"labels/{split}/, Roboflow's {split}/images/ + {split}/labels/, or a `{split}:` "
            f"entry in {data_yaml.name}"
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


def parse_yolo_labels(path: Path, class_index: dict[int, int]) -> tuple[list[Box], int]:
    """Parse one YOLO label file into boxes; returns (boxes, degenerate boxes dropped).

    Lines are `cls cx cy w h` or a segmentation polygon `cls x1 y1 x2 y2 ...` (reduced to its
    bounding box). Any malformed line raises DatasetError naming the file and 1-based line.
    """
    boxes: list[Box] = []
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
        boxes.append(Box(class_index[int(cls_f)], float(cx), float(cy), float(w), float(h)))
    return boxes, degenerate


@dataset_builder
def yolo_dataset(cfg: dict, seed: int, cache_dir: Path) -> DatasetInfo:
    """data=yolo_import: the builder behind `data._target_` (seed: the carved val split's)."""
    return import_yolo({**cfg, "seed": cfg.get("seed", seed)}, cache_dir)


@dataset_builder
def epillid_dataset(cfg: dict, seed: int, cache_dir: Path) -> DatasetInfo:
    """data=epillid: the builder behind `data._target_` (seed: the stratified split's)."""
    return import_epillid({**cfg, "seed": cfg.get("seed", seed)}, cache_dir)


yolo_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "root", "image_size", "pad_ratio", "val_fraction", "seed")
epillid_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "root", "csv", "image_dir", "path_column", "label_column", "split_column",
    "val_fraction", "test_fraction", "image_size", "seed")


def import_yolo(cfg: dict, cache_dir: str | Path) -> DatasetInfo:
    """Import a YOLO/Roboflow detection dataset as per-box square crops (cached)."""
    root = require_root(cfg, "a YOLO dataset (data.yaml + images/ + labels/)")
    data_yaml, data = _load_data_yaml(root)
    names = _parse_names(data_yaml, data["names"])
    nc = data.get("nc")  # the class count; with sparse ids it may count up to the last id
    if nc is not None and nc not in (len(names), max(names) + 1):
        raise DatasetError(f"{data_yaml}: nc: {nc}, but `names` lists {len(names)} classes; "
                           "make them agree")
    class_index = {cid: i for i, cid in enumerate(names)}
    size = image_size(cfg)
    val_fraction = fraction(cfg, "val_fraction", 0.15)
    pad_ratio = float(cfg.get("pad_ratio", 0.1))
    if pad_ratio < 0:
        raise DatasetError(f"data.pad_ratio must be >= 0, got {pad_ratio}")
    seed = int(cfg.get("seed") or 0)
    name = str(cfg.get("name") or root.name)

    split_sources = _find_yolo_splits(root, data_yaml, data)
    items: list[Item] = []
    seen: set[Path] = set()
    for split, sources in split_sources.items():
        for source in sources:
            for image in _list_images(source):
                if image not in seen:  # an image listed by two splits counts once, first split
                    seen.add(image)
                    items.append(Item(image=image, split=split))
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
    cache = resolve_cache_dir(cache_dir)
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
    items: list[Item], label_files: list[Path], class_index: dict[int, int], size: int,
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

    def crops_of(item: Item) -> np.ndarray | None:
        image = read_rgb(item.image)
        if image is None:
            return None
        if not item.boxes:
            return _empty_images(size)
        return np.stack([crop_box(image, b.cx, b.cy, b.w, b.h, pad_ratio, size)
                         for b in item.boxes])

    crops = map_ordered(crops_of, items)
    skipped = [it.image for it, c in zip(items, crops, strict=True) if c is None]
    report_skipped(root, skipped)
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


def _primary_class(boxes: list[Box]) -> int:
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
