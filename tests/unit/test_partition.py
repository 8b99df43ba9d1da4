"""Partitioners: disjoint full cover, determinism, and each scheme's own property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedray.data.partition import (
    PartitionError,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_matrix,
    partition_pathological,
    partition_quantity_skew,
    save_partition_heatmap,
)


def scheme(name: str) -> dict:
    """The partition group's YAML for `name`, as a dict."""
    return {"_target_": f"fedray.data.partition.partition_{name}", "name": name}


CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "partition"


def _labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def _assert_valid(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64
        assert p.ndim == 1
        assert np.all(np.diff(p) > 0), "indices must be sorted and unique"
    allidx = np.concatenate(parts)
    assert allidx.size == n, "every sample used exactly once"
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def _mean_tv_to_global(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    m = partition_matrix(labels, parts, num_classes).astype(np.float64)
    local = m / m.sum(axis=1, keepdims=True)
    glob = np.bincount(labels, minlength=num_classes) / labels.size
    return float(np.mean(0.5 * np.abs(local - glob).sum(axis=1)))


SCHEMES = [
    ("iid", lambda y, s: partition_iid(y, 5, s)),
    ("pathological", lambda y, s: partition_pathological(y, 5, 4, s)),
    ("dirichlet", lambda y, s: partition_dirichlet(y, 5, 0.5, s, min_size=10)),
    ("quantity_skew", lambda y, s: partition_quantity_skew(y, 5, 1.0, s)),
]


@pytest.mark.parametrize(("name", "fn"), SCHEMES, ids=[s[0] for s in SCHEMES])
def test_cover_disjoint_and_deterministic(name, fn):
    labels = _labels(20, 30)
    a = fn(labels, 7)
    _assert_valid(a, labels.size, 5)
    b = fn(labels, 7)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = fn(labels, 8)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True)), "seed must matter"


def test_iid_sizes_differ_by_at_most_one():
    parts = partition_iid(_labels(3, 7), 4, seed=0)  # 21 samples
    assert sorted(len(p) for p in parts) == [5, 5, 5, 6]


def test_pathological_default_experiment_disjoint_class_groups():
    labels = _labels(20, 30)
    parts = partition_pathological(labels, num_clients=5, classes_per_client=4, seed=0)
    class_sets = [set(np.unique(labels[p]).tolist()) for p in parts]
    assert all(len(s) == 4 for s in class_sets)
    assert set().union(*class_sets) == set(range(20))
    assert sum(len(s) for s in class_sets) == 20, "groups are disjoint"
    for p, s in zip(parts, class_sets, strict=True):
        # Each client holds all samples of its classes.
        np.testing.assert_array_equal(p, np.flatnonzero(np.isin(labels, sorted(s))))


@pytest.mark.parametrize(("num_clients", "k", "holders"), [(10, 2, 2), (100, 2, 20)])
def test_pathological_shards_when_classes_are_shared(num_clients, k, holders):
    labels = _labels(10, 200)
    parts = partition_pathological(labels, num_clients, k, seed=3)
    _assert_valid(parts, labels.size, num_clients)
    m = partition_matrix(labels, parts, 10)
    np.testing.assert_array_equal((m > 0).sum(axis=1), np.full(num_clients, k))
    np.testing.assert_array_equal((m > 0).sum(axis=0), np.full(10, holders))
    # Each class is cut evenly between its holders.
    np.testing.assert_array_equal(m[m > 0], np.full(num_clients * k, 200 // holders))


def test_pathological_uneven_holders_stay_within_one():
    labels = _labels(10, 60)
    parts = partition_pathological(labels, 7, 3, seed=0)  # 21 slots over 10 classes
    _assert_valid(parts, labels.size, 7)
    m = partition_matrix(labels, parts, 10)
    assert set((m > 0).sum(axis=1).tolist()) == {3}
    assert sorted(set((m > 0).sum(axis=0).tolist())) == [2, 3]


@pytest.mark.parametrize(
    ("num_clients", "k", "match"),
    [(5, 11, "exceeds the 10 classes"), (4, 2, "classes unused; set it to 3"),
     (5, 0, "classes_per_client")],
)
def test_pathological_rejects_impossible(num_clients, k, match):
    with pytest.raises(PartitionError, match=match):
        partition_pathological(_labels(10, 20), num_clients, k, seed=0)


def test_pathological_rejects_class_too_small_for_its_holders():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])  # class 2 has one sample, two holders needed
    with pytest.raises(PartitionError, match="class 2 has 1 samples"):
        partition_pathological(labels, 3, 2, seed=0)


def test_dirichlet_alpha_controls_skew():
    labels = _labels(10, 200)
    skewed = partition_dirichlet(labels, 5, alpha=0.1, seed=0, min_size=10)
    uniform = partition_dirichlet(labels, 5, alpha=1000.0, seed=0, min_size=10)
    tv_small, tv_large = (_mean_tv_to_global(labels, p, 10) for p in (skewed, uniform))
    assert tv_small > 0.4  # measured 0.65
    assert tv_large < 0.05  # measured 0.01
    assert min(len(p) for p in skewed) >= 10


