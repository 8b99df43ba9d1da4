"""Val scores of a federated run's models on parts of the val set: each site's (group's) val
samples, and each client's own classes or site, through the global model or, with client-local
layers (`fl.local`, fedray/fl/local.py), through each client's own model."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.data.datasets import load_labels
from fedray.fl.types import Params


def group_metrics(server: Any, params: Params | None = None) -> dict[str, float]:
    """Metrics on each group's (site's) val samples, `group<g>/<metric>`; {} without groups."""
    if server.val_groups is None:
        return {}
    out = {}
    for g in np.unique(server.val_groups):
        metrics, _ = server.evaluate(params, np.flatnonzero(server.val_groups == g))
        out.update({f"group{int(g)}/{k}": v for k, v in metrics.items()})
    return out


def per_client_scores(
    server: Any, params: Params | None = None, clients: list[int] | None = None
) -> dict[int, float]:
    """`task.metric` on the val samples whose partition key (class, or group) each client holds:
    of one model (`params`, the global model by default), or, with client-local layers, of each
    client's own model (the shared entries and its local ones). `clients`: these only."""
    own = server.local is not None and params is None
    if server.task.partition_by == "label" and server.task.metric == "acc" and not own:
        return per_client_accuracy(server, params)
    train_keys = server.task.partition_keys(server.info.root, "train")
    val_keys = server.task.partition_keys(server.info.root, "val")
    out = {}
    for cid in range(len(server.parts)) if clients is None else clients:
        mine = np.flatnonzero(np.isin(val_keys, np.unique(train_keys[server.parts[cid]])))
        model = server.local.start(server.params, cid) if own else params
        out[cid] = server.evaluate(model, mine)[0][server.task.metric] if mine.size else 0.0
    return out


def per_client_accuracy(server: Any, params: Params | None = None) -> dict[int, float]:
    """Accuracy of a model on the val samples of the classes each client holds, read off the
    confusion matrix of its val pass (rows: true classes)."""
    _, cm = server.evaluate(params)
    train_y = load_labels(server.info.root, "train")
    out = {}
    for cid, idx in enumerate(server.parts):
        held = np.unique(train_y[idx])
        n = cm[held].sum()
        out[cid] = float(cm[held, held].sum() / n) if n else 0.0
    return out


def own_mean(server: Any, clients: list[int], scores: dict[int, float] | None = None) -> float:
    """Client-local layers: the mean over `clients` of each one's own model on its own val
    samples (`scores`, if already computed), weighted by its train samples (`val_local/*`)."""
    scores = per_client_scores(server, clients=clients) if scores is None else scores
    w = np.array([len(server.parts[c]) for c in clients], np.float64)
    return float(np.dot(w, [scores[c] for c in clients]) / w.sum())
