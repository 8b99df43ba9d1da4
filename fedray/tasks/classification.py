"""1-of-N classification: cross-entropy, accuracy/macro P-R-F1/top-5, a confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedray.metrics import MetricAccumulator
from fedray.tasks.base import Accumulator, Task

Accumulator.register(MetricAccumulator)  # the classification accumulator, as it always was


class Classification(Task):
    """Labels (N,) int64; outputs are logits (B, C); metrics from `fedray.metrics`."""

    name = "classification"
    metric = "acc"
    confusion = True
    augments = True

    def __init__(self, label_smoothing: float = 0.0, partition_by: str = "label") -> None:
        super().__init__(partition_by)
        self.label_smoothing = float(label_smoothing)

    def load_targets(self, root: str | Path, split: str) -> np.ndarray:
        """The split's int64 class labels."""
        from fedray.data.datasets import load_labels

        return load_labels(root, split)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (with `label_smoothing`)."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def accumulator(self, num_classes: int) -> MetricAccumulator:
        """`fedray.metrics.MetricAccumulator`: acc, macro P/R/F1, top5, loss, confusion."""
        return MetricAccumulator(num_classes)
