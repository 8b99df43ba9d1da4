"""Ray Tune sweeps: one federated run per trial, each in a placement group of its own.

A sweep is a YAML file in `sweeps/` (metric, mode, num_samples, search, scheduler, and a search
space of dotted keys into the composed config). Importing this module registers every such file
as an option of the Hydra config group `sweep`, so `python launch.py +experiment=smoke
sweep=noniid sweep.num_samples=1` composes it like any other group and `sweep.*` overrides are
ordinary Hydra overrides. `sweep(cfg)` plans the trials, runs them with Tune and writes the
results (CSV, ranked markdown table, plots).

Search space syntax (per dotted key):

    fl.rounds: 5                                  fixed for every trial
    client.epochs: [1, 2, 4]                      values (grid: all; random: one at random)
    client.optimizer.lr: {loguniform: [1.0e-3, 0.3]}   also uniform: [lo, hi], randint: [lo, hi]
    strategy:                                     variants of a config group (each its own space)
      - {name: fedavg}
      - {name: fedprox, mu: {loguniform: [1.0e-3, 1.0]}}

A trial that switches a group's `name` (partition, strategy, model, data) starts from that option's
defaults (`conf/<group>/<name>.yaml`), so it never inherits keys that belong to another option.
This module imports Ray only when a sweep runs.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedray.config import ConfigError

log = logging.getLogger("fedray")

# the checkout (editable install); a plain `pip install .` falls back to the working directory
ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "conf").is_dir():
    ROOT = Path.cwd()
CONF_DIR = ROOT / "conf"
SWEEPS_DIR = ROOT / "sweeps"
SWEEP_STATE = "sweep.json"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
SEARCHES = ("grid", "random")
SCHEDULERS = ("none", "asha")
RANGES = ("uniform", "loguniform", "randint")
VALUE_KEYS = ("values", "choice", "grid")
# keys a sweep cannot vary: they say where and how the sweep itself runs
UNSWEEPABLE = ("sweep", "run_dir", "resume")


class SweepError(ConfigError):
    """A sweep file or `sweep.*` override that cannot run; the message names the file and key."""


# ---------------------------------------------------------------------------------------------
# sweep files and the Hydra `sweep` group


def sweep_files() -> dict[str, Path]:
    """Sweep name -> YAML file: `sweeps/*.yaml`, then every directory in $FEDRAY_SWEEPS."""
    dirs = [SWEEPS_DIR]
    dirs += [Path(d).expanduser() for d in os.environ.get("FEDRAY_SWEEPS", "").split(":") if d]
    found: dict[str, Path] = {}
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            found[path.stem] = path.resolve()
    return found


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """The raw sweep mapping from `path`, with `name` (default: file stem) and `file` filled in."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SweepError(f"sweep file {path}: cannot read it ({exc})") from exc
    except yaml.YAMLError as exc:
        raise SweepError(f"sweep file {path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path}: must be a mapping of sweep fields, got {raw!r}")
    return {"name": path.stem, **raw, "file": str(path)}


def register_sweeps() -> None:
    """Make each sweep file an option of the Hydra group `sweep` (listed as `sweep: null`)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, path in sweep_files().items():
        try:
            node = {**SPEC_DEFAULTS, **read_sweep_file(path)}
            if node["scheduler"] is None or isinstance(node["scheduler"], str):
                node["scheduler"] = {"name": node["scheduler"] or "none"}
        except SweepError as exc:
            # keep the option selectable so that `sweep=NAME` reports the real problem
            node = {"name": name, "file": str(path), "error": str(exc)}
        store.store(group="sweep", name=name, node=node, provider="fedray")


# ---------------------------------------------------------------------------------------------
# the sweep spec


@dataclass
class Dim:
    """One dotted key of the search space: fixed, a list of values/variants, or a range."""

    key: str
    kind: str  # values | uniform | loguniform | randint
    values: list[Any] = field(default_factory=list)  # scalars, or list[Dim] for a group variant
    low: float = 0.0
    high: float = 0.0


@dataclass
class SweepSpec:
    """A validated sweep: what to optimise, how to search, and the parsed search space."""

    name: str
    file: str
    metric: str = "val/acc"
    mode: str = "max"
    search: str = "grid"
    num_samples: int | None = None
    seed: int | None = None
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    driver_cpus: float = 1.0
    resume: Any = False
    faults: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    space: dict[str, Any] = field(default_factory=dict)
    dims: list[Dim] = field(default_factory=list, repr=False)

    def fail(self, key: str, message: str) -> SweepError:
        """A SweepError naming this sweep's file and `sweep.<key>`."""
        return SweepError(f"sweep {self.name!r} ({self.file}): sweep.{key}: {message}")


