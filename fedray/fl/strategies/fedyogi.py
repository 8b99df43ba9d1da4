"""FedYogi: like FedAdam, but v moves towards delta² additively, so it grows and shrinks slowly."""

from __future__ import annotations

import numpy as np

from fedray.fl.strategies.base import float_param
from fedray.fl.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """v = v - (1 - beta_2)·delta²·sign(v - delta²)."""

    name = "fedyogi"

    def __init__(
        self, *, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 0.001
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, tau=tau)
        self.beta_2 = float_param("beta_2", beta_2, 0.0, 1.0, high_open=True)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        sq = np.square(delta)
        return v - (1 - self.beta_2) * sq * np.sign(v - sq)
