"""Progress: log lines when no terminal (CI, a log file), never a bar there."""

from __future__ import annotations

import logging

from fedray.progress import Progress, interactive, progress


def test_ci_never_draws_a_bar(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert not interactive()


def test_log_lines_say_how_far_and_how_long(monkeypatch, lines):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("FEDRAY_PROGRESS_SECONDS", "0")  # a line on every update
    with Progress(4, "pretrain", unit="step") as bar:
        bar.update(1, loss=2.5)
        bar.update(1, loss=1.25)
    assert lines[0].startswith("pretrain: 1/4 step (25%)") and "loss 2.5" in lines[0]
    assert "2/4 step (50%)" in lines[1] and "eta" in lines[1] and "loss 1.25" in lines[1]


def test_quiet_between_intervals(monkeypatch, lines):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("FEDRAY_PROGRESS_SECONDS", "3600")
    assert list(progress(range(5), "features")) == [0, 1, 2, 3, 4]
    assert not lines


def test_under_a_bar_the_log_files_still_get_the_lines(monkeypatch, lines, tmp_path):
    # a terminal draws the bar; the run's launch.log (a file handler) keeps its periodic lines
    monkeypatch.setattr("fedray.progress.interactive", lambda: True)
    monkeypatch.setenv("FEDRAY_PROGRESS_SECONDS", "0")
    handler = logging.FileHandler(tmp_path / "launch.log")
    logger = logging.getLogger("fedray")
    logger.addHandler(handler)
    try:
        with Progress(4, "pretrain", unit="step") as bar:
            bar.update(1, loss=2.5)
            bar.update(1)
    finally:
        logger.removeHandler(handler)
        handler.close()
    logged = (tmp_path / "launch.log").read_text().splitlines()
    assert [line.split(",")[0] for line in logged] == ["pretrain: 1/4 step (25%)",
                                                       "pretrain: 2/4 step (50%)"]
    assert not lines  # the console shows the bar, not the lines