SPEC_FIELDS = {
    "name",
    "file",
    "error",
    "metric",
    "mode",
    "search",
    "num_samples",
    "seed",
    "scheduler",
    "max_concurrent_trials",
    "max_failures",
    "driver_cpus",
    "resume",
    "faults",
    "description",
    "space",
}
ASHA_FIELDS = {"name", "grace_period", "reduction_factor", "max_t"}
# every field is in the composed node, so `sweep.resume=true` etc. are plain Hydra overrides
SPEC_DEFAULTS: dict[str, Any] = {
    "metric": "val/acc",
    "mode": "max",
    "search": None,  # grid, or random when the space has ranges
    "num_samples": None,
    "seed": None,
    "scheduler": {"name": "none"},
    "max_concurrent_trials": None,
    "max_failures": 1,
    "driver_cpus": 1.0,
    "resume": False,
    "faults": [],
    "description": "",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _opt_int(spec: SweepSpec, key: str, value: Any, low: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < low:
        raise spec.fail(key, f"must be an integer >= {low} or null, got {value!r}")
    return value


def load_sweep(sweep: dict[str, Any] | str | Path, base: dict[str, Any]) -> SweepSpec:
    """Validate a composed `sweep` node (or a sweep name or file) against the config `base`."""
    if isinstance(sweep, str | Path):
        files = sweep_files()
        path = files.get(str(sweep)) or Path(sweep)
        if not path.exists():
            raise SweepError(
                f"sweep {str(sweep)!r}: no such sweep; known: {sorted(files)} (or give a file path)"
            )
        sweep = read_sweep_file(path)
    if not isinstance(sweep, dict):
        raise SweepError(f"sweep must be a sweep name or mapping, got {sweep!r}")
    name = str(sweep.get("name") or "sweep")
    where = str(sweep.get("file") or "<config>")
    if sweep.get("error"):
        raise SweepError(str(sweep["error"]))
    spec = SweepSpec(name=name, file=where)
    unknown = sorted(set(sweep) - SPEC_FIELDS)
    if unknown:
        raise spec.fail(
            unknown[0], f"unknown field; valid fields: {sorted(SPEC_FIELDS - {'error'})}"
        )
    spec.metric = sweep.get("metric", spec.metric)
    if not isinstance(spec.metric, str) or not spec.metric:
        raise spec.fail("metric", f"must be a metric name such as 'val/acc', got {spec.metric!r}")
    spec.mode = sweep.get("mode", spec.mode)
    if spec.mode not in ("max", "min"):
        raise spec.fail("mode", f"must be 'max' or 'min', got {spec.mode!r}")
    spec.num_samples = _opt_int(spec, "num_samples", sweep.get("num_samples"), 1)
    spec.seed = _opt_int(spec, "seed", sweep.get("seed"), 0)
    spec.max_concurrent_trials = _opt_int(
        spec, "max_concurrent_trials", sweep.get("max_concurrent_trials"), 1
    )
    spec.max_failures = _opt_int(spec, "max_failures", sweep.get("max_failures", 1), 0) or 0
    spec.driver_cpus = sweep.get("driver_cpus", spec.driver_cpus)
    if not _is_number(spec.driver_cpus) or spec.driver_cpus <= 0:
        raise spec.fail("driver_cpus", f"must be a number > 0, got {spec.driver_cpus!r}")
    spec.resume = sweep.get("resume", False)
    spec.description = str(sweep.get("description") or "")
    spec.scheduler = _parse_scheduler(spec, sweep.get("scheduler", "none"))
    spec.faults = _parse_faults(spec, sweep.get("faults") or [])
    space = sweep.get("space")
    if not isinstance(space, dict) or not space:
        raise spec.fail("space", "must be a non-empty mapping of dotted config keys to values")
    spec.space = space
    spec.dims = [_parse_dim(spec, str(k), v, base) for k, v in space.items()]
    _check_keys(spec, base)
    continuous = any(d.kind in RANGES for d in _walk(spec.dims))
    spec.search = sweep.get("search") or ("random" if continuous else "grid")
    if spec.search not in SEARCHES:
        raise spec.fail("search", f"must be one of {SEARCHES}, got {spec.search!r}")
    if spec.search == "grid" and continuous:
        key = next(d.key for d in _walk(spec.dims) if d.kind in RANGES)
        raise spec.fail(
            f"space.{key}", "a range cannot be enumerated; use `search: random` or list values"
        )
    if spec.search == "random" and spec.num_samples is None:
        raise spec.fail("num_samples", "search: random needs num_samples (the number of trials)")
    return spec


def _parse_scheduler(spec: SweepSpec, value: Any) -> dict[str, Any]:
    if value is None or isinstance(value, str):
        value = {"name": value or "none"}
    if not isinstance(value, dict):
        raise spec.fail("scheduler", f"must be 'none', 'asha' or a mapping, got {value!r}")
    sched = {"name": "none", **value}
    if sched["name"] not in SCHEDULERS:
        raise spec.fail("scheduler.name", f"must be one of {SCHEDULERS}, got {sched['name']!r}")
    if sched["name"] == "asha":
        unknown = sorted(set(sched) - ASHA_FIELDS)
        if unknown:
            raise spec.fail(f"scheduler.{unknown[0]}", f"unknown; valid: {sorted(ASHA_FIELDS)}")
        sched.setdefault("grace_period", 1)
        sched.setdefault("reduction_factor", 2)
        sched.setdefault("max_t", None)
        for key in ("grace_period", "max_t"):
            _opt_int(spec, f"scheduler.{key}", sched[key], 1)
        if not _is_number(sched["reduction_factor"]) or sched["reduction_factor"] <= 1:
            raise spec.fail(
                "scheduler.reduction_factor",
                f"must be a number > 1, got {sched['reduction_factor']!r}",
            )
    else:
        sched = {"name": "none"}  # `sweep.scheduler.name=none` switches ASHA off, options and all
    return sched


def _parse_faults(spec: SweepSpec, faults: Any) -> list[dict[str, Any]]:
    if not isinstance(faults, list):
        raise spec.fail("faults", f"must be a list of {{trial, round, attempts}}, got {faults!r}")
    out = []
    for i, f in enumerate(faults):
        f = {"attempts": 1, **f} if isinstance(f, dict) else f
        if (
            not isinstance(f, dict)
            or set(f) - {"trial", "round", "attempts"}
            or not all(_is_int(f.get(k)) and f[k] >= 0 for k in ("trial", "round", "attempts"))
        ):
            raise spec.fail(
                f"faults[{i}]", f"must be {{trial: INT, round: INT, attempts: INT}}, got {f!r}"
            )
        out.append(f)
    return out


def _walk(dims: Iterable[Dim]) -> Iterable[Dim]:
    for d in dims:
        yield d
        for v in d.values:
            if isinstance(v, list):
                yield from _walk(v)


def _get(cfg: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) for a dotted key in a nested dict."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(cfg: dict[str, Any], key: str, value: Any) -> bool:
    """Set an existing dotted key; False (and no change) when its parent or key is missing."""
    *parents, last = key.split(".")
    node: Any = cfg
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if not isinstance(node, dict) or last not in node:
        return False
    node[last] = value
    return True


def is_group(base: dict[str, Any], key: str) -> bool:
    """A top-level config group whose options have a `name` (partition, strategy, model, data)."""
    return "." not in key and isinstance(base.get(key), dict) and "name" in base[key]


def _parse_dim(spec: SweepSpec, key: str, value: Any, base: dict[str, Any]) -> Dim:
    where = f"space.{key}"
    if not key or any(not part for part in key.split(".")):
        raise spec.fail(where, "is not a dotted config key")
    if key.split(".")[0] in UNSWEEPABLE:
        raise spec.fail(where, f"cannot be swept (one of {UNSWEEPABLE})")
    if isinstance(value, dict):
        ranges = [k for k in RANGES if k in value]
        lists = [k for k in VALUE_KEYS if k in value]
        if len(value) == 1 and ranges:
            return _parse_range(spec, key, ranges[0], value[ranges[0]])
        if len(value) == 1 and lists:
            value = value[lists[0]]
            if not isinstance(value, list):
                raise spec.fail(where, f"{lists[0]}: must be a list, got {value!r}")
        elif is_group(base, key):
            value = [value]  # one variant
        else:
            raise spec.fail(
                where,
                f"a mapping must be one of {{{', '.join(VALUE_KEYS + RANGES)}: ...}}"
                + (
                    " (variants as mappings are only for config groups with a `name`)"
                    if not ranges and not lists
                    else ""
                ),
            )
    if not isinstance(value, list):
        return Dim(key, "values", [value])
    if not value:
        raise spec.fail(where, "an empty list gives no trials")
    values: list[Any] = []
    for i, v in enumerate(value):
        if isinstance(v, dict):
            if not is_group(base, key):
                raise spec.fail(
                    f"{where}[{i}]",
                    "a mapping value is a group variant; only config groups with a `name` "
                    "(e.g. partition, strategy) take them",
                )
            v = {"name": base[key]["name"], **v}
            if isinstance(v["name"], dict | list):
                raise spec.fail(f"{where}[{i}].name", f"must be one option name, got {v['name']!r}")
            values.append([_parse_dim(spec, f"{key}.{k}", sub, base) for k, sub in v.items()])
        elif isinstance(v, list):
            raise spec.fail(f"{where}[{i}]", f"nested lists are not values: {v!r}")
        else:
            values.append(v)
    return Dim(key, "values", values)


def _parse_range(spec: SweepSpec, key: str, kind: str, bounds: Any) -> Dim:
    where = f"space.{key}.{kind}"
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_number, bounds))):
        hint = " (YAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(bounds, list) else ""
        raise spec.fail(where, f"must be [low, high] numbers, got {bounds!r}{hint}")
    low, high = bounds
    if not low < high:
        raise spec.fail(where, f"needs low < high, got {bounds!r}")
    if kind == "loguniform" and low <= 0:
        raise spec.fail(where, f"needs low > 0, got {bounds!r}")
    if kind == "randint" and not (_is_int(low) and _is_int(high)):
        raise spec.fail(where, f"needs integer bounds, got {bounds!r}")
    return Dim(key, kind, low=low, high=high)


