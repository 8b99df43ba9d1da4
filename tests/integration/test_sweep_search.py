"""Tune's own search on a real Ray: random draws, Optuna's TPE, and PBT exploiting checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedray.sweep import tuner

# one client actor per trial, so the tests' 2 CPUs hold a trial (PBT: two, see below)
FAST = ("ray.max_actors=1", "fl.rounds=1")


def _info(sweep_dir: Path, trial: str) -> dict:
    return json.loads((sweep_dir / "trials" / trial / "trial.json").read_text())


def _rounds(sweep_dir: Path, trial: str) -> list[int]:
    path = sweep_dir / "trials" / trial / "metrics.jsonl"
    return [json.loads(line)["round"] for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_random_search_with_one_sample_runs_one_drawn_trial(make_cfg, tmp_path):
    out = tuner.sweep(make_cfg("sweep=lr", "sweep.num_samples=1", *FAST))
    assert out["trials"] == 1 and out["status"]["completed"] == 1
    row = out["rows"][0]
    assert row["trial"] == "trial_000" and row["rounds"] == 1
    lr, momentum = (
        row["assignment"]["client.optimizer.lr"],
        row["assignment"]["client.optimizer.momentum"],
    )
    assert 1e-3 <= lr <= 0.3 and momentum in (0.0, 0.5, 0.9)
    # the drawn values reached the run's config
    cfg = (tmp_path / "run" / "trials" / "trial_000" / "config.yaml").read_text()
    assert f"lr: {lr}" in cfg
    assert out["best"]["trial"] == "trial_000"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_optuna_sweep_on_smoke_runs_two_trials(make_cfg, tmp_path):
    pytest.importorskip("optuna", reason='search: optuna needs `pip install "fedray[sweep]"`')
    out = tuner.sweep(make_cfg("sweep=optuna_lr", "sweep.num_samples=2", *FAST))
    sweep_dir = tmp_path / "run"
    assert out["trials"] == 2 and out["status"]["completed"] == 2
    assert sorted(r["trial"] for r in out["rows"]) == ["trial_000", "trial_001"]
    lrs = [r["assignment"]["client.optimizer.lr"] for r in out["rows"]]
    assert all(1e-3 <= x <= 0.3 for x in lrs) and lrs[0] != lrs[1]
    assert all(0.0 <= r["assignment"]["client.optimizer.momentum"] <= 0.95 for r in out["rows"])
    for r in out["rows"]:  # each trial ran with what Optuna suggested
        assert _info(sweep_dir, r["trial"])["assignment"] == r["assignment"]
    with open(sweep_dir / "sweep_results.csv") as fh:
        header = fh.readline()
    assert "client.optimizer.lr" in header and "client.optimizer.momentum" in header


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_pbt_sweep_exploits_a_better_trials_checkpoint(make_cfg, tmp_path):
    out = tuner.sweep(
        make_cfg(
            "sweep=pbt_lr",
            "sweep.num_samples=2",
            "sweep.driver_cpus=0.5",  # + one 0.5-CPU actor: two trials run side by side
            "sweep.scheduler.perturbation_interval=2",  # one exploit step, after round 2
            "sweep.scheduler.quantile_fraction=0.5",  # of two trials, the worse copies the better
            "sweep.scheduler.synch=true",  # both trials reach each round before PBT decides
            "ray.max_actors=1",
            "fl.rounds=3",
        )
    )
    sweep_dir = tmp_path / "run"
    assert out["trials"] == 2 and out["status"]["completed"] == 2
    # Tune's own PBT log records each exploit: [target, clone, ...]
    pbt_log = (sweep_dir / "tune" / "pbt_global.txt").read_text().splitlines()
    assert pbt_log, "PBT never exploited"
    exploits = [e for r in out["rows"] for e in _info(sweep_dir, r["trial"]).get("exploits", [])]
    assert exploits and sum(r["exploits"] for r in out["rows"]) == len(exploits)
    trials = {r["trial"] for r in out["rows"]}
    for e in exploits:
        assert e["from"] in trials and e["round"] == 2
    for r in out["rows"]:  # every trial's run still covers rounds 1..3, once each
        assert _rounds(sweep_dir, r["trial"]) == [1, 2, 3]
