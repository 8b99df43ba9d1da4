"""FedDF's teacher under label skew: each round, the FedAvg average against ensembles of the
round's client models, as val accuracy (docs/tried.md, "FedDF under Dirichlet 0.1").

    python bench/feddf_teachers.py --seed 0 --rounds 6 --alpha 0.1 --clients 20

pill_noniid's cached public pretraining with an MLP head (`model.hidden=256`) from random init on
cached features; Dirichlet(alpha) over the clients; `--epochs` local epochs (default 1) of SGD
0.003 (momentum 0.9) per round; FedAvg weighted by samples. Ensembles: the plain mean of the
clients' logits (FedDF), the sample-weighted mean, the mean of probabilities, the class-weighted
mean of logits (a client's logit of class c weighted by its share of the class-c samples: needs
the clients' label counts), and two that weight client k's class c by n_k times its model's
predicted prior of c on unlabelled images (no label counts): over logits, and over
log-probabilities (a weighted product of the clients' distributions).
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedray.config import compose_plain  # noqa: E402
from fedray.data.datasets import load_images, load_labels  # noqa: E402
from fedray.data.partition import partition  # noqa: E402
from fedray.data.sources import build_dataset  # noqa: E402
from fedray.fl.train import (  # noqa: E402
    extract_features,
    get_params,
    predict_logits,
    set_params,
    train_local,
    travel_names,
)
from fedray.models import build_model, frozen_prefix, trainable_names  # noqa: E402
from fedray.run import resolve_pretrained  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    seed = args.seed
    cfg = compose_plain(["+experiment=pill_noniid", "model.hidden=256", "fl.head_init=random",
                         f"seed={seed}"])
    info = build_dataset(cfg["data"], seed)
    cfg = resolve_pretrained(cfg)  # the cached public pretraining (pretrained first if absent)
    torch.manual_seed(seed)
    model = build_model(cfg["model"], info.num_classes)
    trainable = trainable_names(model, "classifier")
    cached, travel = frozen_prefix(model, trainable), travel_names(model, trainable)
    t0 = time.perf_counter()
    xtr = extract_features(model, np.asarray(load_images(info.root, "train")), upto=cached,
                           precision="auto")
    xva = extract_features(model, np.asarray(load_images(info.root, "val")), upto=cached,
                           precision="auto")
    ytr = np.asarray(load_labels(info.root, "train"))
    yva = np.asarray(load_labels(info.root, "val"))
    print(f"features of {len(ytr)} + {len(yva)} images in {time.perf_counter() - t0:.0f} s")
    parts = partition(ytr, {"_target_": "fedray.data.partition.partition_dirichlet",
                            "alpha": args.alpha, "min_size": 10}, args.clients, seed)
    counts = np.stack([np.bincount(ytr[p], minlength=info.num_classes) for p in parts])
    counts = counts.astype(float)  # (clients, classes)
    n = counts.sum(1)
    share = counts / np.maximum(counts.sum(0, keepdims=True), 1)  # of each class's samples
    per_class = torch.tensor(share, dtype=torch.float)
    per_client = torch.tensor(n / n.sum(), dtype=torch.float)
    global_params = get_params(model, travel)
    # unlabelled images for the clients' predicted class priors (the server's transfer set
    # stands in: every 8th training image, its label unused)
    xpr = xtr[::8]

    def acc(logits: torch.Tensor) -> float:
        return float((logits.argmax(1).numpy() == yva).mean())

    def sgd(params):
        return torch.optim.SGD(params, lr=0.003, momentum=0.9)

    for r in range(args.rounds):
        results, logits, priors = [], [], []
        for k, idx in enumerate(parts):
            set_params(model, global_params)
            train_local(model, xtr[idx], ytr[idx], trainable, args.epochs, 32, sgd,
                        seed * 1000 + r * 50 + k, cached=cached)
            results.append(get_params(model, travel))
            logits.append(predict_logits(model, xva, cached=cached))
            priors.append(torch.softmax(predict_logits(model, xpr, cached=cached), -1).mean(0))
        global_params = {key: sum(w * q[key] for w, q in zip(n / n.sum(), results, strict=True))
                         for key in global_params}
        set_params(model, global_params)
        average = acc(predict_logits(model, xva, cached=cached))
        stacked = torch.stack(logits)  # (clients, val images, classes)
        # each client's class prior as its own model predicts it on unlabelled images, times its
        # sample count: class weights the server can form from what it already holds
        prior = torch.stack(priors) * torch.tensor(n, dtype=torch.float)[:, None]
        prior = prior / prior.sum(0, keepdim=True)
        print(f"round {r + 1}: FedAvg average {average:.4f} | ensembles: plain logits "
              f"{acc(stacked.mean(0)):.4f}, sample-weighted "
              f"{acc((stacked * per_client[:, None, None]).sum(0)):.4f}, probabilities "
              f"{acc(torch.softmax(stacked, -1).mean(0)):.4f}, class-weighted logits "
              f"{acc((stacked * per_class[:, None, :]).sum(0)):.4f}, predicted-prior logits "
              f"{acc((stacked * prior[:, None, :]).sum(0)):.4f}, predicted-prior "
              f"log-probabilities "
              f"{acc((torch.log_softmax(stacked, -1) * prior[:, None, :]).sum(0)):.4f}",
              flush=True)


if __name__ == "__main__":
    main()
