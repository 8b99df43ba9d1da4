"""Sweep files: read, validate against the composed config, and register as the Hydra group `sweep`.

A sweep is a YAML file in `sweeps/` (or a directory on $FEDRAY_SWEEPS): metric, mode, search,
scheduler, num_samples and a search space of dotted keys into the composed config (the space
syntax is in `fedray/sweep/space.py` and docs/sweeps.md). Every error names the sweep file and
the key, e.g. `sweep 'lr' (sweeps/lr.yaml): sweep.space.client.optimizer.lr: ...`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedray.config import ConfigError
from fedray.sweep import groups
from fedray.sweep.groups import is_group, is_int, is_number

SEARCHES = ("grid", "random", "optuna", "hyperopt")
SCHEDULERS = ("none", "asha", "pbt")
RANGES = ("uniform", "loguniform", "randint")
VALUE_KEYS = ("values", "choice", "grid")
# keys a sweep cannot vary: they say where and how the sweep itself runs
UNSWEEPABLE = ("sweep", "run_dir", "resume")
# keys PBT must not change mid-run: they change what the checkpoint is (data, model, clients)
PBT_FIXED = ("data", "model", "partition", "task", "seed", "stage", "fl.num_clients", "fl.rounds")
# each scheduler's options with their defaults (all in the composed node: plain Hydra overrides)
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    "asha": {"grace_period": 1, "reduction_factor": 2, "max_t": None},
    "pbt": {
        "perturbation_interval": 1,
        "quantile_fraction": 0.25,
        "resample_probability": 0.25,
        "synch": False,
        "mutate": None,  # null: every space key PBT may change mid-run
    },
}
ASHA_FIELDS = {"name", *SCHEDULER_DEFAULTS["asha"]}
PBT_FIELDS = {"name", *SCHEDULER_DEFAULTS["pbt"]}


class SweepError(ConfigError):
    """A sweep file or `sweep.*` override that cannot run; the message names the file and key."""


@dataclass
class Dim:
    """One dotted key of the search space: fixed, a list of values/variants, or a range."""

    key: str
    kind: str  # values | uniform | loguniform | randint
    values: list[Any] = field(default_factory=list)  # scalars, or list[Dim] for a group variant
    low: float = 0.0
    high: float = 0.0

    @property
    def variants(self) -> bool:
        """True when the values are group variants (each a list of Dims)."""
        return any(isinstance(v, list) for v in self.values)


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
    driver_gpus: float = 0.0
    reuse_processes: bool = True
    resume: Any = False
    faults: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    space: dict[str, Any] = field(default_factory=dict)
    dims: list[Dim] = field(default_factory=list, repr=False)

    def fail(self, key: str, message: str) -> SweepError:
        """A SweepError naming this sweep's file and `sweep.<key>`."""
        return SweepError(f"sweep {self.name!r} ({self.file}): sweep.{key}: {message}")


SPEC_FIELDS = {
    "name", "file", "error", "metric", "mode", "search", "num_samples", "seed", "scheduler",
    "max_concurrent_trials", "max_failures", "driver_cpus", "driver_gpus", "reuse_processes",
    "resume", "faults", "description", "space",
}  # fmt: skip
# every field is in the composed node, so `sweep.resume=true` etc. are plain Hydra overrides
SPEC_DEFAULTS: dict[str, Any] = {
    "metric": "val/acc",
    "mode": None,  # from the metric (default_mode)
    "search": None,  # grid, or random when the space has ranges
    "num_samples": None,
    "seed": None,
    "scheduler": {"name": "none"},
    "max_concurrent_trials": None,
    "max_failures": 1,
    "driver_cpus": 1.0,
    "driver_gpus": 0.0,
    "reuse_processes": True,
    "resume": False,
    "faults": [],
    "description": "",
}


# ---------------------------------------------------------------------------------------------
# sweep files and the Hydra `sweep` group


def sweep_files() -> dict[str, Path]:
    """Sweep name -> YAML file: `sweeps/*.yaml`, then every directory in $FEDRAY_SWEEPS."""
    dirs = [groups.SWEEPS_DIR]
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
    for name, path in sweep_files().items():
        _register(name, path)


