"""detect -> crop -> classify every pill of a photo; draw the answer; score it against truth."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from fedray.pill.consumer import DetectFn
from fedray.pill.crops import CROP_PAD, crop_boxes, xyxy_to_yolo
from fedray.pill.identify.classifier import Classifier
from fedray.pill.identify.sizes import box_areas, intersections, log_sizes

UNKNOWN = "unknown"
# A box the detector scored below this and whose crop the classifier finds unlike every pill it
# knows (energy under its calibrated floor) is background, not a pill: dropped from the answer.
# A box the detector is sure of always stays (a pill the classifier does not know reads unknown).
SURE_SCORE = 0.6
# A surface's own motif (a lattice of dots on a tablecloth, a carpet's tufts) repeats: boxes the
# classifier finds unlike every pill and the detector is not quite sure of, at least
# PATTERN_COUNT of them (each counted with itself) of about one size (log width and height within
# PATTERN_SIZE_TOL), are that motif, not pills. A pill the detector is sure of
# (>= PATTERN_SCORE) stays, however many copies of it lie on the table.
PATTERN_COUNT = 3
PATTERN_SIZE_TOL = 0.2
PATTERN_SCORE = 0.85
# The detector sometimes boxes one pill in two pieces (an oblong split at its score line),
# neither of which the classifier can name. A box it cannot name is joined with an overlapping box
# (the two sharing at least MERGE_OVERLAP of the smaller one's area) when the crop of their union
# is named, and more surely than the other box alone: two touching pills' union reads less surely
# than either pill.
MERGE_OVERLAP = 0.2
# ... or boxes a piece (an end of an oblong) beside the whole pill. A box that reads unknown and
# lies at least FRAGMENT_COVER inside a larger box of the answer is such a piece: dropped. A small
# pill that sits inside a large pill's box is named by the classifier, so it stays.
FRAGMENT_COVER = 0.8


@dataclass
class Found:
    """One pill found in a photo: its box, detector score, top-k names and the answer."""

    box: list[float]  # x1, y1, x2, y2 in pixels
    score: float
    top: list[tuple[str, float]]
    name: str  # the top name, or "unknown" below the calibrated threshold
    class_index: int  # -1 when unknown
    confidence: float


@dataclass
class Answer:
    """Everything identify says about one photo."""

    found: list[Found] = field(default_factory=list)
    width: int = 0
    height: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    dismissed: list[list[float]] = field(default_factory=list)  # background, pieces of a pill
    px_per_mm: float | None = None  # the photo's scale, when sure pills set one (sizes.py)

    def to_json(self) -> dict:
        return asdict(self)


def identify(rgb: np.ndarray, detect: DetectFn, clf: Classifier, top_k: int = 5) -> Answer:
    """Find every pill in an RGB uint8 photo and name each one."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ValueError("identify needs an RGB uint8 image (H, W, 3)")
    height, width = rgb.shape[:2]
    t0 = time.perf_counter()
    boxes, scores = detect(rgb)
    boxes, scores = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores).reshape(-1)
    t1 = time.perf_counter()
    crops = crop_boxes(rgb, xyxy_to_yolo(boxes, width, height), clf.image_size, CROP_PAD)
    probs, energy = clf.scores(crops)
    boxes, scores, probs, energy = merge_pieces(rgb, boxes, scores, probs, energy, clf)
    t2 = time.perf_counter()
    found, dismissed, scale = name_boxes(boxes, scores, probs, energy, clf, top_k,
                                         max(width, height))
    return Answer(found, width, height, {"detect": t1 - t0, "classify": t2 - t1}, dismissed,
                  scale)


def name_boxes(boxes: np.ndarray, scores: np.ndarray, probs: np.ndarray, energy: np.ndarray,
               clf: Classifier, top_k: int = 5, side: float | None = None
               ) -> tuple[list[Found], list[list[float]], float | None]:
    """The detector's boxes and the classifier's reading of their crops -> the pills found (in
    reading order), the boxes dismissed as background and the photo's scale (px per mm).
    `side`: the photo's longer side in px (the sizes read each pill at the scale around it)."""
    k = max(1, min(int(top_k), len(clf.class_names)))
    unlike = energy < clf.energy_floor  # the crop is unlike every pill the classifier knows
    keep = ~(unlike & ((scores < SURE_SCORE) | surface_motif(boxes, scores, unlike)))
    dismissed = [_rounded(b) for b in boxes[~keep]]
    boxes, scores, probs = boxes[keep], scores[keep], probs[keep]
    scale = None
    if clf.sizes is not None:  # the other pills' sizes weigh each crop's reading
        motif = clf.sizes.motif(boxes, probs, clf.threshold, side)
        dismissed += [_rounded(b) for b in boxes[motif]]
        boxes, scores, probs = boxes[~motif], scores[~motif], probs[~motif]
        probs, scale = clf.sizes.reweigh(boxes, probs, clf.threshold, side)
    found, named = [], []
    for box, score, p in zip(boxes, scores, probs, strict=True):
        order = np.argsort(-p)[:k]
        conf = float(p[order[0]])
        known = conf >= clf.threshold
        found.append(Found(
            box=_rounded(box),
            score=float(score),
            top=[(clf.class_names[i], float(p[i])) for i in order],
            name=clf.class_names[order[0]] if known else UNKNOWN,
            class_index=int(order[0]) if known else -1,
            confidence=conf,
        ))
        named.append(known)
    piece = pill_fragments(boxes, np.array(named, bool))
    dismissed += [f.box for f, drop in zip(found, piece, strict=True) if drop]
    found = [f for f, drop in zip(found, piece, strict=True) if not drop]
    found.sort(key=lambda f: (f.box[1], f.box[0]))  # reading order: top to bottom, left to right
    return found, dismissed, scale


