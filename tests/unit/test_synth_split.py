"""The reference crops' split, on the default synthetic config, from the plan alone (no pixels).

Crops cut from one crop scene share rendered pixels (background, the edge of a neighbouring
pill), so a scene must never feed both train and val.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedray.config import compose_plain
from fedray.pill import synth_plan
from fedray.pill.import_common import stratified_split
from fedray.pill.synth import synth_config

SEED = 0


@pytest.fixture(scope="module")
def cfg() -> dict:
    data = compose_plain(["+experiment=pill_noniid"])["data"]
    data = {k: v for k, v in data.items() if k not in ("_target_", "describe", "public_set")}
    return synth_config(data)


def _layout(cfg: dict, seed: int) -> tuple[np.ndarray, list[list[int]], synth_plan.Layout]:
    """The reference plan and the layout a build derives from it (no consumer photos)."""
    items, scenes, ref_split = synth_plan.reference_plan(cfg, seed, cfg["num_pills"])
    return items, scenes, synth_plan.split_layout(cfg, seed, items, ref_split, [])


def test_no_reference_scene_holds_both_a_train_and_a_val_crop(cfg):
    items, scenes, layout = _layout(cfg, SEED)
    assert len(items) == cfg["reference_crops"]
    # crops are generated scene by scene: the scenes, in order, are the items
    assert [c for scene in scenes for c in scene] == items.tolist()
    assert np.array_equal(layout.items, items)
    assert all(1 <= len(s) <= cfg["max_pills_per_scene"] for s in scenes)
    at, mixed = 0, 0
    for scene in scenes:
        splits = set(layout.split[at:at + len(scene)].tolist())
        mixed += len(splits) > 1
        at += len(scene)
    assert mixed == 0, f"{mixed} of {len(scenes)} reference scenes hold train and val crops"
    assert sum(layout.counts) == len(items)


def test_reference_val_counts_are_class_stratified_and_pills_balanced(cfg):
    items, _, layout = _layout(cfg, SEED)
    n, total = cfg["num_pills"], cfg["reference_crops"]
    labels = items // 2
    per_pill = np.bincount(labels, minlength=n)
    assert per_pill.max() - per_pill.min() <= 1 and per_pill.sum() == total  # _balanced
    want = np.bincount(labels[stratified_split(labels, {"val": cfg["val_fraction"]}, SEED)["val"]],
                       minlength=n)
    got = np.bincount(labels[layout.split == 1], minlength=n)
    assert np.abs(got - want).max() <= 1, (got, want)
    assert got.sum() == round(total * cfg["val_fraction"]) == layout.counts[1]
    # rows: each split's crops numbered 0.. in generation order
    for s, count in enumerate(layout.counts):
        assert layout.row[layout.split == s].tolist() == list(range(count))
    # both faces of a pill still turn up in both splits
    sides = Counter(zip(items % 2, layout.split.tolist(), strict=True))
    assert all(sides[(side, s)] > 0 for side in (0, 1) for s in (0, 1))


def test_reference_plan_is_deterministic_in_the_seed(cfg):
    a_items, a_scenes, a_layout = _layout(cfg, SEED)
    b_items, b_scenes, b_layout = _layout(cfg, SEED)
    assert np.array_equal(a_items, b_items) and a_scenes == b_scenes
    assert np.array_equal(a_layout.split, b_layout.split)
    assert np.array_equal(a_layout.row, b_layout.row)
    c_items, c_scenes, c_layout = _layout(cfg, SEED + 1)
    assert not (np.array_equal(a_items, c_items) and a_scenes == c_scenes
                and np.array_equal(a_layout.split, c_layout.split))
