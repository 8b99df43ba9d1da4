"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Alg. 2).

Each round, with x the global params and every operation per coordinate::

    delta = FedAvg(results) - x                    # the pseudo-gradient
    m     = beta_1 * m + (1 - beta_1) * delta      # m starts at 0
    v     = second_moment(v, delta)                # v starts at tau**2 (paper: v_{-1} >= tau^2)
    x_new = x + eta * m / (sqrt(v) + tau)          # no bias correction, as in the paper

``second_moment`` is the only difference between the rules (FedAdagrad, FedYogi, FedAdam
subclasses). BatchNorm's running statistics (``*.running_mean``, ``*.running_var``: what
``travel_names`` sends with a fully trained BN layer) are not weights and have no gradient:
they take the FedAvg value, as the clients measured them. A step of ``eta`` along their
momentum would overshoot, and a running variance pushed below zero turns every later forward
pass into NaN. Flower's implementation starts v at 0 instead; the two agree once |delta| >> tau.
The moments are float64 and ``state_dict`` returns copies, so a resumed run continues exactly.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from fedray.fl.aggregate import structure_mismatch
from fedray.fl.strategies.base import Strategy, average_results, float_param
from fedray.fl.types import ClientResult, Params

STATISTICS = ("running_mean", "running_var")


def is_statistic(key: str) -> bool:
    """Whether a params entry is a BatchNorm running statistic (torch's names)."""
    return key.rsplit(".", 1)[-1] in STATISTICS


class FedOpt(Strategy):
    """Server-side adaptive step on the FedAvg pseudo-gradient; subclasses define ``v``'s update."""

    def __init__(self, *, eta: float, beta_1: float, tau: float) -> None:
        self.eta = float_param("eta", eta, 0.0, low_open=True)
        self.beta_1 = float_param("beta_1", beta_1, 0.0, 1.0, high_open=True)
        self.tau = float_param("tau", tau, 0.0, low_open=True)
        self.m: dict[str, np.ndarray] | None = None
        self.v: dict[str, np.ndarray] | None = None

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """New second moment from the previous one and this round's pseudo-gradient."""

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        average = average_results(results)
        x = {k: np.asarray(a, dtype=np.float64) for k, a in global_params.items()}
        delta = {k: average[k].astype(np.float64) - x[k] for k in x}
        if self.m is None or self.v is None:
            m = {k: np.zeros_like(d) for k, d in delta.items()}
            v = {k: np.full_like(d, self.tau**2) for k, d in delta.items()}
        else:
            m, v = self.m, self.v
        problem = structure_mismatch(m, delta)
        if problem is not None:
            raise ValueError(f"{self.name}: server-optimizer state does not fit params: {problem}")
        # Build the new moments aside so a failure mid-way leaves the old state intact.
        new_m = {k: self.beta_1 * m[k] + (1 - self.beta_1) * delta[k] for k in delta}
        new_v = {k: self._second_moment(v[k], delta[k]) for k in delta}
        self.m, self.v = new_m, new_v
        return {k: average[k] if is_statistic(k)
                else x[k] + self.eta * new_m[k] / (np.sqrt(new_v[k]) + self.tau) for k in x}

    def _state(self) -> dict[str, Any]:
        if self.m is None or self.v is None:
            return {"m": None, "v": None}
        return {
            "m": {k: a.copy() for k, a in self.m.items()},
            "v": {k: a.copy() for k, a in self.v.items()},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"m", "v"}:
            raise ValueError(f"{self.name} state needs keys ['m', 'v'], got {sorted(state)}")
        m, v = state["m"], state["v"]
        if (m is None) != (v is None):
            raise ValueError(f"{self.name} state has only one of its moments set")
        if m is None:
            self.m = self.v = None
            return
        problem = structure_mismatch(m, v)
        if problem is not None:
            raise ValueError(f"{self.name} state moments m and v do not match: {problem}")
        self.m = {k: np.array(a, dtype=np.float64) for k, a in m.items()}
        self.v = {k: np.array(a, dtype=np.float64) for k, a in v.items()}
