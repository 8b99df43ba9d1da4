"""RunLogger's W&B side: a resumed run (or retried trial) keeps one W&B run."""

from __future__ import annotations

import json

from fedray.logging import RunLogger, wandb_run_id


def _cfg(**wandb):
    return {
        "name": "t",
        "logger": {"jsonl": True, "wandb": {"enabled": True, "mode": "offline", **wandb}},
    }


def test_run_id_is_a_function_of_the_run_dir(tmp_path):
    assert wandb_run_id(tmp_path / "a") == wandb_run_id(tmp_path / "a")
    assert wandb_run_id(tmp_path / "a") != wandb_run_id(tmp_path / "b")


def test_resumed_run_reuses_its_wandb_id_and_supersedes_the_killed_attempt(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [{"round": 1, "val/acc": 0.5}, {"round": 2, "val/acc": 0.6}]
    first = RunLogger(tmp_path, _cfg())
    for row in rows:
        first.log(row)
    first.log({"round": 3, "val/acc": 0.7})  # after the last checkpoint: lost with the attempt
    first_id = first.wandb.id
    first.close()

    second = RunLogger(tmp_path, _cfg(), resume_rows=rows)
    assert second.wandb.id == first_id == wandb_run_id(tmp_path)
    second.log({"round": 3, "val/acc": 0.65})
    second.close()

    live = list((tmp_path / "wandb").glob("offline-run-*"))
    old = list((tmp_path / "wandb" / "superseded").glob("offline-run-*"))
    assert len(live) == 1 and len(old) == 1
    assert live[0].name.endswith(first_id) and old[0].name.endswith(first_id)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"val/acc": 0.65' in lines[-1]


def test_an_explicit_id_wins(tmp_path):
    logger = RunLogger(tmp_path, _cfg(id="my-run-7"))
    try:
        assert logger.wandb.id == "my-run-7"
    finally:
        logger.close()


def test_wandb_refusing_to_start_online_is_a_config_error(tmp_path, monkeypatch):
    import pytest
    import wandb

    from fedray.config import ConfigError

    def refuse(**kw):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ConfigError, match=r"^logger\.wandb\.mode=online: W&B would not start: "
                                          r"No API key configured.*mode=offline"):
        RunLogger(tmp_path, _cfg(mode="online"))


def test_a_results_table_goes_to_the_terminal_and_the_log_files_as_it_is(tmp_path, capsys):
    import logging

    from fedray.logging import FILE_FORMAT, log, print_and_log

    handler = logging.FileHandler(tmp_path / "launch.log")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    log.addHandler(handler)
    try:
        log.warning("before the table")
        print_and_log(["", "sweep lr: 2 trials completed", "  trial_000  completed"])
    finally:
        log.removeHandler(handler)
        handler.close()
    assert capsys.readouterr().out == "\nsweep lr: 2 trials completed\n  trial_000  completed\n"
    logged = (tmp_path / "launch.log").read_text().splitlines()
    assert logged[0].endswith("[fedray][WARNING] - before the table")
    assert logged[1:] == ["", "sweep lr: 2 trials completed", "  trial_000  completed"]


def test_the_final_table_lists_per_client_values_only_for_a_few_clients(capsys):
    import launch

    few = {"val/acc": 0.5, "client/0/val_acc": 0.4, "client/1/val_acc": 0.6, "rounds": 3}
    launch.print_summary(few, "/runs/a")
    out = capsys.readouterr().out
    assert "client/1/val_acc" in out and "summary.json" not in out
    launch.print_summary({"privacy/epsilon": 9.01, "privacy/delta": 1e-5}, "/runs/a")
    assert capsys.readouterr().out.splitlines()[2:4] == ["privacy/epsilon        9.0100",
                                                         "privacy/delta           1e-05"]
    many = {"val/acc": 0.5, **{f"client/{i}/val_acc": 0.5 for i in range(10_000)}, "rounds": 3}
    launch.print_summary(many, "/runs/a")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) < 10 and not any(line.startswith("client/0") for line in lines), lines
    assert "client/<id>/...: 10000 clients' values in /runs/a/summary.json" in lines


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_inf_of_numpy_and_torch_scalars_are_written_as_null(tmp_path):
    import numpy as np
    import torch

    from fedray.logging import _json_safe

    assert _json_safe(np.float32("nan")) is None and _json_safe(torch.tensor(float("inf"))) is None
    assert _json_safe(np.float32(0.5)) == 0.5 and type(_json_safe(np.int64(3))) is int
    logger = RunLogger(tmp_path, {"name": "t", "logger": {"jsonl": True}})
    logger.log({"round": 1, "val/loss": np.float32("nan"), "train/loss": torch.tensor(np.inf),
                "val/acc": np.float64("-inf"), "comm/bytes_total": np.int64(10)})
    logger.summary({"val/loss": np.float32("nan"), "hist": [np.float32("inf"), 1.0]})
    logger.close()
    rows = [_strict(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"round": 1, "val/loss": None, "train/loss": None, "val/acc": None,
                     "comm/bytes_total": 10}]
    summary = _strict((tmp_path / "summary.json").read_text())
    assert summary["val/loss"] is None and summary["hist"] == [None, 1.0]
    # a resumed run rewrites its restored rows the same way
    RunLogger(tmp_path, {"name": "t", "logger": {"jsonl": True}},
              resume_rows=[{"round": 1, "val/loss": np.float32("nan")}]).close()
    assert _strict((tmp_path / "metrics.jsonl").read_text()) == {"round": 1, "val/loss": None}


def test_a_stopped_trials_summary_is_strict_json(tmp_path):
    from fedray.sweep.results import summarize_unfinished

    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "val/acc": NaN, "val/loss": Infinity}\n')
    summarize_unfinished([{"status": "stopped", "run_dir": str(tmp_path), "rounds": 1,
                           "max_rounds": 4, "error": None}])
    summary = _strict((tmp_path / "summary.json").read_text())
    assert summary["val/acc"] is None and summary["val/loss"] is None
    assert not (tmp_path / "acc_vs_round.png").exists()  # no val/acc to draw: no plot, no error
