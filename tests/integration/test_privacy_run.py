"""Smoke runs through fedray.run.run with secure aggregation, DP and an attack on real Ray."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fedray.fl.checkpoint import CHECKPOINT
from fedray.run import run

pytestmark = pytest.mark.usefixtures("ray_session")


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _params(run_dir) -> dict:
    with open(run_dir / CHECKPOINT, "rb") as fh:
        return pickle.load(fh)["params"]


@pytest.mark.slow
def test_secagg_with_central_dp_and_an_attacker(make_cfg, tmp_path):
    cfg = make_cfg(
        "fl.num_clients=4",
        "fl.clients_per_round=2",
        "fl.rounds=5",
        "ray.max_actors=2",
        "fl.secure_agg=secagg",
        "dp=central",
        "dp.noise_multiplier=4.0",
        "dp.sampling=fixed",
        "dp.max_epsilon=3.5",
        "attack=sign_flip",
        "attack.fraction=0.25",
    )
    run(cfg)
    rows = _rows(tmp_path / "run")
    eps = [r["privacy/epsilon"] for r in rows]
    assert len(rows) == 3  # round 4 would reach epsilon 3.75 > dp.max_epsilon
    assert 0 < eps[0] and eps == sorted(eps) and eps[-1] <= 3.5
    assert (tmp_path / "run" / "privacy_epsilon.png").exists()
    assert all(
        r["secagg/vanished_after_mask"] == 0 and r["comm/secagg_key_bytes"] > 0 for r in rows
    )
    assert all(np.isfinite(v).all() for v in _params(tmp_path / "run").values())


@pytest.mark.slow
def test_secagg_matches_plain_fedavg_with_a_client_vanishing(make_cfg, tmp_path):
    common = ("fl.num_clients=4", "fl.rounds=2", "logger.plots=false")
    run(make_cfg(*common, run_dir=tmp_path / "plain"))
    run(
        make_cfg(
            *common,
            "fl.secure_agg=secagg",
            "fl.secagg.drop_after_mask=0.25",
            run_dir=tmp_path / "secagg",
        )
    )
    rows = _rows(tmp_path / "secagg")
    assert [r["secagg/vanished_after_mask"] for r in rows] == [1, 1]
    # each client's loss travels inside its masked vector; the sum's mean is plain FedAvg's
    assert rows[0]["train/loss"] == pytest.approx(_rows(tmp_path / "plain")[0]["train/loss"],
                                                  abs=1e-3)
    assert rows[0]["comm/bytes_up"] > _rows(tmp_path / "plain")[0]["comm/bytes_up"]
    plain, masked = _params(tmp_path / "plain"), _params(tmp_path / "secagg")
    for k, v in plain.items():  # the same model up to the 16-bit encoding
        assert np.allclose(masked[k], v, atol=1e-3), k


@pytest.mark.slow
def test_fltrust_leaves_a_sign_flipper_out_of_every_round(make_cfg, tmp_path):
    # the root set is the toy data re-generated under strategy.root_seed (built in the run,
    # while the pool's thread starts Ray)
    cfg = make_cfg(
        "fl.num_clients=4",
        "fl.rounds=3",
        "ray.max_actors=2",
        "logger.plots=false",
        "strategy=fltrust",
        "strategy.root_size=40",
        "attack=sign_flip",
        "attack.fraction=0.25",
    )
    run(cfg)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 3
    for r in rows:
        flippers = r["attack/malicious_sampled"]
        assert flippers == 1
        ok = r["clients"] - r["clients/dropped"]
        assert r["fltrust/min_cos"] < 0 and r["fltrust/trusted"] == ok - flippers
    assert all(np.isfinite(v).all() for v in _params(tmp_path / "run").values())


@pytest.mark.slow
def test_clipping_without_noise_runs_to_the_end_without_an_epsilon_plot(make_cfg, tmp_path):
    """dp.noise_multiplier=0 clips but guarantees nothing (epsilon infinite): once the epsilon
    plot of the last round raised PlotError on a finished run; the log says so."""
    import logging

    cfg = make_cfg("fl.rounds=2", "dp=central", "dp.noise_multiplier=0.0")
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("fedray").addHandler(handler)
    try:
        run(cfg)
    finally:
        logging.getLogger("fedray").removeHandler(handler)
    assert any(m.startswith("dp.noise_multiplier=0: updates are clipped but not noised")
               for m in said), said
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and rows[-1]["privacy/epsilon"] is None  # inf, written as null
    assert not (tmp_path / "run" / "privacy_epsilon.png").exists()
    assert (tmp_path / "run" / CHECKPOINT).exists()


def test_a_ring_the_dealt_shards_would_wrap_is_refused_before_ray(make_cfg):
    """smoke's 2 shards of 24 samples x (2^27 - 1) levels pass 2^32: once a SecAggError after
    round 1, now a ConfigError once the partition is dealt."""
    from fedray.config import ConfigError

    cfg = make_cfg("fl.secure_agg=secagg", "fl.secagg.quant_bits=27")
    with pytest.raises(ConfigError, match=r"up to 48 samples .* fl.secagg.quant_bits <= 26"):
        run(cfg)


@pytest.mark.slow
def test_a_run_poisson_sampling_gave_no_round_ends_cleanly(make_cfg, tmp_path):
    """Seed 3 draws neither of smoke's 2 clients at rate 1/2 in round 1: once a PlotError, then
    a run with no row; now the round is logged as skipped, with its epsilon and the scores of
    the model that the central DP noise alone moved."""
    metrics = run(make_cfg("dp=central", "fl.clients_per_round=1", "seed=3"))
    (row,) = _rows(tmp_path / "run")
    assert row["round"] == 1 and row["clients"] == 0 and row["privacy/epsilon"] > 0
    assert metrics["val/acc"] == row["val/acc"]
    assert metrics["privacy/epsilon"] == row["privacy/epsilon"]  # in the summary table too
    assert (tmp_path / "run" / "summary.json").exists()
    assert (tmp_path / "run" / CHECKPOINT).exists()
