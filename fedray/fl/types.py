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


class RaisedClients:
    """Which client workers (actors) to replace after the clients they ran raised.

    A client whose fit raises is dropped from its round, and the worker that ran it keeps
    serving: the error is that client's (a bad shard, a NaN, a bug its data triggers) and the
    process is sound, its cached features and warm kernels worth keeping; replacing it would
    make every later round pay a new process and those features again (a phone that fails every
    round once cost each round 28 s instead of 0.4). A worker that raises for a second, different
    client with no fit succeeding in between is suspect itself (a broken CUDA context, an
    exhausted resource: every client fails there) and is replaced.
    """

    def __init__(self) -> None:
        self.since_success: dict[int, set[int]] = {}

    def settle(self, worker: int, raised: set[int], succeeded: bool) -> bool:
        """Record one round of `worker`: the clients that raised on it and whether any fit
        succeeded there; True when the worker should be replaced (its record is then cleared)."""
        seen = set() if succeeded else self.since_success.get(worker, set()) | raised
        if len(seen) >= 2:
            self.since_success.pop(worker, None)
            return True
        self.since_success[worker] = seen
        return False


def human_bytes(n: float) -> str:
    """1.5KB, 4.0MB: a byte count as the round log prints it."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TB"
