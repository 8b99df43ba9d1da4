"""sweeps/distill.yaml runs through Ray Tune with num_samples=1 and lands in the sweep table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import fedray.sweep as fs


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_distill_sweep_smoke(make_cfg, tmp_path):
    cfg = make_cfg(
        "sweep=distill",
        "sweep.num_samples=1",
        "distill.teacher_epochs=2",
        "distill.pre_epochs=1",
        "distill.latency_runs=3",
        "ray.max_actors=1",
    )
    space = cfg["sweep"]["space"]
    space["fl.rounds"] = 2  # shrink the swept epochs to seconds
    space["distill.epochs"] = [1, 2]
    out = fs.sweep(cfg)
    assert out["trials"] == 1
    with open(Path(out["results_csv"])) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 1 and table[0]["status"] in ("completed", "stopped")
    assert "distill.temperature" in table[0] and float(table[0]["val/acc"]) >= 0.0
    trial = tmp_path / "run" / "trials" / table[0]["trial"]
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["stage"] == "distill" and summary["student/params"] < summary["teacher/params"]
