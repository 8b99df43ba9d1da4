"""Privacy and robustness in one table: clean vs attacked accuracy per aggregation rule, and what
secure aggregation and DP cost (seconds per round, bytes up per round, accuracy, epsilon).

    python bench/privacy.py                          # toy data, 10 clients, 10 rounds
    python bench/privacy.py --only robust            # the rules x attacks part
    python bench/privacy.py --only cost --rounds 20  # secure aggregation and DP part
    python bench/privacy.py --only phones            # DP over 100 simulated phones
    python bench/privacy.py --clients 20 --rounds 30 --attacks none,sign_flip,scaled,backdoor,\
label_flip,gaussian
    python bench/privacy.py --pill --only robust     # pill_noniid's data and model, 10 phones

Every run is `fedray.run.run` on the smoke experiment grown to a learnable size (toy shapes,
`--classes` classes, tiny CNN trained whole, IID shards). 20% of the clients attack (seeded).
`--pill`: pill_noniid instead (`--clients` phones holding 4 of the 20 pills each, the head from
random init on the frozen backbone's cached features, SGD 0.003; the backdoor needs images, so
its default attacks are none, sign_flip and scaled; the pretraining and synthetic sets come from
the user cache).
Backdoor success: the share of triggered val images of the other classes read as the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scratch import scratch_dir  # noqa: E402  (bench/ is on sys.path)

# the robust rules, each tuned to 20% attackers among n clients (filled in by `rules`)
RULES = (
    "fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_bounded", "fltrust",
    "fltrust_samples", "fltrust_history",
)


def rules(n: int, attackers: int, max_norm: float) -> dict[str, list[str]]:
    """Overrides of each aggregation rule for n clients per round, `attackers` of them bad."""
    f = max(1, attackers)
    return {
        "fedavg": ["strategy=fedavg"],
        "median": ["strategy=median"],
        "trimmed_mean": ["strategy=trimmed_mean", f"strategy.beta={f / n:.3f}"],
        "krum": ["strategy=krum", f"strategy.num_byzantine={f}", "strategy.multi=1"],
        "multi_krum": ["strategy=krum", f"strategy.num_byzantine={f}", f"strategy.multi={n - f}"],
        "norm_bounded": ["strategy=norm_bounded", f"strategy.max_norm={max_norm}"],
        # the server's root set: 100 labelled images re-generated under another seed
        "fltrust": ["strategy=fltrust"],
        "fltrust_samples": ["strategy=fltrust", "strategy.weighting=samples"],
        # trust on each phone's moving average of cosines, judged against the other phones'
        # (mad), updates capped at the trusted median norm
        "fltrust_history": ["strategy=fltrust", "strategy.weighting=samples",
                            "strategy.memory=0.9", "strategy.norm=median", "strategy.filter=mad"],
    }


def compose(overrides: list[str]) -> dict[str, Any]:
    """conf/config.yaml + overrides, resolved to a plain dict (as launch.py does)."""
    from fedray.config import compose_plain

    return compose_plain(overrides)


def run_one(base: list[str], extra: list[str], out: Path, label: str) -> dict[str, Any]:
    """One fedray run; its final accuracy, backdoor success, epsilon and per-round costs."""
    from fedray.run import run

    cfg = compose([*base, *extra])
    cfg["run_dir"] = str(out / label.replace(" ", "_").replace("/", "-"))
    t0 = time.perf_counter()
    summary = run(cfg)
    rows = [
        json.loads(x) for x in (Path(cfg["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "label": label,
        "acc": summary.get("val/acc"),
        "backdoor": rows[-1].get("val/backdoor_success") if rows else None,
        "epsilon": rows[-1].get("privacy/epsilon") if rows else None,
        "rounds": len(rows),
        # round 1 pays the actors' first-call costs; the median of the rest is the steady cost
        "round_s": statistics.median(r["time/round_s"] for r in rows[1:] or rows),
        "bytes_up": statistics.mean(r["comm/bytes_up"] for r in rows),
        "key_bytes": statistics.mean(r.get("comm/secagg_key_bytes", 0) for r in rows),
        "wall_s": time.perf_counter() - t0,
    }


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def robust_table(base: list[str], args, out: Path) -> list[str]:
    """Accuracy (and backdoor success) per rule x attack."""
    n = args.clients
    attackers = round(0.2 * n)
    by_rule = rules(n, attackers, args.max_norm)
    attacks = args.attacks.split(",")
    lines = ["| rule | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
    for rule in args.rules.split(","):
        cells = []
        for attack in attacks:
            extra = [*by_rule[rule], f"attack={attack}"]
            if attack != "none":
                extra.append("attack.fraction=0.2")
            res = run_one(base, extra, out, f"{rule}-{attack}")
            cell = _fmt(res["acc"])
            if attack == "backdoor":
                cell += f" (bd {_fmt(res['backdoor'])})"
            cells.append(cell)
            print(f"  {rule:13s} {attack:10s} acc {cell}  {res['wall_s']:.0f}s", flush=True)
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines


def cost_table(base: list[str], args, out: Path) -> list[str]:
    """Seconds and bytes per round, accuracy and epsilon: plain, secure aggregation, DP."""
    dp_common = ["dp.noise_multiplier=1.0", "dp.clip_norm=" + str(args.max_norm)]
    scenarios = {
        "fedavg (plain)": [],
        "secagg": ["fl.secure_agg=secagg"],
        "secagg, 30% vanish after masking": [
            "fl.secure_agg=secagg",
            "fl.secagg.drop_after_mask=0.3",
        ],
        "secagg+ (k-regular)": ["fl.secure_agg=secagg+"],
        "dp central z=1": ["dp=central", *dp_common, "dp.sampling=fixed"],
        "dp central z=1 + secagg": [
            "dp=central",
            *dp_common,
            "dp.sampling=fixed",
            "fl.secure_agg=secagg",
        ],
        "dp local z=1": ["dp=local", *dp_common],
        # Sun et al. 2019: per-client clipping (a norm bound) plus weak central noise
        "norm bound + weak DP (z=0.1), backdoor": [
            "dp=central",
            "dp.noise_multiplier=0.1",
            f"dp.clip_norm={args.max_norm}",
            "dp.sampling=fixed",
            "attack=backdoor",
        ],
    }
    lines = [
        "| setting | s/round | KB up/round | key KB/round | val acc | backdoor | epsilon |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, extra in scenarios.items():
        if args.cost_rows and args.cost_rows not in label:
            continue
        if args.pill and "backdoor" in label:  # the trigger is stamped on images, not features
            continue
        r = run_one(base, extra, out, label)
        lines.append(
            f"| {label} | {r['round_s']:.3f} | {r['bytes_up'] / 1024:.1f} | "
            f"{r['key_bytes'] / 1024:.1f} | {_fmt(r['acc'])} | {_fmt(r['backdoor'])} | "
            f"{_fmt(r['epsilon'], '.2f')} |"
        )
        print("  " + lines[-1], flush=True)
    return lines


def phones_table(base: list[str], args, out: Path) -> list[str]:
    """DP-FedAvg over 100 phones (Poisson sampling), epsilon at delta 1e-5 vs accuracy."""
    # the head trains on the frozen backbone's cached features, as pill_noniid's does: DP noise
    # grows with the number of parameters that travel
    phones = [
        *base,
        "fl.num_clients=100",
        f"fl.clients_per_round={args.phones_per_round}",
        f"fl.rounds={args.phones_rounds}",
        "data.train_per_class=100",
        "fl.trainable=classifier",
        "fl.cache_features=true",
        f"client.epochs={args.phones_epochs}",
    ]
    scenarios = {
        "100 phones, no DP": [],
        f"100 phones, DP z={args.phones_z}": [
            "dp=central",
            f"dp.noise_multiplier={args.phones_z}",
            "dp.sampling=poisson",
            f"dp.clip_norm={args.phones_clip}",
            "dp.max_epsilon=8",
        ],
    }
    lines = [
        "| setting | rounds run | val acc | epsilon (delta 1e-5) | s/round |",
        "|---|---|---|---|---|",
    ]
    for label, extra in scenarios.items():
        r = run_one(phones, extra, out, label)
        lines.append(
            f"| {label} | {r['rounds']} | {_fmt(r['acc'])} | "
            f"{_fmt(r['epsilon'], '.2f')} | {r['round_s']:.3f} |"
        )
        print("  " + lines[-1], flush=True)
    return lines


def protocol_table(args) -> list[str]:
    """The secure-aggregation protocol alone, per round: key setup and share dealing, one
    client's masking, and the server's unmasking with 30% of the senders vanished."""
    import numpy as np

    from fedray.privacy import secagg

    lines = [
        "| mode | clients | values | setup s | mask s/client | unmask s |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("secagg", "secagg+"):
        for n, d in ((args.clients, 24_070), (args.clients, 735_000), (100, 24_070)):
            ids = list(range(n))
            t0 = time.perf_counter()
            clients = secagg.SecAggClients.setup(ids, b"bench", d, mode=mode)
            setup = time.perf_counter() - t0
            server = secagg.SecAggServer(clients.public)
            x = np.random.default_rng(0).integers(0, 2**16, d)
            t0 = time.perf_counter()
            for i in ids:
                server.receive(i, secagg.mask_vector(x, i, clients.secrets[i], clients.public))
            mask = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            total = server.unmask(ids[: n - round(0.3 * n)], clients.reveal)
            unmask = time.perf_counter() - t0
            assert np.array_equal(total, (x * n).astype(total.dtype))
            lines.append(f"| {mode} | {n} | {d} | {setup:.3f} | {mask:.4f} | {unmask:.3f} |")
            print("  " + lines[-1], flush=True)
    return lines


def main() -> None:
    """Parse flags, run the parts, print one markdown table per part."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=["protocol", "robust", "cost", "phones"], action="append")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=40, help="toy training images per class")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pill", action="store_true", help="pill_noniid's data and model")
    p.add_argument("--attacks", default=None, help="default: none,sign_flip,scaled[,backdoor]")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument(
        "--max-norm",
        type=float,
        default=None,
        help="norm_bounded's bound and DP's clip norm (about an honest update's norm); "
        "default 2 (toy), 1 (--pill)",
    )
    p.add_argument("--cost-rows", default="", help="run only the cost rows whose label has this")
    p.add_argument("--phones-epochs", type=int, default=5)
    p.add_argument("--phones-rounds", type=int, default=30)
    p.add_argument("--phones-per-round", type=int, default=20)
    p.add_argument("--phones-z", type=float, default=1.2, help="noise multiplier (eps 6.6 at 30)")
    p.add_argument("--phones-clip", type=float, default=0.5, help="clip norm of a head update")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    parts = args.only or ["protocol", "robust", "cost", "phones"]
    if args.pill:
        if args.only and "phones" in args.only:
            p.error("--pill runs the robust and cost parts (the phones part is toy-only)")
        parts = [x for x in parts if x != "phones"]
    if args.attacks is None:
        args.attacks = "none,sign_flip,scaled" + ("" if args.pill else ",backdoor")
    if args.max_norm is None:
        args.max_norm = 1.0 if args.pill else 2.0
    # a misspelt rule or attack: argparse's one line before anything runs, not a KeyError after
    # an hour of other cells
    attacks = sorted(f.stem for f in (Path(__file__).resolve().parents[1] / "conf/attack").glob(
        "*.yaml"))
    for flag, given, known in (("--rules", args.rules, RULES), ("--attacks", args.attacks,
                                                                 attacks)):
        bad = [x for x in given.split(",") if x not in known]
        if bad:
            p.error(f"{flag}: {', '.join(bad)} not known; choose from {', '.join(known)}")

    import ray

    ray.init(
        num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False
    )
    out = scratch_dir("fedray-privacy-bench-")
    base = [
        "+experiment=smoke",
        f"data.cache_dir={out / 'cache'}",
        f"data.num_classes={args.classes}",
        f"data.train_per_class={args.per_class}",
        "data.val_per_class=20",
        "partition=iid",
        f"fl.num_clients={args.clients}",
        f"fl.rounds={args.rounds}",
        "fl.trainable=all",
        "fl.cache_features=false",  # the backdoor stamps its trigger on images
        "fl.checkpoint=false",
        f"client.epochs={args.epochs}",
        f"client.optimizer.lr={args.lr}",
        "logger.plots=false",
        "ray.client_cpus=1",
        f"ray.max_actors={args.cpus}",
        f"seed={args.seed}",
    ]
    if args.pill:
        base = [
            "+experiment=pill_noniid",
            f"fl.num_clients={args.clients}",
            f"fl.rounds={args.rounds}",
            "fl.head_init=random",  # ridge sends feature sums in the clear (no secure agg)
            "client.optimizer.lr=0.003",
            "fl.checkpoint=false",
            "logger.plots=false",
            f"ray.max_actors={args.cpus}",
            f"seed={args.seed}",
        ]
    t0 = time.perf_counter()
    tables = {}
    if "protocol" in parts:
        print("secure aggregation protocol alone (30% of senders vanish after masking)", flush=True)
        tables["protocol"] = protocol_table(args)
    if "robust" in parts:
        print("robust rules vs attacks (val acc; 20% of clients attack)", flush=True)
        tables["robust"] = robust_table(base, args, out)
    if "cost" in parts:
        print("cost of secure aggregation and DP (fedavg unless named)", flush=True)
        tables["cost"] = cost_table(base, args, out)
    if "phones" in parts:
        print("DP over 100 simulated phones", flush=True)
        tables["phones"] = phones_table(base, args, out)
    ray.shutdown()
    what = (
        "pill_noniid, 4 pills per phone, head on cached features"
        if args.pill
        else f"toy {args.classes} classes x {args.per_class} images, tiny CNN"
    )
    print(
        f"\n{args.clients} clients, {args.rounds} rounds, {what}; "
        f"total {time.perf_counter() - t0:.0f}s; runs in {out}"
    )
    for name, lines in tables.items():
        print(f"\n{name}\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
