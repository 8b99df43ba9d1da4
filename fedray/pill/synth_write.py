"""The files of a synthetic build: the studio references (and their prepared cut-outs), crops
scattered into the split arrays, manifest.csv, the contact and scenes sheets, the detection
scenes in YOLO layout, and the consumer-cropping summary of meta.json.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from fedray.data.datasets import write_split
from fedray.pill.catalog import Pill
from fedray.pill.compose_types import PreparedCutout, prepare_cutout
from fedray.pill.synth_plan import S_DETECTION, S_SPLIT, SIDES, SPLITS, Layout, rng_for

CONTACT_ROWS = 40
CONTACT_CELL = 64
CONTACT_SAMPLES = 5  # per source per class
SCENES_SHEET = "scenes_sheet.png"  # the first detection scenes with their boxes
SHEET_SCENES, SHEET_CELL = 12, 320


def cropping_summary(cfg: dict[str, Any], ious: list[float]) -> dict[str, Any]:
    """How the consumer photos were cropped (meta.json's `consumer_cropping`)."""
    out: dict[str, Any] = {"crop_with": cfg["crop_with"], "photos": len(ious)}
    if cfg["crop_with"] != "detector":
        out["description"] = cfg["crop_with"].replace("_", "-")
        return out
    found = [v for v in ious if v > 0]
    out.update(detector=Path(cfg["crop_detector"]).parent.name, found=len(found),
               size_class_fallbacks=len(ious) - len(found),
               mean_iou=round(float(np.mean(found)), 4) if found else None,
               iou_below_0_5=int(sum(v < 0.5 for v in found)))
    out["description"] = (f"the detector ({len(found)}/{len(ious)} photos found, mean IoU with "
                          f"the true box {out['mean_iou']}; the rest size-class)")
    return out


def collect(results: Iterator[tuple[np.ndarray, float]], start: int, layout: Layout,
            arrays: list[np.ndarray]) -> float:
    """Scatter chunks of crops (generation order from `start`) into the split arrays."""
    at, task_s = start, 0.0
    for crops, dt in results:
        idx = np.arange(at, at + len(crops))
        for s, array in enumerate(arrays):
            mine = layout.split[idx] == s
            array[layout.row[idx[mine]]] = crops[mine]
        at += len(crops)
        task_s += dt
    return task_s


def write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write PNG")


def write_references(tmp: Path, pills: list[Pill], results: Iterator[tuple[list, float]],
                     shadow_blur: float) -> tuple[list[PreparedCutout], list[np.ndarray], int]:
    """Write the studio images (references/); return their cut-outs prepared for the compositor,
    the contact sheet's thumbnails, and how many segmentations fell back to the renderer's mask."""
    ref_dir = tmp / "references"
    ref_dir.mkdir()
    cutouts, thumbs, fallbacks = [], [], 0
    for out, _ in results:
        for img, cut, fell_back in out:
            pill, side = pills[len(cutouts) // 2], SIDES[len(cutouts) % 2]
            write_png(ref_dir / f"{pill.id}_{side}.png", img)
            if len(thumbs) < 2 * CONTACT_ROWS:
                thumbs.append(cv2.resize(img, (CONTACT_CELL, CONTACT_CELL),
                                         interpolation=cv2.INTER_AREA))
            cutouts.append(prepare_cutout(cut, shadow_blur, f"pill {pill.id} {side}"))
            fallbacks += fell_back
    return cutouts, thumbs, fallbacks


def write_detection(tmp: Path, final_root: Path, results: Iterator[tuple[list, float]],
                    n_scenes: int, val_fraction: float, seed: int) -> tuple[dict[str, int], float]:
    """Write scenes in ultralytics layout; returns scene counts per split and task seconds."""
    if n_scenes == 0:
        return {"train": 0, "val": 0}, 0.0
    n_val = int(round(n_scenes * val_fraction))
    val = set(rng_for(seed, S_SPLIT, S_DETECTION).permutation(n_scenes)[:n_val].tolist())
    det = tmp / "detection"
    for kind in ("images", "labels"):
        for split in SPLITS:
            (det / kind / split).mkdir(parents=True)
    i, task_s, shown = 0, 0.0, []
    for scenes, dt in results:
        for jpeg, labels in scenes:
            split = "val" if i in val else "train"
            (det / "images" / split / f"scene_{i:05d}.jpg").write_bytes(jpeg)
            (det / "labels" / split / f"scene_{i:05d}.txt").write_text(labels)
            if len(shown) < SHEET_SCENES:
                shown.append(_scene_cell(jpeg, labels))
            i += 1
        task_s += dt
    write_png(tmp / SCENES_SHEET, _grid_sheet(shown, 4))
    # no `path:`: ultralytics then reads the splits relative to this file, so the folder moves
    doc = {
        "train": "images/train",
        "val": "images/val" if n_val else "images/train",  # ultralytics insists on a val entry
        "nc": 1,
        "names": ["pill"],
    }
    (det / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return {"train": n_scenes - n_val, "val": n_val}, task_s


def _scene_cell(jpeg: bytes, labels: str) -> np.ndarray:
    """One scene, RGB, SHEET_CELL px, its boxes drawn in green."""
    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (SHEET_CELL, SHEET_CELL), interpolation=cv2.INTER_AREA)
    for line in labels.splitlines():
        cx, cy, w, h = (float(v) * SHEET_CELL for v in line.split()[1:])
        cv2.rectangle(img, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)),
                      (0, 220, 0), 1)
    return img


