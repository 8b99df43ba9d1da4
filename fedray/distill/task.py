"""Federated distillation as a task: the federated model is the student, taught on every client.

`task=distill` trains the experiment's `model` (the student: any `_target_` model) across the
clients, under any strategy, with the loss of `stage=distill` (`hinton` or `l2`, MobileDeepPill's
eq. 8) between the student's logits and a fixed teacher's on the same batch of the client's own
images, mixed with the hard-label cross-entropy by `lam`. The teacher travels to the clients as
a model (a finished run directory, or a state_dict of `teacher_model`), never as their data: each
client computes the soft labels of its own images, after the same augmentation as the student
sees. Targets, evaluation and metrics are classification's; `val/loss` stays cross-entropy.

The teacher needs the images, so the student cannot train on cached features
(`fl.cache_features=false`; `fedray.validate` says so before anything starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedray.config import ConfigError
from fedray.distill.losses import LOSSES, distill_loss
from fedray.metrics import MetricAccumulator
from fedray.tasks.base import Task
from fedray.tasks.classification import Classification

# what a teacher key takes, closing its errors
TEACHER_IS = ("a teacher is a finished run directory or a state_dict file "
              "(torch.save(model.state_dict(), path))")


def check_teacher_run(path: Path, key: str) -> None:
    """A teacher run directory holds config.yaml and a checkpoint, and is a federated or
    centralized classification run (ConfigError naming `key` otherwise): cheap, nothing loads."""
    import yaml

    from fedray.fl.checkpoint import CHECKPOINT

    if not (path / "config.yaml").exists() or not (path / CHECKPOINT).exists():
        raise ConfigError(f"{key}: a run directory needs config.yaml and {CHECKPOINT} "
                          "(a finished federated or centralized run with fl.checkpoint=true)")
    try:
        tcfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: its config.yaml does not read ({exc})") from None
    if tcfg.get("stage") not in ("federated", "centralized"):
        raise ConfigError(f"{key} is a stage={tcfg.get('stage')} run: a teacher is the "
                          "global model of a federated or centralized run")
    from fedray.tasks import build_task

    try:
        kind = build_task(tcfg.get("task"))
    except Exception:  # noqa: BLE001 - the teacher run's own task: judged when loaded
        kind = None
    if kind is not None and not isinstance(kind, Classification | Distillation):
        raise ConfigError(f"{key} is a {kind.name} run: a teacher gives class logits "
                          "(a classification run)")


class Distillation(Task):
    """Classification whose training loss also pulls the student towards a teacher's outputs."""

    name = "distill"
    metric = "acc"
    confusion = True
    augments = True
    needs_images = True

    def __init__(
        self,
        teacher: str | None = None,
        teacher_model: Mapping[str, Any] | None = None,
        loss: str = "hinton",
        temperature: float = 4.0,
        lam: float = 0.9,
        label_smoothing: float = 0.0,
        partition_by: str = "label",
    ) -> None:
        super().__init__(partition_by)
        self.base = Classification(label_smoothing, partition_by)
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss!r}: choose one of {list(LOSSES)}")
        if not float(temperature) > 0:
            raise ConfigError(f"task.temperature={temperature!r}: must be > 0")
        if not 0.0 <= float(lam) <= 1.0:
            raise ConfigError(f"task.lam={lam!r}: must be in [0, 1] (the teacher term's weight)")
        if teacher in (None, "", "null"):
            raise ConfigError(
                "task.teacher: set it to a finished run directory (config.yaml + checkpoint.pkl) "
                "or a saved state_dict with task.teacher_model"
            )
        path = Path(str(teacher)).expanduser()
        if not path.exists():
            raise ConfigError(f"task.teacher={str(teacher)!r} does not exist")
        if path.is_file() and not isinstance(teacher_model, Mapping):
            raise ConfigError(
                f"task.teacher={str(teacher)!r} is a state_dict: task.teacher_model must name the "
                "model it belongs to (a model config with a _target_)"
            )
        if teacher_model is not None and not isinstance(teacher_model, Mapping):
            raise ConfigError(f"task.teacher_model: {teacher_model!r} is not a model config "
                              "(a mapping with a _target_), or null")
        self.teacher_path = path
        self.teacher_model = None if teacher_model is None else dict(teacher_model)
        self.loss_name = loss
        self.temperature = float(temperature)
        self.lam = float(lam)
        self._teacher: nn.Module | None = None

    def check(self) -> None:
        """A teacher run directory holds config.yaml and a checkpoint, and is a classification
        run with a global model; a state_dict file is one torch loads safely (refused up front,
        not by every client actor at its first fit; its fit to `teacher_model` is checked when
        the teacher loads)."""
        path, key = self.teacher_path, f"task.teacher={str(self.teacher_path)!r}"
        if path.is_dir():
            check_teacher_run(path, key)
        else:
            from fedray.models import read_state_dict

            read_state_dict(path, "task.teacher", TEACHER_IS)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the loaded teacher: every process loads its own."""
        return {**self.__dict__, "_teacher": None}

    def teacher(self, num_classes: int, device: torch.device) -> nn.Module:
        """The teacher, loaded on first use, in eval mode on `device`."""
        if self._teacher is None:
            from fedray.distill.teachers import teacher_from_run, teacher_from_state

            if self.teacher_path.is_dir():
                model, _ = teacher_from_run(self.teacher_path, "task.teacher")
            else:
                assert self.teacher_model is not None
                model = teacher_from_state(
                    self.teacher_path, self.teacher_model, num_classes, "task.teacher"
                )
            for p in model.parameters():
                p.requires_grad_(False)
            self._teacher = model.eval()
        return self._teacher.to(device)

    def load_targets(self, root: str | Path, split: str) -> np.ndarray:
        """The split's class labels (as classification)."""
        return self.base.load_targets(root, split)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy: what evaluation reports as val/loss."""
        return self.base.loss(outputs, targets)

    def train_loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None
    ) -> torch.Tensor:
        """`loss` (hinton or l2) between the student's and the teacher's logits on `inputs`."""
        if inputs is None:
            raise ConfigError(
                "task=distill: the teacher needs the images, but the student trains on cached "
                "features: set fl.cache_features=false"
            )
        soft = self.soft_labels(outputs, inputs)
        return distill_loss(self.loss_name, outputs, soft, targets, self.temperature, self.lam)

    def soft_labels(self, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on `inputs`, of the student's `outputs`' shape (ConfigError
        otherwise: a teacher of other classes)."""
        teacher = self.teacher(outputs.shape[1], inputs.device)
        with torch.no_grad():
            soft = teacher(inputs).float()
        if soft.shape != outputs.shape:
            raise ConfigError(
                f"task.teacher={str(self.teacher_path)!r} gives outputs of shape "
                f"{tuple(soft.shape)}, the student {tuple(outputs.shape)}: a teacher for the "
                "same classes is needed"
            )
        return soft

    def output_shape(
        self, batch: int, image_size: int, num_classes: int | None
    ) -> tuple[int | None, ...]:
        """Classification's."""
        return self.base.output_shape(batch, image_size, num_classes)

    def check_outputs(
        self, outputs: torch.Tensor, images: np.ndarray, num_classes: int | None, model: str
    ) -> None:
        """Classification's check, then the teacher loaded as a client loads it and run on the
        same images: one that does not fit `teacher_model`, or gives other classes than the
        student, is refused before anything starts (not by every client at its first fit).
        With the data's class count unknown (the student's dummy head is not the data's), the
        teacher is judged at that first fit."""
        super().check_outputs(outputs, images, num_classes, model)
        if num_classes is not None:
            from fedray.data.datasets import to_tensor_batch

            self.soft_labels(outputs, to_tensor_batch(images))

    def example_batch(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification's."""
        return self.base.example_batch(num_classes)

    def accumulator(self, num_classes: int) -> MetricAccumulator:
        """Classification's metrics."""
        return self.base.accumulator(num_classes)

    def __repr__(self) -> str:
        return (
            f"Distillation(teacher={str(self.teacher_path)!r}, loss={self.loss_name!r}, "
            f"temperature={self.temperature}, lam={self.lam})"
        )
