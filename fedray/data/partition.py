"""Split a training set's labels among simulated clients: IID and the usual non-IID schemes.

Every partitioner takes the training labels (int class ids, length N) and returns one sorted int64
index array per client; together they are disjoint and cover every index exactly once. All
randomness comes from `np.random.default_rng(seed)`, so the same inputs and seed give the same
split on any machine.

Schemes (the Hydra `partition` group picks one by `name`):

- `iid`: a random permutation cut into `num_clients` near-equal pieces.
- `pathological` (McMahan et al. 2017, generalised): each client holds exactly
  `classes_per_client` classes. Classes are dealt to clients greedily, each client taking the
  `classes_per_client` classes held by the fewest clients so far (ties broken at random), so every
  class is used and the number of clients holding a class differs by at most one between classes.
  Each class's samples are then shuffled and divided as evenly as possible among the clients that
  hold it. When `num_clients * classes_per_client == num_classes` the classes fall into disjoint
  groups and each class lives, whole, on exactly one client; with 10 clients x 2 of 10 classes each
  class is split between two clients (McMahan's two shards per client, without the shard that
  straddles two classes).
- `dirichlet` (Hsu et al. 2019; the NIID-Bench code): for each class, proportions over clients
  are drawn from Dirichlet(alpha) and the class's samples cut accordingly; a client already above
  the mean size gets no more. The draw repeats until every client holds at least `min_size`
  samples. Small alpha gives few classes per client, large alpha approaches IID. With
  `min_size: 0` a client may hold nothing (a phone with no photos): it trains nothing when drawn,
  is left out of the round's loss and average, and a round that drew only such clients is
  logged as skipped (`FederatedServer`).
- `quantity_skew`: labels IID, but client sizes follow Dirichlet(alpha) proportions (at least one
  sample each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Resampling bound for partition_dirichlet; each attempt is O(N), so this stays cheap.
DIRICHLET_MAX_RETRIES = 1000


class PartitionError(ValueError):
    """A partition that cannot be made from these labels or config; the message names the key."""


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise PartitionError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise PartitionError("labels is empty: nothing to partition")
    if not np.issubdtype(labels.dtype, np.integer):
        raise PartitionError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise PartitionError(f"labels must be non-negative class ids, found {labels.min()}")
    return labels.astype(np.int64, copy=False)


def _check_num_clients(num_clients: int, n: int, key: str = "num_clients") -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise PartitionError(f"{key} must be an int, got {num_clients!r}")
    if num_clients < 1:
        raise PartitionError(f"{key} must be >= 1, got {num_clients}")
    if num_clients > n:
        raise PartitionError(f"{key}={num_clients} exceeds the {n} samples available")
    return int(num_clients)


def _check_alpha(alpha: Any, key: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise PartitionError(f"{key} must be a positive number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"{key} must be a positive finite number, got {alpha!r}")
    return float(alpha)


def _check_int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PartitionError(f"{key} must be an int, got {value!r}")
    if value < minimum:
        raise PartitionError(f"{key} must be >= {minimum}, got {value}")
    return int(value)


def _finish(parts: Sequence[np.ndarray | list[int]]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Random near-equal split: client sizes differ by at most one."""
    labels = _check_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size)
    rng = np.random.default_rng(seed)
    return _finish(np.array_split(rng.permutation(labels.size), num_clients))


