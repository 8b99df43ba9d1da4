"""FL overhead: the same local training done by a plain sequential PyTorch loop and by fedray.

    python bench/fl_overhead.py                 # both scenarios, median of 3 repeats
    python bench/fl_overhead.py --only tiny --repeats 1

Scenario `full`: 5 clients, SqueezeNet with every layer trained, 3 rounds x 1 local epoch.
Scenario `full_half_cpu`: the same with 0.5 CPU per actor (two single-thread actors per core).
Scenario `tiny`: 100 clients, 10 sampled per round, a tiny CNN, 30 rounds.
Scenario `cached`: classifier-only FL (frozen, public-pretrained backbone) with and without cached
features: per-round seconds and final accuracy, once with SqueezeNet's own head (a 1x1 conv on the
last 3 x 3 map) and once with pill_noniid's (all 8 Fire modules max-pooled: one vector per image).
Features are cached in fp32 here, so both runs see the same numbers.

(a) is a plain loop over the sampled clients in one process (torch on all cores), averaging the
state dicts with no Ray, no logging, no checkpoints. (b) is `fedray.run.run` with everything on
(metrics.jsonl, checkpoints, evaluation each round). Printed: median seconds of the round loop and
of the whole run (Ray start and actor spawn included), and (b)/(a).

fedray runs with the default `ray.client_cpus=1` (one single-thread actor per core), not the smoke
experiment's 0.5: `full_half_cpu` shows what oversubscribing the cores costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scratch import scratch_dir  # noqa: E402  (bench/ is on sys.path)

SCENARIOS = {
    "full": [
        "ray.client_cpus=1",
        "model=squeezenet",
        "fl.trainable=all",
        "fl.num_clients=5",
        "fl.rounds=3",
        "data.num_classes=20",
        "data.image_size=64",
        "data.train_per_class=50",
        "data.val_per_class=10",
        "partition=pathological",
        "partition.classes_per_client=4",
        "client.epochs=1",
        "client.batch_size=32",
    ],
    "tiny": [
        "ray.client_cpus=1",
        "model=tiny_cnn",
        "model.width=8",
        "fl.trainable=all",
        "fl.num_clients=100",
        "fl.clients_per_round=10",
        "fl.rounds=30",
        "data.num_classes=10",
        "data.image_size=32",
        "data.train_per_class=200",
        "data.val_per_class=20",
        "partition=iid",
        "client.epochs=1",
        "client.batch_size=16",
    ],
}


SCENARIOS["full_half_cpu"] = [*SCENARIOS["full"], "ray.client_cpus=0.5"]


def compose(overrides: list[str], cache: str, run_dir: str) -> dict:
    """The experiment config exactly as launch.py would build it."""
    from fedray.config import compose_plain

    plain = compose_plain(
        ["+experiment=smoke", "logger=jsonl", *overrides, f"data.cache_dir={cache}"]
    )
    plain["run_dir"] = run_dir
    return plain


def plain_loop(cfg: dict) -> float:
    """(a): sequential FedAvg in plain PyTorch; returns the seconds of the round loop."""
    from fedray.data.datasets import load_images, load_labels, to_tensor_batch
    from fedray.data.partition import partition
    from fedray.data.sources import build_dataset
    from fedray.fl.server import clients_per_round, sample_clients
    from fedray.models import build_model

    info = build_dataset(cfg["data"], cfg["seed"])
    x = np.asarray(load_images(info.root, "train"))
    y = load_labels(info.root, "train")
    parts = partition(y, cfg["partition"], cfg["fl"]["num_clients"], cfg["seed"])
    torch.manual_seed(0)
    model = build_model(cfg["model"], info.num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    k = clients_per_round(cfg["fl"])
    lr = cfg["client"]["optimizer"]["lr"]
    bs = cfg["client"]["batch_size"]
    t0 = time.perf_counter()
    for r in range(cfg["fl"]["rounds"]):
        states, sizes = [], []
        for cid in sample_clients(cfg["fl"]["num_clients"], k, cfg["seed"], r):
            model.load_state_dict(global_state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            idx = parts[cid]
            for _ in range(cfg["client"]["epochs"]):
                order = np.random.permutation(idx)
                for s in range(0, len(order), bs):
                    b = np.sort(order[s : s + bs])
                    loss = torch.nn.functional.cross_entropy(
                        model(to_tensor_batch(x[b])), torch.as_tensor(y[b])
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            states.append({k2: v.detach().clone() for k2, v in model.state_dict().items()})
            sizes.append(len(idx))
        w = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
        global_state = {
            k2: (sum(wi * s[k2].double() for wi, s in zip(w, states, strict=True))).to(v.dtype)
            for k2, v in global_state.items()
        }
    return time.perf_counter() - t0


def fedray_run(cfg: dict) -> tuple[float, float, float]:
    """(b): the full fedray run; returns (round-loop seconds, whole-run seconds, final val/acc)."""
    from fedray.run import run

    t0 = time.perf_counter()
    metrics = run(cfg)
    total = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(Path(cfg["run_dir"]) / "metrics.jsonl")]
    return sum(r["time/round_s"] for r in rows), total, metrics["val/acc"]


def main() -> None:
    """Run the scenarios and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=[*SCENARIOS, "cached"], default=None)
    args = ap.parse_args()
    import ray

    from fedray.logging import setup_console_logging

    setup_console_logging()
    import logging

    logging.getLogger("fedray").setLevel(logging.WARNING)
    cache = str(scratch_dir("fedray-bench-"))
    torch.set_num_threads(os.cpu_count() or 1)
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"cores={os.cpu_count()} torch={torch.__version__} repeats={args.repeats}")
    names = [args.only] if args.only in SCENARIOS else ([] if args.only else list(SCENARIOS))
    for name in names:
        base, loop, whole = [], [], []
        for i in range(args.repeats):
            cfg = compose(SCENARIOS[name], cache, str(scratch_dir(f"fl-{name}-{i}-")))
            base.append(plain_loop(cfg))
            rl, tot, _ = fedray_run(cfg)
            loop.append(rl)
            whole.append(tot)
        a, b, c = (statistics.median(v) for v in (base, loop, whole))
        print(
            f"[{name}] plain loop {a:.2f}s | fedray rounds {b:.2f}s (ratio {b / a:.3f}) | "
            f"fedray whole run incl. Ray/actor start {c:.2f}s (ratio {c / a:.3f})"
        )
    if args.only in (None, "cached"):
        cached_vs_uncached(cache, args.repeats)
    ray.shutdown()


