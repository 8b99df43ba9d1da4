"""FedAdagrad: the FedOpt server step with v accumulating every round's delta²."""

from __future__ import annotations

import numpy as np

from fedray.fl.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """v = v + delta² (no beta_2; beta_1 = 0 disables momentum, the paper's plain FedAdagrad)."""

    name = "fedadagrad"

    def __init__(self, *, eta: float = 0.01, beta_1: float = 0.0, tau: float = 0.001) -> None:
        super().__init__(eta=eta, beta_1=beta_1, tau=tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + np.square(delta)
