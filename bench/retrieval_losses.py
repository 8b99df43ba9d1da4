"""The retrieval training losses side by side on one fold of a small synthetic catalog.

Trains a fresh embedding network per variant (`loss:epochs:lr[:batch[:schedule]]`) on the
training pills of fold 0 and scores the consumer photos of the fold's unseen pills against the
gallery of every reference (two-side and one-side MAP / top-1 / top-5), and held-out photos of
the training pills ("seen"). Prints one row per variant with its training time.

    python bench/retrieval_losses.py --pills 200 --photos 8 --train-photos 6 \\
        --variants triplet:6:3e-4 proxy:17:1e-3 both:6:1e-3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedray.pill.retrieval.data import build_retrieval_data, training_pool
from fedray.pill.retrieval.evaluate import evaluate_fold
from fedray.pill.retrieval.metrics import folds_by_pill
from fedray.pill.retrieval.nets import MultiStream
from fedray.pill.retrieval.train import train_embedding

AUGMENT = {"rotate_deg": 180, "zoom": [0.8, 1.2], "translate_px": 5, "blur_prob": 0.3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pills", type=int, default=200)
    ap.add_argument("--photos", type=int, default=8, help="consumer photos per side")
    ap.add_argument("--train-photos", type=int, default=6, help="of them, trained on")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--arch", default="student", choices=["student", "teacher"])
    ap.add_argument("--streams", default="color", help="comma-separated: color,gray,gradient")
    ap.add_argument("--variants", nargs="+", default=["triplet:6:3e-4", "proxy:17:1e-3",
                                                       "both:6:1e-3"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = build_retrieval_data(args.pills, args.size, args.photos, 0, args.seed, 24)
    test = folds_by_pill(np.arange(data.num_pills), args.folds, args.seed)[0]
    train = np.setdiff1d(np.arange(data.num_pills), test)
    pool, pool_pill, ref_index = training_pool(data, train, args.train_photos)
    streams = args.streams.split(",")
    print(f"{args.pills} pills ({len(train)} train, {len(test)} unseen), {args.photos} photos "
          f"per side ({args.train_photos} trained), {args.arch} {streams}, {args.size} px, "
          f"seed {args.seed}")
    print("| loss | epochs | lr | batch | schedule | train s | two-side MAP | top-1 | top-5 "
          "| one-side top-5 | seen two-side top-5 |")
    for variant in args.variants:
        loss, epochs, lr, *rest = variant.split(":")
        batch = int(rest[0]) if rest else 32
        schedule = rest[1] if len(rest) > 1 else "constant"
        tcfg = {"loss": loss, "epochs": int(epochs), "lr": float(lr), "batch_size": batch,
                "schedule": schedule,
                "margin": 0.2, "window": 5, "temperature": 0.05, "standardize": True,
                "augment": AUGMENT}
        torch.manual_seed(args.seed)
        model = MultiStream(args.arch, streams, args.size)
        t0 = time.perf_counter()
        train_embedding(model, pool, pool_pill, ref_index, tcfg, args.seed)
        seconds = time.perf_counter() - t0
        res = evaluate_fold(model, data, test, train, args.train_photos, {"train": tcfg},
                            args.seed)
        two, one = res["consumer/multi/two_side"], res["consumer/multi/one_side"]
        print(f"| {loss} | {epochs} | {lr} | {batch} | {schedule} | {seconds:.0f} | "
              f"{two['map']:.3f} | {two['top1']:.1%} | {two['top5']:.1%} | {one['top5']:.1%} | "
              f"{res['seen/multi/two_side']['top5']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