def surface_motif(boxes: np.ndarray, scores: np.ndarray, unlike: np.ndarray) -> np.ndarray:
    """Which boxes repeat one another as a surface's motif does: unlike every pill, under
    PATTERN_SCORE, and with at least PATTERN_COUNT - 1 others like them of about their size."""
    cand = unlike & (scores < PATTERN_SCORE)
    if cand.sum() < PATTERN_COUNT:
        return np.zeros(len(boxes), bool)
    log_size = log_sizes(boxes)
    alike = np.abs(log_size[:, None] - log_size[None]).max(-1) < PATTERN_SIZE_TOL
    return cand & ((alike & cand[None]).sum(1) >= PATTERN_COUNT)


def merge_pieces(rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, probs: np.ndarray,
                 energy: np.ndarray, clf: Classifier
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Join each box the classifier cannot name with the overlapping box whose union it names
    most surely (see MERGE_OVERLAP); the boxes, scores, probabilities and energies after."""
    boxes, scores = np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)
    probs, energy = np.array(probs, np.float32), np.array(energy, np.float32)
    conf = probs.max(1) if len(probs) else np.zeros(0, np.float32)
    alive = np.ones(len(boxes), bool)
    area = box_areas(boxes)
    height, width = rgb.shape[:2]
    for j in np.argsort(-scores):
        if conf[j] >= clf.threshold or not alive[j]:
            continue
        inter = intersections(boxes, boxes[j : j + 1])[:, 0]
        near = np.flatnonzero(alive & (inter >= MERGE_OVERLAP * np.minimum(area, area[j])))
        near = near[near != j]
        if len(near) == 0:
            continue
        unions = np.concatenate([np.minimum(boxes[near, :2], boxes[j, :2]),
                                 np.maximum(boxes[near, 2:], boxes[j, 2:])], 1)
        crops = crop_boxes(rgb, xyxy_to_yolo(unions, width, height), clf.image_size, CROP_PAD)
        p_union, e_union = clf.scores(crops)
        c_union = p_union.max(1)
        same = (conf[near] < clf.threshold) | (p_union.argmax(1) == probs[near].argmax(1))
        ok = (c_union >= clf.threshold) & (c_union > conf[near]) & same
        if not ok.any():
            continue
        k = int(np.argmax(np.where(ok, c_union, -1.0)))
        i = near[k]
        boxes[i], probs[i], energy[i], conf[i] = unions[k], p_union[k], e_union[k], c_union[k]
        area[i] = box_areas(unions[k : k + 1])[0]
        scores[i] = max(scores[i], scores[j])
        alive[j] = False
    return boxes[alive], scores[alive], probs[alive], energy[alive]


def pill_fragments(boxes: np.ndarray, named: np.ndarray) -> np.ndarray:
    """Which boxes are pieces of another pill's box: not `named`, and at least FRAGMENT_COVER of
    their area inside a larger box."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) < 2 or named.all():
        return np.zeros(len(boxes), bool)
    area = box_areas(boxes)
    inside = (intersections(boxes, boxes) >= FRAGMENT_COVER * np.maximum(area[:, None], 1e-9)) & (
        area[None] > area[:, None])  # (piece j, larger box i)
    return ~named & inside.any(1)


def _rounded(box: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in box]


def annotate(rgb: np.ndarray, answer: Answer) -> np.ndarray:
    """The photo with each pill's box, number and answer drawn on it (OpenCV's own font)."""
    out = np.ascontiguousarray(rgb.copy())
    scale = max(out.shape[:2]) / 900
    for i, f in enumerate(answer.found, 1):
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        colour = (40, 200, 60) if f.class_index >= 0 else (230, 150, 20)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, max(1, int(3 * scale)))
        label = f"{i} {f.name} {f.confidence:.0%}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, 1)
        ty = max(y1, th + base + 2)
        tx = max(0, min(x1, out.shape[1] - tw - 4))  # the whole label inside the photo
        cv2.rectangle(out, (tx, ty - th - base - 2), (tx + tw + 4, ty), colour, -1)
        cv2.putText(out, label, (tx + 2, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale,
                    (0, 0, 0), max(1, int(scale)), cv2.LINE_AA)
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pixel xyxy box in `a` with every one in `b`: (len(a), len(b))."""
    inter = intersections(a, b)
    return inter / np.maximum(box_areas(a)[:, None] + box_areas(b)[None, :] - inter, 1e-9)


def match_truth(answer: Answer, true_xyxy: np.ndarray, true_classes: np.ndarray,
                iou: float = 0.5) -> tuple[int, int]:
    """(true pills found and named right, answers matching no true pill): greedy one-to-one,
    each true pill taking the unused answer it overlaps most, at IoU >= `iou`."""
    pred = np.array([f.box for f in answer.found], float).reshape(-1, 4)
    m = iou_matrix(true_xyxy, pred)
    used: set[int] = set()
    right = 0
    for t in np.argsort(-m.max(1)) if m.size else []:
        j = next((int(j) for j in np.argsort(-m[t]) if int(j) not in used and m[t, j] >= iou),
                 None)
        if j is not None:
            used.add(j)
            right += answer.found[j].class_index == int(true_classes[t])
    return right, len(pred) - len(used)


def photo_correct(answer: Answer, true_xyxy: np.ndarray, true_classes: np.ndarray,
                  iou: float = 0.5) -> bool:
    """Every true pill found (IoU >= `iou`, greedy one-to-one) and named right; nothing extra."""
    right, extra = match_truth(answer, true_xyxy, true_classes, iou)
    return right == len(np.asarray(true_xyxy).reshape(-1, 4)) and extra == 0
