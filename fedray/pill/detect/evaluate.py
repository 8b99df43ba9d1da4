"""Scoring a detector on any YOLO folder: AP50, AP at IoU 0.8, mAP50-95, P, R, plots.

AP at IoU 0.8 is the source's metric: ultralytics computes AP at the ten IoU thresholds
0.50:0.05:0.95 per class (`metrics.box.all_ap`, shape (nc, 10)); `ap_at(all_ap, 0.8)` reads the
column of 0.80 (index 6) and averages it over the classes. The same summary serves ultralytics'
own validation and the small pure-NumPy `box_ap` that the tests feed hand-made boxes.

An eval folder (`detect.eval_data`, the `data=yolo_import` layout) is checked file by file before
ultralytics sees it, because ultralytics skips a corrupt image or label with a warning: here it
is a DatasetError naming the file. Class ids are collapsed to the one class `pill`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from fedray.data.datasets import DatasetError

log = logging.getLogger("fedray")

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # ultralytics' iouv: all_ap columns
SHEET_CELL = 320  # px per image on the predictions sheet
SHEET_COLS = 4


# ------------------------------------------------------------------------------- metrics


def ap_at(all_ap: np.ndarray, iou: float) -> float:
    """Mean over classes of the AP at IoU threshold `iou` (one of 0.50, 0.55, ..., 0.95)."""
    all_ap = np.asarray(all_ap, dtype=np.float64).reshape(-1, len(IOU_THRESHOLDS))
    hit = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))
    if len(hit) != 1:
        raise ValueError(f"IoU {iou} is not one of ultralytics' thresholds {IOU_THRESHOLDS}")
    return float(all_ap[:, hit[0]].mean()) if len(all_ap) else 0.0


def summarize(all_ap: np.ndarray, precision: float, recall: float) -> dict[str, float]:
    """The detector's figures from per-class, per-threshold AP (nc, 10) and mean P/R."""
    all_ap = np.asarray(all_ap, dtype=np.float64).reshape(-1, len(IOU_THRESHOLDS))
    return {
        "AP50": ap_at(all_ap, 0.5),
        "AP80": ap_at(all_ap, 0.8),
        "mAP50-95": float(all_ap.mean()) if len(all_ap) else 0.0,
        "precision": float(precision),
        "recall": float(recall),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), boxes as x1 y1 x2 y2."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def match(pred: np.ndarray, conf: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, 10) bool: prediction i is a true positive at threshold j (greedy by confidence)."""
    tp = np.zeros((len(pred), len(IOU_THRESHOLDS)), bool)
    if len(pred) == 0 or len(gt) == 0:
        return tp
    iou = box_iou(pred, gt)
    order = np.argsort(-np.asarray(conf), kind="stable")
    for j, t in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt), bool)
        for i in order:
            cand = np.where(taken, -1.0, iou[i])
            k = int(np.argmax(cand))
            if cand[k] >= t:
                taken[k] = True
                tp[i, j] = True
    return tp


