"""Checkpoints and resume without Ray: which run `resume=` picks, what it refuses, what it keeps."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
import yaml

import fedray.fl.checkpoint as checkpoint
from fedray.config import ConfigError
from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from fedray.fl.resume import experiment_hash, find_resume_dir
from fedray.fl.server import FederatedServer
from fedray.fl.train import get_params


def _cfg(tmp_path, resume=True, rounds=5, schedule="constant"):
    cfg = {"stage": "federated", "seed": 0, "client": {"lr_schedule": schedule},
           "fl": {"rounds": rounds, "num_clients": 4}, "resume": resume,
           "run_dir": str(tmp_path / "new")}
    cfg["_config_hash"] = experiment_hash(cfg)
    return cfg


def _run(tmp_path, name, cfg, **state):
    run_dir = tmp_path / name
    run_dir.mkdir()
    save_checkpoint(run_dir / CHECKPOINT, {"config_hash": cfg["_config_hash"], **state})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run_dir


def test_resume_true_skips_an_unreadable_checkpoint_of_another_run(tmp_path, caplog, monkeypatch):
    cfg = _cfg(tmp_path)
    good = _run(tmp_path, "a", cfg, round=2)
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / CHECKPOINT).write_bytes(b"garbage")  # the newer one
    os.utime(good / CHECKPOINT, (1, 1))
    with caplog.at_level(logging.WARNING, logger="fedray"):
        assert find_resume_dir(cfg) == good
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(bad / CHECKPOINT) in warned[0]
    # the side file answers: no candidate is unpickled just to read its config hash
    def no_unpickling(path):
        raise AssertionError(f"unpickled {path}")

    monkeypatch.setattr(checkpoint, "load_checkpoint", no_unpickling)
    caplog.clear()
    assert find_resume_dir(cfg) == good
    # resume=PATH naming the unreadable one: a one-line ConfigError that names it
    with pytest.raises(ConfigError, match="b/checkpoint.pkl is not a readable") as err:
        find_resume_dir({**cfg, "resume": str(bad)})
    assert "\n" not in str(err.value)


def test_a_pickle_copied_over_its_side_file_is_read_itself(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = _run(tmp_path, "a", cfg, round=2)
    other = _run(tmp_path, "b", cfg, round=4)
    (run_dir / CHECKPOINT).write_bytes((other / CHECKPOINT).read_bytes())  # as a sweep restore
    assert checkpoint.checkpoint_meta(run_dir / CHECKPOINT)["round"] == 4


def test_extending_rounds_is_refused_unless_the_lr_schedule_is_constant(tmp_path):
    cosine = _cfg(tmp_path, rounds=10, schedule="cosine")
    run_dir = _run(tmp_path, "a", cosine, round=10, rounds=10)
    extended = _cfg(tmp_path, resume=str(run_dir), rounds=20, schedule="cosine")
    with pytest.raises(ConfigError, match=r"fl\.rounds=20.*anneals the lr over fl\.rounds") as err:
        find_resume_dir(extended)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"fl\.rounds"):
        find_resume_dir({**extended, "resume": True})
    # a checkpoint from before checkpoints kept fl.rounds: the run's config.yaml says
    old = _cfg(tmp_path, rounds=10, schedule="cosine")
    old_dir = _run(tmp_path, "old", old, round=10)
    with pytest.raises(ConfigError, match=r"fl\.rounds"):
        find_resume_dir({**extended, "resume": str(old_dir)})
    assert find_resume_dir({**cosine, "resume": str(run_dir)}) == run_dir  # unchanged: fine
    constant = _cfg(tmp_path, rounds=10)
    const_dir = _run(tmp_path, "c", constant, round=10, rounds=10)
    more = _cfg(tmp_path, resume=str(const_dir), rounds=20)
    assert find_resume_dir(more) == const_dir


def _server(tmp_path, rows, start_round=0, rounds=10):
    server = FederatedServer.__new__(FederatedServer)
    server.fl, server.cfg = {"rounds": rounds}, {"_config_hash": "h"}
    server.logger = type("Logger", (), {"rows": rows})()
    server.start_round = start_round
    return server


def test_a_finished_run_is_not_run_again_and_keeps_its_summary(tmp_path):
    from fedray.fl.resume import finished_summary

    last = {"round": 10, "train/loss": 0.5, "val/acc": 0.9, "privacy/epsilon": 3.0,
            "time/round_s": 1.0}
    server = _server(tmp_path, [{"round": 9, "train/loss": 0.7}, last], start_round=10)

    def no_pool(*args, **kwargs):
        raise AssertionError("a finished run started a pool")

    server._start_pool = no_pool
    assert server.run({}, None) == last
    cfg = _cfg(tmp_path, rounds=10)
    run_dir = _run(tmp_path, "a", cfg, round=10, rounds=10, bytes_total=7,
                   rows=[last], head_init={"head_init/val_acc": 0.4})
    summary = finished_summary(cfg, run_dir)  # no summary.json: rebuilt from the last row
    assert summary["train/loss"] == 0.5 and summary["privacy/epsilon"] == 3.0
    assert summary["rounds"] == 10 and summary["head_init/val_acc"] == 0.4
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    kept = {"rounds": 10, "train/loss": 0.5, "val/acc": 0.91, "time/train_s": 99.0}
    (run_dir / "summary.json").write_text(json.dumps(kept))
    assert finished_summary(cfg, run_dir) == kept  # the good one stays as it was
    assert json.loads((run_dir / "summary.json").read_text()) == kept
    assert finished_summary({**cfg, "fl": {**cfg["fl"], "rounds": 20}}, run_dir) is None


def test_head_init_metrics_survive_a_checkpoint(tmp_path):
    class Strategy:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    server = _server(tmp_path, [{"round": 1}])
    server.model = torch.nn.Linear(2, 2)
    server.params = get_params(server.model, ["weight", "bias"])
    server.isolated, server.local, server.privacy = False, None, None
    server.strategy, server.bytes_total, server.client_params = Strategy(), 3, {}
    server.head_init_metrics = {"head_init/val_acc": 0.4, "head_init/clients": 4}
    save_checkpoint(tmp_path / CHECKPOINT, server._checkpoint_state(1))
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    server.head_init_metrics = {}
    server.restore(ckpt)
    assert server.head_init_metrics == {"head_init/val_acc": 0.4, "head_init/clients": 4}
    server.restore({k: v for k, v in ckpt.items() if k != "head_init"})  # an older checkpoint
    assert server.head_init_metrics == {}


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"round": 1})
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint(path, {"f": lambda: 0})
    assert path.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else True)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save_checkpoint(path, {"round": 2})
    assert load_checkpoint(path) == {"round": 2} and True in synced  # the directory too
