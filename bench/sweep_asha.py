"""The ASHA saving: one sweep run twice, with early stopping and without; prints both figures.

    python bench/sweep_asha.py                                  # noniid on smoke, 8 trials
    python bench/sweep_asha.py --experiment pill_noniid --rounds 10 --trials 8
    python bench/sweep_asha.py --only asha -- data.train_per_class=40

Each variant is a plain `launch.py ... sweep=NAME` run in a subprocess (its own local Ray); the
table compares trial-rounds run (ASHA) with every trial run to the end (none), the wall times,
and whether early stopping still found the best trial.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_variant(args: argparse.Namespace, scheduler: str, out_dir: Path) -> dict:
    """Run the sweep with `scheduler` (asha | none); return its sweep_summary.json."""
    cmd = [
        sys.executable,
        "launch.py",
        f"+experiment={args.experiment}",
        f"sweep={args.sweep}",
        f"sweep.num_samples={args.trials}",
        f"fl.rounds={args.rounds}",
        f"hydra.run.dir={out_dir}",
        *([] if scheduler == "asha" else ["sweep.scheduler.name=none"]),
        *args.overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{scheduler}: launch.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out_dir / "sweep_summary.json").read_text())
    summary["process_s"] = time.perf_counter() - t0
    return summary


def main() -> None:
    """Parse arguments, run the variants, print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experiment", default="smoke")
    p.add_argument("--sweep", default="noniid")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--only", choices=("asha", "none"), default=None)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_sweep_asha")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = p.parse_args()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    results = {}
    for scheduler in ("asha", "none"):
        if args.only in (None, scheduler):
            results[scheduler] = run_variant(args, scheduler, args.out / f"{stamp}-{scheduler}")
    print(f"\n{args.sweep} sweep on {args.experiment}: {args.trials} trials x {args.rounds} rounds")
    print(f"{'scheduler':<10} {'trial-rounds':>14} {'saved':>7} {'wall s':>8}  best trial")
    for scheduler, s in results.items():
        best = s["best"] or {}
        metric = s["metric"]
        print(
            f"{scheduler:<10} {s['trial_rounds']:>6} of {s['trial_rounds_max']:<5} "
            f"{100 * s['trial_rounds_saved']:>6.0f}% {s['wall_s']:>8.0f}  "
            f"{best.get('trial')} {metric}={best.get(metric)}"
        )
        print(f"{'':<10} {s['results_md']}")


if __name__ == "__main__":
    main()
