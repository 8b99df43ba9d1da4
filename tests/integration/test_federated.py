"""End-to-end federated runs on a real local Ray: outputs, learning, faults, determinism, resume."""

from __future__ import annotations

import json
import logging
import pickle
import re

import numpy as np
import pytest

from fedray.config import ConfigError
from fedray.fl.checkpoint import CHECKPOINT
from fedray.fl.server import QuorumError
from fedray.run import run

pytestmark = pytest.mark.usefixtures("ray_session")

LEARNABLE = ("data.train_per_class=40", "data.val_per_class=15", "fl.rounds=3", "client.epochs=2")


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_params(run_dir) -> dict:
    with open(run_dir / CHECKPOINT, "rb") as fh:
        return pickle.load(fh)["params"]


def test_smoke_writes_outputs_and_learns(make_cfg, tmp_path):
    cfg = make_cfg(*LEARNABLE)
    metrics = run(cfg)
    run_dir = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "partition.png",
        "confusion.png",
        "acc_vs_round.png",
        "acc_vs_bytes.png",
        CHECKPOINT,
    ):
        assert (run_dir / name).exists(), name
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in (
        "val/acc",
        "val/loss",
        "train/loss",
        "comm/bytes_up",
        "comm/bytes_down",
        "time/round_s",
    ):
        assert all(key in r for r in rows), key
    assert rows[0]["comm/bytes_up"] > 0 and rows[0]["comm/bytes_down"] > 0
    chance = 1 / cfg["data"]["num_classes"]
    assert metrics["val/acc"] > chance + 0.3, metrics
    assert json.loads((run_dir / "summary.json").read_text())["val/acc"] == metrics["val/acc"]


@pytest.mark.slow
def test_only_trainable_layers_travel(make_cfg, tmp_path):
    run(make_cfg("fl.trainable=classifier"))
    rows = _rows(tmp_path / "run")
    params = _final_params(tmp_path / "run")
    assert all(k.startswith("classifier.") for k in params)
    nbytes = sum(v.nbytes for v in params.values())
    assert rows[0]["comm/bytes_up"] == 2 * nbytes  # two clients, head only


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "replaced"), [("raise", False), ("crash", True), ("nan", False)])
def test_failing_client_is_dropped_and_a_dead_actor_replaced(
    make_cfg, tmp_path, caplog, kind, replaced
):
    cfg = make_cfg("fl.num_clients=3", "fl.rounds=2", "fl.quorum=0.5")
    cfg["fl"]["faults"] = [{"round": 1, "client": 1, "kind": kind}]
    with caplog.at_level(logging.WARNING, logger="fedray"):
        run(cfg)
    rows = _rows(tmp_path / "run")
    assert [r["clients/dropped"] for r in rows] == [1, 0]  # round 2: every client back
    # a dead actor's replacement serves round 2; one whose client raised (or sent NaN) is sound
    # and keeps serving, its cached shards with it
    assert bool(re.search(r"client actor \d+ replaced: it died", caplog.text)) == replaced
    assert (" replaced" in caplog.text) == replaced


@pytest.mark.slow
def test_straggler_is_dropped_by_timeout(make_cfg, tmp_path):
    cfg = make_cfg("fl.num_clients=3", "fl.rounds=1", "fl.round_timeout_s=10")
    cfg["fl"]["faults"] = [{"round": 1, "client": 2, "kind": "hang", "seconds": 600}]
    run(cfg)
    assert _rows(tmp_path / "run")[0]["clients/dropped"] == 1


@pytest.mark.slow
def test_quorum_failure_is_a_clear_error(make_cfg):
    cfg = make_cfg("fl.quorum=1.0")
    cfg["fl"]["faults"] = [{"round": 1, "client": 0, "kind": "raise"}]
    with pytest.raises(QuorumError, match=r"1 of 2 sampled clients .* \(1 dropped; client 0: "
                                          r".*\); fl.quorum=1.0"):
        run(cfg)


