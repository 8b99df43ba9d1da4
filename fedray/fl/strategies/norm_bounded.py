"""Norm-bounded FedAvg (Sun et al. 2019, "Can you really backdoor federated learning?").

Each client's update (its params minus the global params) is scaled down to L2 norm at most
``max_norm`` before the sample-weighted average, so a scaled / model-replacement update moves the
global model no further than an honest one may.
"""

from __future__ import annotations

import numpy as np

from fedray.fl.aggregate import weighted_average
from fedray.fl.strategies.base import Strategy, float_param
from fedray.fl.types import ClientResult, Params


def clip_update(params: Params, global_params: Params, max_norm: float) -> Params:
    """global + (params - global) scaled to L2 norm <= max_norm (over all arrays together)."""
    delta = {
        k: np.asarray(params[k], np.float64) - np.asarray(g, np.float64)
        for k, g in global_params.items()
    }
    norm = float(np.sqrt(sum(np.square(d).sum() for d in delta.values())))
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(g, np.float64) + scale * delta[k] for k, g in global_params.items()}


class NormBoundedFedAvg(Strategy):
    """FedAvg of updates clipped to L2 norm ``max_norm``."""

    name = "norm_bounded"

    def __init__(self, *, max_norm: float = 1.0) -> None:
        self.max_norm = float_param("max_norm", max_norm, 0.0, low_open=True)

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        clipped = [clip_update(r.params, global_params, self.max_norm) for r in results]
        return weighted_average(clipped, [r.num_samples for r in results])
