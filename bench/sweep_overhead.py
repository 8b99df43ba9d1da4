"""What a sweep trial pays before its first round: a Ray Tune sweep of K short trials against
K bare loops doing the same training one after another.

    python bench/sweep_overhead.py                         # 4 trials of tiny100 at 10 rounds, x3
    python bench/sweep_overhead.py --trials 8 --rounds 5 --backends inprocess
    python bench/sweep_overhead.py --concurrent 2          # Tune runs two trials at a time
    python bench/sweep_overhead.py --reuse false           # every trial in a process of its own

The sweep is `sweeps/lr.yaml` (client lr x momentum: the same compute in every trial) run with
`python launch.py <workload> sweep=lr sweep.num_samples=K sweep.scheduler.name=none`, one trial
at a time by default (`--concurrent`), on each client backend (`--backends`: `ray`, the trials'
clients in actors of their own; `inprocess`, in the trial's process) and with
`sweep.reuse_processes` on and off (`--reuse`: the next trial in a finished trial's process, or
every trial in a new one). The baseline is
bench/bare_loop.py run K times in a row on the same data, shards, model and rounds (one thread,
as fedray's actors). Printed: wall and CPU seconds of the whole process tree (the sweep's Ray,
its trial processes and their actors; the K bare processes summed), the ratios, the peak memory,
and the sweep's own timer (Ray start to results) less the trials' rounds, per trial: what a trial
costs besides its training (its process, imports, data, actors, evaluation, files).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from overhead import (
    BACKENDS,
    WORKLOADS,
    _num,
    bare_run,
    compose,
    fedray_cmd,
    measure,
    prepare,
)
from scratch import scratch_dir


def bare_runs(job: Path, trials: int) -> dict:
    """The bare loop `trials` times in a row: wall and CPU summed, the largest peak."""
    runs = []
    for _ in range(trials):
        runs.append(bare_run(job))
    return {
        "wall_s": sum(r["wall_s"] for r in runs),
        "cpu_s": sum(r["cpu_s"] for r in runs),
        "peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
        "loop_s": sum(r["loop_s"] for r in runs),
    }


def rounds_s(sweep_dir: Path) -> list[float]:
    """Per trial: the seconds its rounds took (fedray's `time/round_s`, summed)."""
    return [
        sum(json.loads(line)["time/round_s"] for line in path.read_text().splitlines())
        for path in sorted((sweep_dir / "trials").glob("*/metrics.jsonl"))
    ]


def sweep_run(
    overrides: list[str], backend: str, reuse: str, trials: int, concurrent: int, run_dir: Path
) -> dict:
    """The sweep as a user launches it; its measured figures and the trials' rounds."""
    cmd = fedray_cmd(
        [*overrides, *BACKENDS[backend], "sweep=lr", f"sweep.num_samples={trials}",
         "sweep.scheduler.name=none", f"sweep.max_concurrent_trials={concurrent}",
         f"sweep.reuse_processes={reuse}"],
        run_dir,
    )  # fmt: skip
    f = measure(cmd)
    f.pop("stdout")
    summary = json.loads((run_dir / "sweep_summary.json").read_text())
    f["completed"] = int(summary["status"]["completed"])
    f["sweep_wall_s"] = float(summary["wall_s"])  # the sweep's own timer: Ray start to results
    f["rounds_s"] = rounds_s(run_dir)
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10, help="rounds of each trial")
    ap.add_argument("--concurrent", type=int, default=1, help="trials Tune runs at a time")
    ap.add_argument("--backends", default="ray,inprocess")
    ap.add_argument(
        "--reuse",
        default="true,false",
        help="sweep.reuse_processes values to time: a finished trial's process "
        "runs the next trial (true) or every trial starts its own (false)",
    )
    ap.add_argument("--workload", choices=["tiny100", "five"], default="tiny100")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if set(backends) - {"ray", "inprocess", "ray-nice15"}:
        ap.error("--backends: ray, inprocess or ray-nice15 (a sweep starts its own Ray)")
    reuses = [r for r in args.reuse.split(",") if r]
    if set(reuses) - {"true", "false"}:
        ap.error("--reuse: true, false or both")
    cache = scratch_dir("fedray-sweep-overhead-cache-")
    work = scratch_dir("fedray-sweep-overhead-")
    overrides = [*WORKLOADS[args.workload], f"fl.rounds={args.rounds}", "logger=jsonl",
                 f"data.cache_dir={cache}"]  # fmt: skip
    job = prepare(overrides, work, threads=1)
    rounds = int(compose(overrides)["fl"]["rounds"])
    print(f"{args.workload} x {args.trials} trials, {rounds} rounds each, "
          f"{args.concurrent} at a time, median of {args.repeats} alternating repeats",
          flush=True)  # fmt: skip
    sides = [(b, r) for b in backends for r in reuses]
    runs: dict[Any, list[dict]] = {"bare": [], **{side: [] for side in sides}}
    for i in range(args.repeats):  # alternated, so that a busy spell slows every side alike
        runs["bare"].append(bare_runs(job, args.trials))
        line = f"  [#{i + 1}] bare {runs['bare'][-1]['wall_s']:.1f}s"
        for backend, reuse in sides:
            f = sweep_run(overrides, backend, reuse, args.trials, args.concurrent,
                          work / f"sweep-{backend}-{reuse}-{i}")  # fmt: skip
            f["rounds_sum_s"] = sum(f["rounds_s"])
            f["outside_s"] = (f["sweep_wall_s"] - f["rounds_sum_s"]) / max(1, len(f["rounds_s"]))
            runs[(backend, reuse)].append(f)
            line += f" | {backend} reuse={reuse} {f['wall_s']:.1f}s"
        print(line, flush=True)
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0] if _num(rs[0][k])}
           for side, rs in runs.items()}  # fmt: skip
    bare = med["bare"]
    print(f"bare loop x {args.trials} in a row: {bare['wall_s']:.2f}s wall "
          f"({bare['loop_s']:.2f}s in the loops), {bare['cpu_s']:.1f}s CPU, peak "
          f"{bare['peak_pss_mb']:.0f} MB", flush=True)  # fmt: skip
    for backend, reuse in sides:
        f = med[(backend, reuse)]
        print(
            f"sweep {backend}, reuse_processes={reuse}: {f['completed']:.0f}/{args.trials} trials "
            f"completed | wall {f['wall_s']:.2f}s (ratio {f['wall_s'] / bare['wall_s']:.2f}) | "
            f"CPU {f['cpu_s']:.1f}s (ratio {f['cpu_s'] / bare['cpu_s']:.2f}) | peak PSS "
            f"{f['peak_pss_mb']:.0f} MB | the trials' rounds {f['rounds_sum_s']:.2f}s, the "
            f"sweep outside them {f['outside_s']:.2f}s a trial (Ray start, trial processes, "
            f"imports, data, actors, evaluation and results) | the process outside the sweep's "
            f"own timer (interpreter, imports, config, Ray's stop): "
            f"{f['wall_s'] - f['sweep_wall_s']:.2f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
