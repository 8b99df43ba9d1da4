"""Shared fixtures: compose the real config (shrunk by overrides) and one Ray per session."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedray.config import ROOT, compose_plain  # noqa: F401  (tests import it from here)


def launch(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
           **kw) -> subprocess.CompletedProcess:
    """`python launch.py <args>` in a fresh process, as a user types it; output captured."""
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, **kw)


def toy_data_cfg(cache_dir) -> dict:
    """A 4-class, 32 px toy dataset config (30 train / 20 val per class) in `cache_dir`."""
    return {
        "_target_": "fedray.data.toy.toy_dataset",
        "name": "toy",
        "num_classes": 4,
        "image_size": 32,
        "train_per_class": 30,
        "val_per_class": 20,
        "noise": 0.15,
        "cache_dir": str(cache_dir),
    }


def toy_server(cache_dir):
    """The toy data of `toy_data_cfg` built (seed 0) and a seeded TinyCNN server on it:
    (data config, train x, train y, server, trainable names, travelled names, (val x, val y))."""
    import numpy as np
    import torch

    from fedray.data.datasets import load_images, load_labels
    from fedray.data.sources import build_dataset
    from fedray.fl.train import travel_names
    from fedray.models.tiny_cnn import TinyCNN

    data = toy_data_cfg(cache_dir)
    info = build_dataset(data, 0)
    x, y = np.asarray(load_images(info.root, "train")), load_labels(info.root, "train")
    torch.manual_seed(0)
    server = TinyCNN(4, width=8)
    names = [n for n, _ in server.named_parameters()]
    val = (np.asarray(load_images(info.root, "val")), load_labels(info.root, "val"))
    return data, x, y, server, names, travel_names(server, names), val


CONF = Path(__file__).resolve().parents[1] / "conf"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def lines():
    """Messages of the `fedray` logger (which may not propagate to pytest's root handler)."""
    got: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: got.append(record.getMessage())
    logger = logging.getLogger("fedray")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One dataset cache for the whole session (datasets are read-only once built)."""
    return tmp_path_factory.mktemp("fedray-cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """make_cfg(*overrides) -> plain config dict with run_dir in tmp_path and the shared cache."""

    def _make(*overrides: str, run_dir: Path | None = None) -> dict:
        cfg = compose_plain(["+experiment=smoke", f"data.cache_dir={cache_dir}", *overrides])
        cfg["run_dir"] = str(run_dir or tmp_path / "run")
        return cfg

    return _make


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs, shared by every integration test."""
    import ray

    # address="local": a Ray of its own, never one that `ray start` left running on the machine;
    # its workers at the tests' own priority, as fedray starts them (ray.worker_nice), not Ray's
    # 15 steps nicer, at which anything else busy on the machine starves the suite
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, _system_config={"worker_niceness": 0})
    yield ray
    ray.shutdown()
