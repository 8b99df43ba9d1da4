"""Coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates."""

from __future__ import annotations

from fedray.fl.aggregate import coordinate_median
from fedray.fl.strategies.base import Strategy
from fedray.fl.types import ClientResult, Params


class Median(Strategy):
    """Per-coordinate median of the clients' params; sample counts are ignored (they can lie)."""

    name = "median"

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        return coordinate_median([r.params for r in results])
