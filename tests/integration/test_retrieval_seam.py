"""Retrieval through the framework's own federated runner (`task=retrieval`): a user's embedding
model, each client holding its own pills, triplets mined inside its batches, MAP in the metrics."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import launch

# the user's own embedding network: unit-norm outputs, the backbone/head split optional
EMBED = '''
from torch import nn


class Embed(nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(4 * hidden, dim)

    def forward(self, x):
        return nn.functional.normalize(self.classifier(self.features(x)), dim=1)
'''


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_federated_metric_learning_on_the_task_seam(backend, tmp_path):
    (tmp_path / "embmod.py").write_text(EMBED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get(
        "PYTHONPATH", "")]), "FEDRAY_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    run_dir = tmp_path / "run"
    out = launch(
        ["+experiment=smoke", "task=retrieval", "model=custom", "model._target_=embmod.Embed",
         "data.num_classes=8", "data.train_per_class=40", "data.val_per_class=10",
         "partition=pathological",  # 2 clients x 4 pills: no pill on both phones
         "fl.rounds=6", "client.epochs=2", "client.batch_size=32",
         "client.optimizer.lr=0.003", f"ray={'inprocess' if backend == 'inprocess' else 'local'}",
         "ray.num_cpus=2", f"hydra.run.dir={run_dir}"],
        env,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if "val/map" in r]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= r[k] <= 1.0 for r in rounds for k in ("val/map", "val/top1", "val/top5"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/map"] == pytest.approx(rounds[-1]["val/map"])
    assert not (run_dir / "confusion_matrix.csv").exists()  # no classes predicted: no confusion

    # the same network as the server built it (seed 0), untrained, on the same val split
    from fedray.data.datasets import load_images, load_labels
    from fedray.fl.train import evaluate
    from fedray.pill.retrieval.task import Retrieval

    spec = importlib.util.spec_from_file_location("embmod", tmp_path / "embmod.py")
    embmod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embmod)
    root = next((tmp_path / "cache").glob("toy-*"))
    torch.manual_seed(0)
    untrained, _ = evaluate(embmod.Embed().eval(), np.asarray(load_images(root, "val")),
                            load_labels(root, "val"), 8, task=Retrieval())
    # measured: 0.398 untrained, 0.473 after 6 rounds (in-process)
    assert summary["val/map"] > untrained["map"] + 0.03, (untrained, summary["val/map"])
