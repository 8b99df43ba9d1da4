"""Semantic segmentation: per-pixel class masks, Dice + BCE/CE loss, IoU and Dice metrics.

Targets are uint8 masks (N, S, S) of class ids (`{split}_masks.npy`, 0 = background). A model
outputs (B, C, S, S) logits, C = the dataset's classes; a binary task may also output one
channel (B, 1, S, S), read through a sigmoid. Two-class softmax cross-entropy is exactly the
binary cross-entropy of the logit difference, so "Dice + BCE" holds for either head.

Metrics are pooled over every pixel of the split (a pixel confusion matrix, summed batch by
batch): per class c, IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN); `iou` and
`dice` are their means over the foreground classes (all classes with `include_background`),
leaving out a class that appears in neither masks nor predictions (its per-class value is NaN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedray.config import ConfigError
from fedray.metrics import MetricsError
from fedray.tasks.base import Accumulator, Task


def _check(outputs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
    if outputs.ndim != 4 or targets.ndim != 3 or outputs.shape[0] != targets.shape[0] \
            or outputs.shape[2:] != targets.shape[1:]:
        raise MetricsError(
            f"segmentation outputs must be (B, C, H, W) and targets (B, H, W) alike, got "
            f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
        )
    channels = outputs.shape[1]
    if channels != num_classes and not (channels == 1 and num_classes == 2):
        raise MetricsError(
            f"the model outputs {channels} channels for {num_classes} classes: give it "
            f"{num_classes} (or 1 for a binary task)"
        )


def predict_mask(outputs: torch.Tensor) -> torch.Tensor:
    """Class ids (B, H, W) from logits (B, C, H, W); one channel: logit > 0 is class 1."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).long()
    return outputs.argmax(dim=1)


def soft_dice_loss(
    outputs: torch.Tensor, targets: torch.Tensor, include_background: bool = False,
    smooth: float = 1.0,
) -> torch.Tensor:
    """1 - mean over classes of (2 sum(p t) + smooth) / (sum p + sum t + smooth), summed over
    the whole batch; p = sigmoid (one channel) or softmax probabilities."""
    if outputs.shape[1] == 1:
        probs = torch.sigmoid(outputs[:, 0])[:, None]
        onehot = (targets == 1)[:, None].to(probs.dtype)
    else:
        probs = torch.softmax(outputs, dim=1)
        onehot = F.one_hot(targets, outputs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        if not include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def scores_from_confusion(
    cm: np.ndarray, include_background: bool = False
) -> dict[str, float]:
    """Pixel accuracy, per-class and mean IoU and Dice from a (C, C) pixel confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    union = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    counted = slice(0, None) if include_background or len(tp) == 1 else slice(1, None)

    def mean(v: np.ndarray) -> float:
        v = v[counted]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    out = {
        "iou": mean(iou),
        "dice": mean(dice),
        "pixel_acc": float(tp.sum() / max(cm.sum(), 1.0)),
    }
    out.update({f"iou_{c}": float(v) for c, v in enumerate(iou)})
    out.update({f"dice_{c}": float(v) for c, v in enumerate(dice)})
    return out


class SegmentationAccumulator(Accumulator):
    """Pixel confusion matrix and loss sums over batches."""

    def __init__(self, task: Segmentation, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise MetricsError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.task, self.num_classes = task, num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)
        self.loss_sum, self.count = 0.0, 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add logits (B, C, H, W) and masks (B, H, W)."""
        outputs = torch.as_tensor(outputs).detach().float().cpu()
        targets = torch.as_tensor(targets).detach().cpu().long()
        _check(outputs, targets, self.num_classes)
        if targets.numel() == 0:
            return
        if targets.min() < 0 or targets.max() >= self.num_classes:
            raise MetricsError(
                f"mask values must lie in [0, {self.num_classes}), found "
                f"{int(targets.min())}..{int(targets.max())}"
            )
        pred = predict_mask(outputs).numpy().ravel()
        true = targets.numpy().ravel()
        c = self.num_classes
        self.cm += np.bincount(true * c + pred, minlength=c * c).reshape(c, c)
        self.loss_sum += float(self.task.loss(outputs, targets)) * len(targets)
        self.count += len(targets)

    def compute(self) -> dict[str, float]:
        """IoU, Dice (mean and per class), pixel accuracy and the mean batch loss."""
        if self.count == 0:
            raise MetricsError("compute() called before any samples were added")
        return {
            **scores_from_confusion(self.cm, self.task.include_background),
            "loss": self.loss_sum / self.count,
        }

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the pixel confusion matrix (rows true, columns predicted)."""
        return self.cm.copy()


class Segmentation(Task):
    """Masks (N, S, S) uint8; loss = BCE/CE + `dice_weight` x soft Dice; ranked by `val/iou`."""

    name = "segmentation"
    metric = "iou"
    confusion = False  # the pixel confusion matrix is in the metrics; no per-class plots

    def __init__(
        self,
        dice_weight: float = 1.0,
        include_background: bool = False,
        partition_by: str = "group",
    ) -> None:
        super().__init__(partition_by)
        if float(dice_weight) < 0:
            raise ConfigError(f"task.dice_weight={dice_weight!r}: must be >= 0")
        self.dice_weight = float(dice_weight)
        self.include_background = bool(include_background)

    def load_targets(self, root: str | Path, split: str) -> np.ndarray:
        """The split's uint8 masks, memory-mapped."""
        from fedray.data.datasets import load_masks

        return load_masks(root, split)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (BCE for one channel) + dice_weight x soft Dice."""
        targets = targets.long()
        if outputs.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(outputs[:, 0], targets.to(outputs.dtype))
        else:
            ce = F.cross_entropy(outputs, targets)
        if self.dice_weight == 0:
            return ce
        return ce + self.dice_weight * soft_dice_loss(outputs, targets, self.include_background)

    def output_shape(
        self, batch: int, image_size: int, num_classes: int | None
    ) -> tuple[int | None, ...]:
        """Logits (B, C, S, S) at the masks' size (a binary task may give 1 channel or 2)."""
        channels = None if num_classes == 2 else num_classes
        return (batch, channels, image_size, image_size)

    def example_batch(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (1, C, 2, 2) and a (1, 2, 2) mask."""
        return torch.zeros(1, num_classes, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)

    def accumulator(self, num_classes: int) -> SegmentationAccumulator:
        """A pixel-confusion accumulator."""
        return SegmentationAccumulator(self, num_classes)
