"""Plain data types that cross the client/server boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Ordered name -> array mapping of the parameters that travel (float32, C-contiguous).
Params = dict[str, np.ndarray]


@dataclass
class ClientResult:
    """What one client returns after local training: never data, only parameters and counts."""

    client_id: int
    params: Params
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


def params_nbytes(params: Params) -> int:
    """Bytes on the wire for a parameter dict (the raw tensors, no framing)."""
    return int(sum(a.nbytes for a in params.values()))


@dataclass
class Dropped:
    """A sampled client whose update did not make it into the round, and why."""

    client_id: int
    reason: str


class PerClient(dict):
    """A round's start parameters client by client (isolated training), as opposed to one
    broadcast model, which is itself a dict (of parameter arrays) where no object store wraps it."""

    @staticmethod
    def start(params_ref: Any, client_id: int) -> Any:
        """What client `client_id` starts from: its own entry, or the one broadcast model."""
        return params_ref[client_id] if isinstance(params_ref, PerClient) else params_ref


def human_bytes(n: float) -> str:
    """1.5KB, 4.0MB: a byte count as the round log prints it."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TB"
