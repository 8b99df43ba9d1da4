"""Pill sizes as evidence: the pills of one photo lie on one table, seen from one camera.

A crop shows a pill's shape and imprint, not its size: the classifier sees a 13.9 mm and a
16.5 mm white oblong tablet alike. The photo does know the size, relative to the other pills: at
one camera distance every pill's box is its catalog outline (at some rotation) times one scale,
pixels per mm. So the pills the classifier is sure of set the photo's scale, and each box's
class probabilities are weighed by how well that class's outline, at that scale, fits the box:

    p'(c) ~ p(c) * (exp(-d_c^2 / (2 SIGMA^2)) + OUTLIER),
    d_c = min over rotations of || log(box w, h) - log(scale * outline extent w, h) ||.

A box never sets its own scale (it is set by the OTHER sure boxes, at least `MIN_REFERENCES` of
them), so a photo of up to three pills is read by its crops alone. The scale at a box is the
weighted median of the other sure boxes' scales: each box weighs its reading's confidence,
shared out among the boxes of its class read (twenty copies of a surface's motif read as one
pill weigh as one pill, and the pills beside them still set the scale), times a Gaussian of its
distance to the box with spread REACH of the photo's longer side (a camera held at an angle sees
the far side of the table smaller: each pill is read at the scale of the pills around it). The
spread SIGMA covers the per-pill size spread of the photos (+-8 %), what perspective leaves and
the detector's box error; a box's size is not always evidence (a piece of a pill, a box cut by
the frame), so the weight of a class that does not fit at all bottoms out at OUTLIER instead of
vanishing: a size can tip an unsure reading, not overturn a near-certain one. Classes of a dataset
without a catalog (an imported one) are not weighed.

The same scale finds a surface's motif that looks like a pill (a carpet's lattice of rounded
squares read as a brown square tablet): copies of one reading, apart from each other and of one
size, that the scale the other pills' classes set makes at least MOTIF_MISFIT too large or too
small for that pill (`motif`). The pipeline drops them before the photo is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGMA = 0.1  # log-size spread of a pill's box about the photo's scale
MIN_REFERENCES = 3  # sure boxes (besides the one weighed) a photo needs before sizes count
REACH = 0.3  # spread of the distance weighting of the other pills' scales, of the photo's side
OUTLIER = 0.001  # weight of a class whose outline does not fit the box at all (of 1 for a fit)
MOTIF_MISFIT = 0.3  # log size misfit (x1.35) of a motif's copies to what they are read as
MOTIF_CLASSES = 3  # other classes needed to set the scale that finds a motif
MOTIF_SIZE_TOL = 0.2  # copies of a motif: log width and height within this of each other
ANGLES = np.deg2rad(np.arange(0.0, 180.0, 3.0))  # box extents repeat every 180 degrees


@dataclass
class SizePrior:
    """Every class's axis-aligned box, log mm (C, A, 2): width and height at A rotations."""

    log_extent: np.ndarray
    sigma: float = SIGMA
    min_references: int = MIN_REFERENCES

    @classmethod
    def from_outlines(cls, outlines: list[np.ndarray], **kw) -> SizePrior:
        """From each class's silhouette, (N, 2) points in mm."""
        cos, sin = np.cos(ANGLES)[:, None], np.sin(ANGLES)[:, None]
        ext = []
        for o in outlines:
            x = o[:, 0][None] * cos - o[:, 1][None] * sin
            y = o[:, 0][None] * sin + o[:, 1][None] * cos
            ext.append(np.stack([np.ptp(x, 1), np.ptp(y, 1)], 1))
        return cls(np.log(np.maximum(np.array(ext), 1e-3)), **kw)

    def scales(self, log_box: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """log px per mm of each box (N, 2 log px) read as its class: at the rotation whose
        aspect ratio fits the box best."""
        r = log_box[:, None, :] - self.log_extent[classes]  # (N, A, 2)
        best = np.abs(r[..., 0] - r[..., 1]).argmin(1)
        return r[np.arange(len(r)), best].mean(1)

    def misfit(self, log_box: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
        """(N, C): how far each box is from each class's outline at the given scales (log)."""
        r = log_box[:, None, None, :] - log_scale[:, None, None, None] - self.log_extent[None]
        return np.sqrt((r ** 2).sum(-1)).min(-1)

    def reweigh(self, boxes: np.ndarray, probs: np.ndarray, threshold: float,
                side: float | None = None) -> tuple[np.ndarray, float | None]:
        """Probabilities weighed by size (N, C), and the photo's scale in px per mm (None when
        fewer than `min_references` + 1 boxes are sure: nothing is weighed then). `side`: the
        photo's longer side in px (None: the boxes' own extent)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        sure = probs.max(1) >= threshold if len(probs) else np.zeros(0, bool)
        # a box is weighed only against a scale other sure boxes set, never one it set itself
        idx = np.flatnonzero(sure.sum() - sure >= self.min_references)
        if len(idx) == 0:
            return probs, None
        log_box = log_sizes(boxes)
        read = probs.argmax(1)
        own = self.scales(log_box, read)
        at, others, conf = centres(boxes, side), np.arange(len(sure)), probs.max(1)
        log_scale = np.array([local_vote(own, read, conf, sure & (others != i), at, i)
                              for i in idx])
        fit = np.exp(-0.5 * (self.misfit(log_box[idx], log_scale) / self.sigma) ** 2)
        w = probs[idx] * (fit + OUTLIER)
        out = probs.astype(np.float64)
        out[idx] = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
        # the photo's scale as its answer reads it (each box by its weighed name)
        named, still = out.argmax(1), out.max(1) >= threshold
        if not still.any():
            named, still = read, sure
        scale = class_vote(self.scales(log_box, named), named, still)
        return out.astype(probs.dtype), float(np.exp(scale))

    def motif(self, boxes: np.ndarray, probs: np.ndarray, threshold: float,
              side: float | None = None) -> np.ndarray:
        """(N,) bool: the sure boxes that are copies of a surface's motif (see the module's
        docstring): at least two apart, of one reading and one size, misfitting that reading by
        MOTIF_MISFIT at the scale at least MOTIF_CLASSES other read classes set there."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = np.zeros(len(boxes), bool)
        if len(boxes) < 2:
            return out
        sure = probs.max(1) >= threshold
        read = probs.argmax(1)
        log_box = log_sizes(boxes)
        own, at, conf = self.scales(log_box, read), centres(boxes, side), probs.max(1)
        apart = intersections(boxes, boxes) <= 0  # never a box and itself
        alike = (np.abs(log_box[:, None] - log_box[None]).max(-1) < MOTIF_SIZE_TOL) & (
            read[:, None] == read[None]) & sure[:, None] & sure[None] & apart
        for c in np.unique(read[sure]):
            rest = sure & (read != c)
            if len(np.unique(read[rest])) < MOTIF_CLASSES:
                continue
            mine = np.flatnonzero(sure & (read == c))
            there = np.array([local_vote(own, read, conf, rest, at, i) for i in mine])
            d = self.misfit(log_box[mine], there)[:, c]
            out[mine] = (d > MOTIF_MISFIT) & (alike[np.ix_(mine, mine)].sum(1) >= 1)
        return out


def class_vote(own: np.ndarray, read: np.ndarray, mask: np.ndarray) -> float:
    """The median over the classes read among `mask`'s boxes of each class's median log scale."""
    return float(np.median([np.median(own[mask & (read == c)]) for c in np.unique(read[mask])]))


def local_vote(own: np.ndarray, read: np.ndarray, conf: np.ndarray, mask: np.ndarray,
               at: np.ndarray, i: int) -> float:
    """The log scale at box `i`: the weighted median of `mask`'s boxes' scales, each weighing its
    confidence `conf` shared with the other boxes of its class read, times a Gaussian of the
    distance (`at`: centres in photo sides) of spread REACH."""
    j = np.flatnonzero(mask)
    _, inverse, counts = np.unique(read[j], return_inverse=True, return_counts=True)
    w = conf[j] * np.exp(-0.5 * ((at[j] - at[i]) ** 2).sum(1) / REACH**2) / counts[inverse]
    order = np.argsort(own[j], kind="stable")
    cum = np.cumsum(w[order])
    return float(own[j][order][np.searchsorted(cum, cum[-1] / 2)])


def centres(boxes: np.ndarray, side: float | None) -> np.ndarray:
    """(N, 2) box centres in units of the photo's longer side (None: the boxes' own extent)."""
    if side is None:
        side = float(np.ptp(boxes.reshape(-1, 2), 0).max()) if len(boxes) else 1.0
    return (boxes[:, :2] + boxes[:, 2:]) / 2 / max(float(side), 1.0)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Area of each pixel xyxy box."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection area of every pixel xyxy box in `a` with every one in `b`: (len(a), len(b))."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def log_sizes(boxes: np.ndarray) -> np.ndarray:
    """log (width, height) in px of xyxy boxes (N, 4) -> (N, 2); at least 1 px each."""
    return np.log(np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0))


def catalog_sizes(data_root: str | Path, class_names: list[str]) -> SizePrior | None:
    """The size prior of a dataset's classes from its catalog.json (class names start with the
    pill id); None when there is no catalog or a class is not in it."""
    path = Path(data_root) / "catalog.json"
    if not data_root or not path.is_file():
        return None
    from fedray.pill.catalog import load_catalog
    from fedray.pill.render import outline_mm

    try:
        by_id = {str(p.id): p for p in load_catalog(path)}
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    pills = [by_id.get(name.split(" ", 1)[0]) for name in class_names]
    if any(p is None for p in pills):
        return None
    return SizePrior.from_outlines([outline_mm(p) for p in pills])