# pill_noniid's head: every Fire module max-pooled, no dropout, a fine-tuning lr
TAPPED_HEAD = [
    "model.taps=[4,5,7,8,10,11,12,13]",
    "model.pool=max",
    "model.dropout=0.0",
    "client.optimizer.lr=0.0003",
]


def cached_vs_uncached(cache: str, repeats: int) -> None:
    """Classifier-only FL: per-round time and final accuracy with and without cached features."""
    for name, head in (("cached", []), ("cached_taps", TAPPED_HEAD)):
        cached_vs_uncached_head(cache, repeats, name, head)


def cached_vs_uncached_head(cache: str, repeats: int, name: str, head: list[str]) -> None:
    """One head: median per-round seconds and final val/acc, cached against uncached."""
    # a backbone pretrained on the disjoint public toy classes, so the accuracies mean something
    over = SCENARIOS["full"] + [
        "fl.trainable=classifier",
        "fl.rounds=6",  # the median over rounds 2-6 (round 1 caches the features)
        "model.pretrained=public",
        "pretrain.epochs=5",
        "fl.cache_precision=fp32",  # the cached features equal the uncached forward's
        *head,
    ]
    out = {}
    for flag in ("true", "false"):
        per_round, accs = [], []
        for i in range(repeats):
            cfg = compose(
                [*over, f"fl.cache_features={flag}"],
                cache,
                str(scratch_dir(f"fl-cache-{flag}-{i}-")),
            )
            from fedray.run import run

            metrics = run(cfg)
            rows = [json.loads(line) for line in open(Path(cfg["run_dir"]) / "metrics.jsonl")]
            per_round.append(statistics.median(r["time/round_s"] for r in rows[1:]))
            accs.append(metrics["val/acc"])
        out[flag] = (statistics.median(per_round), statistics.median(accs))
    (t_c, acc_c), (t_u, acc_u) = out["true"], out["false"]
    print(
        f"[{name}] per round: cached {t_c:.3f}s, uncached {t_u:.3f}s, speed-up {t_u / t_c:.1f}x | "
        f"final val/acc cached {acc_c:.4f} uncached {acc_u:.4f} "
        f"(diff {abs(acc_c - acc_u) * 100:.2f} pt)"
    )


if __name__ == "__main__":
    main()
