"""The task seam: a task decides its targets, its loss and its metrics; the loop stays generic.

The training loop (`fedray.fl.train`), the client actors, the server's evaluation and the
runners only ever call a `Task`:

- `load_targets(root, split)`: the split's targets, indexable like the images (labels (N,) for
  classification, masks (N, S, S) for segmentation);
- `loss(outputs, targets)`: the scalar training loss of one batch (mean over the batch);
  training calls `train_loss(outputs, targets, inputs)`, which is `loss` unless the task also
  needs the batch's input tensor (distillation: a teacher's outputs on the same images);
  `local(targets)` is the task as a client with those targets trains it (itself, unless the loss
  depends on the shard: FedRS);
- `accumulator(num_classes)`: streams an evaluation over batches (`update(outputs, targets)`,
  `compute() -> {name: float}`); `evaluate` in `fedray.fl.train` runs the model and feeds it;
- `partition_keys(root, split)`: what the partitioner splits (class labels, or per-sample group
  ids such as the site or device a sample came from);
- `metric`: the key that summaries, per-client scores and sweeps rank by (`val/<metric>`), and
  `confusion`: whether the run writes a confusion matrix and its plots.

Detection or retrieval plug in the same way: a new `Task` subclass with its own targets, loss and
accumulator, named by `task._target_`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray.config import ConfigError

PARTITION_BY = ("label", "group")


class Accumulator(ABC):
    """Streams a task's metrics over batches, keeping sums (never the outputs)."""

    @abstractmethod
    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch of model outputs and their targets."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metrics over everything added so far."""

    @property
    def confusion(self) -> np.ndarray | None:
        """A (C, C) count matrix (rows true, columns predicted) when the task has one."""
        return None


class Task(ABC):
    """Loss, metrics, targets and partition keys of one kind of problem."""

    name: str = "task"
    metric: str = "acc"  # the summary key `val/<metric>` that runs and sweeps rank by
    mode: str = "max"  # whether a higher `metric` is better
    confusion: bool = False  # the run writes a confusion matrix (+ most_confused, plots)
    augments: bool = False  # client.augment (turns and flips of the images alone) is valid
    needs_images: bool = False  # train_loss reads the images (no training on cached features)

    def __init__(self, partition_by: str = "label") -> None:
        if partition_by not in PARTITION_BY:
            raise ConfigError(f"task.partition_by={partition_by!r}: choose one of {PARTITION_BY}")
        self.partition_by = partition_by

    def check(self) -> None:
        """Raise ConfigError("task.<key>: ...") for what only the task's own files can tell
        (called by the config check, before anything starts; cheap: nothing is built)."""
        return None  # a task that reads no files of its own has nothing to check

    def example_batch(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A tiny (outputs, targets) batch of this task's shapes for `num_classes` classes, or
        None when the task gives none (then `metric_names` cannot tell)."""
        del num_classes
        return None

    def output_shape(
        self, batch: int, image_size: int, num_classes: int | None
    ) -> tuple[int | None, ...] | None:
        """The shape a model's outputs on `batch` images of `image_size` px must have for
        `num_classes` classes (None: the config does not tell), None where any size fits; None
        when the task cannot say. By default: the batch first, at the rank of `example_batch`'s
        outputs."""
        del image_size
        example = self.example_batch(num_classes or 2)
        if example is None:
            return None
        return (batch, *[None] * (example[0].ndim - 1))

    def check_outputs(
        self, outputs: torch.Tensor, images: np.ndarray, num_classes: int | None, model: str
    ) -> None:
        """Raise ConfigError naming `model` when its `outputs` on `images` (the config check's
        dummy uint8 batch (B, S, S, 3)) do not have this task's `output_shape`: a head that does
        not fit the task fails before anything starts, not at the first evaluation."""
        batch, size = images.shape[0], images.shape[1]
        want = self.output_shape(batch, size, num_classes)
        got = tuple(outputs.shape)
        if want is None or (
            len(got) == len(want) and all(w in (None, g) for w, g in zip(want, got, strict=True))
        ):
            return
        shown = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise ConfigError(
            f"model: {model} gives outputs of shape {got} on {batch} images of {size} x {size} px, "
            f"but task={self.name} needs {shown}"
            + (f" for the data's {num_classes} classes" if num_classes else "")
            + (" (*: any size)" if None in want else "")
        )

    def metric_names(self, num_classes: int | None = None) -> list[str] | None:
        """The names this task's evaluation reports (`val/<name>`) for `num_classes` classes, read
        off its own accumulator on `example_batch`; with the count unknown, those of 2 or 6
        classes (binary runs add keys, top5 needs more than 5; per-class keys end in
        `_<class>`). None when the task gives no example. A sweep checks its `metric` by it."""
        names: dict[str, None] = {}
        for c in (2, 6) if num_classes is None else (max(2, int(num_classes)),):
            batch = self.example_batch(c)
            if batch is None:
                return None
            acc = self.accumulator(c)
            acc.update(*batch)
            names.update(dict.fromkeys(acc.compute()))
        return list(names)

    @property
    def rank_key(self) -> str:
        """The namespaced metric runs are compared by, e.g. `val/acc` or `val/iou`."""
        return f"val/{self.metric}"

    @abstractmethod
    def load_targets(self, root: str | Path, split: str) -> np.ndarray:
        """Targets of one split of a dataset directory, in the images' order."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch (outputs float32, targets int64)."""

    def train_loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None
    ) -> torch.Tensor:
        """The training loss of one batch; `inputs` is the model's input tensor (None when the
        model ran from cached features). Most tasks need only `loss`."""
        del inputs
        return self.loss(outputs, targets)

    def local(self, targets: np.ndarray) -> Task:
        """The task as one client trains it, given all of that client's `targets` (its shard).
        Most tasks train the same everywhere; classification's FedRS scales the logits of the
        classes a client does not hold."""
        del targets
        return self

    @abstractmethod
    def accumulator(self, num_classes: int) -> Accumulator:
        """A fresh streaming evaluator for `num_classes` classes."""

    def partition_keys(self, root: str | Path, split: str) -> np.ndarray:
        """Per-sample keys the partitioner splits: class labels, or group ids (`{split}_groups`)."""
        from fedray.data.datasets import DatasetError, load_groups, load_labels

        if self.partition_by == "label":
            return load_labels(root, split)
        groups = load_groups(root, split)
        if groups is None:
            raise DatasetError(
                f"task.partition_by=group but {Path(root) / f'{split}_groups.npy'} does not "
                "exist: this dataset has no per-sample groups (sites, devices)"
            )
        return groups

    def __repr__(self) -> str:
        return f"{type(self).__name__}(partition_by={self.partition_by!r})"


def build_task(cfg: dict[str, Any] | None) -> Task:
    """The task `cfg['_target_']` names (classification when the config has no task)."""
    from fedray.models import instantiate_target
    from fedray.tasks.classification import Classification

    if not cfg:
        return Classification()
    task = instantiate_target(dict(cfg), "task", skip=("name",))
    if not isinstance(task, Task):
        raise ConfigError(
            f"task._target_={cfg.get('_target_')!r} returned {type(task).__name__}, not a "
            "fedray.tasks.Task"
        )
    return task
