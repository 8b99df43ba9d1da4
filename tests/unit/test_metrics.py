"""Metrics: exact values on tiny inputs, streaming == one-shot torchmetrics, confusion helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from fedray.metrics import (
    METRIC_KEYS,
    MetricAccumulator,
    MetricsError,
    classification_metrics,
    confusion_matrix,
    most_confused,
)


def _onehot_logits(preds: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.zeros(len(preds), num_classes)
    logits[torch.arange(len(preds)), torch.tensor(preds)] = 5.0
    return logits


def test_exact_values_tiny():
    # Prepare: 3 classes; class 2 never a target, but predicted once (a false positive).
    targets = torch.tensor([0, 0, 1, 1])
    logits = _onehot_logits([0, 1, 1, 2], 3)
    # Execute
    m = classification_metrics(logits, targets, num_classes=3)
    # Assert: per class P = (1, 1/2, 0), R = (1/2, 1/2, 0), F1 = (2/3, 1/2, 0); class 2 counts
    # (it was predicted), so the macro means are over all 3 classes.
    assert set(m) == set(METRIC_KEYS) - {"top5"}  # top-5 of 3 classes is 1 by construction
    assert m["acc"] == pytest.approx(0.5)
    assert m["precision_macro"] == pytest.approx(0.5)
    assert m["recall_macro"] == pytest.approx(1 / 3)
    assert m["f1_macro"] == pytest.approx(7 / 18)
    # Loss of a one-hot logit 5: -log softmax; right answers lose log(e^5 + 2) - 5.
    right = math.log(math.exp(5) + 2) - 5
    wrong = math.log(math.exp(5) + 2)
    assert m["loss"] == pytest.approx((2 * right + 2 * wrong) / 4, rel=1e-6)
    acc = MetricAccumulator(3)
    acc.update(logits, targets)
    assert acc.compute() == pytest.approx(m, abs=1e-6)


def test_class_absent_everywhere_is_left_out_of_macro():
    targets = torch.tensor([0, 1, 1])
    logits = _onehot_logits([0, 1, 0], 4)  # classes 2, 3 neither targets nor predictions
    m = classification_metrics(logits, targets, num_classes=4)
    # P = (1/2, 1), R = (1, 1/2): macro over the 2 present classes only.
    assert m["precision_macro"] == pytest.approx(0.75)
    assert m["recall_macro"] == pytest.approx(0.75)
    acc = MetricAccumulator(4)
    acc.update(logits, targets)
    assert acc.compute()["precision_macro"] == pytest.approx(0.75, abs=1e-12)


def test_topk_exact():
    logits = torch.tensor(
        [[6.0, 5, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5, 6], [0.0, 1, 2, 3, 4, 5, 6]]
    )
    targets = torch.tensor([4, 0, 2])  # rank 5 (in top 5), rank 7 (out), rank 5 (in)
    m = classification_metrics(logits, targets, num_classes=7)
    assert m["top5"] == pytest.approx(2 / 3)
    assert m["acc"] == 0.0


def test_streaming_equals_one_shot():
    # Prepare: 7 classes, class 6 never a target; 3 uneven batches.
    gen = torch.Generator().manual_seed(0)
    num_classes, n = 7, 90
    targets = torch.randint(0, 6, (n,), generator=gen)
    logits = torch.randn(n, num_classes, generator=gen) * 2
    logits[torch.arange(n), targets] += 2.5  # better than chance so all metrics are non-trivial
    # Execute
    one_shot = classification_metrics(logits, targets, num_classes)
    acc = MetricAccumulator(num_classes)
    for lo, hi in ((0, 17), (17, 60), (60, 90)):
        acc.update(logits[lo:hi], targets[lo:hi])
    streamed = acc.compute()
    # Assert
    assert 0.3 < one_shot["acc"] < 0.95
    assert one_shot["top5"] > one_shot["acc"]
    for key in METRIC_KEYS:
        assert streamed[key] == pytest.approx(one_shot[key], abs=1e-6), key
    expected_cm = multiclass_confusion_matrix(logits, targets, num_classes).numpy()
    np.testing.assert_array_equal(acc.confusion, expected_cm)
    assert acc.confusion[6].sum() == 0


def test_accumulator_reset_and_empty():
    acc = MetricAccumulator(3)
    with pytest.raises(MetricsError, match="before any samples"):
        acc.compute()
    acc.update(_onehot_logits([0], 3), torch.tensor([1]))
    assert acc.compute()["acc"] == 0.0
    acc.reset()
    acc.update(_onehot_logits([2], 3), torch.tensor([2]))
    assert acc.compute()["acc"] == 1.0
    assert acc.count == 1


@pytest.mark.parametrize(
    ("logits", "targets", "match"),
    [
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), r"logits must have shape \(N, 3\)"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), r"targets must have shape \(4,\)"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), r"targets must lie in \[0, 3\)"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer class ids"),
    ],
)
def test_bad_inputs(logits, targets, match):
    with pytest.raises(MetricsError, match=match):
        classification_metrics(logits, targets, 3)
    with pytest.raises(MetricsError, match=match):
        MetricAccumulator(3).update(logits, targets)


def test_confusion_matrix_exact_and_from_logits():
    preds = np.array([0, 2, 2, 1, 0])
    targets = np.array([0, 2, 1, 1, 2])
    expected = [[1, 0, 0], [0, 1, 1], [1, 0, 1]]
    np.testing.assert_array_equal(confusion_matrix(preds, targets, 3), expected)
    logits = _onehot_logits(preds.tolist(), 3)
    np.testing.assert_array_equal(confusion_matrix(logits, torch.tensor(targets), 3), expected)
    with pytest.raises(MetricsError, match="preds must lie"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_most_confused_order_and_zeros():
    cm = np.array([[5, 2, 0], [4, 7, 2], [0, 0, 9]])
    names = ["a", "b", "c"]
    assert most_confused(cm, names, k=10) == [("b", "a", 4), ("a", "b", 2), ("b", "c", 2)]
    assert most_confused(cm, names, k=1) == [("b", "a", 4)]
    with pytest.raises(MetricsError, match="square"):
        most_confused(np.zeros((2, 3)), names)
    with pytest.raises(MetricsError, match="class_names has 2 entries"):
        most_confused(cm, names[:2])