# ---------------------------------------------------------------------------------------------
# group options and key checks


def group_option(group: str, name: Any, base: dict[str, Any]) -> dict[str, Any] | None:
    """The defaults of option `name` of config group `group` (None if it has none)."""
    if isinstance(base.get(group), dict) and base[group].get("name") == name:
        return copy.deepcopy(base[group])
    path = CONF_DIR / group / f"{name}.yaml"
    if isinstance(name, str) and path.exists():
        from omegaconf import OmegaConf

        node = OmegaConf.load(path)
        if "defaults" in node:
            del node["defaults"]
        # interpolations (e.g. ${data.num_classes}) resolve against the composed config
        root = OmegaConf.create({k: v for k, v in base.items() if k != group})
        root[group] = node
        return OmegaConf.to_container(root, resolve=True)[group]
    if group == "strategy":
        from fedray.fl.strategies import STRATEGIES, strategy_defaults

        if name in STRATEGIES:
            return {"name": name, **strategy_defaults(name)}
    return None


def _names(dims: Iterable[Dim], group: str) -> set[Any]:
    names: set[Any] = set()
    for d in _walk(dims):
        if d.key == f"{group}.name":
            names.update(v for v in d.values if not isinstance(v, list))
    return names


def group_options(spec: SweepSpec, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{group: {name: defaults}} for every group option a trial of this sweep may switch to."""
    options: dict[str, dict[str, Any]] = {}
    for group in sorted({d.key.split(".")[0] for d in _walk(spec.dims)}):
        if not is_group(base, group):
            continue
        for name in sorted(_names(spec.dims, group) | {base[group]["name"]}, key=str):
            option = group_option(group, name, base)
            if option is None:
                known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
                raise spec.fail(
                    f"space.{group}.name", f"{name!r} is not an option of {group}; known: {known}"
                )
            options.setdefault(group, {})[name] = option
    return options


def _type_ok(ref: Any, value: Any) -> bool:
    if ref is None or value is None:
        return True
    if isinstance(ref, bool):
        return isinstance(value, bool)
    if _is_int(ref):
        return _is_int(value)
    if isinstance(ref, float):
        return _is_number(value)
    if isinstance(ref, str):
        return isinstance(value, str)
    return isinstance(value, type(ref))


def _check_keys(spec: SweepSpec, base: dict[str, Any]) -> None:
    options = group_options(spec, base)

    def refs(key: str, variant: Any) -> list[Any]:
        group, _, rest = key.partition(".")
        if group in options and rest:
            names = [variant] if variant is not None else list(options[group])
            return [val for n in names for found, val in [_get(options[group][n], rest)] if found]
        found, val = _get(base, key)
        return [val] if found else []

    def check(dims: list[Dim], variant: Any) -> None:
        for d in dims:
            where = f"space.{d.key}"
            found = refs(d.key, variant)
            if not found:
                hint = (
                    f"{d.key.split('.')[0]} option {variant!r}"
                    if variant is not None
                    else "the composed config"
                )
                raise spec.fail(where, f"is not a key of {hint}")
            if d.kind in RANGES:
                probe = [d.low, d.high] if d.kind == "randint" else [float(d.low)]
                if not any(all(_type_ok(r, p) for p in probe) for r in found):
                    raise spec.fail(where, f"a {d.kind} range does not fit its value {found[0]!r}")
            for v in d.values:
                if isinstance(v, list):
                    name = next(s.values[0] for s in v if s.key == f"{d.key}.name")
                    check([s for s in v if s.key != f"{d.key}.name"], name)
                elif not any(_type_ok(r, v) for r in found):
                    raise spec.fail(
                        where,
                        f"value {v!r} ({type(v).__name__}) does not fit the config's "
                        f"{found[0]!r} ({type(found[0]).__name__})",
                    )

    check(spec.dims, None)


# ---------------------------------------------------------------------------------------------
# trial plans


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
    """One random assignment: a value or variant per dim, ranges drawn from their distribution."""
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


def spread(n: int, k: int) -> list[int]:
    """k indices evenly spread over range(n), first and last included (all of them if k >= n)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


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
        if not _set(cfg, key, copy.deepcopy(value)):
            if key.split(".")[0] not in options:
                raise SweepError(f"trial assignment {key}={value!r}: not a key of the config")
            skipped.append(key)
    return cfg, skipped


def check_feasible(cfg: dict[str, Any], labels: np.ndarray | None) -> str | None:
    """Why this trial config cannot run on its experiment (None if it can).

    Partitions are dealt on the real labels and the strategy aggregates dummy updates from one
    round's clients, so e.g. `classes_per_client=8` of 4 classes, or Krum with too few clients,
    are skipped before any resources are reserved.
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


def plan_trials(
    spec: SweepSpec, base: dict[str, Any], labels_for: Any = None
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The trials' assignments (feasible ones only), a note per skipped point, the swept keys.

    grid: every combination, or `num_samples` of them spread evenly over the grid's order;
    random: `num_samples` draws from an RNG seeded with `sweep.seed` (else the config's seed).
    `labels_for(cfg)` gives the training labels used to check partitions (None: not checked).
    """
    options = group_options(spec, base)
    notes: list[str] = []

    def feasible(point: dict[str, Any]) -> bool:
        cfg, _ = trial_config(base, point, options)
        try:
            why = check_feasible(cfg, labels_for(cfg) if labels_for else None)
        except ConfigError as exc:
            raise SweepError(f"sweep {spec.name!r} ({spec.file}): trial {point}: {exc}") from exc
        if why:
            notes.append(f"skipped {_fmt_point(point)}: {why}")
        return why is None

    if spec.search == "grid":
        candidates = [p for p in grid_points(spec.dims) if feasible(p)]
        points = candidates
        if spec.num_samples is not None:
            points = [candidates[i] for i in spread(len(candidates), spec.num_samples)]
    else:
        rng = np.random.default_rng(spec.seed if spec.seed is not None else int(base["seed"]))
        points = []
        for _ in range(50 * spec.num_samples):
            if len(points) == spec.num_samples:
                break
            p = sample_point(spec.dims, rng)
            if feasible(p):
                points.append(p)
        # which keys the space varies, from draws of an independent RNG (feasibility aside)
        extra = np.random.default_rng(0x5EED)
        candidates = points + [sample_point(spec.dims, extra) for _ in range(256)]
    if not points:
        raise SweepError(
            f"sweep {spec.name!r} ({spec.file}): no trial can run on this experiment"
            + ("".join(f"\n  {n}" for n in notes[:10]))
        )
    return points, list(dict.fromkeys(notes)), swept_keys(candidates)


def swept_keys(points: list[dict[str, Any]]) -> list[str]:
    """Keys whose value differs between trials (or is missing in some), in first-seen order."""
    keys: dict[str, None] = {}
    for p in points:
        keys.update(dict.fromkeys(p))
    out = []
    for k in keys:
        vals = {json.dumps(p.get(k, "<n/a>"), sort_keys=True, default=str) for p in points}
        if len(vals) > 1:
            out.append(k)
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_point(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in point.items())


# ---------------------------------------------------------------------------------------------
# resources


def trial_bundles(
    cfg: dict[str, Any], driver_cpus: float, cluster_cpus: float
) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: its driver, then one per client actor.

    The actor count is what the run's pool would start (one per sampled client, at most
    `ray.max_actors`) capped by what fits next to the driver, so a trial never waits for CPUs
    the cluster does not have.
    """
    from fedray.fl.server import clients_per_round

    ray_cfg = cfg["ray"]
    per_cpu = float(ray_cfg.get("client_cpus") or 0.0)
    per_gpu = float(ray_cfg.get("client_gpus") or 0.0)
    n = clients_per_round(cfg["fl"])
    if ray_cfg.get("max_actors"):
        n = min(n, int(ray_cfg["max_actors"]))
    if per_cpu > 0:
        n = min(n, int((cluster_cpus - driver_cpus) / per_cpu + 1e-9))
    n = max(1, n)
    client: dict[str, float] = {"CPU": per_cpu}
    if per_gpu > 0:
        client["GPU"] = per_gpu
    return [{"CPU": float(driver_cpus)}] + [dict(client) for _ in range(n)]


def trial_resources(
    config: dict[str, Any],
    base: dict[str, Any],
    options: dict,
    driver_cpus: float,
    cluster_cpus: float,
) -> Any:
    """Tune resources callback: the trial's PlacementGroupFactory (PACK: one node if it fits)."""
    from ray.tune import PlacementGroupFactory

    cfg, _ = trial_config(base, config["trial"]["assignment"], options)
    return PlacementGroupFactory(trial_bundles(cfg, driver_cpus, cluster_cpus), strategy="PACK")


