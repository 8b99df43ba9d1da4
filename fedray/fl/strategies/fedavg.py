"""FedAvg (McMahan et al. 2017): average of client params weighted by their sample counts."""

from __future__ import annotations

from fedray.fl.strategies.base import Strategy, average_results
from fedray.fl.types import ClientResult, Params


class FedAvg(Strategy):
    """Sample-weighted average of the clients' params."""

    name = "fedavg"

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        return average_results(results)
