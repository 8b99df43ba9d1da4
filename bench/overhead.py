"""Whole-process overhead: `python launch.py ...` against a bare sequential PyTorch loop.

    python bench/overhead.py                        # every workload, median of 3 alternating pairs
    python bench/overhead.py --only tiny100 --repeats 1
    python bench/overhead.py --only crossdevice --rounds 5
    python bench/overhead.py --only tiny100 --backends ray,inprocess,joined,kept
    python bench/overhead.py --only tiny100 --backends ray,ray-nice15,inprocess --busy 2

Each workload runs as subprocesses, alternated repeat by repeat so that a busy machine slows
them alike: fedray on each client backend (`--backends`: Ray actors on a Ray the run starts,
`ray.backend=inprocess`, and on a cluster this script starts with `ray start`: `joined`, with
`ray.address=auto`, and `kept`, with `ray.keep_actors=true` too, after one untimed run that
starts the kept actors; for those two the cluster's processes are also counted, separately;
`ray-nice15`: Ray actors at Ray's own worker niceness of 15 instead of fedray's 0),
as `python launch.py +experiment=...` with the defaults a user gets (evaluation, metrics.jsonl,
checkpoints and plots where the experiment has them), and bench/bare_loop.py doing
the same local training (same data, shards, sampled clients, model, epochs, batch size, lr). The
dataset is built into a shared cache before either is timed. Every process tree is sampled with
psutil (the driver, Raylet, GCS, workers): printed are wall seconds, CPU seconds (user + system
of the whole tree: robust to a machine shared with other jobs), peak memory of the tree (sum of
PSS, so shared libraries count once), fedray's start-up before round 1, and the ratios.
`--busy N` keeps N busy loops running beside every timed command: another program at work on
the same machine, which Ray's default niceness makes its workers yield to.

Workloads:
- `five`: 5 clients, 2 local epochs, 5 rounds (the issue's SqueezeNet workload; `--squeezenet`
  runs it with SqueezeNet at 64 px, the default is tiny_cnn, affordable on a shared 2-core box).
- `tiny100`: 100 clients, 10 per round, a tiny CNN, 30 rounds (bench/fl_overhead.py's `tiny`).
- `crossdevice`: +experiment=cifar_crossdevice (1,000 clients, 50 per round, CIFAR-shaped),
  `--rounds` rounds; rounds per second of both.
- `crossdevice_10k`, `crossdevice_1k`: +experiment=crossdevice_10k (10,000 clients, 100 per
  round, 20 rounds) and the same rounds drawn from 1,000 clients (not run by default).
The round-loop-only figure (Ray already up, actors timed from inside) stays in bench/fl_overhead.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from fl_overhead import SCENARIOS as ROUND_LOOP_SCENARIOS  # bench/ is on sys.path
from scratch import scratch_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS: dict[str, list[str]] = {
    "five": [
        "+experiment=smoke",
        "ray.client_cpus=1",
        "model=tiny_cnn",
        "fl.trainable=all",
        "fl.cache_features=false",
        "fl.num_clients=5",
        "fl.rounds=5",
        "data.num_classes=20",
        "data.image_size=64",
        "data.train_per_class=50",
        "data.val_per_class=10",
        "partition=pathological",
        "partition.classes_per_client=4",
        "client.epochs=2",
        "client.batch_size=32",
    ],
    # bench/fl_overhead.py's `tiny` scenario, as a user launches it
    "tiny100": ["+experiment=smoke", "fl.cache_features=false", *ROUND_LOOP_SCENARIOS["tiny"]],
    "crossdevice": ["+experiment=cifar_crossdevice"],
    # 10,000 clients, 100 per round, 20 rounds; and the same round (100 clients of 5 samples)
    # drawn from 1,000 clients: only the number of clients differs
    "crossdevice_10k": ["+experiment=crossdevice_10k"],
    "crossdevice_1k": [
        "+experiment=crossdevice_10k",
        "fl.num_clients=1000",
        "data.train_size=5000",
    ],
}
SQUEEZENET = ["model=squeezenet", "model.pretrained=null"]
# what each `--backends` name adds to the command line; `joined` and `kept` join a cluster this
# script starts (`ray start --head`), whose own processes are outside the timed process tree
BACKENDS: dict[str, list[str]] = {
    "ray": ["ray.backend=ray"],
    "inprocess": ["ray.backend=inprocess"],
    "joined": ["ray.backend=ray", "ray.address=auto"],
    "kept": ["ray.backend=ray", "ray.address=auto", "ray.keep_actors=true"],
    # Ray's own niceness for its workers (fedray's default runs them at the driver's: 0)
    "ray-nice15": ["ray.backend=ray", "ray.worker_nice=15"],
}


def compose(overrides: list[str]) -> dict:
    """The config exactly as launch.py resolves it."""
    from fedray.config import compose_plain

    return compose_plain(overrides)


def prepare(overrides: list[str], work: Path, threads: int) -> Path:
    """Build the dataset into the shared cache and write the bare loop's job; returns its path."""
    from fedray.data.partition import partition
    from fedray.data.sources import build_dataset
    from fedray.fl.server import clients_per_round
    from fedray.tasks import build_task

    cfg = compose(overrides)
    info = build_dataset(cfg["data"], int(cfg["seed"]))
    labels = build_task(cfg.get("task")).partition_keys(info.root, "train")
    n = int(cfg["fl"]["num_clients"])
    parts = partition(labels, cfg["partition"], n, int(cfg["seed"]))
    np.savez(work / "parts.npz", **{f"c{i}": p for i, p in enumerate(parts)})
    opt = cfg["client"]["optimizer"]
    job = {
        "root": str(info.root),
        "parts": str(work / "parts.npz"),
        "num_clients": n,
        "num_classes": info.num_classes,
        "model": cfg["model"],
        "seed": int(cfg["seed"]),
        "rounds": int(cfg["fl"]["rounds"]),
        "per_round": clients_per_round(cfg["fl"]),
        "epochs": int(cfg["client"]["epochs"]),
        "batch_size": int(cfg["client"]["batch_size"]),
        "lr": float(opt["lr"]),
        "momentum": float(opt.get("momentum", 0.0)),
        "eval_every": int(cfg["fl"]["eval_every"]),
        "threads": threads,
    }
    path = work / "job.json"
    path.write_text(json.dumps(job))
    return path


