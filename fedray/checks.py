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


def like_defaults(
    group: str, target: str, params: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> None:
    """Each of `kwargs` of the kind its parameter's default is (`params`: an
    `inspect.signature(fn).parameters`): true or false for a bool default, a finite number for a
    number, a list of numbers for a tuple of numbers. A parameter with no default, or a default of
    another kind (None, a string), is left to the callable."""
    for k, v in kwargs.items():
        param = params.get(k)
        default = getattr(param, "default", None)
        key = f"{group}.{k}"
        if isinstance(default, bool):
            boolean(key, v)
        elif isinstance(default, int | float):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(
                    f"{key}: {v!r} is not a finite number ({target} takes a number, default "
                    f"{default})"
                )
        elif isinstance(default, tuple) and default and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in default
        ) and not (
            isinstance(v, list | tuple)
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        ):
            raise ConfigError(
                f"{key}: {v!r} is not a list of numbers ({target} takes e.g. {list(default)})"
            )


_HOST_PORT = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})")


def ray_address(key: str, address: Any) -> tuple[str, int] | None:
    """`address` is a Ray cluster to join: `local` (None back), `auto` (the cluster `ray start`
    left its address for on this machine, or RAY_ADDRESS: it must be known and answer), or
    HOST:PORT / ray://HOST:PORT, which must answer a TCP connect within 3 s (host and port
    back). `ray.init` waits for a cluster at an address where none answers for minutes, without
    a word: a typo in the port would hang the run."""
    import socket

    if address == "local":
        return None
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            resolved = canonicalize_bootstrap_address(address)
        except ConnectionError:
            resolved = None
        if not resolved:
            raise ConfigError(
                f"{key}=auto: no Ray cluster was started on this machine; start one with `ray "
                "start --head`, name its HOST:PORT, or leave ray.address null for a local Ray"
            )
        try:
            return ray_address(key, resolved)
        except ConfigError:
            raise ConfigError(
                f"{key}=auto: the cluster `ray start` left its address for ({resolved}) does "
                "not answer; start it again with `ray start --head` or leave ray.address null "
                "for a local Ray"
            ) from None
    m = _HOST_PORT.fullmatch(address) if isinstance(address, str) else None
    if m is None:
        raise ConfigError(
            f"{key}: {address!r} is not auto, local, HOST:PORT or ray://HOST:PORT "
            "(null: start a local Ray)"
        )
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as exc:
        raise ConfigError(
            f"{key}={address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
            "with `ray start --head` (its port, 6379 by default) or leave it null for a local Ray"
        ) from None
    return host, port


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
