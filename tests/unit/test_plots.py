"""Plots: each writes a real PNG and rejects input it cannot draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedray.plots import PlotError, plot_confusion_matrix, plot_curves, plot_per_client

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000, "a real figure, not an empty canvas"


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # last class absent: no NaN row
    out = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    _assert_png(out)
    _assert_png(plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "raw.png", normalize=False))


@pytest.mark.parametrize(
    ("cm", "names", "match"),
    [
        (np.zeros((2, 3)), ["a", "b"], r"must be square \(C, C\), got shape \(2, 3\)"),
        (np.zeros(3), ["a", "b", "c"], "must be square"),
        (np.zeros((2, 2)), ["a"], "class_names has 1 entries"),
        (-np.ones((2, 2)), ["a", "b"], "negative"),
    ],
)
def test_confusion_matrix_rejects_bad_input(tmp_path, cm, names, match):
    with pytest.raises(PlotError, match=match):
        plot_confusion_matrix(cm, names, tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


ROWS = [
    {"round": 0, "train/loss": 2.0},
    {"round": 1, "val/acc": 0.2, "comm/bytes_up": 1000},
    {"round": 2, "val/acc": 0.5, "val/f1_macro": 0.4, "comm/bytes_up": 1000},
    {"round": 3, "val/acc": 0.7, "val/f1_macro": 0.6, "comm/bytes_up": 1000},
]


def test_curves_png(tmp_path):
    _assert_png(plot_curves(ROWS, tmp_path / "acc.png", ys=("val/acc", "val/f1_macro")))
    out = plot_curves(
        ROWS, tmp_path / "bytes.png", x="comm/bytes_up", cumulative_x=True, xlabel="bytes"
    )
    _assert_png(out)


def test_curves_rejects_missing_keys(tmp_path):
    with pytest.raises(PlotError, match="no row has a numeric 'step'"):
        plot_curves(ROWS, tmp_path / "a.png", x="step")
    with pytest.raises(PlotError, match=r"no row has both 'round' and any of \['test/acc'\]"):
        plot_curves(ROWS, tmp_path / "a.png", ys=("test/acc",))
    with pytest.raises(PlotError, match="must end in .png"):
        plot_curves(ROWS, tmp_path / "a.jpg")


def test_per_client_png(tmp_path):
    _assert_png(plot_per_client({2: 0.5, 0: 0.9, 1: 0.7}, tmp_path / "clients.png"))
    with pytest.raises(PlotError, match="at least one client"):
        plot_per_client({}, tmp_path / "x.png")
    with pytest.raises(PlotError, match="finite numbers"):
        plot_per_client({0: float("nan")}, tmp_path / "x.png")
