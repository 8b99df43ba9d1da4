"""AP at IoU 0.8 is read from the right column of ultralytics' per-threshold AP."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.pill.detect.evaluate import IOU_THRESHOLDS, ap_at, box_ap, box_iou, summarize

GT = np.array([[0.0, 0.0, 100.0, 100.0]])


def _box_with_iou(iou: float) -> np.ndarray:
    """A box sharing GT's left/top/bottom whose width gives IoU `iou` with GT (w = 100 * iou)."""
    return np.array([[0.0, 0.0, 100.0 * iou, 100.0]])


def test_thresholds_are_ultralytics_iouv():
    assert np.allclose(IOU_THRESHOLDS, np.arange(0.5, 0.951, 0.05))
    assert int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.8))[0]) == 6


def test_ap_at_reads_column_six_and_averages_classes():
    all_ap = np.zeros((2, 10))
    all_ap[0, 6], all_ap[1, 6] = 0.9, 0.7
    all_ap[:, 5] = 0.1  # 0.75: a neighbour that must not be read
    assert ap_at(all_ap, 0.8) == pytest.approx(0.8)
    assert ap_at(all_ap, 0.75) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        ap_at(all_ap, 0.82)


@pytest.mark.parametrize("iou, ap80", [(0.77, 0.0), (0.83, 1.0)])
def test_hand_made_prediction_ap50_vs_ap80(iou, ap80):
    pred = _box_with_iou(iou)
    assert box_iou(pred, GT)[0, 0] == pytest.approx(iou)
    figures = box_ap([(pred, np.array([0.9]), GT)])
    assert figures["AP50"] == pytest.approx(1.0, abs=0.01)
    assert figures["AP80"] == pytest.approx(ap80, abs=0.01)
    # thresholds passed: 0.50..0.75 (6 of 10) at IoU 0.77, 0.50..0.80 (7 of 10) at 0.83
    assert figures["mAP50-95"] == pytest.approx((6 if iou < 0.8 else 7) / 10, abs=0.01)


def test_two_images_half_the_pills_tight():
    # one tight box (IoU 0.9), one loose (0.6) on two images: AP80 about half of AP50
    images = [(_box_with_iou(0.9), np.array([0.8]), GT), (_box_with_iou(0.6), np.array([0.7]), GT)]
    figures = box_ap(images)
    assert figures["AP50"] == pytest.approx(1.0, abs=0.01)
    assert 0.4 < figures["AP80"] < 0.6


def test_summarize_keys():
    out = summarize(np.full((1, 10), 0.5), 0.9, 0.8)
    assert out == {"AP50": 0.5, "AP80": 0.5, "mAP50-95": 0.5, "precision": 0.9, "recall": 0.8}