def _register(name: str, path: Path) -> None:
    from hydra.core.config_store import ConfigStore

    try:
        node = {**SPEC_DEFAULTS, **read_sweep_file(path)}
        if node["scheduler"] is None or isinstance(node["scheduler"], str):
            node["scheduler"] = {"name": node["scheduler"] or "none"}
        if isinstance(node["scheduler"], dict):
            defaults = SCHEDULER_DEFAULTS.get(node["scheduler"].get("name"), {})
            node["scheduler"] = {**defaults, **node["scheduler"]}
    except SweepError as exc:
        # keep the option selectable so that `sweep=NAME` reports the real problem
        node = {"name": name, "file": str(path), "error": str(exc)}
    ConfigStore.instance().store(group="sweep", name=name, node=node, provider="fedray")


def sweep_file_args(args: list[str]) -> list[str]:
    """Command-line arguments with `sweep=PATH.yaml` (a sweep file anywhere) registered as an
    option of the `sweep` group under its stem and named by it (Hydra's group options are
    names, not paths); a PATH.yaml that is not a file is a SweepError."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+") == "sweep" and value.endswith((".yaml", ".yml")):
            path = Path(value).expanduser()
            if not path.is_file():
                raise SweepError(f"sweep={value}: no such sweep file (or name a sweep: "
                                 f"{', '.join(sorted(sweep_files()))})")
            _register(path.stem, path.resolve())
            arg = f"{key}={path.stem}"
        out.append(arg)
    return out


# ---------------------------------------------------------------------------------------------
# validation


def _opt_int(spec: SweepSpec, key: str, value: Any, low: int) -> int | None:
    if value is None:
        return None
    if not is_int(value) or value < low:
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
    if sweep.get("error"):
        raise SweepError(str(sweep["error"]))
    spec = SweepSpec(
        name=str(sweep.get("name") or "sweep"), file=str(sweep.get("file") or "<config>")
    )
    unknown = sorted(set(sweep) - SPEC_FIELDS)
    if unknown:
        raise spec.fail(
            unknown[0], f"unknown field; valid fields: {sorted(SPEC_FIELDS - {'error'})}"
        )
    spec.metric = sweep.get("metric", spec.metric)
    if not isinstance(spec.metric, str) or not spec.metric:
        raise spec.fail("metric", f"must be a metric name such as 'val/acc', got {spec.metric!r}")
    spec.mode = sweep.get("mode")
    if spec.mode is None:
        spec.mode = default_mode(spec.metric)
    if spec.mode not in ("max", "min"):
        raise spec.fail("mode", f"must be 'max' or 'min', got {spec.mode!r}")
    spec.num_samples = _opt_int(spec, "num_samples", sweep.get("num_samples"), 1)
    spec.seed = _opt_int(spec, "seed", sweep.get("seed"), 0)
    spec.max_concurrent_trials = _opt_int(
        spec, "max_concurrent_trials", sweep.get("max_concurrent_trials"), 1
    )
    spec.max_failures = _opt_int(spec, "max_failures", sweep.get("max_failures", 1), 0) or 0
    spec.driver_cpus = sweep.get("driver_cpus", spec.driver_cpus)
    if not is_number(spec.driver_cpus) or spec.driver_cpus <= 0:
        raise spec.fail("driver_cpus", f"must be a number > 0, got {spec.driver_cpus!r}")
    spec.driver_gpus = sweep.get("driver_gpus", spec.driver_gpus)
    if not is_number(spec.driver_gpus) or spec.driver_gpus < 0:
        raise spec.fail("driver_gpus", f"must be a number >= 0, got {spec.driver_gpus!r}")
    spec.reuse_processes = sweep.get("reuse_processes", spec.reuse_processes)
    if not isinstance(spec.reuse_processes, bool):
        raise spec.fail(
            "reuse_processes", f"must be true or false, got {spec.reuse_processes!r}"
        )
    from fedray.fl.inprocess import backend

    in_driver = backend(base) == "inprocess" and float(base["ray"].get("client_gpus") or 0) > 0
    if str(base.get("device", "auto")) == "cuda" and not (spec.driver_gpus or in_driver):
        # Ray hides the GPUs from a trial that holds none: its pretraining and server would fail
        raise spec.fail(
            "driver_gpus", "0, but device=cuda: a trial's driver sees a GPU only when it holds a "
            "share of one (e.g. sweep.driver_gpus=0.25), or use device=auto"
        )
    if (base.get("ray") or {}).get("keep_actors"):
        raise SweepError(
            f"sweep {spec.name!r} ({spec.file}): ray.keep_actors: a trial's client actors live "
            "in its placement group and end with it; set ray.keep_actors=false"
        )
    spec.resume = sweep.get("resume", False)
    spec.description = str(sweep.get("description") or "")
    spec.faults = _parse_faults(spec, sweep.get("faults") or [])
    space = sweep.get("space")
    if not isinstance(space, dict) or not space:
        raise spec.fail("space", "must be a non-empty mapping of dotted config keys to values")
    spec.space = space
    spec.dims = [_parse_dim(spec, str(k), v, base) for k, v in space.items()]
    from fedray.sweep.keys import check_keys, check_metric  # (keys imports this module)

    check_keys(spec, base)
    check_metric(spec, base)
    continuous = any(d.kind in RANGES for d in walk(spec.dims))
    spec.search = sweep.get("search") or ("random" if continuous else "grid")
    if spec.search not in SEARCHES:
        raise spec.fail("search", f"must be one of {SEARCHES}, got {spec.search!r}")
    if spec.search == "grid" and continuous:
        key = next(d.key for d in walk(spec.dims) if d.kind in RANGES)
        raise spec.fail(
            f"space.{key}", "a range cannot be enumerated; use `search: random` or list values"
        )
    if spec.search != "grid" and spec.num_samples is None:
        raise spec.fail("num_samples", f"search: {spec.search} needs num_samples (the trials)")
    spec.scheduler = _parse_scheduler(spec, sweep.get("scheduler", "none"))
    _warn_eval_every(spec, base)
    return spec


def default_mode(metric: str) -> str:
    """`min` for a loss, communication, time or privacy/epsilon metric; else `max`."""
    low = metric.endswith("loss") or metric.startswith(("comm/", "time/"))
    return "min" if low or metric == "privacy/epsilon" else "max"


def _warn_eval_every(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Trials report only the rounds that evaluate (every fl.eval_every-th, and the last): a
    scheduler's round counts that fall between them are judged at the next evaluated round."""
    every = int((base.get("fl") or {}).get("eval_every") or 1)
    key = {"asha": "grace_period", "pbt": "perturbation_interval"}.get(spec.scheduler["name"])
    if key and every > 1 and int(spec.scheduler[key]) % every:
        logging.getLogger("fedray").warning(
            "sweep %r: scheduler.%s=%s is not a multiple of fl.eval_every=%d: trials report "
            "only the rounds that evaluate, so it acts at the next of those",
            spec.name, key, spec.scheduler[key], every,
        )