def box_ap(images: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """One-class figures of (pred xyxy, conf, gt xyxy) per image, through ultralytics' AP."""
    from fedray.pill.detect.offline import load_ultralytics

    load_ultralytics()
    from ultralytics.utils.metrics import ap_per_class

    tps, confs, n_gt = [], [], 0
    for pred, conf, gt in images:
        tps.append(match(pred, conf, gt))
        confs.append(np.asarray(conf, np.float64).reshape(-1))
        n_gt += len(gt)
    tp, conf = np.concatenate(tps), np.concatenate(confs)
    out = ap_per_class(tp, conf, np.zeros(len(conf)), np.zeros(n_gt))
    p, r, all_ap = out[2], out[3], out[5]
    return summarize(all_ap, float(np.mean(p)) if len(p) else 0.0,
                     float(np.mean(r)) if len(r) else 0.0)


# --------------------------------------------------------------------------- eval folders


def prepare_eval_folder(root: str | Path, split: str, out: Path) -> tuple[Path, int, int]:
    """Check a YOLO folder's `split` and write a one-class view of it into `out`.

    Every image must decode and every label line parse (else DatasetError naming the file and
    line); images are linked, labels rewritten with class 0. Returns (data.yaml, images, boxes).
    """
    from fedray.pill.import_common import read_rgb
    from fedray.pill.importers import (
        _find_yolo_splits,
        _list_images,
        _load_data_yaml,
        _parse_names,
        label_path_for,
        parse_yolo_labels,
    )

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"detect.eval_data={str(root)!r}: no such directory")
    data_yaml, data = _load_data_yaml(root)
    names = _parse_names(data_yaml, data["names"])
    to_pill = dict.fromkeys(names, 0)  # any class of the folder is a pill
    splits = _find_yolo_splits(root, data_yaml, data, need_train=False)
    if split not in splits:
        raise DatasetError(f"{root}: no {split!r} split (found {sorted(splits)}); set "
                           "detect.eval_split")
    images = [p for source in splits[split] for p in _list_images(source)]
    if not images:
        raise DatasetError(f"{root}: the {split} split has no images")
    img_dir, lab_dir = out / "images" / split, out / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    n_boxes = 0
    for i, image in enumerate(images):
        if read_rgb(image) is None:
            raise DatasetError(f"{image}: corrupt or unreadable image")
        label = label_path_for(image)
        boxes = parse_yolo_labels(label, to_pill)[0] if label.is_file() else []
        n_boxes += len(boxes)
        stem = f"{i:06d}_{image.stem}"
        os.symlink(image, img_dir / f"{stem}{image.suffix.lower()}")
        (lab_dir / f"{stem}.txt").write_text(
            "".join(f"0 {b.cx:.6f} {b.cy:.6f} {b.w:.6f} {b.h:.6f}\n" for b in boxes))
    doc = {"path": str(out), "train": f"images/{split}", "val": f"images/{split}", "nc": 1,
           "names": ["pill"]}
    (out / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out / "data.yaml", len(images), n_boxes


# ------------------------------------------------------------------------------ evaluation


def evaluate(weights: str | Path, data_yaml: Path, out_dir: Path, imgsz: int, batch: int,
             device: str, sheet_images: int = 12) -> dict[str, Any]:
    """Score `weights` on the val split of `data_yaml`; writes pr_curve.png and predictions.png."""
    from fedray.pill.detect.offline import load_ultralytics

    load_ultralytics()
    from ultralytics import YOLO

    out_dir.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(weights), task="detect")
    metrics = model.val(data=str(data_yaml), split="val", imgsz=imgsz, batch=batch, device=device,
                        workers=0, plots=False, project=str(out_dir), name="val", exist_ok=True,
                        verbose=False, single_cls=True)
    box = metrics.box
    out = summarize(box.all_ap, box.mp, box.mr)
    out["images_per_s"] = 1000.0 / max(sum(metrics.speed.values()), 1e-9)
    pr = plot_pr_curve(box.px, box.prec_values, out, out_dir / "pr_curve.png")
    val_dir = _val_images(data_yaml)
    sheet = predictions_sheet(model, sorted(val_dir.iterdir())[:sheet_images], imgsz, device,
                              out_dir / "predictions.png")
    return {**out, "pr_curve": str(pr), "predictions": str(sheet)}


def _val_images(data_yaml: Path) -> Path:
    data = yaml.safe_load(data_yaml.read_text())
    base = Path(data.get("path") or data_yaml.parent)
    return base / data["val"]


def plot_pr_curve(recall: np.ndarray, precision: np.ndarray, figures: dict[str, float],
                  path: Path) -> Path:
    """Precision against recall at IoU 0.5 (ultralytics' curve), with the AP figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    prec = np.asarray(precision).reshape(-1, len(recall)) if len(precision) else np.zeros((0,))
    for row in prec:
        ax.plot(recall, row, lw=1.5, color="tab:blue")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"pill  AP50 {figures['AP50']:.3f}  AP80 {figures['AP80']:.3f}  "
                 f"mAP50-95 {figures['mAP50-95']:.3f}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def predictions_sheet(model: Any, images: list[Path], imgsz: int, device: str,
                      path: Path, conf: float = 0.25) -> Path:
    """A grid of val images with predicted boxes (green) and ground truth (thin white)."""
    from fedray.pill.importers import label_path_for

    cells = []
    for image in images:
        bgr = cv2.imread(str(image))
        if bgr is None:
            continue
        h, w = bgr.shape[:2]
        label = label_path_for(image)
        if label.is_file():
            for line in label.read_text().split("\n"):
                f = line.split()
                if len(f) == 5:
                    cx, cy, bw, bh = (float(v) for v in f[1:])
                    cv2.rectangle(bgr, (int((cx - bw / 2) * w), int((cy - bh / 2) * h)),
                                  (int((cx + bw / 2) * w), int((cy + bh / 2) * h)),
                                  (255, 255, 255), 1)
        result = model.predict(str(image), imgsz=imgsz, device=device, conf=conf,
                               verbose=False)[0]
        for (x1, y1, x2, y2), c in zip(result.boxes.xyxy.cpu().numpy().tolist(),
                                       result.boxes.conf.cpu().numpy().tolist(), strict=True):
            cv2.rectangle(bgr, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 0), 2)
            cv2.putText(bgr, f"{c:.2f}", (int(x1), max(int(y1) - 3, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 200, 0), 1, cv2.LINE_AA)
        scale = SHEET_CELL / max(h, w)
        cell = np.zeros((SHEET_CELL, SHEET_CELL, 3), np.uint8)
        small = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        cell[: small.shape[0], : small.shape[1]] = small
        cells.append(cell)
    if not cells:
        cells = [np.zeros((SHEET_CELL, SHEET_CELL, 3), np.uint8)]
    cols = min(SHEET_COLS, len(cells))
    rows = -(-len(cells) // cols)
    cells += [np.zeros_like(cells[0])] * (rows * cols - len(cells))
    sheet = np.vstack([np.hstack(cells[r * cols:(r + 1) * cols]) for r in range(rows)])
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"{path}: could not write PNG")
    return path
