"""Krum and multi-Krum (Blanchard et al. 2017): keep the updates closest to their neighbours."""

from __future__ import annotations

from fedray.fl.aggregate import krum_select, weighted_average
from fedray.fl.strategies.base import Strategy, int_param
from fedray.fl.types import ClientResult, Params


class Krum(Strategy):
    """Uniform average of the ``multi`` best-scored client params (multi=1 is plain Krum).

    A round needs n >= 2·num_byzantine + 3 results and multi <= n - num_byzantine, otherwise
    ``aggregate`` raises ValueError. Sample counts are ignored, as in the paper.
    """

    name = "krum"

    def __init__(self, *, num_byzantine: int = 1, multi: int = 1) -> None:
        self.num_byzantine = int_param("num_byzantine", num_byzantine, 0)
        self.multi = int_param("multi", multi, 1)

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        params = [r.params for r in results]
        chosen = krum_select(params, self.num_byzantine, self.multi)
        return weighted_average([params[i] for i in chosen], [1.0] * len(chosen))