def cluster_roots() -> list[psutil.Process]:
    """The processes of a cluster started with `ray start` (its GCS and raylet, whose children
    are its workers: the joined runs' actors), not part of any command's own tree."""
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("gcs_server", "raylet")]


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def measure(cmd: list[str], first_row: Path | None = None, every: float = 0.25) -> dict:
    """Run `cmd`; wall s, CPU s and peak PSS/RSS of its whole process tree, sampled; and the
    same with a running cluster's processes added (`cluster_*`: what they spent during it)."""
    roots = cluster_roots()
    before: dict[int, float] = {}
    for r in roots:
        for p in [r, *r.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                before[p.pid] = _cpu(p)
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile()  # not a pipe: a long summary would fill it and block the run
    proc = psutil.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    cpu: dict[int, float] = {}
    cluster_cpu: dict[int, float] = {}
    peak_pss = peak_rss = peak_cluster = 0
    t_first = None
    while proc.poll() is None:
        pss = rss = 0
        try:
            tree = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            tree = []
        cluster_pss = 0
        for r in roots:
            with contextlib.suppress(psutil.Error):
                for p in [r, *r.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error), p.oneshot():
                        cluster_pss += getattr(p.memory_full_info(), "pss", 0)
                        cluster_cpu[p.pid] = _cpu(p) - before.get(p.pid, 0.0)
        for p in tree:
            try:
                with p.oneshot():
                    mem = p.memory_full_info()
                    t = p.cpu_times()
                pss += getattr(mem, "pss", mem.rss)
                rss += mem.rss
                cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        peak_cluster = max(peak_cluster, cluster_pss + pss)
        if t_first is None and first_row is not None and _has_row(first_row):
            t_first = time.perf_counter() - t0
        time.sleep(every)
    log.seek(0)
    out = log.read().decode(errors="replace")
    log.close()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": sum(cpu.values()),
        "peak_pss_mb": peak_pss / 2**20,
        "peak_rss_mb": peak_rss / 2**20,
        "first_row_s": t_first,
        "cluster_cpu_s": sum(cpu.values()) + sum(cluster_cpu.values()),
        "cluster_peak_pss_mb": peak_cluster / 2**20,
        "stdout": out,
    }


