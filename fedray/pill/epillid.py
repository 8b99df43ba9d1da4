"""ePillID-style CSV import (`data=epillid`): pill-centred images listed with their labels.

Each image is centre-cropped to a square and resized; the split comes from a CSV column or a
seeded stratified split. Shared helpers: import_common.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedray.data.datasets import (
    DatasetError,
    DatasetInfo,
    cached_build,
    load_info,
    write_meta,
    write_split,
)
from fedray.pill.import_common import (
    IMPORTER_VERSION,
    SPLIT_ALIASES,
    SPLITS,
    Item,
    center_square,
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


def _natural_key(name: str) -> tuple[tuple[int, int | str], str]:
    """Numbers (ASCII digits) first, by value; ties ("1", "01") by the string: the same order in
    every process (a set's order of strings is not)."""
    number = name.isascii() and name.isdecimal()
    return ((0, int(name)) if number else (1, name)), name


def _normalise_split(value: str) -> str | None:
    value = value.strip().lower()
    for split, aliases in SPLIT_ALIASES.items():
        if value in aliases:
            return split
    return None


def import_epillid(cfg: dict, cache_dir: str | Path) -> DatasetInfo:
    """Import an ePillID-style CSV of pill-centred images (path + label columns), cached."""
    root = require_root(cfg, "an ePillID folder (all_labels.csv + images)")
    csv_path = Path(str(cfg.get("csv") or "all_labels.csv")).expanduser()
    csv_path = csv_path if csv_path.is_absolute() else root / csv_path
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: label CSV not found (set data.csv, relative to data.root)")
    image_dir = Path(str(cfg.get("image_dir") or root)).expanduser()
    image_dir = image_dir if image_dir.is_absolute() else root / image_dir
    path_col = str(cfg.get("path_column") or "image_path")
    label_col = str(cfg.get("label_column") or "label")
    split_col = cfg.get("split_column") or None
    size = image_size(cfg)
    val_fraction = fraction(cfg, "val_fraction", 0.15)
    test_fraction = fraction(cfg, "test_fraction", 0.15)
    seed = int(cfg.get("seed") or 0)
    name = str(cfg.get("name") or "epillid")

    rows = _read_label_csv(csv_path, path_col, label_col, split_col)
    class_names = sorted({r[1] for r in rows}, key=_natural_key)
    class_index = {c: i for i, c in enumerate(class_names)}
    items = [
        Item(image=_resolve(image_dir, p), split=s or "", label=class_index[lbl])
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

    return load_info(cached_build(resolve_cache_dir(cache_dir), "epillid", key, build))


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
    tmp: Path, csv_path: Path, class_names: list[str], items: list[Item], size: int,
    split_col: str | None, fractions: dict[str, float], seed: int, name: str,
) -> None:
    def load(item: Item) -> np.ndarray | None:
        image = read_rgb(item.image)
        return None if image is None else center_square(image, size)

    crops = map_ordered(load, items)
    skipped = [it.image for it, c in zip(items, crops, strict=True) if c is None]
    missing = sum(not p.exists() for p in skipped)
    report_skipped(csv_path, skipped)
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
