"""Value checks that name the key they check: the one-line `ConfigError`s of every config rule.

`number`, `choice`, `boolean` and `mapping` raise `ConfigError("<key>: <value> is not <what is
allowed>")`; `fedray.validate` builds its per-group checks from them, and groups that check their
own keys (a strategy, a task, the pretraining) use them too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from fedray.config import ConfigError


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    if low is None:
        return f"< {high:g}" if high_open else f"<= {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """`value` is a number (an int if `integer`) in the given range, or None if `optional`."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    want = kind
    if low is not None or high is not None:
        want += " " + _interval(low, high, low_open, high_open)
    if optional:
        want += " (or null)"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{key}: {value!r} is not {want}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key}: {value!r} is not {want}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{key}: {value!r} is not {want}")


def choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """`value` is one of `choices` (None among them reads `null`, as it is spelt in config)."""
    if value not in choices:
        names = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}: {value!r} is not one of {names}")


def boolean(key: str, value: Any) -> None:
    """`value` is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not true or false")


def matching(key: str, spec: str, names: Sequence[str]) -> list[str]:
    """The `names` a regex config value (`fl.trainable`, `fl.local`) finds anywhere in them."""
    try:
        pattern = re.compile(spec)
    except re.error as exc:
        raise ConfigError(f"{key}={spec!r} is not a valid regex: {exc}") from None
    return [n for n in names if pattern.search(n)]


def mapping(key: str, value: Any) -> dict[str, Any]:
    """`value` is a mapping (a config group)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: {value!r} is not a mapping of settings ({key}.KEY=...)")
    return dict(value)


@contextmanager
def as_key(key: str, built_as: str = "model") -> Iterator[None]:
    """Errors of a config built as `built_as` name where it was written: a teacher or a student is
    built by the model builder, whose errors say `model.arch`, but the user wrote
    `pretrain.teacher.arch`."""
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        if not re.match(rf"{re.escape(built_as)}\b", text):
            raise
        raise ConfigError(key + text[len(built_as):]) from None
