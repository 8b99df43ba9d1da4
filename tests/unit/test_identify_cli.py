"""`fedray identify/export/serve`: a user's wrong argument is one line and exit 2, before any
model loads (no trained run needed here)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from fedray.fl.checkpoint import CHECKPOINT
from fedray.pill.identify.cli import main


@pytest.fixture()
def photo(tmp_path):
    import cv2

    path = tmp_path / "pills.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), 120, np.uint8))
    return path


def _run_dir(tmp_path, stage="federated", task=None):
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"stage": stage, "task": task, "data": {"_target_": "fedray.pill.seg_sites.build"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / CHECKPOINT).write_bytes(b"")
    return run


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedray: error: "), err
    return err[0]


def test_an_out_that_is_a_file_is_refused_before_the_models_load(photo, tmp_path, capsys):
    taken = tmp_path / "answers.txt"
    taken.write_text("mine")
    assert main(["identify", str(photo), "--out", str(taken), "--run", "nowhere"]) == 2
    assert f"--out {taken}: a file is there, not a directory" in _error(capsys)
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("command", ["identify", "export"])
def test_a_run_that_is_not_a_classifier_is_named(command, photo, tmp_path, capsys):
    run = _run_dir(tmp_path, task={"_target_": "fedray.tasks.segmentation.Segmentation"})
    args = [command, *([str(photo), "--run"] if command == "identify" else []), str(run)]
    assert main(args) == 2
    assert "a stage=federated run of task segmentation, not a classifier" in _error(capsys)


def test_a_host_nobody_can_listen_on_is_refused(tmp_path, capsys):
    pytest.importorskip("uvicorn")
    assert main(["serve", "--host", "999.1.1.1", "--run", "nowhere"]) == 2
    assert "--host 999.1.1.1: not an address to listen on" in _error(capsys)
