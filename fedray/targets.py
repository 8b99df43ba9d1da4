"""`_target_` lookup: the object a dotted path names, or one line saying why it cannot be had.

Used wherever the config names a callable (model, data, partition, task, strategy, pretraining
set): a missing module, a missing attribute or the module's own import error become a
ConfigError naming the config key, without Hydra's multi-line error log before it.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedray.config import ConfigError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def import_target(key: str, target: Any) -> Any:
    """The object a `_target_` names (ConfigError naming `key` if it is missing or unimportable).

    The longest importable module prefix of the dotted path, then its attributes: what Hydra's
    own lookup does.
    """
    if not target or not isinstance(target, str):
        raise ConfigError(f"{key}: missing; name the callable to build (a dotted path)")
    parts = target.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ConfigError(f"{key}: {target!r} is not a dotted path such as package.module.Name")

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{key}: {target!r} cannot be imported ({reason})")

    prefixes = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(prefixes[i - 1])
            break
        except ModuleNotFoundError as exc:
            if exc.name not in prefixes[:i]:  # a module it imports is missing
                raise fail(f"its module imports a missing one: {first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
            raise fail(f"its module raised {type(exc).__name__}: {first_line(exc)}") from None
    else:
        raise fail(f"no module named {parts[0]!r}")
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            raise fail(f"{prefixes[j - 1]} has no attribute {parts[j]!r}")
        obj = getattr(obj, parts[j])
    return obj