def _parse_scheduler(spec: SweepSpec, value: Any) -> dict[str, Any]:
    if value is None or isinstance(value, str):
        value = {"name": value or "none"}
    if not isinstance(value, dict):
        raise spec.fail("scheduler", f"must be one of {SCHEDULERS} or a mapping, got {value!r}")
    sched = {"name": "none", **value}
    name = sched["name"]
    if name not in SCHEDULERS:
        raise spec.fail("scheduler.name", f"must be one of {SCHEDULERS}, got {name!r}")
    if name == "none":
        return {"name": "none"}  # `sweep.scheduler.name=none` switches it off, options and all
    valid = ASHA_FIELDS if name == "asha" else PBT_FIELDS
    unknown = sorted(set(sched) - valid)
    if unknown:
        raise spec.fail(f"scheduler.{unknown[0]}", f"unknown for {name}; valid: {sorted(valid)}")
    if name == "asha":
        sched = {**SCHEDULER_DEFAULTS["asha"], **sched}
        for key in ("grace_period", "max_t"):
            _opt_int(spec, f"scheduler.{key}", sched[key], 1)
        if not is_number(sched["reduction_factor"]) or sched["reduction_factor"] <= 1:
            raise spec.fail(
                "scheduler.reduction_factor",
                f"must be a number > 1, got {sched['reduction_factor']!r}",
            )
        return sched
    if spec.search not in ("grid", "random"):
        raise spec.fail(
            "scheduler.name",
            f"pbt cannot be combined with search: {spec.search} (Tune's PBT draws its own "
            "population); use search: random or grid",
        )
    sched = {**SCHEDULER_DEFAULTS["pbt"], **sched}
    if not isinstance(sched["synch"], bool):
        raise spec.fail("scheduler.synch", f"must be true or false, got {sched['synch']!r}")
    _opt_int(spec, "scheduler.perturbation_interval", sched["perturbation_interval"], 1)
    for key in ("quantile_fraction", "resample_probability"):
        v = sched[key]
        if not is_number(v) or not 0 <= v <= (0.5 if key == "quantile_fraction" else 1):
            raise spec.fail(f"scheduler.{key}", f"must be a number in the valid range, got {v!r}")
    mutable = [d.key for d in spec.dims if pbt_mutable(d)]
    mutate = sched.get("mutate")
    if mutate is None:
        mutate = mutable
    if not isinstance(mutate, list) or not all(isinstance(k, str) for k in mutate):
        raise spec.fail("scheduler.mutate", f"must be a list of space keys, got {mutate!r}")
    for k in mutate:
        if k not in mutable:
            raise spec.fail(
                f"scheduler.mutate.{k}",
                f"PBT can only change a swept range or list of values that may change mid-run "
                f"(not a config group or one of {PBT_FIXED}); mutable here: {mutable}",
            )
    if not mutate:
        raise spec.fail(
            "scheduler.mutate",
            f"pbt needs a space key it may change mid-run (e.g. client.optimizer.lr); "
            f"none of {[d.key for d in spec.dims]} is (fixed for PBT: {PBT_FIXED})",
        )
    sched["mutate"] = list(mutate)
    return sched