def test_dirichlet_min_size_errors():
    labels = _labels(4, 5)
    with pytest.raises(PartitionError, match="min_size=10 x 5 clients"):
        partition_dirichlet(labels, 5, 0.5, seed=0, min_size=10)
    # Possible in principle (4 x 5 = 20) but a skewed draw puts each class on one client.
    with pytest.raises(PartitionError, match="raise partition.alpha or lower partition.min_size"):
        partition_dirichlet(_labels(2, 10), 4, 0.01, seed=0, min_size=5, max_retries=20)


def test_quantity_skew_sizes_skewed_labels_global():
    labels = _labels(10, 500)
    parts = partition_quantity_skew(labels, 5, alpha=1.0, seed=0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1
    assert sizes.max() > 3 * sizes.min()
    big = [p for p in parts if len(p) >= 500]
    assert big, "the test needs at least one client large enough to measure"
    assert _mean_tv_to_global(labels, big, 10) < 0.1


def test_quantity_skew_every_client_gets_a_sample_with_tiny_alpha():
    labels = _labels(2, 20)
    parts = partition_quantity_skew(labels, 20, alpha=0.01, seed=0)
    _assert_valid(parts, labels.size, 20)
    sizes = sorted(len(p) for p in parts)
    assert sizes[0] == 1
    assert sizes[-1] > 10, "tiny alpha puts most of the spare samples on one client"


def test_partition_matrix_exact_counts():
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4, 5])]
    np.testing.assert_array_equal(
        partition_matrix(labels, parts, num_classes=4), [[1, 0, 1, 0], [0, 2, 2, 0]]
    )


def test_dispatch_matches_direct_calls():
    labels = _labels(20, 30)
    cases = [
        (scheme("iid"), partition_iid(labels, 5, 1)),
        (
            {**scheme("pathological"), "classes_per_client": 4},
            partition_pathological(labels, 5, 4, 1),
        ),
        ({**scheme("dirichlet"), "alpha": 0.5}, partition_dirichlet(labels, 5, 0.5, 1, 10)),
        ({**scheme("quantity_skew"), "alpha": 2.0}, partition_quantity_skew(labels, 5, 2.0, 1)),
    ]
    for cfg, expected in cases:
        got = partition(labels, cfg, num_clients=5, seed=1)
        for x, y in zip(got, expected, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("conf", ["iid", "pathological", "dirichlet", "quantity_skew"])
def test_conf_files_drive_partition(conf):
    cfg = yaml.safe_load((CONF_DIR / f"{conf}.yaml").read_text())
    assert cfg["name"] == conf
    labels = _labels(20, 30)
    _assert_valid(partition(labels, cfg, num_clients=5, seed=0), labels.size, 5)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"_target_": "fedray.data.partition.shards", "name": "shards"}, "cannot be imported"),
        ({}, "partition._target_ is missing"),
        (scheme("dirichlet"), "partition.alpha is required"),
        ({**scheme("dirichlet"), "alpha": 0.5, "alpah": 1}, "partition.alpah is not an argument"),
        ({**scheme("dirichlet"), "alpha": -1.0}, "partition.alpha must be"),
        ({**scheme("quantity_skew"), "alpha": "big"}, "partition.alpha must be"),
        ({**scheme("pathological"), "classes_per_client": 2.5}, "partition.classes_per_client"),
        ({**scheme("pathological"), "classes_per_client": 30}, "partition.classes_per_client=30"),
        ({**scheme("dirichlet"), "alpha": 0.5, "min_size": -1}, "partition.min_size must be"),
    ],
)
def test_dispatch_bad_config_names_the_key(cfg, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.").replace("(", r"\(")):
        partition(_labels(20, 30), cfg, num_clients=5, seed=0)


@pytest.mark.parametrize(
    ("labels", "num_clients", "match"),
    [
        (np.array([0.0, 1.0]), 1, "integer class ids"),
        (np.zeros((2, 2), dtype=int), 1, "1-D"),
        (np.array([], dtype=int), 1, "empty"),
        (np.array([0, -1]), 1, "non-negative"),
        (np.array([0, 1]), 3, "exceeds the 2 samples"),
        (np.array([0, 1]), 0, ">= 1"),
    ],
)
def test_bad_labels_or_client_count(labels, num_clients, match):
    with pytest.raises(PartitionError, match=match):
        partition_iid(labels, num_clients, seed=0)


def test_heatmap_png(tmp_path):
    labels = _labels(20, 30)
    m = partition_matrix(labels, partition_pathological(labels, 5, 4, 0), 20)
    out = save_partition_heatmap(
        m, tmp_path / "sub" / "partition.png", [f"pill{i}" for i in range(20)], "pathological"
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    with pytest.raises(PartitionError, match="class_names has 3 entries"):
        save_partition_heatmap(m, tmp_path / "x.png", ["a", "b", "c"])
