"""`python launch.py` as a user runs it, with no Ray up: its Ray starts in a thread beside the
run's preparation (fedray.fl.pool.PoolBoot) and every process it started is gone at the end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

TINY = [
    "+experiment=smoke",
    "logger=jsonl",
    "model.width=8",
    "fl.num_clients=4",
    "data.num_classes=4",
    "data.train_per_class=20",
    "data.val_per_class=5",
    "ray.client_cpus=1",
]


def _start(tmp_path: Path, cache_dir: Path, *extra: str) -> tuple[psutil.Popen, Path]:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "launch.py", *TINY, f"data.cache_dir={cache_dir}", *extra,
           f"hydra.run.dir={run_dir}"]
    log = open(tmp_path / "out.log", "w")  # noqa: SIM115 - closed with the process
    return psutil.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), run_dir


def _rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _descendants_until(proc: psutil.Popen, done, nice: dict | None = None
                       ) -> dict[psutil.Process, str]:
    """Every process the run started (Ray's GCS, raylet, agents, workers), seen while it ran,
    with its name; `nice` collects each Ray worker's (`ray::...`) niceness by pid."""
    seen: dict[psutil.Process, str] = {}
    while proc.poll() is None and not done():
        try:
            for child in proc.children(recursive=True):
                if child not in seen:
                    seen[child] = child.name()
                if nice is not None and seen[child].startswith("ray::"):
                    nice[child.pid] = child.nice()
        except psutil.Error:
            pass
        time.sleep(0.2)
    return seen


def _alive(procs: dict[psutil.Process, str]) -> list[str]:
    out = []
    for p, name in procs.items():
        try:  # is_running() also checks the pid was not reused by a new process
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {name}")
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_a_launched_run_starts_and_stops_its_own_ray(tmp_path, cache_dir):
    proc, run_dir = _start(tmp_path, cache_dir, "fl.rounds=3")
    driver_nice, nice = proc.nice(), {}
    seen = _descendants_until(proc, lambda: _rows(run_dir) >= 1, nice)
    seen.update(_descendants_until(proc, lambda: False, nice))
    assert proc.wait() == 0, (tmp_path / "out.log").read_text()[-3000:]
    assert {"raylet", "gcs_server"} <= set(seen.values())
    # the client actors run at the run's own priority (ray.worker_nice 0), not Ray's default
    # niceness of 15, at which any other busy program on the machine would starve them
    assert nice and set(nice.values()) == {driver_nice}, nice
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and _rows(run_dir) == 3
    assert (run_dir / "partition.png").exists()  # drawn after the rounds now
    # the run dir's log (Hydra's launch.log) holds the run's lines, as the console showed them
    logged = (run_dir / "launch.log").read_text()
    assert "[fedray][INFO] - round 3/3  val/acc" in logged, logged[-2000:]
    # ... and ends with the table of final metrics the terminal showed
    table = logged.rstrip().splitlines()
    assert table[-1].startswith("-----") and any(
        line.split()[:1] == ["val/acc"] for line in table[-20:]), logged[-2000:]
    time.sleep(2)
    assert _alive(seen) == []


@pytest.mark.slow
def test_sigterm_mid_run_leaves_its_checkpoint_and_no_ray_process(tmp_path, cache_dir):
    # Ray's processes die with the thread that started them (PR_SET_PDEATHSIG) and with the
    # driver. The exit status is Ray's business: its C++ failure handler may abort (-6) before
    # Python's SIGTERM handler (sys.exit(15)) runs, as it did before the boot thread.
    proc, run_dir = _start(tmp_path, cache_dir, "fl.rounds=500")
    seen = _descendants_until(proc, lambda: _rows(run_dir) >= 2)
    assert proc.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) in (signal.SIGTERM, -signal.SIGABRT, -signal.SIGTERM)
    assert (run_dir / "checkpoint.pkl").exists() and 2 <= _rows(run_dir) < 500
    time.sleep(2)
    assert _alive(seen) == []
