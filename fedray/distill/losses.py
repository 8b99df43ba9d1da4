"""Distillation losses, pure functions of logits (or embeddings) and labels.

- ``hinton`` (Hinton et al. 2015): ``lam * T^2 * KL(p_t^T || p_s^T) + (1 - lam) * CE(y, s)``,
  with ``p^T = softmax(z / T)``; the ``T^2`` keeps the soft term's gradients on the scale of the
  hard term's as T grows. ``labels=None`` (unlabelled transfer data) is the soft term alone.
- ``l2`` (MobileDeepPill, Zeng et al. 2017, eq. 8): the mean over the batch of the squared
  Euclidean distance between the teacher's and the student's last-layer outputs, mixed with the
  hard-label CE the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("hinton", "l2")


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    log_ps = F.log_softmax(student.float() / temperature, dim=1)
    log_pt = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


def hinton(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 4.0,
    lam: float = 0.9,
) -> torch.Tensor:
    """lam * T^2 * KL(p_t^T || p_s^T) + (1 - lam) * CE(labels, student); (B, C) logits."""
    soft = temperature**2 * soft_kl(student, teacher, temperature)
    if labels is None:
        return soft
    return lam * soft + (1.0 - lam) * F.cross_entropy(student.float(), labels)


def l2(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None = None,
    lam: float = 0.9,
) -> torch.Tensor:
    """lam * mean_i ||t_i - s_i||^2 + (1 - lam) * CE(labels, student); (B, D) outputs."""
    dist = (student.float() - teacher.float()).pow(2).flatten(1).sum(1).mean()
    if labels is None:
        return dist
    return lam * dist + (1.0 - lam) * F.cross_entropy(student.float(), labels)


def distill_loss(
    name: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    lam: float,
) -> torch.Tensor:
    """The loss `name` (one of LOSSES) with the distill config's knobs."""
    if name == "hinton":
        return hinton(student, teacher, labels, temperature, lam)
    if name == "l2":
        return l2(student, teacher, labels, lam)
    raise ValueError(f"distill.loss={name!r}: choose one of {LOSSES}")
