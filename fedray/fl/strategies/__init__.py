"""Server aggregation rules, one per file, built from the ``strategy`` config group.

``build_strategy({"_target_": "fedray.fl.strategies.fedadam.FedAdam", "eta": 0.01})`` calls the
class (any ``Strategy`` subclass, a user's included) with the other keys; the ready-made rules
can also be named by ``name`` alone (``STRATEGIES``). An unknown key or an invalid value is a
ConfigError (a ValueError) that names ``strategy.<key>``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from fedray.config import ConfigError
from fedray.fl.strategies.base import Strategy
from fedray.fl.strategies.fedadagrad import FedAdagrad
from fedray.fl.strategies.fedadam import FedAdam
from fedray.fl.strategies.fedavg import FedAvg
from fedray.fl.strategies.feddf import FedDF
from fedray.fl.strategies.fedopt import FedOpt
from fedray.fl.strategies.fedprox import FedProx
from fedray.fl.strategies.fedyogi import FedYogi
from fedray.fl.strategies.fltrust import FLTrust
from fedray.fl.strategies.krum import Krum
from fedray.fl.strategies.median import Median
from fedray.fl.strategies.norm_bounded import NormBoundedFedAvg
from fedray.fl.strategies.polyak import Polyak
from fedray.fl.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg, Polyak, FedProx, FedAdam, FedYogi, FedAdagrad, Median, TrimmedMean, Krum, FedDF,
        NormBoundedFedAvg, FLTrust,
    )
}

__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedDF",
    "FLTrust",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "NormBoundedFedAvg",
    "Polyak",
    "Strategy",
    "TrimmedMean",
    "build_strategy",
    "strategy_defaults",
]


def strategy_defaults(name: str) -> dict[str, Any]:
    """The knobs a strategy accepts, with their default values, read from its constructor."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ConfigError(
            f"strategy.name={name!r} is not a known strategy; choose one of {sorted(STRATEGIES)}"
        )
    signature = inspect.signature(STRATEGIES[name])
    return {key: p.default for key, p in signature.parameters.items()}


def build_strategy(cfg: Mapping[str, Any]) -> Strategy:
    """Build the strategy named by ``cfg["name"]`` with the remaining keys as its parameters."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"strategy must be a mapping with a '_target_' key, got {cfg!r}")
    if cfg.get("_target_"):
        from fedray.models import instantiate_target

        strategy = instantiate_target(dict(cfg), "strategy", skip=("name",))
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"strategy._target_={cfg['_target_']!r} is not a fedray Strategy "
                              "(subclass fedray.fl.strategies.base.Strategy)")
        return strategy
    if "name" not in cfg:
        raise ConfigError(f"strategy.name is missing; choose one of {sorted(STRATEGIES)}")
    name = cfg["name"]
    valid = strategy_defaults(name)
    params = {key: value for key, value in cfg.items() if key != "name"}
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"strategy.{key} is not a parameter of strategy {name!r}; "
                f"valid parameters: {sorted(valid) or 'none'}"
            )
    return STRATEGIES[name](**params)