# ---------------------------------------------------------------------------------------------
# the trial


def trial_name(index: int) -> str:
    """Stable name of trial `index` (its run directory and W&B run name)."""
    return f"trial_{index:03d}"


def _trial_dirname(trial: Any) -> str:
    return f"{trial_name(trial.config['trial']['index'])}_{trial.trial_id}"


def _trial_name_creator(trial: Any) -> str:
    return trial_name(trial.config["trial"]["index"])


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if _is_number(v) or (hasattr(v, "item") and np.ndim(v) == 0)
    }


class InjectedTrialFault(RuntimeError):
    """`sweep.faults`: a trial that fails on purpose after a round, on its first `attempts` tries.

    For tests and demos of `max_failures` and `sweep.resume`, like `fl.faults` for clients.
    """


def _name_wandb_run(
    cfg: dict[str, Any], meta: dict[str, Any], index: int, applied: dict[str, Any]
) -> None:
    """W&B run of a trial: grouped by sweep, named after the trial, tagged with swept values."""
    wcfg = cfg["logger"].setdefault("wandb", {})
    wcfg["group"] = wcfg.get("group") or meta["name"]
    wcfg["name"] = f"{meta['name']}-{trial_name(index)}"
    tags = [*(wcfg.get("tags") or []), str(cfg.get("name")), f"sweep:{meta['name']}"]
    tags += [f"{k}={_fmt_value(applied[k])}"[:64] for k in meta["swept"] if k in applied]
    wcfg["tags"] = list(dict.fromkeys(tags))


