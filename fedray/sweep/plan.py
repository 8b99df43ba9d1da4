"""Trial configs and the grid plan: feasibility, `num_samples` spread, submission order.

A trial's config is the experiment's composed config with the trial's assignment (dotted keys)
applied; a switched group starts from its option's YAML. Before any resources are reserved a
grid drops the points its experiment cannot run (a partition that cannot be dealt, a strategy
that cannot aggregate one round's updates). Draws of Tune's random search and of its searchers
are checked the same way when their trial starts (`fedray/sweep/trainable.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fedray.config import ConfigError
from fedray.sweep.groups import set_key
from fedray.sweep.keys import group_options
from fedray.sweep.space import grid_points, sample_point, space_keys
from fedray.sweep.spec import RANGES, Dim, SweepError, SweepSpec

LabelsFor = Callable[[dict[str, Any]], "np.ndarray | None"]


def trial_config(
    base: dict[str, Any], assignment: dict[str, Any], options: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """The trial's config: base + switched group options + assigned keys; also the keys left out.

    A key that belongs to another option of a switched group (e.g. `partition.alpha` for a
    pathological trial) does not apply to this trial and is returned in the second value.
    """
    cfg = copy.deepcopy(base)
    for group, by_name in options.items():
        name = assignment.get(f"{group}.name", cfg[group]["name"])
        if name != cfg[group]["name"]:
            cfg[group] = copy.deepcopy(by_name[name])
    skipped = []
    for key, value in assignment.items():
        if not set_key(cfg, key, copy.deepcopy(value)):
            if key.split(".")[0] not in options:
                raise SweepError(f"trial assignment {key}={value!r}: not a key of the config")
            skipped.append(key)
    return cfg, skipped


def check_feasible(cfg: dict[str, Any], labels: np.ndarray | None) -> str | None:
    """Why this trial config cannot run on its experiment (None if it can).

    Partitions are dealt on the real labels and the strategy aggregates dummy updates from one
    round's clients, so e.g. `classes_per_client=8` of 4 classes, or Krum with too few clients,
    are skipped before the trial trains.
    """
    from fedray.data.partition import PartitionError, partition
    from fedray.fl.server import clients_per_round
    from fedray.fl.strategies import build_strategy
    from fedray.fl.types import ClientResult

    if cfg.get("stage", "federated") != "federated":
        return None
    if labels is not None:
        try:
            partition(labels, cfg["partition"], int(cfg["fl"]["num_clients"]), int(cfg["seed"]))
        except PartitionError as exc:
            return str(exc)
    k = clients_per_round(cfg["fl"])
    strategy = build_strategy(cfg["strategy"])  # a ConfigError here is a mistake in the sweep
    dummy = [ClientResult(i, {"w": np.full(2, float(i), np.float32)}, 1) for i in range(k)]
    try:
        strategy.aggregate({"w": np.zeros(2, np.float32)}, dummy)
    except (ValueError, ConfigError) as exc:
        return f"strategy {cfg['strategy']['name']}: {exc}"
    return None


def check_trials(spec: SweepSpec, base: dict[str, Any], labels_for: LabelsFor | None = None,
                 draws: int = 32) -> None:
    """Every trial the sweep may run passes the run's own config check (`fedray.validate`),
    before Ray starts: the base config, then the grid's planned points, or a random space's
    draws (seeded), one draw of each group variant and each range's two bounds (a range inside a
    variant in points that select that variant). A point the experiment cannot deal
    (`check_feasible`) is not an error: the grid skips it, a drawn trial ends as skipped."""
    from fedray.data.datasets import config_hash
    from fedray.validate import validate

    validate(base)  # a mistake outside the space: the plain one-line error of a run
    options = group_options(spec, base)
    grid = spec.search == "grid"
    if grid:  # the points it will run (the plan has dropped those the data cannot deal)
        points = plan_trials(spec, base, labels_for)[0]
    else:
        rng = np.random.default_rng(spec.seed or 0)
        points = [sample_point(spec.dims, rng) for _ in range(draws)]
        points += bound_points(spec.dims, rng)
    seen: set[str] = {config_hash(base)}
    for point in points:
        cfg, _ = trial_config(base, point, options)
        key = config_hash(cfg)
        if key in seen:
            continue
        seen.add(key)
        try:
            if grid or check_feasible(cfg, labels_for(cfg) if labels_for else None) is None:
                validate(cfg)
        except ConfigError as exc:
            raise SweepError(f"sweep {spec.name!r} ({spec.file}): trial {fmt_point(point)}: "
                             f"{exc}") from None


def bound_points(dims: list[Dim], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Points with each range at its low and at its high bound (the other keys drawn), and one
    draw of each group variant; a range inside a variant is pinned in points of that variant."""
    scopes = [(dims, dims)]  # (the space to draw from, the dims whose ranges are pinned)
    for d in dims:
        for v in d.values:
            if isinstance(v, list):  # the space with group d fixed to this variant
                scopes.append(([replace(x, values=[v]) if x is d else x for x in dims], v))
    points: list[dict[str, Any]] = []
    for space_, own in scopes:
        if space_ is not dims:
            points.append(sample_point(space_, rng))  # every variant at least once
        for r in own:
            if r.kind in RANGES:
                cast = int if r.kind == "randint" else float
                points += [{**sample_point(space_, rng), r.key: cast(b)} for b in (r.low, r.high)]
    return points