def _has_row(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def fedray_cmd(overrides: list[str], run_dir: Path) -> list[str]:
    """The launch.py command line a user would type (plus where to write)."""
    return [sys.executable, "launch.py", *overrides, f"hydra.run.dir={run_dir}"]


def bare_run(job: Path) -> dict:
    """bench/bare_loop.py on `job`: measured, with the figures it prints (loop_s, val_acc)."""
    b = measure([sys.executable, str(ROOT / "bench" / "bare_loop.py"), str(job)])
    b.update(json.loads(b.pop("stdout").strip().splitlines()[-1]))
    return b


def run_workload(
    name: str, overrides: list[str], repeats: int, work: Path, threads: int, backends: list[str]
) -> dict:
    """Alternate the bare loop and fedray on each backend `repeats` times; medians of each."""
    job = prepare(overrides, work, threads)
    runs: dict[str, list[dict]] = {"bare": [], **{b: [] for b in backends}}
    for i in range(repeats):
        b = bare_run(job)
        runs["bare"].append(b)
        line = f"  [{name} #{i + 1}] bare {_brief(b)}"
        for backend in backends:
            run_dir = work / f"fedray-{backend}-{i}"
            f = measure(
                fedray_cmd([*overrides, *BACKENDS[backend]], run_dir),
                first_row=run_dir / "metrics.jsonl",
            )
            f.pop("stdout")
            rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
            f["rounds_s"] = sum(r["time/round_s"] for r in rows)
            f["round1_s"] = rows[0]["time/round_s"]
            summary = json.loads((run_dir / "summary.json").read_text())
            f["val_acc"] = summary.get("val/acc")
            f["startup_s"] = (f["first_row_s"] or float("nan")) - f["round1_s"]
            runs[backend].append(f)
            line += f" | fedray {backend} {_brief(f)}"
        print(line, flush=True)
    return {
        side: {k: statistics.median(r[k] for r in rs) for k in rs[0] if _num(rs[0][k])}
        for side, rs in runs.items()
    }


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _brief(r: dict) -> str:
    return f"{r['wall_s']:.1f}s wall, {r['cpu_s']:.1f}s CPU, {r['peak_pss_mb']:.0f} MB"


def report(name: str, med: dict, rounds: int) -> None:
    """Print one workload's medians and ratios, one line per backend."""
    b = med["bare"]
    for backend, f in med.items():
        if backend == "bare":
            continue
        print(
            f"[{name}] fedray {backend} | wall: bare {b['wall_s']:.2f}s, fedray "
            f"{f['wall_s']:.2f}s (ratio {f['wall_s'] / b['wall_s']:.2f}) | CPU: bare "
            f"{b['cpu_s']:.1f}s, fedray {f['cpu_s']:.1f}s (ratio {f['cpu_s'] / b['cpu_s']:.2f}) | "
            f"peak PSS of the tree: bare {b['peak_pss_mb']:.0f} MB, fedray "
            f"{f['peak_pss_mb']:.0f} MB (RSS sum {f['peak_rss_mb']:.0f} MB) | fedray start-up "
            f"before round 1 {f['startup_s']:.2f}s (the bare loop's wall outside its loop, "
            f"interpreter and torch import included: {b['wall_s'] - b['loop_s']:.2f}s) | "
            f"rounds/s: bare {rounds / b['loop_s']:.3f}, fedray {rounds / f['rounds_s']:.3f} | "
            f"val/acc bare {b['val_acc']:.4f} fedray {f['val_acc']:.4f}",
            flush=True,
        )
        if backend in ("joined", "kept"):  # its actors run in the cluster `ray start` started
            print(
                f"[{name}] fedray {backend}, the cluster's processes included | CPU "
                f"{f['cluster_cpu_s']:.1f}s (ratio {f['cluster_cpu_s'] / b['cpu_s']:.2f}) | "
                f"peak PSS {f['cluster_peak_pss_mb']:.0f} MB",
                flush=True,
            )


def main() -> None:
    """Run the chosen workloads and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=list(WORKLOADS), action="append")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the crossdevice workload")
    ap.add_argument("--squeezenet", action="store_true", help="`five` with SqueezeNet at 64 px")
    ap.add_argument(
        "--bare-threads",
        type=int,
        default=1,
        help="torch threads of the bare loop (fedray's actors run 1 each); 0: torch's default",
    )
    ap.add_argument("--cache", default=None, help="dataset cache (default: a fresh temp dir)")
    ap.add_argument(
        "--backends",
        default="ray,inprocess",
        help=f"fedray's client backends to time, comma-separated, of {sorted(BACKENDS)}: "
        "joined = ray.address=auto, kept = that and ray.keep_actors=true (a cluster is started "
        "for them, and a kept run warms its actors before the timed ones)",
    )
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="CPU-bound busy loops (plain processes at the default priority) kept running beside "
        "every timed command: a machine where something else is working too",
    )
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if set(backends) - set(BACKENDS):
        ap.error(f"--backends: {sorted(set(backends) - set(BACKENDS))} not in {sorted(BACKENDS)}")
    cluster = bool({"joined", "kept"} & set(backends))
    if cluster:
        start_cluster()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        run_all(args, backends)
    finally:
        for p in busy:
            p.kill()
        if cluster:
            subprocess.run(["ray", "stop", "--force"], capture_output=True, check=False)


def start_cluster() -> None:
    """A local cluster for `joined` and `kept` runs to join, as a user starts one (its workers at
    the priority of fedray's own local Ray, as the README's Cluster section advises)."""
    cmd = ["ray", "start", "--head", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
           "--disable-usage-stats"]
    env = {**os.environ, "RAY_worker_niceness": "0"}
    subprocess.run(cmd, capture_output=True, check=True, env=env)


def run_all(args: argparse.Namespace, backends: list[str]) -> None:
    """Every chosen workload, its pairs and its report."""
    cache = args.cache or str(scratch_dir("fedray-overhead-cache-"))
    print(
        f"cores={os.cpu_count()} load={os.getloadavg()[0]:.1f} repeats={args.repeats} "
        f"bare_threads={args.bare_threads or 'torch default'} busy_loops={args.busy}"
    )
    for name in args.only or ["five", "tiny100", "crossdevice"]:
        over = [*WORKLOADS[name], "logger=jsonl", f"data.cache_dir={cache}"]
        if name == "five" and args.squeezenet:
            over += SQUEEZENET
        if name == "crossdevice":
            over.append(f"fl.rounds={args.rounds}")
        rounds = int(compose(over)["fl"]["rounds"])
        work = scratch_dir(f"fedray-overhead-{name}-")
        if "kept" in backends:  # the first run with kept actors starts them: not what is timed
            warm = fedray_cmd([*over, *BACKENDS["kept"]], work / "fedray-kept-warm")
            subprocess.run(warm, capture_output=True, check=True, cwd=ROOT)
        med = run_workload(name, over, args.repeats, work, args.bare_threads, backends)
        report(name, med, rounds)


if __name__ == "__main__":
    main()
