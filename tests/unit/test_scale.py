"""10,000 virtual clients: the driver holds index arrays per client and no per-client objects."""

from __future__ import annotations

import gc
import sys
import warnings

import numpy as np
import pytest
import torch

from fedray.data.datasets import load_info, write_meta, write_split
from fedray.data.partition import partition
from fedray.fl.server import FederatedServer, sample_clients
from fedray.logging import RunLogger

NUM_CLIENTS = 10_000
PER_ROUND = 100


def _count(*classes: type) -> int:
    """Live objects in this process that are instances of `classes`."""
    with warnings.catch_warnings():  # isinstance on torch's deprecated module aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, classes))


HEAVY = (torch.nn.Module, torch.optim.Optimizer, torch.utils.data.Dataset)


def _labels(n: int = 50_000, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(0).integers(0, classes, n)


@pytest.mark.parametrize(
    "part",
    [
        {"_target_": "fedray.data.partition.partition_iid"},
        {"_target_": "fedray.data.partition.partition_quantity_skew", "alpha": 1.0},
        {"_target_": "fedray.data.partition.partition_dirichlet", "alpha": 0.5, "min_size": 0},
    ],
    ids=["iid", "quantity_skew", "dirichlet"],
)
def test_ten_thousand_clients_are_index_arrays_only(part):
    labels = _labels()
    gc.collect()
    before = _count(*HEAVY)
    parts = partition(labels, part, NUM_CLIENTS, seed=0)
    sampled = [sample_clients(NUM_CLIENTS, PER_ROUND, 0, r) for r in range(20)]
    gc.collect()
    assert _count(*HEAVY) == before  # no model, optimizer or dataset was made for any client
    assert len(parts) == NUM_CLIENTS
    assert all(type(p) is np.ndarray and p.dtype == np.int64 for p in parts)
    assert sum(p.size for p in parts) == labels.size
    # O(indices): 8 bytes a sample plus one small array header per client
    driver_bytes = sum(sys.getsizeof(p) for p in parts)
    assert driver_bytes <= 8 * labels.size + 200 * NUM_CLIENTS
    assert all(len(s) == PER_ROUND and len(set(s)) == PER_ROUND for s in sampled)
    assert all(0 <= c < NUM_CLIENTS for s in sampled for c in s)
    assert len({tuple(s) for s in sampled}) == 20  # each round draws afresh


def _dataset(root, n_train: int, n_val: int = 40):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        write_split(
            root, split, rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 4
        )
    write_meta(root, "scale", [f"c{i}" for i in range(4)], 8, {"train": n_train, "val": n_val})
    return load_info(root)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_server_keeps_no_per_client_state_for_ten_thousand_clients(make_cfg, tmp_path, strategy):
    cfg = make_cfg(
        f"strategy={strategy}",
        f"fl.num_clients={NUM_CLIENTS}",
        f"fl.clients_per_round={PER_ROUND}",
    )
    info = _dataset(tmp_path / "data", n_train=2 * NUM_CLIENTS)
    parts = partition(
        np.arange(2 * NUM_CLIENTS) % 4, cfg["partition"], NUM_CLIENTS, int(cfg["seed"])
    )
    gc.collect()
    before = _count(*HEAVY)
    server = FederatedServer(cfg, info, parts, RunLogger(tmp_path / "run", cfg))
    gc.collect()
    # the server's one model (and its layers), not one per client
    assert _count(*HEAVY) - before < 50
    assert server.client_params == {}  # a model per client only for the isolated baseline
    state = server.strategy.state_dict()  # stateful rules (FedAdam's moments) are per model
    assert len(repr(state)) < 100_000


def test_isolated_baseline_keeps_one_shared_reference_per_client(make_cfg, tmp_path):
    cfg = make_cfg("stage=isolated", "fl.num_clients=1000")
    info = _dataset(tmp_path / "data", n_train=2000)
    parts = partition(np.arange(2000) % 4, cfg["partition"], 1000, int(cfg["seed"]))
    server = FederatedServer(cfg, info, parts, RunLogger(tmp_path / "run", cfg))
    assert len(server.client_params) == 1000
    assert len({id(p) for p in server.client_params.values()}) == 1  # not 1,000 copies
