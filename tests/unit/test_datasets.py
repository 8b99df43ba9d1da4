"""Dataset directories and the cache: atomic builds, no half-built entries."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.data.datasets import (
    DatasetError,
    cached_build,
    config_hash,
    is_complete,
    load_images,
    load_info,
    load_labels,
    write_meta,
    write_split,
)


def _build(root):
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    write_split(root, "train", images, np.array([0, 1]))
    write_meta(root, "t", ["a", "b"], 4, {"train": 2})


def test_round_trip(tmp_path):
    root = cached_build(tmp_path, "t", {"x": 1}, _build)
    info = load_info(root)
    assert info.num_classes == 2 and info.splits == {"train": 2}
    assert load_images(root, "train").shape == (2, 4, 4, 3)
    assert load_labels(root, "train").tolist() == [0, 1]


def test_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_interrupted_build_leaves_no_entry(tmp_path):
    def broken(root):
        _build(root)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(tmp_path, "t", {"x": 2}, broken)
    assert not any(is_complete(p) for p in tmp_path.iterdir())
    calls = []
    root = cached_build(tmp_path, "t", {"x": 2}, lambda r: (calls.append(1), _build(r)))
    assert calls == [1] and is_complete(root)
    cached_build(tmp_path, "t", {"x": 2}, lambda r: calls.append(2))
    assert calls == [1]  # second call is a cache hit


def test_bad_arrays_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="uint8"):
        write_split(tmp_path, "train", np.zeros((2, 4, 4, 3), np.float32), np.zeros(2))
    with pytest.raises(DatasetError, match="2 images but 3 labels"):
        write_split(tmp_path, "train", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3))
    with pytest.raises(DatasetError, match="meta.json"):
        load_info(tmp_path / "nope")


def test_every_builder_lists_the_keys_of_its_own_yaml():
    """A builder's `fedray_keys` (what `+data.KEY` is checked against) covers its group's YAML:
    a key the shipped YAML sets is never refused as unknown."""
    from pathlib import Path

    import yaml

    from fedray.data.sources import NOT_BUILDER_KEYS
    from fedray.targets import import_target

    listed = 0
    for path in sorted(Path("conf/data").glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        if not node.get("_target_"):
            continue
        fn = import_target("data._target_", node["_target_"])
        if getattr(fn, "fedray_dataset_builder", False):
            assert fn.fedray_keys is not None, path  # every shipped builder lists its keys
            extra = set(node) - set(fn.fedray_keys) - set(NOT_BUILDER_KEYS)
            assert not extra, (path, extra)
            listed += 1
    assert listed >= 7
