"""The pill_noniid classifier (turns, zooms, taps) exports to ONNX and matches torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.models import build_model
from fedray.models.views import rot90

PILL_NONIID = {
    "_target_": "fedray.pill.squeezenet.build_squeezenet",
    "turns": 4,
    "zooms": [1.0, 1.6],
    "taps": [4, 5, 7, 8, 10, 11, 12, 13],
    "pool": "max",
}


def test_rot90_is_torch_rot90():
    x = torch.randn(2, 3, 5, 5)
    for k in range(-5, 6):
        assert torch.equal(rot90(x, k), torch.rot90(x, k, (2, 3)))


def test_pill_classifier_exports_to_onnx_within_1e4(tmp_path):
    pytest.importorskip("onnxruntime", reason="the app extra (onnxruntime) is not installed")
    from fedray.pill.identify.export import (
        PARITY_ATOL,
        count_macs,
        export_classifier,
        onnx_session,
        parity,
    )

    torch.manual_seed(0)
    model = build_model(PILL_NONIID, 20).eval()
    path = export_classifier(model, 64, tmp_path / "classifier.onnx")
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    assert parity(model, onnx_session(path), images) <= PARITY_ATOL
    # 8 views (4 turns x 2 zooms) of SqueezeNet 1.1 at 64 px: about 8 x 17M MACs
    assert 100e6 < count_macs(model, 64) < 200e6
