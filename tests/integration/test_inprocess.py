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
        pytest.param((), id="fedavg", marks=pytest.mark.slow),
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


def test_the_final_evaluation_reuses_the_last_rounds_val_pass(make_cfg, tmp_path, monkeypatch):
    """One val pass per round and none after: the summary is the last round's, and each client's
    accuracy on its own classes is what the final weights predict."""
    import fedray.fl.train as train
    from fedray.data.datasets import load_images, load_labels
    from fedray.data.partition import partition
    from fedray.data.sources import build_dataset
    from fedray.models import build_model

    passes = []
    full = train.evaluate

    def counting(model, inputs, *args, **kwargs):
        passes.append(len(inputs))
        return full(model, inputs, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", counting)
    cfg = make_cfg(*LEARN, "ray.backend=inprocess", "partition=pathological",
                   "partition.classes_per_client=2", "fl.rounds=3", "data.val_per_class=70")
    summary = run(cfg)
    rows = _rows(tmp_path / "run")
    root = build_dataset(cfg["data"], int(cfg["seed"])).root  # the cached set the run used
    val_y, train_y = load_labels(root, "val"), load_labels(root, "train")
    # rounds 1-3 (and the server's 256-image warm-up): the final metrics and per-client reuse them
    assert len(val_y) > 256 and passes.count(len(val_y)) == 3, passes
    last = {k: v for k, v in rows[-1].items() if k.startswith("val/")}
    assert {k: summary[k] for k in last} == last
    # per-client accuracy, recomputed from the final weights' own predictions
    model = build_model(cfg["model"], int(cfg["data"]["num_classes"]))
    train.set_params(model, {k: torch.as_tensor(v) for k, v in _params(tmp_path / "run").items()})
    pred = train.predict_logits(model, load_images(root, "val")).argmax(1).numpy()
    parts = partition(train_y, cfg["partition"], int(cfg["fl"]["num_clients"]), int(cfg["seed"]))
    for cid, idx in enumerate(parts):
        mask = np.isin(val_y, np.unique(train_y[idx]))
        assert summary[f"client/{cid}/val_acc"] == pytest.approx(
            float((pred[mask] == val_y[mask]).mean()), abs=1e-12
        )


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


def split_leaving_one_client_empty(labels, num_clients, seed):
    """A user's partitioner (`partition._target_`) that deals the last client nothing."""
    return [*np.array_split(np.arange(len(labels)), num_clients - 1), np.array([], np.int64)]


def test_a_client_dealt_no_sample_trains_nothing_and_the_round_still_counts(make_cfg, tmp_path):
    """A phone with no photos (Dirichlet's min_size=0, a user's partitioner) trained nothing and
    its loss, NaN x 0 samples, made the round's train/loss NaN; a round that drew only such
    clients had nothing to average (a ValueError mid-run). Now the first is left out of the
    loss and the average, and the second is a round skipped, logged as such."""
    target = f"{__name__}.split_leaving_one_client_empty"
    run(make_cfg("fl.num_clients=3", "fl.rounds=1", "ray.backend=inprocess",
                 f"partition._target_={target}", run_dir=tmp_path / "all"))
    (row,) = _rows(tmp_path / "all")
    assert row["clients"] == 3 and np.isfinite(row["train/loss"])
    # 1 of 3 a round: seed 0 draws client 2, the empty one, in rounds 1 and 3
    run(make_cfg("fl.num_clients=3", "fl.clients_per_round=1", "fl.rounds=3", "seed=0",
                 "ray.backend=inprocess", f"partition._target_={target}",
                 run_dir=tmp_path / "one"))
    rows = _rows(tmp_path / "one")
    assert [r["clients"] for r in rows] == [0, 1, 0] and np.isfinite(rows[1]["train/loss"])
    assert np.isfinite(rows[-1]["val/acc"])  # the run's final row still scores the model
