"""1-of-N classification: cross-entropy, accuracy/macro P-R-F1/top-5, a confusion matrix.

`absent_scale` < 1 is FedRS's restricted softmax (Li and Zhan, KDD 2021, "FedRS: Federated
Learning with Restricted Softmax for Label Distribution Non-IID Data"): in a client's training,
the logits of the classes its shard does not hold are multiplied by `absent_scale` before the
cross-entropy, so a phone that never sees a pill pushes that pill's row of the head down less (0:
not at all). Under label skew the rows of the classes a client lacks are what FedAvg's client
drift wrecks. Evaluation and any training that holds every class (centralized, a server's data)
are unchanged.
"""

from __future__ import annotations

import copy
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

    def __init__(
        self, label_smoothing: float = 0.0, partition_by: str = "label", absent_scale: float = 1.0
    ) -> None:
        from fedray.checks import number

        super().__init__(partition_by)
        number("task.label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        self.label_smoothing = float(label_smoothing)
        number("task.absent_scale", absent_scale, 0.0, 1.0)  # FedRS; 1: plain cross-entropy
        self.absent_scale = float(absent_scale)
        self.present: np.ndarray | None = None  # set on a client's copy (`local`)
        self._scale: torch.Tensor | None = None  # that copy's per-class logit scale

    def load_targets(self, root: str | Path, split: str) -> np.ndarray:
        """The split's int64 class labels."""
        from fedray.data.datasets import load_labels

        return load_labels(root, split)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (with `label_smoothing`)."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def local(self, targets: np.ndarray) -> Classification:
        """With FedRS on, a copy that knows the classes in `targets`; else this task."""
        if self.absent_scale == 1.0:
            return self
        mine = copy.copy(self)
        mine.present = np.unique(np.asarray(targets)).astype(np.int64)
        mine._scale = None
        return mine

    def train_loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy; on a client's copy with FedRS, absent classes' logits scaled first."""
        del inputs
        if self.present is not None and self.present.size < outputs.shape[1]:
            scale = self._scale
            if scale is None:  # one model per training call: the same classes and device
                scale = torch.full((outputs.shape[1],), self.absent_scale, device=outputs.device)
                scale[torch.as_tensor(self.present, device=outputs.device)] = 1.0
                self._scale = scale  # built once per client copy, not per batch
            outputs = outputs * scale.to(outputs.dtype)
        return self.loss(outputs, targets)

    def output_shape(
        self, batch: int, image_size: int, num_classes: int | None
    ) -> tuple[int | None, ...]:
        """Logits (B, C): one per class."""
        del image_size
        return (batch, num_classes)

    def example_batch(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (C, C) and one target per class."""
        return torch.eye(num_classes), torch.arange(num_classes)

    def accumulator(self, num_classes: int) -> MetricAccumulator:
        """`fedray.metrics.MetricAccumulator`: acc, macro P/R/F1, top5, loss, confusion."""
        return MetricAccumulator(num_classes)