def train_labels(cfg: dict[str, Any], cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The experiment's training labels (builds the dataset into its cache if needed)."""
    from fedray.data.datasets import config_hash, load_labels
    from fedray.data.sources import build_dataset

    cache = {} if cache is None else cache
    key = config_hash([cfg["data"], cfg["seed"]])
    if key not in cache:
        info = build_dataset(cfg["data"], int(cfg["seed"]))
        cache[key] = load_labels(info.root, "train")
    return cache[key]


def spread(n: int, k: int) -> list[int]:
    """k indices evenly spread over range(n), first and last included (all of them if k >= n)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def plan_trials(
    spec: SweepSpec, base: dict[str, Any], labels_for: LabelsFor | None = None
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The grid's feasible points (`num_samples` of them spread evenly), skip notes, swept keys.

    Only a grid is planned up front; for every other search the points list is empty and Tune
    draws the trials. `labels_for(cfg)` gives the training labels used to check partitions
    (None: not checked).
    """
    swept = space_keys(spec)
    if spec.search != "grid":
        return [], [], swept
    options = group_options(spec, base)
    notes: list[str] = []

    def feasible(point: dict[str, Any]) -> bool:
        cfg, _ = trial_config(base, point, options)
        try:
            why = check_feasible(cfg, labels_for(cfg) if labels_for else None)
        except ConfigError as exc:
            raise SweepError(f"sweep {spec.name!r} ({spec.file}): trial {point}: {exc}") from exc
        if why:
            notes.append(f"skipped {fmt_point(point)}: {why}")
        return why is None

    points = [p for p in grid_points(spec.dims) if feasible(p)]
    if spec.num_samples is not None:
        points = [points[i] for i in spread(len(points), spec.num_samples)]
    if not points:
        raise SweepError(
            f"sweep {spec.name!r} ({spec.file}): no trial can run on this experiment"
            + ("".join(f"\n  {n}" for n in notes[:10]))
        )
    return points, list(dict.fromkeys(notes)), swept


def submission_order(spec: SweepSpec, n: int, seed: int) -> list[int]:
    """The order Tune receives a grid's n points in.

    ASHA judges a trial against those that reached a rung before it, so the first trials set the
    bar. A grid in its natural order (e.g. the most skewed partitions first) would set a low bar
    for everything after it. Under ASHA a grid is therefore submitted in van der Corput
    (bit-reversed) order, so every prefix of the order is spread evenly over the grid: 0, 4, 2,
    6, 1, 5, 3, 7 for 8 points. Tune's random draws are already in random order. `seed` is
    unused (the order is deterministic); kept for the call signature.
    """
    del seed
    if spec.scheduler["name"] != "asha" or spec.search != "grid":
        return list(range(n))
    return spread_order(n)


def spread_order(n: int) -> list[int]:
    """range(n) in van der Corput order: each prefix is spread evenly over the whole range."""
    bits = max(1, (n - 1).bit_length())
    return sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def trial_rounds(cfg: dict[str, Any]) -> int:
    """The rounds a trial of this config reports: fl.rounds, or a distillation's epochs (one
    round each; fl.rounds is then ASHA's cap, `sweeps/distill.yaml`)."""
    rounds = int(cfg["fl"]["rounds"])
    if cfg.get("stage") == "distill":
        return min(rounds, int((cfg.get("distill") or {}).get("epochs") or rounds))
    return rounds


def max_rounds(spec: SweepSpec, base: dict[str, Any], points: list[dict[str, Any]]) -> int:
    """The most rounds any trial of this sweep may run (ASHA's max_t)."""
    rounds = [int(p.get("fl.rounds", base["fl"]["rounds"])) for p in points]
    for d in spec.dims:
        if d.key == "fl.rounds":
            rounds += [int(d.high)] if d.kind == "randint" else [int(v) for v in d.values]
    return max(rounds or [int(base["fl"]["rounds"])])


def fmt_value(v: Any) -> str:
    """A value as a table cell: floats to 4 significant digits."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_point(point: dict[str, Any]) -> str:
    """`key=value, ...` of an assignment."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in point.items())
