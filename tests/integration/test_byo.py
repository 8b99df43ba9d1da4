"""Bring your own model and dataset: a user's file, named on the command line, zero fedray edits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fedray.data.binary import binary_shapes
from fedray.data.datasets import load_images, load_labels
from fedray.fl.train import evaluate
from fedray.models.tiny_cnn import TinyCNN
from tests.conftest import launch

# the user's own file (docs/byo.md shows the same): a plain nn.Module with no backbone/head
# split, and a function that returns the data itself
MYMOD = '''
import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.body(x)


def data(n: int = 96, size: int = 32, seed: int = 0):
    """Grey noise; class 1 has a bright red square somewhere: learnable in one round."""
    rng = np.random.default_rng(seed)

    def split(count):
        labels = rng.integers(0, 2, count)
        images = rng.integers(0, 80, (count, size, size, 3)).astype(np.uint8)
        for img, y in zip(images, labels):
            if y:
                r, c = rng.integers(0, size - 8, 2)
                img[r : r + 8, c : c + 8] = (230, 30, 30)
        return images, labels

    return {"train": split(n), "val": split(n // 2), "classes": ["plain", "red"]}
'''


@pytest.mark.slow
def test_own_model_and_dataset_from_the_command_line(tmp_path):
    (tmp_path / "mymod.py").write_text(MYMOD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "FEDRAY_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
    }
    run_dir = tmp_path / "run"
    out = launch(
        [
            "+experiment=smoke",
            "model._target_=mymod.Net",
            "data._target_=mymod.data",
            "fl.trainable=all",
            "ray.num_cpus=2",
            f"hydra.run.dir={run_dir}",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["val/acc"] <= 1.0
    assert "val/precision" in summary and "val/recall" in summary  # two classes: binary scores
    assert np.loadtxt(run_dir / "confusion_matrix.csv", delimiter=",").sum() == 48
    # tiny_cnn's keys (width, zooms, ...) left in the model group were dropped, not passed, and
    # said once: not again by the server's build nor by each client actor's
    said = out.stdout + out.stderr
    assert said.count("mymod.Net takes no") == 1 and said.count("mymod.data takes no") == 1, said
    assert "dataset data: 2 classes" in said  # named after the callable, not data=toy's "toy"
    meta = json.loads(next((tmp_path / "cache").glob("custom-*/meta.json")).read_text())
    assert meta["class_names"] == ["plain", "red"] and meta["splits"] == {"train": 96, "val": 48}


def test_head_less_model_with_classifier_training_is_a_clear_error(tmp_path):
    (tmp_path / "mymod.py").write_text(MYMOD)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FEDRAY_CACHE": str(tmp_path / "cache")}
    out = launch(
        [
            "+experiment=smoke",
            "model=custom",
            "model._target_=mymod.Net",
            "data=custom",
            "data._target_=mymod.data",
            "fl.trainable=classifier",
            "stage=centralized",  # the same check as federated, without starting Ray
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        env,
    )
    assert out.returncode == 2
    assert "fl.trainable=classifier needs a model with a `classifier` head" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_binary_task_scores_the_round_class(tmp_path):
    cfg = {"image_size": 32, "train_per_class": 4, "val_per_class": 10, "noise": 0.1}
    info = binary_shapes(cfg, 0, tmp_path)
    assert info.class_names == ["not_round", "round"] and info.splits == {"train": 8, "val": 20}
    torch.manual_seed(0)
    metrics, cm = evaluate(
        TinyCNN(2), np.asarray(load_images(info.root, "val")), load_labels(info.root, "val"), 2
    )
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    assert cm.sum() == 20
    assert metrics["precision"] == (tp / (tp + fp) if tp + fp else 0.0)
    assert metrics["recall"] == tp / (tp + fn)


@pytest.mark.slow
def test_alexnet_devices_trains_the_whole_alexnet_on_the_phones(tmp_path):
    """The experiment as shipped, shrunk: every AlexNet weight trains and travels each round,
    and the run scores the binary task (precision/recall of `round`, a 2 x 2 confusion)."""
    env = {**os.environ, "FEDRAY_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    run_dir = tmp_path / "run"
    out = launch(
        [
            "+experiment=alexnet_devices",
            "data.train_per_class=12",
            "data.val_per_class=10",
            "fl.num_clients=3",
            "fl.rounds=2",
            "client.epochs=1",
            "ray.num_cpus=2",
            f"hydra.run.dir={run_dir}",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "val/precision" in summary and "val/recall" in summary
    assert np.loadtxt(run_dir / "confusion_matrix.csv", delimiter=",").shape == (2, 2)
    assert np.loadtxt(run_dir / "confusion_matrix.csv", delimiter=",").sum() == 20
    # AlexNet's conv blocks (2.47M weights, float32) went up from each phone in each round,
    # not only a head
    assert summary["comm/bytes_total"] >= 2 * 3 * 2_400_000 * 4


@pytest.mark.slow  # a whole federated run (Ray, 4 clients, 5 rounds)
def test_the_readmes_own_example_runs_as_written_with_the_users_defaults(tmp_path):
    """README.md's mymod.py and its command, taken from the README itself: the run learns, and
    the model is the user's Net with its own default width (no group's keys slipped in)."""
    import pickle
    import re
    import shlex

    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# mymod\.py\n.*?)```", readme, re.S).group(1)
    cmd = re.search(r"```bash\n(PYTHONPATH=\. python launch\.py .*?)```", readme, re.S).group(1)
    args = shlex.split(cmd.replace("\\\n", " "))
    assert args[:3] == ["PYTHONPATH=.", "python", "launch.py"]
    (tmp_path / "mymod.py").write_text(code)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FEDRAY_CACHE": str(tmp_path / "cache"),
           "WANDB_MODE": "offline"}
    out = launch([*args[3:], f"hydra.run.dir={run_dir}"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    assert "takes no" not in out.stdout + out.stderr  # nothing to leave out: empty groups
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/acc"] > 0.8 and summary["rounds"] == 5
    params = pickle.loads((run_dir / "checkpoint.pkl").read_bytes())["params"]
    assert params["body.0.weight"].shape == (32, 3, 3, 3)  # Net's own width=32
