"""What a newcomer sees on the command line when an override is wrong: one clear message."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import launch


def _launch(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return launch([*overrides, f"hydra.run.dir={tmp_path}"], cwd=tmp_path, timeout=120)


def test_type_error_names_the_key(tmp_path):
    out = _launch("+experiment=pill_noniid", "fl.rounds=foo", tmp_path=tmp_path)
    assert out.returncode != 0
    assert "fl.rounds" in out.stderr and "could not be converted to Integer" in out.stderr
    assert out.stderr.startswith("fedray: error: fl.rounds:") and out.stderr.count("\n") == 1
    assert "ray" not in out.stderr.lower().replace("fedray", "")  # rejected before anything starts


def test_missing_required_value_is_one_line(tmp_path):
    out = _launch("+experiment=pill_noniid", "data=yolo_import", tmp_path=tmp_path)
    assert out.returncode == 2
    assert "fedray: error: data.root is required" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_data_folder_is_named(tmp_path):
    out = _launch(
        "+experiment=pill_noniid",
        "data=yolo_import",
        f"data.root={tmp_path / 'nope'}",
        "logger=jsonl",
        tmp_path=tmp_path,
    )
    assert out.returncode == 2
    assert "no such directory" in out.stderr and "nope" in out.stderr
    assert "Traceback" not in out.stderr
