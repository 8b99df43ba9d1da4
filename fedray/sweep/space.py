"""The sweep YAML's space as Tune's param space, and back from a trial's config to config keys.

    fl.rounds: 5                                       fixed for every trial
    client.epochs: [1, 2, 4]                           grid: every value; else tune.choice
    client.optimizer.lr: {loguniform: [1.0e-3, 0.3]}   tune.loguniform (also uniform, randint)
    strategy:                                          variants of a config group
      - {name: fedavg}
      - {name: fedprox, mu: {loguniform: [1.0e-3, 1.0]}}

Grids are enumerated here (`grid_points`, first key slowest) so that the planner can drop the
points an experiment cannot run and spread `num_samples` over the rest; `grid_space` hands the
planned points to Tune as one `tune.grid_search` (see there). For Tune's random
sampling and its searchers (Optuna, HyperOpt) `tune_space` maps every key onto a Tune domain.
Searchers take flat spaces of scalars only, so a group's variants become one choice of variant
index under the group's key (`strategy: tune.choice([0, 1])`) with each variant's own ranges
under `strategy[1].mu`; `decode` turns such a config back into dotted config keys. A trial's
config otherwise holds the dotted keys themselves, which is what PBT mutates.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import numpy as np

from fedray.sweep.spec import RANGES, Dim, SweepSpec

_SUB = re.compile(r"^(?P<group>[^.\[]+)\[(?P<i>\d+)\]\.(?P<key>.+)$")
INDEX_KEY = "_index"  # the trial's number, added by searchers whose trial ids carry none
NA = "<n/a>"  # a grid point's value for a key it does not set (another variant's key)


def grid_points(dims: list[Dim]) -> list[dict[str, Any]]:
    """Every combination of the dims' values (variants expand to their own grids), in order."""
    per_dim: list[list[dict[str, Any]]] = []
    for d in dims:
        if d.kind in RANGES:
            raise ValueError(f"{d.key}: a {d.kind} range cannot be enumerated")
        options: list[dict[str, Any]] = []
        for v in d.values:
            options.extend(grid_points(v) if isinstance(v, list) else [{d.key: v}])
        per_dim.append(options)
    return [
        {k: v for part in combo for k, v in part.items()} for combo in itertools.product(*per_dim)
    ]


def sample_point(dims: list[Dim], rng: np.random.Generator) -> dict[str, Any]:
    """One random assignment (used to tell which keys a space varies, not to pick trials)."""
    point: dict[str, Any] = {}
    for d in dims:
        if d.kind == "uniform":
            point[d.key] = float(rng.uniform(d.low, d.high))
        elif d.kind == "loguniform":
            point[d.key] = float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        elif d.kind == "randint":
            point[d.key] = int(rng.integers(int(d.low), int(d.high) + 1))
        else:
            v = d.values[int(rng.integers(len(d.values)))]
            point.update(sample_point(v, rng) if isinstance(v, list) else {d.key: v})
    return point


def domain(d: Dim) -> Any:
    """The Tune domain of a range or list dim (a plain value when it holds one value)."""
    from ray import tune

    if d.kind == "uniform":
        return tune.uniform(float(d.low), float(d.high))
    if d.kind == "loguniform":
        return tune.loguniform(float(d.low), float(d.high))
    if d.kind == "randint":
        return tune.randint(int(d.low), int(d.high) + 1)  # the YAML's bounds are inclusive
    if len(d.values) == 1:
        return d.values[0]
    return tune.choice(list(d.values))


def variant_table(dims: list[Dim]) -> dict[str, list[dict[str, Any]]]:
    """{group: [fixed keys of each variant]} for the dims that hold group variants."""
    table: dict[str, list[dict[str, Any]]] = {}
    for d in dims:
        if d.variants:
            table[d.key] = [
                {s.key: s.values[0] for s in v if s.kind == "values" and len(s.values) == 1}
                for v in d.values
            ]
    return table


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """The sweep's space as Tune's param space (flat; variants by index, see the module doc)."""
    from ray import tune

    space: dict[str, Any] = {}
    for d in spec.dims:
        if not d.variants:
            space[d.key] = domain(d)
            continue
        space[d.key] = tune.choice(list(range(len(d.values)))) if len(d.values) > 1 else 0
        for i, variant in enumerate(d.values):
            for s in variant:
                if s.kind in RANGES or len(s.values) > 1:
                    space[f"{d.key}[{i}].{s.key[len(d.key) + 1 :]}"] = domain(s)
    return space


