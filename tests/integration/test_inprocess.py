"""`ray.backend=inprocess`: the same fits as the Ray actors, in the driver, with no Ray at all."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.checkpoint import CHECKPOINT
from fedray.fl.inprocess import check_backend
from fedray.run import run
from tests.conftest import launch

LEARN = ("fl.num_clients=3", "fl.rounds=2", "data.train_per_class=20")


def _rows(run_dir) -> list[dict]:
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _params(run_dir) -> dict:
    with open(run_dir / CHECKPOINT, "rb") as fh:
        return pickle.load(fh)["params"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param((), id="fedavg"),
        pytest.param(("strategy=fedadam", "fl.trainable=classifier", "fl.cache_features=true"),
                     id="fedadam-cached-head", marks=pytest.mark.slow),
        pytest.param(("stage=isolated",), id="isolated", marks=pytest.mark.slow),
    ],
)
def test_same_rounds_as_ray_actors(make_cfg, tmp_path, ray_session, extra):
    """Same seeds, same fits: every logged figure and the final weights equal the Ray run's."""
    ray_dir, local_dir = tmp_path / "ray", tmp_path / "local"
    run(make_cfg(*LEARN, *extra, run_dir=ray_dir))
    threads = torch.get_num_threads()
    run(make_cfg(*LEARN, *extra, "ray.backend=inprocess", run_dir=local_dir))
    local, remote = _rows(local_dir), _rows(ray_dir)
    assert [r.pop("actors") for r in local] == [1, 1]  # one client object, in the driver
    assert [r.pop("actors") for r in remote] == [3, 3]
    assert local == remote
    pa, pb = _params(ray_dir), _params(local_dir)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert torch.get_num_threads() == threads  # the clients' thread count stayed with them


def test_a_raising_client_is_dropped_and_the_run_goes_on(make_cfg, tmp_path):
    cfg = make_cfg(*LEARN, "ray.backend=inprocess", "fl.quorum=0.5")
    cfg["fl"]["faults"] = [{"round": 1, "client": 1, "kind": "raise"}]
    run(cfg)
    rows = _rows(tmp_path / "run")
    assert [r["clients/dropped"] for r in rows] == [1, 0]


def test_launch_inprocess_starts_no_ray(tmp_path):
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "WANDB_MODE": "offline",
           "FEDRAY_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    out = launch(["+experiment=smoke", "ray=inprocess", "fl.rounds=2", f"hydra.run.dir={run_dir}"],
                 env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["round"] for r in _rows(run_dir)] == [1, 2]
    assert not (tmp_path / "ray").exists()  # no Ray session directory: Ray never started


@pytest.mark.parametrize(
    ("ray", "fl", "key"),
    [
        ({"backend": "dask"}, {}, "ray.backend"),
        ({"backend": "inprocess", "address": "auto"}, {}, "ray.address"),
        ({"backend": "inprocess"}, {"round_timeout_s": 5}, "fl.round_timeout_s"),
        ({"backend": "inprocess"}, {"faults": [{"round": 1, "client": 0, "kind": "hang"}]},
         "fl.faults[0].kind"),
    ],
)
def test_what_inprocess_cannot_honour_is_refused(ray, fl, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        check_backend({"ray": ray, "fl": fl})
    check_backend({"ray": {"backend": "ray", "address": "auto"}, "fl": fl})  # Ray can
