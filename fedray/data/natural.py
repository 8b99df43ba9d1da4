"""Natural partitions: clients are the sites (hospitals, devices, phones) the samples came from.

The partitioner receives per-sample group ids as its `labels` (a task with `partition_by: group`
hands it `{split}_groups.npy` of the dataset directory instead of the class labels).
"""

from __future__ import annotations

import numpy as np

from fedray.data.partition import PartitionError, _check_labels, _check_num_clients, _finish


def partition_by_group(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """One client per group when `num_clients` equals the number of groups (client i = the i-th
    group id in sorted order). With fewer clients, groups are dealt round-robin; with more, each
    group's samples are split IID among `num_clients / groups` clients (it must divide)."""
    keys = _check_labels(labels)
    num_clients = _check_num_clients(num_clients, keys.size)
    groups = np.unique(keys)
    g = groups.size
    if num_clients <= g:
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for i, key in enumerate(groups):
            parts[i % num_clients].append(np.flatnonzero(keys == key))
        return _finish([np.concatenate(p) for p in parts])
    if num_clients % g:
        raise PartitionError(
            f"num_clients={num_clients} is not a multiple of the {g} groups in the data: give "
            f"each group the same number of clients (e.g. fl.num_clients={g})"
        )
    per = num_clients // g
    rng = np.random.default_rng(seed)
    out = []
    for key in groups:
        idx = rng.permutation(np.flatnonzero(keys == key))
        if idx.size < per:
            raise PartitionError(f"group {key} has {idx.size} samples for {per} clients")
        out.extend(np.array_split(idx, per))
    return _finish(out)
