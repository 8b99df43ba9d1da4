"""Polyak averaging on the server: new = k·global + (1 - k)·FedAvg(results)."""

from __future__ import annotations

from fedray.fl.aggregate import polyak
from fedray.fl.strategies.base import Strategy, average_results, float_param
from fedray.fl.types import ClientResult, Params


class Polyak(Strategy):
    """Keep a fraction ``k`` of the current global params (k=0 is FedAvg, k=1 never moves)."""

    name = "polyak"

    def __init__(self, *, k: float = 0.5) -> None:
        self.k = float_param("k", k, 0.0, 1.0)

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        return polyak(global_params, average_results(results), self.k)