def run_trial(
    config: dict[str, Any], *, base: dict[str, Any], options: dict, meta: dict[str, Any]
) -> None:
    """Tune function trainable: one federated run, reporting every round with a checkpoint."""
    import ray
    from ray import tune

    from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint
    from fedray.run import run

    if meta.get("cwd") and Path(meta["cwd"]).is_dir():
        os.chdir(meta["cwd"])  # relative paths in the config mean what they meant at launch
    index = int(config["trial"]["index"])
    assignment = config["trial"]["assignment"]
    cfg, skipped = trial_config(base, assignment, options)
    ctx = tune.get_context()
    bundles = ctx.get_trial_resources().bundles
    cfg["ray"]["max_actors"] = max(1, len(bundles) - 1)  # the pool fills this trial's bundles
    run_dir = Path(meta["sweep_dir"]) / TRIALS_DIR / trial_name(index)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg["run_dir"] = str(run_dir)
    cfg["resume"] = False
    cfg["sweep"] = {"name": meta["name"], "trial": index, "assignment": assignment}
    _name_wandb_run(cfg, meta, index, {k: v for k, v in assignment.items() if k not in skipped})
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copy2(Path(d) / CHECKPOINT, run_dir / CHECKPOINT)
        cfg["resume"] = str(run_dir)
    info_path = run_dir / "trial.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"attempts": 0}
    info.update(
        index=index,
        trial_id=ctx.get_trial_id(),
        assignment=assignment,
        not_applicable=skipped,
        node_id=ray.get_runtime_context().get_node_id(),
        bundles=bundles,
        attempts=int(info["attempts"]) + 1,
        resumed_from_round=(
            int(load_checkpoint(run_dir / CHECKPOINT)["round"]) if restored is not None else 0
        ),
    )
    info_path.write_text(json.dumps(info, indent=2, default=str))
    # round -> how many first attempts fail after it
    faults = {f["round"]: f["attempts"] for f in meta.get("faults", []) if f["trial"] == index}
    staging = run_dir / ".tune_checkpoint"
    rounds = int(cfg["fl"]["rounds"])
    last: list[tuple[dict[str, Any], Path | None]] = []

    def report(row: dict[str, Any], ckpt_path: Path | None) -> None:
        metrics = _numeric(row)
        if ckpt_path is None:
            tune.report(metrics)
        else:
            # a fixed staging dir: report may block until Tune continues or stops this trial
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            shutil.copy2(ckpt_path, staging / CHECKPOINT)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
        if info["attempts"] <= faults.get(int(row["round"]), 0):
            raise InjectedTrialFault(
                f"sweep.faults: trial {index} fails after round {row['round']} "
                f"(attempt {info['attempts']})"
            )

    def on_round(row: dict[str, Any], ckpt_path: Path | None) -> None:
        if int(row["round"]) < rounds:
            report(row, ckpt_path)
        else:
            # the last round is reported once the run has finished (summary, plots, W&B run),
            # since a scheduler's decision at that report may end this process
            last.append((dict(row), ckpt_path))

    summary = run(cfg, on_round)
    if last:
        report(*last[-1])
    else:  # resumed after its last round: report the final state once
        report({"round": rounds, **_numeric(summary)}, None)
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# driving a sweep


def _sweep_hash(base: dict[str, Any], spec: SweepSpec) -> str:
    from fedray.run import experiment_hash

    return f"{experiment_hash(base)}-{spec.name}"


def find_sweep_dir(resume: Any, sweep_dir: Path, want: str) -> Path | None:
    """The sweep to continue: `sweep.resume=PATH`, or the latest matching one if `true`."""
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        found = sorted(
            (
                p.parent
                for p in sweep_dir.parent.glob(f"*/{SWEEP_STATE}")
                if p.parent != sweep_dir
                and json.loads(p.read_text()).get("hash") == want
                and (p.parent / TUNE_DIR).is_dir()
            ),
            key=lambda d: (d / SWEEP_STATE).stat().st_mtime,
        )
        if not found:
            raise SweepError(
                f"sweep.resume=true: no earlier run of this sweep and experiment under "
                f"{sweep_dir.parent}"
            )
        return found[-1]
    path = Path(str(resume)).expanduser()
    if not (path / SWEEP_STATE).exists():
        raise SweepError(f"sweep.resume={resume!r}: {path / SWEEP_STATE} does not exist")
    return path


