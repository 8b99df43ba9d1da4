"""The space's keys against the composed config: group options a sweep may switch to, key checks.

A key of a group variant (`strategy: [{name: fedprox, mu: ...}]`) is checked against that
option's YAML; any other key against the composed config. Errors name the sweep file and key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedray.sweep.groups import get_key, group_option, is_group, is_int, is_number, known_options
from fedray.sweep.spec import RANGES, Dim, SweepSpec, walk


def _names(dims: Iterable[Dim], group: str) -> set[Any]:
    names: set[Any] = set()
    for d in walk(dims):
        if d.key == f"{group}.name":
            names.update(v for v in d.values if not isinstance(v, list))
    return names


def group_options(spec: SweepSpec, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{group: {name: defaults}} for every group option a trial of this sweep may switch to."""
    options: dict[str, dict[str, Any]] = {}
    for group in sorted({d.key.split(".")[0] for d in walk(spec.dims)}):
        if not is_group(base, group):
            continue
        for name in sorted(_names(spec.dims, group) | {base[group]["name"]}, key=str):
            option = group_option(group, name, base)
            if option is None:
                raise spec.fail(
                    f"space.{group}.name",
                    f"{name!r} is not an option of {group}; known: {known_options(group)}",
                )
            options.setdefault(group, {})[name] = option
    return options


def type_ok(ref: Any, value: Any) -> bool:
    """Whether `value` may replace the config's `ref` (same kind of value)."""
    if ref is None or value is None:
        return True
    if isinstance(ref, bool):
        return isinstance(value, bool)
    if is_int(ref):
        return is_int(value)
    if isinstance(ref, float):
        return is_number(value)
    if isinstance(ref, str):
        return isinstance(value, str)
    return isinstance(value, type(ref))


def check_keys(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Every space key exists (in the config or the option a variant names) and fits its type."""
    options = group_options(spec, base)

    def refs(key: str, variant: Any) -> list[Any]:
        group, _, rest = key.partition(".")
        if group in options and rest:
            names = [variant] if variant is not None else list(options[group])
            return [
                val for n in names for found, val in [get_key(options[group][n], rest)] if found
            ]
        found, val = get_key(base, key)
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
                if not any(all(type_ok(r, p) for p in probe) for r in found):
                    raise spec.fail(where, f"a {d.kind} range does not fit its value {found[0]!r}")
            for v in d.values:
                if isinstance(v, list):
                    name = next(s.values[0] for s in v if s.key == f"{d.key}.name")
                    check([s for s in v if s.key != f"{d.key}.name"], name)
                elif not any(type_ok(r, v) for r in found):
                    raise spec.fail(
                        where,
                        f"value {v!r} ({type(v).__name__}) does not fit the config's "
                        f"{found[0]!r} ({type(found[0]).__name__})",
                    )

    check(spec.dims, None)


ROUND_KEYS = ("round", "clients", "actors")  # the un-namespaced keys of a round's row
RUN_STAGES = ("federated", "centralized", "isolated")  # whose rounds report the task's metrics


def check_metric(spec: SweepSpec, base: dict[str, Any]) -> None:
    """`metric` is a key the trials' rounds report: a round key, or `val/<name>` with a name the
    task reports (its `metric_names`, for the data's class count when the config tells);
    checked where every trial runs the base config's task in a federated, centralized or
    isolated stage (a plug-in stage reports its own keys)."""
    import difflib
    import re

    from fedray.tasks import build_task

    stages = {base.get("stage")} | {
        v for d in walk(spec.dims) if d.key == "stage" for v in d.values
    }
    if not stages <= set(RUN_STAGES) or any(d.key.split(".")[0] == "task" for d in walk(spec.dims)):
        return
    from fedray.data.sources import classes_known

    task, classes = build_task(base.get("task")), classes_known(base.get("data"))
    names = task.metric_names(classes)
    if names is None:
        return
    metric = spec.metric
    ns, _, name = metric.rpartition("/")
    if ns == "val":
        per_class = {re.sub(r"_\d+$", "_<class>", n) for n in names}
        if re.sub(r"_\d+$", "_<class>", name) in per_class:
            return
    elif metric in ROUND_KEYS or (
        ns and not (name in names and difflib.get_close_matches(ns, ["val"], cutoff=0.6))
    ):
        return  # train/loss, comm/*, time/*, a strategy's or the privacy pipeline's keys
    if ns == "val" and name in (task.metric_names() or []):
        raise spec.fail("metric", f"{metric!r}: the task reports it only with another number "
                                  f"of classes than the data's {classes}; it reports "
                                  f"{[f'val/{n}' for n in names]}")
    known = [f"val/{n}" for n in names]
    near = difflib.get_close_matches(metric, known + list(ROUND_KEYS), n=1, cutoff=0.6)
    near = [f"val/{name}"] if name in names else near
    hint = f"did you mean {near[0]}? " if near else ""
    raise spec.fail(
        "metric",
        f"{metric!r}: the rounds do not report it; {hint}this task reports {known} (and "
        "train/loss, comm/bytes_total, time/round_s)",
    )
