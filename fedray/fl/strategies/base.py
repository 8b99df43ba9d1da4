"""The Strategy base: one public entry point that validates and sorts, then a per-rule hook.

The server calls ``strategy.aggregate(global_params, results)``. The base, and only the base,
checks the results (non-empty, unique client ids, the same keys and shapes as ``global_params``),
sorts them by ``client_id`` so the outcome never depends on arrival order, calls the subclass hook
``_aggregate`` and returns the new params in ``global_params``' key order and dtypes.

A rule subclasses ``Strategy``, sets ``name``, takes its knobs as keyword-only ``__init__``
arguments with defaults (``build_strategy`` reads the signature to reject unknown keys), validates
them with ``float_param`` / ``int_param`` and implements ``_aggregate``. Rules with server state
override ``_state`` / ``_load_state``; ``state_dict()`` adds the rule's name so a checkpoint of one
rule is never silently loaded into another.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from fedray.config import ConfigError
from fedray.fl.aggregate import cast_like, structure_mismatch, weighted_average
from fedray.fl.types import ClientResult, Params


def float_param(
    key: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float, or raise ConfigError naming ``strategy.<key>`` and the range."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high
        )
    if not ok:
        raise ConfigError(f"strategy.{key} must be a number in {interval}, got {value!r}")
    return float(value)


def int_param(key: str, value: object, low: int = 0) -> int:
    """Return ``value`` as an int >= ``low``, or raise ConfigError naming ``strategy.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"strategy.{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def average_results(results: Sequence[ClientResult]) -> Params:
    """FedAvg of the results' params, weighted by their ``num_samples``."""
    return weighted_average([r.params for r in results], [r.num_samples for r in results])


class Strategy(ABC):
    """A server aggregation rule: global params + client results -> new global params."""

    name: ClassVar[str] = ""
    round_idx: int = 0  # the (0-based) round being aggregated; the server sets it each round

    def aggregate(self, global_params: Params, results: Sequence[ClientResult]) -> Params:
        """Validate, sort by ``client_id`` and aggregate one round of client results."""
        if not results:
            raise ValueError(f"{self.name}: no client results to aggregate")
        ids = [r.client_id for r in results]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: duplicate client ids in one round: {sorted(ids)}")
        for r in results:
            problem = structure_mismatch(global_params, r.params)
            if problem is not None:
                raise ValueError(f"{self.name}: client {r.client_id} sent params whose {problem}")
        ordered = sorted(results, key=lambda r: r.client_id)
        return cast_like(self._aggregate(global_params, ordered), global_params)

    @abstractmethod
    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        """Compute new params from checked results, sorted by client id."""

    def client_config(self) -> dict[str, Any]:
        """Extra knobs the clients need for local training under this rule."""
        return {}

    def reference(self) -> Params | None:
        """Params of a comparison model from this round, or None. A rule that adds a server-side
        step to a base rule (FedDF) returns the base rule's own result, and the server logs its
        val metrics beside the global model's as `val_base/<metric>`."""
        return None

    def round_metrics(self) -> dict[str, float]:
        """Numbers about the last aggregation to log in the round's row (`<name>/<key>`)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Server-side state for a checkpoint (numpy arrays and plain Python only)."""
        return {"name": self.name, **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, so a resumed run continues identically."""
        if state.get("name") != self.name:
            raise ValueError(
                f"checkpoint holds state of strategy {state.get('name')!r}, "
                f"but this run uses {self.name!r}"
            )
        self._load_state({k: v for k, v in state.items() if k != "name"})

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no server state, got keys {sorted(state)}")
