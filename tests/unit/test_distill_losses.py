"""Distillation losses on tiny tensors, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedray.distill.losses import distill_loss, hinton, l2, soft_kl

LN3 = math.log(3.0)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_soft_kl_at_t1_is_the_kl_of_the_softmaxes():
    teacher = torch.tensor([[LN3, 0.0]])  # softmax -> [3/4, 1/4]
    student = torch.zeros(1, 2)  # softmax -> [1/2, 1/2]
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(want, abs=1e-6)
    assert soft_kl(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_hinton_scales_by_t_squared_and_mixes_the_hard_labels():
    teacher = torch.tensor([[LN3, 0.0]])
    student = torch.zeros(1, 2)
    # T = 2: teacher / 2 = [ln sqrt(3), 0] -> [sqrt3 / (sqrt3 + 1), 1 / (sqrt3 + 1)]
    s3 = math.sqrt(3.0)
    kl_t2 = _kl([s3 / (s3 + 1), 1 / (s3 + 1)], [0.5, 0.5])
    assert hinton(student, teacher, None, temperature=2.0).item() == pytest.approx(
        4 * kl_t2, abs=1e-6
    )
    y = torch.tensor([0])  # CE of [0, 0] against class 0 is ln 2
    got = hinton(student, teacher, y, temperature=2.0, lam=0.25).item()
    assert got == pytest.approx(0.25 * 4 * kl_t2 + 0.75 * math.log(2.0), abs=1e-6)
    # lam = 0: plain cross-entropy, whatever the teacher says
    assert hinton(student, teacher, y, 2.0, 0.0).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_hinton_averages_over_the_batch():
    teacher = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    student = torch.zeros(2, 2)
    one = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert hinton(student, teacher, None, 1.0).item() == pytest.approx(one / 2, abs=1e-6)


def test_l2_is_the_mean_squared_distance():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # squared distances 5 and 25
    assert l2(student, teacher).item() == pytest.approx(15.0)
    y = torch.tensor([1, 0])
    ce = (-math.log(math.exp(2) / (math.exp(1) + math.exp(2))) + math.log(2.0)) / 2
    assert l2(student, teacher, y, lam=0.5).item() == pytest.approx(0.5 * 15 + 0.5 * ce, abs=1e-5)


def test_distill_loss_dispatches_and_rejects_unknown_names():
    s, t, y = torch.zeros(1, 2), torch.tensor([[LN3, 0.0]]), torch.tensor([0])
    assert distill_loss("hinton", s, t, y, 2.0, 0.5) == hinton(s, t, y, 2.0, 0.5)
    assert distill_loss("l2", s, t, y, 2.0, 0.5) == l2(s, t, y, 0.5)
    with pytest.raises(ValueError, match="distill.loss='kl2'"):
        distill_loss("kl2", s, t, y, 1.0, 0.5)