def _grid_sheet(cells: list[np.ndarray], cols: int) -> np.ndarray:
    """Cells (same shape) in rows of `cols`, white where a row runs short."""
    rows = -(-len(cells) // cols)
    blank = np.full_like(cells[0], 255)
    cells = cells + [blank] * (rows * cols - len(cells))
    return np.vstack([np.hstack(cells[r * cols:(r + 1) * cols]) for r in range(rows)])


def write_classification(tmp: Path, pills: list[Pill], layout: Layout,
                         arrays: list[np.ndarray], thumbs: list[np.ndarray]) -> dict[str, Any]:
    """Write split arrays, manifest.csv and the contact sheet; returns counts per source."""
    sources: dict[str, dict[str, int]] = {"reference": {}, "consumer": {}}
    rows = []
    for s, split in enumerate(SPLITS):
        idx = np.flatnonzero(layout.split == s)  # generation order == row order
        if len(idx) == 0:
            continue
        write_split(tmp, split, arrays[s], layout.items[idx] // 2)
        sources["consumer"][split] = int(layout.consumer[idx].sum())
        sources["reference"][split] = len(idx) - sources["consumer"][split]
        rows += [(j, split, c // 2, pills[c // 2].id, "consumer" if con else "reference",
                  SIDES[c % 2])
                 for j, (c, con) in enumerate(zip(layout.items[idx].tolist(),
                                                  layout.consumer[idx].tolist(), strict=True))]
    with open(tmp / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("index", "split", "label", "pill_id", "source", "side"))
        writer.writerows(rows)
    _write_contact_sheet(tmp / "contact_sheet.png", pills, layout, arrays[0], thumbs)
    return sources


def _write_contact_sheet(path: Path, pills: list[Pill], layout: Layout, train: np.ndarray,
                         thumbs: list[np.ndarray]) -> None:
    """Grid: per class, its two studio references, then reference crops, then consumer crops."""
    cell, label_w, gap, header = CONTACT_CELL, 220, 6, 22
    rows = pills[:CONTACT_ROWS]
    width = label_w + (2 + 2 * CONTACT_SAMPLES) * cell + 2 * gap
    sheet = np.full((header + len(rows) * cell, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    blank = np.full((cell, cell, 3), 255, np.uint8)
    for text, x in (("studio front / back", label_w),
                    ("reference crops", label_w + 2 * cell + gap),
                    ("consumer crops", label_w + (2 + CONTACT_SAMPLES) * cell + 2 * gap)):
        cv2.putText(sheet, text, (x + 2, 15), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    in_train = layout.split == 0
    label = layout.items // 2
    for r, pill in enumerate(rows):
        y = header + r * cell
        cv2.putText(sheet, f"{pill.id} {pill.name}"[:28], (4, y + 26), font, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        desc = f"{pill.shape} {pill.size_mm[0]:g}mm {'/'.join(c.name for c in pill.colors)}"
        cv2.putText(sheet, desc[:30], (4, y + 46), font, 0.36, (80, 80, 80), 1, cv2.LINE_AA)
        tiles = thumbs[2 * r:2 * r + 2]
        for con in (False, True):
            mine = np.flatnonzero(in_train & (label == r) & (layout.consumer == con))
            picks = [cv2.resize(train[layout.row[i]], (cell, cell), interpolation=cv2.INTER_AREA)
                     for i in mine[:CONTACT_SAMPLES]]
            tiles += picks + [blank] * (CONTACT_SAMPLES - len(picks))
        x = label_w
        for c, tile in enumerate(tiles):
            x += gap if c in (2, 2 + CONTACT_SAMPLES) else 0
            sheet[y:y + cell, x:x + cell] = tile
            x += cell
    write_png(path, sheet)