def pbt_mutable(d: Dim) -> bool:
    """Whether PBT may change this key mid-run: a range or scalar list, no group option switch."""
    fixed = any(d.key == k or d.key.startswith(k + ".") for k in PBT_FIXED)
    fixed = fixed or d.key.endswith(".name") and d.key.count(".") == 1  # switches an option
    varies = d.kind in RANGES or (len(d.values) > 1 and not d.variants)
    return varies and not fixed and "." in d.key


def _parse_faults(spec: SweepSpec, faults: Any) -> list[dict[str, Any]]:
    if not isinstance(faults, list):
        raise spec.fail("faults", f"must be a list of {{trial, round, attempts}}, got {faults!r}")
    out = []
    for i, f in enumerate(faults):
        f = {"attempts": 1, **f} if isinstance(f, dict) else f
        if (
            not isinstance(f, dict)
            or set(f) - {"trial", "round", "attempts"}
            or not all(is_int(f.get(k)) and f[k] >= 0 for k in ("trial", "round", "attempts"))
        ):
            raise spec.fail(
                f"faults[{i}]", f"must be {{trial: INT, round: INT, attempts: INT}}, got {f!r}"
            )
        out.append(f)
    return out


def walk(dims: Iterable[Dim]) -> Iterable[Dim]:
    """Every dim, and the dims inside group variants, depth first."""
    for d in dims:
        yield d
        for v in d.values:
            if isinstance(v, list):
                yield from walk(v)


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
            hint = " (variants as mappings are only for config groups with a `name`)"
            raise spec.fail(
                where,
                f"a mapping must be one of {{{', '.join(VALUE_KEYS + RANGES)}: ...}}"
                + (hint if not ranges and not lists else ""),
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
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(is_number, bounds))):
        hint = " (YAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(bounds, list) else ""
        raise spec.fail(where, f"must be [low, high] numbers, got {bounds!r}{hint}")
    low, high = bounds
    if not low < high:
        raise spec.fail(where, f"needs low < high, got {bounds!r}")
    if kind == "loguniform" and low <= 0:
        raise spec.fail(where, f"needs low > 0, got {bounds!r}")
    if kind == "randint" and not (is_int(low) and is_int(high)):
        raise spec.fail(where, f"needs integer bounds, got {bounds!r}")
    return Dim(key, kind, low=low, high=high)
