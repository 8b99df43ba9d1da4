"""FedProx (Li et al. 2020): FedAvg on the server; clients add (mu/2)·||w - w_global||² locally."""

from __future__ import annotations

from typing import Any

from fedray.fl.strategies.base import float_param
from fedray.fl.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg aggregation plus the proximal coefficient ``mu`` sent to clients."""

    name = "fedprox"

    def __init__(self, *, mu: float = 0.01) -> None:
        self.mu = float_param("mu", mu, 0.0)

    def client_config(self) -> dict[str, Any]:
        """Clients read ``proximal_mu`` to add the proximal term to their local loss."""
        return {"proximal_mu": self.mu}