def _prebuild_labels(cfg: dict[str, Any], cache: dict[str, np.ndarray]) -> np.ndarray:
    from fedray.data.datasets import config_hash, load_labels
    from fedray.data.sources import build_dataset

    key = config_hash([cfg["data"], cfg["seed"]])
    if key not in cache:
        info = build_dataset(cfg["data"], int(cfg["seed"]))
        cache[key] = load_labels(info.root, "train")
    return cache[key]


def sweep(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the sweep `cfg["sweep"]` over the experiment `cfg`; returns the results and paths."""
    from fedray.logging import setup_console_logging
    from fedray.run import ensure_ray

    setup_console_logging()
    t0 = time.perf_counter()
    if not cfg.get("run_dir"):
        raise SweepError("run_dir is not set (launch.py sets it to Hydra's output directory)")
    base = copy.deepcopy(cfg)
    sweep_node = base.pop("sweep")
    base["sweep"] = None
    spec = load_sweep(sweep_node, base)
    sweep_dir = Path(cfg["run_dir"]).resolve()
    want = _sweep_hash(base, spec)
    resume_dir = find_sweep_dir(spec.resume, sweep_dir, want)
    started = ensure_ray(cfg["ray"])
    try:
        if resume_dir is not None:
            state = json.loads((resume_dir / SWEEP_STATE).read_text())
            log.info("resuming sweep %s in %s", spec.name, resume_dir)
            grid = _run_tuner(resume_dir, state, restore=True)
            sweep_dir = resume_dir
        else:
            state = _plan(spec, base, sweep_dir, want)
            grid = _run_tuner(sweep_dir, state, restore=False)
        rows = collect_results(grid, state, sweep_dir)
        summarize_unfinished(rows)
        out = write_results(sweep_dir, state, rows, wall_s=time.perf_counter() - t0)
    finally:
        if started:
            import ray

            ray.shutdown()
    print_results(out)
    return out


def _plan(spec: SweepSpec, base: dict[str, Any], sweep_dir: Path, want: str) -> dict[str, Any]:
    import ray

    labels: dict[str, np.ndarray] = {}
    points, notes, swept = plan_trials(spec, base, lambda c: _prebuild_labels(c, labels))
    for note in notes:
        log.info("sweep %s: %s", spec.name, note)
    options = group_options(spec, base)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if spec.driver_cpus > cluster_cpus:
        raise spec.fail(
            "driver_cpus", f"{spec.driver_cpus} exceeds the cluster's {cluster_cpus:g} CPUs"
        )
    rounds = []
    for p in points:
        tcfg, _ = trial_config(base, p, options)
        need = sum(b["CPU"] for b in trial_bundles(tcfg, spec.driver_cpus, cluster_cpus))
        if need > cluster_cpus + 1e-9:
            raise SweepError(
                f"sweep {spec.name!r}: trial {_fmt_point(p)} needs {need:g} CPUs, the cluster "
                f"has {cluster_cpus:g}; lower ray.client_cpus or sweep.driver_cpus"
            )
        rounds.append(int(tcfg["fl"]["rounds"]))
    spec_dict = {k: v for k, v in asdict(spec).items() if k != "dims"}
    order = submission_order(spec, len(points), int(base["seed"]))
    state = {
        "name": spec.name,
        "hash": want,
        "spec": spec_dict,
        "base": base,
        "options": options,
        "trials": points,
        "order": order,
        "rounds": rounds,
        "swept": swept,
        "notes": notes,
        "cluster_cpus": cluster_cpus,
        "cwd": os.getcwd(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_STATE).write_text(json.dumps(state, indent=2, default=str))
    log.info(
        "sweep %s: %d trials (%s search, scheduler %s) over %s -> %s",
        spec.name,
        len(points),
        spec.search,
        spec.scheduler["name"],
        ", ".join(state["swept"]) or "-",
        sweep_dir,
    )
    return state


def _trainable(state: dict[str, Any], sweep_dir: Path) -> Any:
    from ray import tune

    spec = state["spec"]
    meta = {
        "name": state["name"],
        "sweep_dir": str(sweep_dir),
        "swept": state["swept"],
        "faults": spec["faults"],
        "cwd": state["cwd"],
    }
    fn = tune.with_parameters(run_trial, base=state["base"], options=state["options"], meta=meta)
    return tune.with_resources(
        fn,
        partial(
            trial_resources,
            base=state["base"],
            options=state["options"],
            driver_cpus=float(spec["driver_cpus"]),
            cluster_cpus=float(state["cluster_cpus"]),
        ),
    )


def _run_tuner(sweep_dir: Path, state: dict[str, Any], restore: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec = state["spec"]
    trainable = _trainable(state, sweep_dir)
    if restore:
        tuner = tune.Tuner.restore(
            str(sweep_dir / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True
        )
        return tuner.fit()
    sched = spec["scheduler"]
    scheduler = None
    if sched["name"] == "asha":
        scheduler = ASHAScheduler(
            time_attr="round",
            max_t=int(sched.get("max_t") or max(state["rounds"])),
            grace_period=int(sched["grace_period"]),
            reduction_factor=float(sched["reduction_factor"]),
            stop_last_trials=False,  # a trial at max_t finishes its run (summary, plots, W&B)
        )
    trials = [{"index": i, "assignment": p} for i, p in enumerate(state["trials"])]
    trials = [trials[i] for i in state["order"]]
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            metric=spec["metric"],
            mode=spec["mode"],
            scheduler=scheduler,
            num_samples=1,  # the trial list is already the search (grid or seeded random draws)
            max_concurrent_trials=spec["max_concurrent_trials"],
            reuse_actors=False,  # trials share no process, hence no mutable state
            trial_name_creator=_trial_name_creator,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(sweep_dir),
            failure_config=tune.FailureConfig(max_failures=int(spec["max_failures"])),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )
    return tuner.fit()


# ---------------------------------------------------------------------------------------------
# results


def collect_results(grid: Any, state: dict[str, Any], sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: status, rounds run, swept values, final metrics, per-round history."""
    metric = state["spec"]["metric"]
    rows = []
    for result in grid:
        t = result.config["trial"]
        index = int(t["index"])
        metrics = dict(result.metrics or {})
        history = []
        df = result.metrics_dataframe
        if df is not None and len(df):
            keys = dict.fromkeys(("round", metric, "val/acc", "comm/bytes_total"))
            cols = [c for c in keys if c in df.columns]
            history = [{c: _plain(r[c]) for c in cols} for r in df[cols].to_dict("records")]
        rounds_run = int(max([h.get("round") or 0 for h in history] + [metrics.get("round") or 0]))
        max_rounds = int(state["rounds"][index])
        trial_dir = sweep_dir / TRIALS_DIR / trial_name(index)
        info_path = trial_dir / "trial.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        if result.error is not None:
            status = "error"
        elif rounds_run < max_rounds:
            status = "stopped"
        else:
            status = "completed"
        rows.append(
            {
                "trial": trial_name(index),
                "index": index,
                "status": status,
                "rounds": rounds_run,
                "max_rounds": max_rounds,
                "assignment": t["assignment"],
                "not_applicable": info.get("not_applicable", []),
                "metric": _plain(metrics.get(metric)),
                "val/acc": _plain(metrics.get("val/acc")),
                "val/loss": _plain(metrics.get("val/loss")),
                "comm/bytes_total": _plain(metrics.get("comm/bytes_total")),
                "attempts": info.get("attempts"),
                "node_id": info.get("node_id"),
                "error": _error_line(result.error),
                "run_dir": str(trial_dir),
                "history": history,
            }
        )
    return sorted(rows, key=lambda r: r["index"])


def summarize_unfinished(rows: list[dict[str, Any]]) -> None:
    """summary.json (and the curves) for trials that did not finish their run.

    A trial that ASHA stops, or that fails for good, ends inside a round report, before its run
    writes summary.json; its metrics.jsonl holds every round it ran. The sweep driver writes the
    summary from those rows, with the status, so every trial directory reads the same way.
    """
    from fedray.plots import plot_curves

    for r in rows:
        run_dir = Path(r["run_dir"])
        metrics_path = run_dir / "metrics.jsonl"
        if r["status"] == "completed" or (run_dir / "summary.json").exists():
            continue
        if not metrics_path.exists():
            continue
        history = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
        last = history[-1] if history else {}
        summary = {k: v for k, v in last.items() if k.startswith(("val/", "comm/", "train/"))}
        summary.update(
            status=r["status"],
            rounds=r["rounds"],
            max_rounds=r["max_rounds"],
            stopped_by="scheduler" if r["status"] == "stopped" else None,
            error=r["error"],
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if history and not (run_dir / "acc_vs_round.png").exists():
            plot_curves(history, run_dir / "acc_vs_round.png", x="round", ys=("val/acc",))


def _error_line(error: BaseException | None) -> str | None:
    """`Type: message` of the exception a trial raised (unwrapped from Ray's task error)."""
    if error is None:
        return None
    cause = getattr(error, "cause", None) or error
    lines = [ln for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def rank(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Rows best first by the metric; trials without a value last, then by trial index."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(
        rows,
        key=lambda r: (r["metric"] is None, sign * (r["metric"] or 0.0), r["index"]),
    )


def submission_order(spec: SweepSpec, n: int, seed: int) -> list[int]:
    """The order Tune receives the n trials in.

    ASHA judges a trial against those that reached a rung before it, so the first trials set the
    bar. A grid in its natural order (e.g. the most skewed partitions first) would set a low bar
    for everything after it, and a random order does so now and then (replaying the measured
    `noniid` curves over all orders: a 7% chance of saving under 30%). Under ASHA a grid is
    therefore submitted in van der Corput (bit-reversed) order, so every prefix of the order is
    spread evenly over the grid: 0, 4, 2, 6, 1, 5, 3, 7 for 8 points. Random draws are already in
    random order. `seed` is unused (the order is deterministic); kept for the call signature.
    """
    del seed
    if spec.scheduler["name"] != "asha" or spec.search != "grid":
        return list(range(n))
    return spread_order(n)


def spread_order(n: int) -> list[int]:
    """range(n) in van der Corput order: each prefix is spread evenly over the whole range."""
    bits = max(1, (n - 1).bit_length())
    return sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def trial_round_savings(rows: list[dict[str, Any]]) -> tuple[int, int, float]:
    """(trial-rounds run, trial-rounds if every trial ran to the end, fraction saved)."""
    run = sum(int(r["rounds"]) for r in rows)
    most = sum(int(r["max_rounds"]) for r in rows)
    return run, most, (1.0 - run / most) if most else 0.0


def write_results(
    sweep_dir: Path, state: dict[str, Any], rows: list[dict[str, Any]], wall_s: float = 0.0
) -> dict:
    """sweep_results.csv, sweep_results.md (ranked), plots/, sweep_summary.json; returns paths."""
    spec = state["spec"]
    metric, swept = spec["metric"], state["swept"]
    ranked = rank(rows, spec["mode"])
    run, most, saved = trial_round_savings(rows)
    csv_path = sweep_dir / "sweep_results.csv"
    fields = ["rank", "trial", "status", "rounds", *swept, metric]
    fields += [k for k in ("val/acc", "val/loss", "comm/bytes_total") if k != metric]
    fields += ["attempts", "node_id", "run_dir", "error"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i, r in enumerate(ranked, 1):
            writer.writerow(_flat_row(r, i, swept, metric, fields))
    plots = plot_results(sweep_dir / "plots", rows, swept, metric)
    md_path = sweep_dir / "sweep_results.md"
    md_path.write_text(
        _markdown(state, ranked, fields, (run, most, saved), plots, sweep_dir, wall_s)
    )
    best = ranked[0] if ranked and ranked[0]["metric"] is not None else None
    summary = {
        "sweep": spec["name"],
        "sweep_dir": str(sweep_dir),
        "metric": metric,
        "mode": spec["mode"],
        "trials": len(rows),
        "status": {
            s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "error")
        },
        "trial_rounds": run,
        "trial_rounds_max": most,
        "trial_rounds_saved": saved,
        "wall_s": wall_s,
        "best": None
        if best is None
        else {"trial": best["trial"], metric: best["metric"], "assignment": best["assignment"]},
        "results_csv": str(csv_path),
        "results_md": str(md_path),
        "plots": [str(p) for p in plots],
        "rows": [{k: v for k, v in r.items() if k != "history"} for r in ranked],
    }
    summary_path = sweep_dir / "sweep_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_json"] = str(summary_path)
    return summary


def _cell(r: dict[str, Any], key: str) -> Any:
    if key in r["not_applicable"] or key not in r["assignment"]:
        return "n/a"
    return r["assignment"][key]


def _flat_row(
    r: dict[str, Any], rank_: int, swept: list[str], metric: str, fields: list[str]
) -> dict[str, Any]:
    row = {k: r.get(k) for k in fields}
    row.update({k: _cell(r, k) for k in swept})
    row["rank"] = rank_
    row[metric] = r["metric"]
    return row


def _markdown(
    state: dict[str, Any],
    ranked: list[dict[str, Any]],
    fields: list[str],
    rounds: tuple[int, int, float],
    plots: list[Path],
    sweep_dir: Path,
    wall_s: float,
) -> str:
    spec = state["spec"]
    metric, swept = spec["metric"], state["swept"]
    cols = [c for c in fields if c not in ("run_dir", "error", "node_id")]
    lines = [
        f"# Sweep `{spec['name']}` on experiment `{state['base'].get('name')}`",
        "",
        f"{len(ranked)} trials, {spec['search']} search, scheduler {spec['scheduler']['name']}, "
        f"ranked by the last reported `{metric}` ({spec['mode']}).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for i, r in enumerate(ranked, 1):
        row = _flat_row(r, i, swept, metric, fields)
        lines.append("| " + " | ".join(_md(row[c]) for c in cols) + " |")
    run, most, saved = rounds
    lines += [
        "",
        f"Trial-rounds run: **{run}** of {most} if every trial ran all its rounds "
        f"(**{100 * saved:.0f}% saved** by early stopping); wall time {wall_s:.0f} s.",
    ]
    errors = [r for r in ranked if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['trial']}: {r['error']}" for r in errors]
    if state.get("notes"):
        lines += ["", "Skipped grid points / draws:", ""] + [f"- {n}" for n in state["notes"]]
    if plots:
        lines += [""] + [f"![{p.stem}]({p.relative_to(sweep_dir)})" for p in plots]
    return "\n".join(lines) + "\n"


def _md(v: Any) -> str:
    if v is None:
        return "-"
    return _fmt_value(v).replace("|", "\\|")


def _figure(width: float = 5.0, height: float = 3.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).strip("_")


def plot_results(
    out_dir: Path, rows: list[dict[str, Any]], swept: list[str], metric: str
) -> list[Path]:
    """metric vs each swept key (one point per trial) and val/acc vs bytes (one line per trial)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    markers = {"completed": "o", "stopped": "v", "error": "x"}
    for key in swept:
        pts = [
            (_cell(r, key), r["metric"], r["status"])
            for r in rows
            if r["metric"] is not None and _cell(r, key) != "n/a"
        ]
        if not pts:
            continue
        fig = _figure()
        ax = fig.add_subplot()
        numeric = all(_is_number(x) for x, _, _ in pts)
        if numeric:
            xs = [float(x) for x, _, _ in pts]
            if min(xs) > 0 and max(xs) / min(xs) >= 50:
                ax.set_xscale("log")
        else:
            cats = list(dict.fromkeys(str(x) for x, _, _ in pts))
            xs = [cats.index(str(x)) for x, _, _ in pts]
            ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0)
        for status, marker in markers.items():
            sel = [(x, y) for (x, (_, y, s)) in zip(xs, pts, strict=True) if s == status]
            if sel:
                ax.scatter(*zip(*sel, strict=True), marker=marker, label=status)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        path = out_dir / f"{_safe_name(metric)}_vs_{_safe_name(key)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    curves = [
        (
            r["trial"],
            [
                (h["comm/bytes_total"], h["val/acc"])
                for h in r["history"]
                if h.get("comm/bytes_total") is not None and h.get("val/acc") is not None
            ],
        )
        for r in rows
    ]
    curves = [(name, pts) for name, pts in curves if pts]
    if curves:
        fig = _figure(6.0, 4.0)
        ax = fig.add_subplot()
        for name, pts in curves:
            ax.plot(*zip(*pts, strict=True), marker=".", label=name)
        ax.set_xlabel("cumulative bytes communicated")
        ax.set_ylabel("val/acc")
        if len(curves) <= 12:
            ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
        path = out_dir / "acc_vs_bytes.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def print_results(out: dict[str, Any]) -> None:
    """The ranked table's head, the trial-round saving and every output path."""
    metric = out["metric"]
    print(f"\nsweep {out['sweep']}: {out['trials']} trials {out['status']}")
    for r in out["rows"][:10]:
        print(
            f"  {r['trial']}  {r['status']:<9}  rounds {r['rounds']:>3}  "
            f"{metric} {_md(r['metric']):>8}  {_fmt_point(r['assignment'])}"
        )
    print(
        f"trial-rounds run: {out['trial_rounds']} of {out['trial_rounds_max']} "
        f"({100 * out['trial_rounds_saved']:.0f}% saved)   wall {out.get('wall_s', 0):.1f}s"
    )
    print(f"results: {out['results_csv']}\n         {out['results_md']}")
    print(f"summary: {out['summary_json']}")
    for p in out["plots"]:
        print(f"plot:    {p}")
    print(f"trials:  {Path(out['sweep_dir']) / TRIALS_DIR}")


register_sweeps()  # at import, so that `launch.py ... sweep=NAME` composes
