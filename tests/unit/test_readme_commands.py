"""Every `python launch.py ...` command the README shows composes and passes the config check.

A renamed or removed config key breaks a command a newcomer copies; this catches it before they
do. Commands that name the reader's own code or files (`mymod`, `/path/to/...`) must fail on that
placeholder alone, with fedray's one-line ConfigError. Checked against an empty cache: a command
that needs an earlier stage's result (the detector's, for `data.crop_with=detector`) must say
which README command makes it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import fedray.sweep  # noqa: F401  (registers sweeps/*.yaml as the Hydra group `sweep`, as launch.py)
from fedray.config import ConfigError, compose_plain
from fedray.validate import validate

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDERS = ("mymod", "/path/to/")


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line, overrides) of each `python launch.py` command in the README: continuation lines
    joined, comments and the closing backtick of inline code cut off."""
    out, held, first = [], "", 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if not held:
            first = number
        if line.endswith("\\"):
            held += line[:-1] + " "
            continue
        line, held = held + line, ""
        m = re.search(r"python launch\.py (.*)", line)
        if m:
            out.append((first, shlex.split(m.group(1).split("#")[0].split("`")[0])))
    return out


COMMANDS = readme_commands()


def test_the_readme_shows_launch_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("line,overrides", COMMANDS, ids=lambda v: str(v))
def test_readme_command_composes_and_validates(line, overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path))  # what a fresh machine has: nothing
    cfg = compose_plain(overrides)
    cfg["run_dir"] = "unused"  # launch.py sets Hydra's output directory here

    def check() -> None:
        validate(cfg)  # a plug-in stage's own check (detect, retrieval) included

    placeholder = [p for p in PLACEHOLDERS if any(p in o for o in overrides)]
    if placeholder:
        with pytest.raises(ConfigError, match=re.escape(placeholder[0].rstrip("/"))):
            check()
        return
    try:
        check()
    except ConfigError as exc:  # only: an earlier stage's result is missing, made by the README
        if "ray.address=auto: no Ray cluster was started" in str(exc):  # the README starts one
            assert "ray start --head" in README.read_text() and any(
                o in ("ray=cluster", "ray.address=auto") for o in overrides), exc
            return
        earlier = re.search(r"train one with `python launch\.py ([^`]*)`", str(exc))
        assert earlier, exc
        assert " ".join(earlier.group(1).split()[:1]) in {" ".join(o) for _, o in COMMANDS}, exc
