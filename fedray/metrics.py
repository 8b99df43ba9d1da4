"""Classification metrics: one-shot (torchmetrics) and streaming over batches (same numbers).

Keys: `acc` (top-1, micro), `precision_macro`, `recall_macro`, `f1_macro`, `top5` (top-5 accuracy;
only with more than 5 classes, where it is not 1 by construction), `loss` (mean cross-entropy).
Macro averages follow torchmetrics: a class's score is 0 when its denominator is 0, and classes
that appear in neither targets nor predictions are left out of the mean. Two-class tasks also get
`precision`, `recall` and `f1` of class 1, the positive class (0 when their denominator is 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

METRIC_KEYS = ("acc", "precision_macro", "recall_macro", "f1_macro", "top5", "loss")  # C > 5
BINARY_KEYS = ("precision", "recall", "f1")  # of class 1, added when num_classes == 2


class MetricsError(ValueError):
    """Logits/targets that do not fit together or the class count."""


def _check_inputs(
    logits: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise MetricsError(f"num_classes must be an int >= 2, got {num_classes!r}")
    logits = torch.as_tensor(logits).detach()
    targets = torch.as_tensor(targets).detach()
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise MetricsError(f"logits must have shape (N, {num_classes}), got {tuple(logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise MetricsError(
            f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise MetricsError(f"targets must be integer class ids, got {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise MetricsError(
            f"targets must lie in [0, {num_classes}), found {targets.min()}..{targets.max()}"
        )
    return logits.float().cpu(), targets.long().cpu()


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """All metrics at once for logits (N, C) and targets (N,), via torchmetrics (imported here:
    it takes ~1.3 s to import, and the streaming MetricAccumulator every run uses needs none of
    it)."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    logits, targets = _check_inputs(logits, targets, num_classes)
    if targets.numel() == 0:
        raise MetricsError("no samples to evaluate")
    kw = {"num_classes": num_classes, "validate_args": False}
    return {
        "acc": float(multiclass_accuracy(logits, targets, average="micro", **kw)),
        "precision_macro": float(multiclass_precision(logits, targets, average="macro", **kw)),
        "recall_macro": float(multiclass_recall(logits, targets, average="macro", **kw)),
        "f1_macro": float(multiclass_f1_score(logits, targets, average="macro", **kw)),
        **({"top5": float(multiclass_accuracy(logits, targets, average="micro", top_k=5, **kw))}
           if num_classes > 5 else {}),
        "loss": float(F.cross_entropy(logits, targets)),
        **(binary_scores(confusion_matrix(logits, targets, 2)) if num_classes == 2 else {}),
    }


def confusion_matrix(
    preds: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts (C, C), rows true class, columns predicted; preds are class ids or logits (N, C)."""
    preds = torch.as_tensor(preds).detach().cpu()
    targets = torch.as_tensor(targets).detach().cpu()
    if preds.ndim == 2:
        preds = preds.argmax(dim=1)
    if preds.ndim != 1 or targets.shape != preds.shape:
        raise MetricsError(
            f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} must be (N,) alike"
        )
    preds, targets = preds.long().numpy(), targets.long().numpy()
    for name, arr in (("preds", preds), ("targets", targets)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise MetricsError(
                f"{name} must lie in [0, {num_classes}), found {arr.min()}..{arr.max()}"
            )
    flat = np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def macro_scores(cm: np.ndarray) -> dict[str, float]:
    """Macro precision/recall/F1 from a confusion matrix, with torchmetrics' definitions."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    # Classes absent from both targets and predictions carry no weight (torchmetrics does this).
    present = (tp + fp + fn) > 0
    weights = present / max(int(present.sum()), 1)
    return {
        "precision_macro": float((ratio(tp, tp + fp) * weights).sum()),
        "recall_macro": float((ratio(tp, tp + fn) * weights).sum()),
        "f1_macro": float((ratio(2 * tp, 2 * tp + fp + fn) * weights).sum()),
    }


def binary_scores(cm: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of class 1 (the positive class) from a 2 x 2 confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (2, 2):
        raise MetricsError(f"binary scores need a 2 x 2 confusion matrix, got shape {cm.shape}")
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    return {
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
    }


class MetricAccumulator:
    """Streams evaluation over batches: keeps the confusion matrix and sums, never the logits."""

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise MetricsError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.count = 0
        self.loss_sum = 0.0
        self.topk_correct = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch of logits (B, C) and targets (B,)."""
        logits, targets = _check_inputs(logits, targets, self.num_classes)
        if targets.numel() == 0:
            return
        self.cm += confusion_matrix(logits.argmax(dim=1), targets, self.num_classes)
        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum").double())
        topk = logits.topk(self.top_k, dim=1).indices
        self.topk_correct += int((topk == targets[:, None]).any(dim=1).sum())
        self.count += int(targets.numel())

    def compute(self) -> dict[str, float]:
        """Metrics over everything seen since construction or the last reset."""
        if self.count == 0:
            raise MetricsError("MetricAccumulator.compute() called before any samples were added")
        return {
            "acc": float(np.trace(self.cm) / self.count),
            **macro_scores(self.cm),
            **({"top5": self.topk_correct / self.count} if self.num_classes > 5 else {}),
            "loss": self.loss_sum / self.count,
            **(binary_scores(self.cm) if self.num_classes == 2 else {}),
        }

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the running confusion matrix (rows true, columns predicted)."""
        return self.cm.copy()


def most_confused(
    cm: np.ndarray, class_names: Sequence[str], k: int = 10
) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells as (true name, predicted name, count), zeros left out."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise MetricsError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    if len(class_names) != cm.shape[0]:
        raise MetricsError(
            f"class_names has {len(class_names)} entries, confusion matrix has {cm.shape[0]}"
        )
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    # Stable sort on the negated counts: ties keep row-major (true, predicted) order.
    order = np.argsort(-flat, kind="stable")[: max(k, 0)]
    c = cm.shape[0]
    return [(class_names[i // c], class_names[i % c], int(flat[i])) for i in order if flat[i] > 0]
