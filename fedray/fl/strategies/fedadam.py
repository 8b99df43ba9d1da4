"""FedAdam: the FedOpt server step with an exponential moving average of delta²."""

from __future__ import annotations

import numpy as np

from fedray.fl.strategies.base import float_param
from fedray.fl.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """v = beta_2·v + (1 - beta_2)·delta²."""

    name = "fedadam"

    def __init__(
        self, *, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 0.001
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, tau=tau)
        self.beta_2 = float_param("beta_2", beta_2, 0.0, 1.0, high_open=True)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * np.square(delta)
