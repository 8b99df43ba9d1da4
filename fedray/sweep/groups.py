"""Config-group options a trial may switch to, and dotted-key access into a plain config dict.

A trial that switches a group's `name` (partition, strategy, model, data) starts from that
option's YAML (`conf/<group>/<name>.yaml`, `_target_` included), so it never inherits keys that
belong to another option.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fedray.config import CONF_DIR, ROOT

SWEEPS_DIR = ROOT / "sweeps"


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def get_key(cfg: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) for a dotted key in a nested dict."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def set_key(cfg: dict[str, Any], key: str, value: Any) -> bool:
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


def group_option(
    group: str, name: Any, base: dict[str, Any], conf_dir: Path | None = None
) -> dict[str, Any] | None:
    """The defaults of option `name` of config group `group` (None if it has none).

    The composed option when the base already uses it; else `conf/<group>/<name>.yaml` (with its
    `_target_`), interpolations resolved against the composed config; strategies without a YAML
    fall back to their constructor defaults.
    """
    conf_dir = CONF_DIR if conf_dir is None else conf_dir
    if isinstance(base.get(group), dict) and base[group].get("name") == name:
        return copy.deepcopy(base[group])
    path = conf_dir / group / f"{name}.yaml"
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


def known_options(group: str, conf_dir: Path | None = None) -> list[str]:
    """The option names of `group` that have a YAML file."""
    conf_dir = CONF_DIR if conf_dir is None else conf_dir
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