def _deal_classes(
    classes: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each client takes the k least-held classes (random ties): holder counts stay within one."""
    held = np.zeros(classes.size, dtype=np.int64)
    dealt = []
    for _ in range(num_clients):
        order = np.lexsort((rng.random(classes.size), held))
        pick = np.sort(order[:classes_per_client])
        held[pick] += 1
        dealt.append(pick)
    return dealt


def partition_pathological(
    labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Each client gets exactly `classes_per_client` classes; every class's samples are all used."""
    labels = _check_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size)
    k = _check_int(classes_per_client, "classes_per_client", 1)
    classes, counts = np.unique(labels, return_counts=True)
    if k > classes.size:
        raise PartitionError(
            f"classes_per_client={k} exceeds the {classes.size} classes present in the labels"
        )
    if num_clients * k < classes.size:
        raise PartitionError(
            f"classes_per_client={k}: {num_clients} clients x {k} classes leave some of the "
            f"{classes.size} classes unused; set it to {-(-classes.size // num_clients)} or more "
            "(or more clients)"
        )
    rng = np.random.default_rng(seed)
    dealt = _deal_classes(classes, num_clients, k, rng)
    holders: list[list[int]] = [[] for _ in classes]
    for client, picks in enumerate(dealt):
        for c in picks:
            holders[c].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, class_holders in enumerate(holders):
        if counts[c] < len(class_holders):
            raise PartitionError(
                f"class {classes[c]} has {counts[c]} samples but {len(class_holders)} clients "
                "must hold it; lower num_clients or classes_per_client"
            )
        idx = rng.permutation(np.flatnonzero(labels == classes[c]))
        for client, piece in zip(
            class_holders, np.array_split(idx, len(class_holders)), strict=True
        ):
            parts[client].append(piece)
    return _finish([np.concatenate(p) for p in parts])


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_retries: int = DIRICHLET_MAX_RETRIES,
) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) label skew, redrawn until every client has >= min_size samples."""
    labels = _check_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size)
    alpha = _check_alpha(alpha)
    min_size = _check_int(min_size, "min_size", 0)
    n = labels.size
    if min_size * num_clients > n:
        raise PartitionError(
            f"min_size={min_size} x {num_clients} clients needs {min_size * num_clients} samples, "
            f"only {n} available"
        )
    rng = np.random.default_rng(seed)
    class_idx = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max(1, max_retries)):
        sizes = np.zeros(num_clients, dtype=np.int64)
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in class_idx:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            # Balancing step of the reference code: clients above the mean size take no more.
            p = p * (sizes < n / num_clients)
            if p.sum() <= 0:
                # Tiny alpha can underflow every eligible weight to zero; share evenly instead.
                p = (sizes < n / num_clients).astype(np.float64)
            p = p / p.sum()
            cuts = (np.cumsum(p) * idx.size).astype(np.int64)[:-1]
            for client, piece in enumerate(np.split(idx, cuts)):
                pieces[client].append(piece)
                sizes[client] += piece.size
        if sizes.min() >= min_size:
            return _finish([np.concatenate(p) for p in pieces])
    raise PartitionError(
        f"dirichlet partition: no draw in {max_retries} gave every one of {num_clients} clients "
        f">= {min_size} samples (alpha={alpha}); raise partition.alpha or lower partition.min_size"
    )


def partition_quantity_skew(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """IID labels, client sizes proportional to a Dirichlet(alpha) draw (each client >= 1)."""
    labels = _check_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size)
    alpha = _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    spare = labels.size - num_clients
    share = rng.dirichlet(np.full(num_clients, alpha)) * spare
    extra = np.floor(share).astype(np.int64)
    # Largest-remainder rounding hands out what flooring left, keeping the total exact.
    leftover = spare - int(extra.sum())
    extra[np.argsort(-(share - extra), kind="stable")[:leftover]] += 1
    sizes = 1 + extra
    perm = rng.permutation(labels.size)
    return _finish(np.split(perm, np.cumsum(sizes)[:-1]))


def partition(
    labels: np.ndarray, cfg: Mapping[str, Any], num_clients: int, seed: int
) -> list[np.ndarray]:
    """Split `labels` with the partitioner `cfg["_target_"]` names (the Hydra `partition` group).

    A partitioner is any callable `fn(labels, num_clients, seed, **params) -> list[index array]`
    (the group's other keys are its params; `name` is a label). The result is checked: one index
    array per client, disjoint, covering every sample.
    """
    from fedray.models import instantiate_target

    if not isinstance(cfg, Mapping):
        raise PartitionError(f"partition config must be a mapping, got {type(cfg).__name__}")
    labels = _check_labels(labels)
    try:
        parts = instantiate_target(
            dict(cfg), "partition", skip=("name",), labels=labels, num_clients=num_clients,
            seed=seed,
        )
    except PartitionError as err:
        msg = str(err)
        if not msg.startswith(("partition.", "labels", "num_clients")):
            msg = f"partition.{msg}"
        raise PartitionError(msg) from None
    except ValueError as err:  # ConfigError from the instantiation names partition.<key>
        raise PartitionError(str(err)) from None
    return check_partition(parts, labels.size, num_clients, str(cfg.get("_target_")))


def check_partition(
    parts: Sequence[Any], n: int, num_clients: int, target: str
) -> list[np.ndarray]:
    """One int index array per client, disjoint and covering range(n): else PartitionError."""
    if not isinstance(parts, Sequence) or len(parts) != num_clients:
        got = len(parts) if isinstance(parts, Sequence) else type(parts).__name__
        raise PartitionError(f"partition._target_={target}: returned {got} parts, "
                             f"expected one per client ({num_clients})")
    parts = _finish(parts)
    flat = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if flat.size != n or (flat.size and (flat.min() < 0 or flat.max() >= n)) or np.unique(
        flat
    ).size != n:
        raise PartitionError(f"partition._target_={target}: the parts must be disjoint and cover "
                             f"all {n} samples exactly once")
    return parts


def partition_matrix(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Per-client class counts, shape (clients, classes), int64."""
    labels = _check_labels(labels)
    num_classes = _check_int(num_classes, "num_classes", 1)
    if labels.max() >= num_classes:
        raise PartitionError(f"label {labels.max()} is out of range for num_classes={num_classes}")
    return np.stack(
        [np.bincount(labels[np.asarray(p, dtype=np.int64)], minlength=num_classes) for p in parts]
    ).astype(np.int64)


def save_partition_heatmap(
    matrix: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save a clients x classes count heatmap as a PNG (counts written in when small)."""
    from fedray.plots import save_heatmap

    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise PartitionError(f"partition matrix must be 2-D (clients, classes), got {matrix.shape}")
    if class_names is not None and len(class_names) != matrix.shape[1]:
        raise PartitionError(
            f"class_names has {len(class_names)} entries, matrix has {matrix.shape[1]} classes"
        )
    return save_heatmap(
        matrix,
        path,
        row_labels=[f"client {i}" for i in range(matrix.shape[0])],
        col_labels=list(class_names) if class_names is not None else None,
        xlabel="class",
        ylabel="client",
        title=title or "samples per client and class",
        fmt="d",
    )
