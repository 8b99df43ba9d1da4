"""Coordinate-wise trimmed mean (Yin et al. 2018): drop the extremes, average the rest."""

from __future__ import annotations

from fedray.fl.aggregate import trimmed_mean
from fedray.fl.strategies.base import Strategy, float_param
from fedray.fl.types import ClientResult, Params


class TrimmedMean(Strategy):
    """Per coordinate, drop the floor(beta·n) largest and smallest values and average the rest.

    Sample counts are ignored (a faulty client could claim any). With beta·n < 1 nothing is
    dropped, so beta should cover the expected number of faulty clients per round.
    """

    name = "trimmed_mean"

    def __init__(self, *, beta: float = 0.1) -> None:
        self.beta = float_param("beta", beta, 0.0, 0.5, high_open=True)

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        return trimmed_mean([r.params for r in results], self.beta)