POINT_KEY = "_point"  # a grid trial's position in the planned points


class PointValue:
    """`tune.sample_from` of one key: its value in the grid point that `_point` selects.

    A class, not a lambda, so the param space pickles into Tune's experiment state (resume).
    """

    def __init__(self, points: list[dict[str, Any]], key: str) -> None:
        self.points, self.key = points, key

    def __call__(self, config: dict[str, Any]) -> Any:
        # Tune passes the trial's config (the grid key resolved first); a spec dict is deprecated
        return self.points[int(config[POINT_KEY])].get(self.key, NA)


def grid_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Tune's param space for exactly these grid points, in this order.

    The planner has dropped the points an experiment cannot run, so the grid is not a product
    of per-key lists: `tune.grid_search` runs over the points' positions, and every key is a
    `tune.sample_from` of its value at that position (NA where a point has none, e.g. another
    variant's key). Tune's BasicVariantGenerator expands one grid key in list order, so trial
    i runs point i and the trial's config holds plain dotted keys (what PBT mutates).
    """
    from ray import tune

    keys = list(dict.fromkeys(k for p in points for k in p))
    space: dict[str, Any] = {POINT_KEY: tune.grid_search(list(range(len(points))))}
    space.update({k: tune.sample_from(PointValue(points, k)) for k in keys})
    return space


def split_constants(space: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed values, Tune domains) of a param space."""
    from ray.tune.search.sample import Domain

    fixed = {k: v for k, v in space.items() if not isinstance(v, Domain)}
    return fixed, {k: v for k, v in space.items() if isinstance(v, Domain)}


def decode(config: dict[str, Any], variants: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A trial's Tune config as dotted config keys: variant indices expanded, inactive keys out."""
    out: dict[str, Any] = {}
    subs: list[tuple[str, str, int, Any]] = []
    for key, value in config.items():
        if key.startswith("_") or (isinstance(value, str) and value == NA):
            continue
        m = _SUB.match(key)
        if m:
            subs.append((m["group"], m["key"], int(m["i"]), value))
        elif key in variants and not isinstance(value, dict):
            out.update(variants[key][int(value)])
        else:
            out[key] = value
    for group, key, i, value in subs:
        if int(config.get(group, -1)) == i:
            out[f"{group}.{key}"] = value
    return out


def pbt_mutations(spec: SweepSpec) -> dict[str, Any]:
    """PBT's hyperparam_mutations: a Tune domain per range key, the list of values otherwise."""
    by_key = {d.key: d for d in spec.dims}
    out: dict[str, Any] = {}
    for key in spec.scheduler.get("mutate", []):
        d = by_key[key]
        out[key] = domain(d) if d.kind in RANGES else list(d.values)
    return out


def swept_keys(points: list[dict[str, Any]]) -> list[str]:
    """Keys whose value differs between points (or is missing in some), in first-seen order."""
    import json

    keys: dict[str, None] = {}
    for p in points:
        keys.update(dict.fromkeys(p))
    out = []
    for k in keys:
        vals = {json.dumps(p.get(k, "<n/a>"), sort_keys=True, default=str) for p in points}
        if len(vals) > 1:
            out.append(k)
    return out


def space_keys(spec: SweepSpec) -> list[str]:
    """The keys this sweep's space varies (from draws of a fixed, independent RNG)."""
    if spec.search == "grid":
        return swept_keys(grid_points(spec.dims))
    rng = np.random.default_rng(0x5EED)
    return swept_keys([sample_point(spec.dims, rng) for _ in range(256)])