@pytest.mark.slow
def test_same_seed_same_metrics_and_weights(make_cfg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(make_cfg("fl.rounds=2", run_dir=a))
    run(make_cfg("fl.rounds=2", run_dir=b))
    strip = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in _rows(a)]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("time/")} for r in _rows(b)]
    pa, pb = _final_params(a), _final_params(b)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_resume_equals_uninterrupted(make_cfg, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(make_cfg("fl.rounds=3", "strategy=fedadam", run_dir=full))
    run(make_cfg("fl.rounds=1", "strategy=fedadam", run_dir=cut))  # "killed" after round 1
    run(make_cfg("fl.rounds=3", "strategy=fedadam", f"resume={cut}", run_dir=tmp_path / "new"))
    pf, pc = _final_params(full), _final_params(cut)
    assert all(np.array_equal(pf[k], pc[k]) for k in pf)
    assert [r["round"] for r in _rows(cut)] == [1, 2, 3]
    # another experiment cannot continue it: refused by name, before anything is written there
    saved = {p.name: p.read_bytes() for p in cut.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"another config \(strategy\._target_: .*FedAdam"):
        run(make_cfg("fl.rounds=4", "strategy=fedavg", f"resume={cut}", run_dir=tmp_path / "x"))
    assert {p.name: p.read_bytes() for p in cut.iterdir() if p.is_file()} == saved


@pytest.mark.slow
def test_isolated_clients_know_only_their_classes(make_cfg, tmp_path):
    cfg = make_cfg(
        *LEARNABLE, "stage=isolated", "partition=pathological", "partition.classes_per_client=2"
    )
    metrics = run(cfg)
    rows = _rows(tmp_path / "run")
    assert all(r["comm/bytes_total"] == 0 for r in rows)  # nothing is shared
    # each client saw 2 of 4 classes, so on the global val set it cannot beat 50%
    for c in (0, 1):
        assert metrics[f"client/{c}/val_acc"] <= 0.5 + 1e-9
    assert (tmp_path / "run" / "per_client_acc.png").exists()


def test_centralized_baseline_runs_without_ray_actors(make_cfg, tmp_path):
    metrics = run(make_cfg(*LEARNABLE, "stage=centralized"))
    rows = _rows(tmp_path / "run")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert metrics["val/acc"] > 1 / 4 + 0.3


@pytest.mark.slow
def test_a_thousand_clients_share_a_small_pool(make_cfg, tmp_path):
    cfg = make_cfg(
        "fl.num_clients=1000",
        "fl.clients_per_round=10",
        "fl.rounds=2",
        "ray.max_actors=2",
        "data.train_per_class=500",
        "client.batch_size=4",
    )
    run(cfg)
    rows = _rows(tmp_path / "run")
    assert [(r["clients"], r["actors"], r["clients/dropped"]) for r in rows] == [(10, 2, 0)] * 2


@pytest.mark.slow
def test_ridge_head_init_is_the_centralized_solve_under_label_skew(make_cfg, tmp_path):
    common = (*LEARNABLE, "fl.trainable=classifier", "fl.head_init=ridge", "fl.rounds=1",
              "partition=pathological", "partition.classes_per_client=2")
    fed = run(make_cfg(*common, run_dir=tmp_path / "fed"))
    cen = run(make_cfg(*common, "stage=centralized", run_dir=tmp_path / "cen"))
    iso = run(make_cfg(*common, "stage=isolated", run_dir=tmp_path / "iso"))
    # each client sent its feature sums once; their total solves exactly the pooled-data head
    assert fed["head_init/clients"] == 2 and fed["head_init/bytes_up"] > 0
    assert fed["head_init/val_acc"] == pytest.approx(cen["head_init/val_acc"], abs=1e-9)
    assert _rows(tmp_path / "fed")[0]["comm/bytes_total"] > fed["head_init/bytes_up"]
    # an isolated client solves from its own 2 classes only
    assert iso["head_init/val_acc"] <= 0.5 + 1e-9 < fed["head_init/val_acc"]


@pytest.mark.slow
def test_a_shard_cache_smaller_than_an_actors_clients_is_warned(make_cfg, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("fedray"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="fedray"):
        run(make_cfg("fl.trainable=classifier", "ray.max_actors=1", "ray.shard_cache=1"))
    assert "set ray.shard_cache=2" in caplog.text


@pytest.mark.slow  # fit_many itself is checked fast in tests/unit/test_fl_pieces.py
def test_batched_clients_train_the_same_and_drop_only_the_failing_one(make_cfg, tmp_path):
    # ray.batch_clients: an actor's clients of a round go in one call; same fits, same faults
    over = ("fl.num_clients=4", "fl.rounds=2", "ray.max_actors=2", "fl.quorum=0.5")
    runs = {}
    for batch in (False, True):
        cfg = make_cfg(*over, f"ray.batch_clients={batch}", run_dir=tmp_path / str(batch))
        cfg["fl"]["faults"] = [{"round": 1, "client": 1, "kind": "raise"}]
        run(cfg)
        runs[batch] = _rows(tmp_path / str(batch))
    assert [r["clients/dropped"] for r in runs[True]] == [1, 0]  # its 3 neighbours stood
    strip = [[{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
             for rows in runs.values()]
    assert strip[0] == strip[1]


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_leaves_a_checkpoint(tmp_path):
    """Ctrl-C mid-run: exit 130, a line saying how to continue, no traceback, and the rounds
    done so far in the run directory (test_resume_equals_uninterrupted: resuming them)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    run_dir = tmp_path / "run"
    args = [sys.executable, str(ROOT / "launch.py"), "+experiment=smoke", "ray=inprocess",
            "fl.rounds=100000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "FEDRAY_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run_dir / CHECKPOINT).exists(), proc.stderr
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("fedray: interrupted;")
    done = len(_rows(run_dir))
    assert 0 < done < 100000


def test_a_centralized_runs_model_is_saved_and_loads_as_a_teacher(make_cfg, tmp_path):
    from fedray.data.datasets import load_images, load_labels
    from fedray.data.sources import build_dataset
    from fedray.distill.teachers import teacher_from_run
    from fedray.fl.train import evaluate

    cen = run(make_cfg(*LEARNABLE, "stage=centralized", "fl.rounds=1", run_dir=tmp_path))
    model, tcfg = teacher_from_run(tmp_path, "distill.teacher")  # identify loads it the same way
    info = build_dataset(tcfg["data"], int(tcfg["seed"]))
    images = np.asarray(load_images(info.root, "val"))
    metrics, _ = evaluate(model, images, load_labels(info.root, "val"), info.num_classes)
    assert metrics["acc"] == pytest.approx(cen["val/acc"], abs=1e-9)


def test_a_run_that_sends_nothing_draws_no_accuracy_against_bytes(make_cfg, tmp_path):
    run(make_cfg("stage=centralized", "fl.rounds=1", run_dir=tmp_path))
    assert (tmp_path / "acc_vs_round.png").exists()
    assert not (tmp_path / "acc_vs_bytes.png").exists()  # every x would be 0
