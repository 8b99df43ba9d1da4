"""Build the default synthetic dataset from an empty cache and print where the time goes.

Prints total seconds, per-stage seconds (from meta.json), crops/s, CPU seconds, the load average
and peak memory three ways: ru_maxrss of this process, ru_maxrss of its largest reaped child (Ray's
workers are grandchildren and rarely show up there), and the peak summed RSS / PSS of the whole
process tree, sampled every second (PSS splits shared pages such as Ray's object store fairly, so
it is the honest total).

    python bench/synth_build.py                       # default config, all cores
    python bench/synth_build.py --workers 2 detection_scenes=0 num_pills=100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONF = Path(__file__).resolve().parents[1] / "conf" / "data" / "synthetic.yaml"


class TreeMemory:
    """Samples summed RSS / PSS and CPU seconds of this process and its descendants, in a thread."""

    def __init__(self, every_s: float = 1.0) -> None:
        import psutil

        self._psutil = psutil
        self.every_s = every_s
        self.peak_rss = self.peak_pss = 0
        self.per_process: dict[str, int] = {}  # "pid name" -> peak PSS
        self.cpu_s: dict[int, float] = {}  # pid -> user + system seconds, last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = self._psutil.Process()
        rss = pss = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            try:
                t = p.cpu_times()
                self.cpu_s[p.pid] = t.user + t.system
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                pass
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            name = f"{p.pid} {p.name()}"
            self.per_process[name] = max(self.per_process.get(name, 0), getattr(info, "pss", 0))
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"override {text!r}: expected key=value")
    return key, yaml.safe_load(value)


def main() -> None:
    """Parse arguments, build into a fresh temporary cache, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="parallel tasks (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the built dataset and print its path")
    ap.add_argument("overrides", nargs="*", help="data config overrides, key=value (YAML values)")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = yaml.safe_load(CONF.read_text())
    cfg.update(dict(_parse_override(o) for o in args.overrides))
    cfg["workers"] = args.workers
    load_before = os.getloadavg()

    from fedray.pill.synth import build_synthetic, synth_summary

    cache = Path(tempfile.mkdtemp(prefix="fedray-synth-bench-"))
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        info = build_synthetic(cfg, args.seed, cache)
        total = time.perf_counter() - t0
    summary = synth_summary(info)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    crops = summary["crops"]
    print(json.dumps({
        "total_s": round(total, 2),
        "stage_s": summary["stage_seconds"],
        "crops": crops,
        "crops_per_s": round(crops / total, 1),
        # CPU seconds of the whole process tree (sampled; misses at most the last second of each)
        "tree_cpu_s": round(sum(mem.cpu_s.values()), 1),
        "detection_scenes": summary["detection_scenes"],
        "workers": args.workers or os.cpu_count(),
        "cpus": os.cpu_count(),
        "peak_rss_mb": {"self": round(self_rss), "largest_child": round(child_rss),
                        "tree_rss_sum": round(mem.peak_rss / 2**20),
                        "tree_pss_sum": round(mem.peak_pss / 2**20)},
        "peak_pss_mb_per_process": {k: round(v / 2**20) for k, v in sorted(
            mem.per_process.items(), key=lambda kv: -kv[1])[:8]},
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }, indent=1))
    if args.keep:
        print(f"dataset: {info.root}")
    else:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
