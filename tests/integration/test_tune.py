"""Sweeps on a real Ray: results and W&B runs per trial, retries, resume, and a two-node cluster."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedray.sweep import trainable, tuner
from tests.conftest import ROOT, launch

# each trial: 1 driver CPU + 1 client actor (0.5 CPU), so the tests' 2 CPUs hold one trial
FAST = ("ray.max_actors=1", "fl.rounds=2")


def _trial(sweep_dir: Path, index: int) -> dict:
    return json.loads(
        (sweep_dir / "trials" / trainable.trial_name(index) / "trial.json").read_text()
    )


def _rounds(sweep_dir: Path, index: int) -> list[int]:
    path = sweep_dir / "trials" / trainable.trial_name(index) / "metrics.jsonl"
    return [json.loads(line)["round"] for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_smoke_sweep_writes_results_and_one_wandb_run_per_trial(make_cfg, tmp_path):
    cfg = make_cfg("sweep=noniid", "sweep.num_samples=2", "logger=wandb", *FAST)
    out = tuner.sweep(cfg)
    sweep_dir = tmp_path / "run"
    assert out["sweep_dir"] == str(sweep_dir) and out["trials"] == 2
    with open(sweep_dir / "sweep_results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert sorted(r["trial"] for r in table) == ["trial_000", "trial_001"]
    assert "partition.name" in table[0] and table[0]["rank"] == "1"
    accs = [float(r["val/acc"]) for r in table]
    assert accs == sorted(accs, reverse=True)  # ranked by the metric
    for r in table:  # ASHA may stop a trial after round 1, never mid-round
        assert (r["status"], r["rounds"]) in (("completed", "2"), ("stopped", "1"))
        assert _rounds(sweep_dir, int(r["trial"][-3:])) == list(range(1, int(r["rounds"]) + 1))
    assert out["trial_rounds"] == sum(int(r["rounds"]) for r in table)
    assert out["trial_rounds_max"] == 4
    md = (sweep_dir / "sweep_results.md").read_text()
    assert "Trial-rounds run" in md and "trial_000" in md
    plots = {Path(p).name for p in out["plots"]}
    assert {"acc_vs_bytes.png", "val_acc_vs_partition_name.png"} <= plots
    assert all(Path(p).stat().st_size > 0 for p in out["plots"])
    for i in (0, 1):
        info = _trial(sweep_dir, i)
        # the trial's placement group: its driver + one bundle per client actor
        assert info["bundles"] == [{"CPU": 1.0}, {"CPU": 0.5}]
        assert info["attempts"] == 1
        logged = (sweep_dir / "trials" / trainable.trial_name(i) / "launch.log").read_text()
        assert "[fedray][INFO] - round 1/2" in logged, logged[-2000:]  # the trial's own log
        runs = list(
            (sweep_dir / "trials" / trainable.trial_name(i) / "wandb").glob("offline-run-*")
        )
        assert len(runs) == 1, runs  # one W&B run per trial, from the trial driver only
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert b"noniid" in record and f"noniid-{trainable.trial_name(i)}".encode() in record
    for r in table:  # every trial has its summary, ASHA-stopped ones too
        summary = json.loads((sweep_dir / "trials" / r["trial"] / "summary.json").read_text())
        assert summary["val/acc"] == pytest.approx(float(r["val/acc"]))
        if r["status"] == "stopped":
            assert summary["status"] == "stopped" and summary["rounds"] == int(r["rounds"])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_failed_trial_is_retried_and_a_sweep_with_errors_resumes(make_cfg, tmp_path):
    overrides = (
        "sweep=noniid",
        "sweep.num_samples=2",
        "sweep.scheduler.name=none",
        "logger=wandb",
        *FAST,
    )
    cfg = make_cfg(*overrides, run_dir=tmp_path / "first")
    # trial 0 fails once and is retried (max_failures=1); trial 1 fails after round 1, and its
    # retry (from the round-1 checkpoint) after the first round it reaches, round 2: an error
    # that ends the sweep
    cfg["sweep"]["faults"] = [{"trial": 0, "round": 1}, {"trial": 1, "round": 1, "attempts": 2}]
    out = tuner.sweep(cfg)
    first = tmp_path / "first"
    status = {r["trial"]: r["status"] for r in out["rows"]}
    assert status == {"trial_000": "completed", "trial_001": "error"}
    retried = _trial(first, 0)
    assert retried["attempts"] == 2 and retried["resumed_from_round"] == 1
    assert _rounds(first, 0) == [1, 2]  # round 1 came from the checkpoint, not a re-run
    # the retry logs to the same W&B run; the failed attempt's offline run is set aside
    wandb_dir = first / "trials" / "trial_000" / "wandb"
    live = list(wandb_dir.glob("offline-run-*"))
    old = list((wandb_dir / "superseded").glob("offline-run-*"))
    assert len(live) == 1 and len(old) == 1
    assert live[0].name.split("-")[-2:] == old[0].name.split("-")[-2:]  # same run id
    assert _trial(first, 1)["attempts"] == 2
    assert "InjectedTrialFault" in out["rows"][-1]["error"]
    done = (first / "trials" / "trial_000" / "summary.json").stat().st_mtime_ns

    # the faults travel with the sweep's saved state: attempt 3 of trial 1 runs clean
    out = tuner.sweep(make_cfg(*overrides, "sweep.resume=true", run_dir=tmp_path / "second"))
    assert out["sweep_dir"] == str(first)  # continued in place
    assert {r["trial"]: r["status"] for r in out["rows"]} == {
        "trial_000": "completed",
        "trial_001": "completed",
    }
    assert _trial(first, 0)["attempts"] == 2  # the finished trial did not run again
    assert (first / "trials" / "trial_000" / "summary.json").stat().st_mtime_ns == done
    resumed = _trial(first, 1)
    assert resumed["attempts"] == 3 and resumed["resumed_from_round"] == 2
    assert _rounds(first, 1) == [1, 2]


def test_bad_sweep_override_is_a_clear_cli_error(tmp_path):
    proc = launch(
        ["+experiment=smoke", "sweep=noniid", "sweep.num_samples=0", f"hydra.run.dir={tmp_path}"],
        {**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "sweeps/noniid.yaml" in proc.stderr and "sweep.num_samples" in proc.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_sweep_whose_every_trial_failed_writes_its_table_and_fails(make_cfg, tmp_path):
    cfg = make_cfg("sweep=noniid", "sweep.num_samples=1", "sweep.scheduler.name=none",
                   "sweep.max_failures=0", *FAST, run_dir=tmp_path)
    cfg["sweep"]["faults"] = [{"trial": 0, "round": 1, "attempts": 5}]
    with pytest.raises(tuner.SweepFailed, match=r"every trial of sweep 'noniid' failed; the "
                                                r"first: InjectedTrialFault"):
        tuner.sweep(cfg)
    with open(tmp_path / "sweep_results.csv") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["error"]


@pytest.mark.slow  # one trial's round on a local Ray (~12 s)
def test_a_metric_the_trials_do_not_report_is_a_clear_cli_error(tmp_path):
    # a misspelt val/ name is refused before any trial (test_sweeps.py); a key of another
    # namespace (here FedDF's, under FedAvg) shows when the first trial reports
    proc = launch(
        ["+experiment=smoke", "sweep=lr", "sweep.num_samples=1", "sweep.metric=feddf/kl",
         f"hydra.run.dir={tmp_path}"],
        {**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedray: error: sweep 'lr' (") and "sweep.metric: 'feddf/kl' is " \
        "not reported by the trials; they report " in last and "val/acc," in last
    assert "Traceback" not in proc.stderr and "config/" not in last


# --- slow: real processes started and stopped by the test --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each started process group (Ray's daemons are in it), SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _env() -> dict:
    # a local test cluster: opt out of Ray's token auth, as its own warning says; its workers at
    # the suite's priority, as the README's Cluster section advises (not Ray's niceness 15)
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT),
            "RAY_worker_niceness": "0"}


def _launch(*args: str, timeout: int, **kw) -> subprocess.CompletedProcess:
    return launch(list(args), _env(), timeout=timeout, **kw)


@pytest.mark.slow
def test_sweep_runs_trials_on_both_nodes_of_a_two_node_cluster(tmp_path, cache_dir):
    # its own temp dir, so that no other ray.init() on this machine finds this cluster
    temp = Path("/tmp") / f"fr2n{os.getpid()}"
    port = _free_port()
    node = ["--num-cpus=1", "--block", "--disable-usage-stats", "--object-store-memory=80000000"]

    def ports() -> list[str]:
        return [
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ]

    ray_cli = str(Path(sys.executable).with_name("ray"))
    head_cmd = [
        ray_cli, "start", "--head", f"--port={port}", f"--temp-dir={temp}",
        "--include-dashboard=false", f"--dashboard-port={_free_port()}",
        '--resources={"head_node": 1}', *node, *ports(),
    ]  # fmt: skip
    worker_cmd = [
        ray_cli, "start", f"--address=127.0.0.1:{port}", '--resources={"worker_node": 1}',
        *node, *ports(),
    ]  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        for cmd, log in ((head_cmd, "head.log"), (worker_cmd, "worker.log")):
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=_env(),
                    start_new_session=True,
                    stdout=open(tmp_path / log, "w"),  # noqa: SIM115 - closed with the process
                    stderr=subprocess.STDOUT,
                )
            )
            time.sleep(6)
        sweep_dir = tmp_path / "sweep"
        proc = _launch(
            "+experiment=smoke",
            "sweep=noniid",
            "sweep.num_samples=2",
            "sweep.scheduler.name=none",
            "sweep.driver_cpus=0.5",  # + one 0.5-CPU actor: a trial fills one 1-CPU node
            f"ray.address=127.0.0.1:{port}",
            "ray.max_actors=1",
            "fl.rounds=1",
            f"data.cache_dir={cache_dir}",
            f"hydra.run.dir={sweep_dir}",
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        nodes = {_trial(sweep_dir, i)["node_id"] for i in (0, 1)}
        assert len(nodes) == 2, nodes  # one trial per node
        summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
        assert summary["status"]["completed"] == 2
    finally:
        _stop(procs[::-1])
        shutil.rmtree(temp, ignore_errors=True)  # the cluster's sessions and logs


@pytest.mark.slow
def test_sweep_killed_midway_resumes_without_rerunning_finished_trials(tmp_path, cache_dir):
    args = [
        "+experiment=smoke",
        "sweep=local_epochs",
        "sweep.num_samples=3",
        "ray.num_cpus=2",
        "ray.max_actors=1",
        "fl.rounds=2",
        f"data.cache_dir={cache_dir}",
    ]
    first = tmp_path / "a"
    proc = subprocess.Popen(
        [sys.executable, "launch.py", *args, f"hydra.run.dir={first}"],
        cwd=ROOT,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "err.log", "w"),  # noqa: SIM115 - the child holds it
    )
    done = first / "trials" / "trial_000" / "summary.json"
    # one trial fits at a time, so trial 1 starting means Tune has finished trial 0
    started = first / "trials" / "trial_001" / "trial.json"
    try:
        deadline = time.monotonic() + 240
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert started.exists() and done.exists(), "the first trial never finished"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Tune saves its state and exits
        proc.wait(timeout=60)
    finally:
        _stop([proc])
    assert proc.returncode == 130  # stopped by the user: not a config error (2)
    err = (tmp_path / "err.log").read_text()
    assert "sweep.resume=true" in err and "Tuner.restore" not in err, err[-3000:]
    assert not (first / "sweep_results.csv").exists()  # it really was cut short
    stamp = done.stat().st_mtime_ns
    res = _launch(*args, "sweep.resume=true", f"hydra.run.dir={tmp_path / 'b'}", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(first / "sweep_results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert sorted((r["trial"], r["status"]) for r in table) == [
        ("trial_000", "completed"),
        ("trial_001", "completed"),
        ("trial_002", "completed"),
    ]
    assert done.stat().st_mtime_ns == stamp
    assert _trial(first, 0)["attempts"] == 1


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("backend", ["inprocess", "local"])
def test_a_trial_in_a_reused_process_runs_as_in_a_fresh_one(make_cfg, tmp_path, backend):
    # one trial fits the 2 CPUs: with sweep.reuse_processes the second runs in the first's
    # process (no new worker, no imports) and, with Ray actors, on the first's client actors;
    # nothing of the first run changes what the second computes
    pids, rows, logs = {}, {}, {}
    for reuse in (True, False):
        sweep_dir = tmp_path / f"reuse-{reuse}"
        driver_cpus = 2 if backend == "inprocess" else 1  # Ray actors: 2 x 0.5 CPU beside it
        cfg = make_cfg("sweep=local_epochs", f"ray={backend}", "fl.rounds=2", "fl.num_clients=3",
                       "sweep.num_samples=2", f"sweep.driver_cpus={driver_cpus}",
                       f"sweep.reuse_processes={str(reuse).lower()}", run_dir=sweep_dir)
        assert tuner.sweep(cfg)["status"]["completed"] == 2
        pids[reuse] = {_trial(sweep_dir, i)["pid"] for i in (0, 1)}
        trials = [sweep_dir / "trials" / trainable.trial_name(i) for i in (0, 1)]
        rows[reuse] = [
            [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
             for line in (t / "metrics.jsonl").open()]
            for t in trials
        ]  # fmt: skip
        logs[reuse] = [(t / "launch.log").read_text() for t in trials]
    assert len(pids[True]) == 1 and len(pids[False]) == 2
    assert rows[True] == rows[False]
    reused = "client actors from the last trial in this process: 2 reused, 0 started"
    assert reused not in logs[True][0] and reused not in "".join(logs[False])
    assert (reused in logs[True][1]) == (backend == "local"), logs[True][1]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_inprocess_trials_are_one_bundle_and_run_their_clients_inside(make_cfg, tmp_path):
    # ray=inprocess: each trial is one process holding its clients; two trials fit the 2 CPUs
    cfg = make_cfg("sweep=local_epochs", "ray=inprocess", "fl.rounds=2", "fl.num_clients=3")
    out = tuner.sweep(cfg)
    sweep_dir = tmp_path / "run"
    assert out["trials"] == 4
    for i in range(4):
        info = _trial(sweep_dir, i)
        assert info["bundles"] == [{"CPU": 1.0}]  # no bundle for client actors
        rows = [json.loads(s) for s in
                (sweep_dir / "trials" / trainable.trial_name(i) / "metrics.jsonl").open()]
        assert [(r["round"], r["actors"], r["clients"]) for r in rows] == [(1, 1, 3), (2, 1, 3)]


@pytest.mark.slow
def test_a_run_joins_the_cluster_in_ray_address_and_starts_none(tmp_path, cache_dir):
    # RAY_ADDRESS (what `ray job submit` sets) with ray.address=null: join it, as Ray's own
    # tools do; a run used to pass the local-start options to it and die with a traceback
    temp = Path("/tmp") / f"frja{os.getpid()}"
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=2",
         "--include-dashboard=false", f"--dashboard-port={_free_port()}", "--block",
         "--disable-usage-stats", "--object-store-memory=80000000",
         f"--dashboard-agent-listen-port={_free_port()}",
         f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"],
        env=_env(), start_new_session=True, stdout=open(tmp_path / "head.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(6)
        env = {**_env(), "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_TMPDIR": str(tmp_path / "own")}
        out = launch(["+experiment=smoke", "fl.rounds=1", f"data.cache_dir={cache_dir}",
                      f"hydra.run.dir={tmp_path / 'run'}"], env, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert (tmp_path / "run" / "summary.json").exists()
        assert not (tmp_path / "own").exists()  # no Ray of its own was started
    finally:
        _stop([head])
        shutil.rmtree(temp, ignore_errors=True)
