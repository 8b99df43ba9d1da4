"""`ray.backend=inprocess`: the clients fit one after another in the driver's own process.

No Ray, no worker processes, nothing to start: a quick experiment pays its Python and torch
imports and nothing else before round 1, and a breakpoint in a model's, a task's or a
strategy's client-side code stops in the terminal that launched the run. The fits are the
`ClientActor`'s, with the same seeds, so a run gives the same numbers on either backend as long
as each client trains with the same torch thread count: here every client gets
round(ray.client_cpus) threads, while the Ray pool gives the clients of a round's last, partial
wave (clients_per_round not a multiple of the pool size) the idle actors' CPUs too (pool.py
`deal`, capped at os.cpu_count()), and torch's CPU results change bitwise with the thread count,
so those clients' numbers (and all that follows) can differ slightly. What
the in-process backend cannot do is run clients in parallel, interrupt a client that hangs
(`fl.round_timeout_s`) or survive one that kills its process (`fl.faults` kind `crash`): the
config check refuses those. A client that raises is dropped from its round and its client
object rebuilt, as the Ray pool replaces an actor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedray.config import ConfigError
from fedray.fl.types import ClientResult, Dropped, PerClient, RaisedClients

log = logging.getLogger("fedray")

BACKENDS = ("ray", "inprocess")


def backend(cfg: dict[str, Any]) -> str:
    """The config's client backend: `ray` (actors, the default) or `inprocess`."""
    return str((cfg.get("ray") or {}).get("backend", "ray"))


def check_backend(cfg: dict[str, Any]) -> None:
    """`ray.backend` is a known one, `inprocess` with nothing it cannot honour;
    `ray.batch_clients` a boolean; `ray.keep_actors` only where a cluster outlives the run."""
    from fedray.checks import boolean, choice

    ray_cfg = cfg.get("ray") or {}
    choice("ray.backend", backend(cfg), BACKENDS)
    boolean("ray.batch_clients", ray_cfg.get("batch_clients", False))
    boolean("ray.keep_actors", ray_cfg.get("keep_actors", False))
    if ray_cfg.get("keep_actors"):
        if backend(cfg) == "inprocess":
            raise ConfigError(
                "ray.keep_actors: ray.backend=inprocess starts no client actors to keep; set "
                "ray.keep_actors=false"
            )
        if not (ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")):
            raise ConfigError(
                "ray.keep_actors: the local Ray this run starts stops with it, and its actors "
                "with it; start one to keep them on (`ray start --head`) and set ray.address=auto"
            )
    if backend(cfg) != "inprocess":
        return
    why = "ray.backend=inprocess runs every client in the driver's process"
    if ray_cfg.get("address"):
        raise ConfigError(f"ray.address: {why} and joins no cluster; set ray.address=null")
    fl = cfg.get("fl") or {}
    if fl.get("round_timeout_s") is not None:
        raise ConfigError(
            f"fl.round_timeout_s: {why}, where a client cannot be interrupted; set "
            "fl.round_timeout_s=null or ray.backend=ray"
        )
    for i, f in enumerate(fl.get("faults") or []):
        if isinstance(f, dict) and f.get("kind") in ("crash", "hang"):
            raise ConfigError(
                f"fl.faults[{i}].kind: {f['kind']} would take the driver with it ({why}); "
                "use ray.backend=ray to inject it"
            )


class InProcessBoot:
    """What `PoolBoot` is for the Ray backend, with nothing to start: no Ray, no actors."""

    def wait_ray(self) -> None:
        """Nothing to wait for."""

    def result(self) -> list[Any]:
        """No actors were started."""
        return []

    def release(self) -> None:
        """Nothing to stop."""

    def close(self) -> None:
        """Nothing to stop."""


@contextlib.contextmanager
def driver_state() -> Iterator[None]:
    """Client code seeds torch, NumPy and `random` and sets torch's thread count, as it may in
    its own process; here the driver's are put back afterwards, so the server's sampling,
    evaluation and strategies see what they would have seen with Ray actors."""
    import torch

    threads = torch.get_num_threads()
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        torch.set_num_threads(threads)


class InProcessPool:
    """The `ClientPool` interface over one `ClientActor` object living in the driver."""

    def __init__(self, spec: dict[str, Any], actor_cpus: float = 1.0) -> None:
        self.spec = spec
        self.threads = max(1, round(float(actor_cpus)))
        self.client: Any = None
        self.raised = RaisedClients()
        self._build()

    def _build(self) -> None:
        from fedray.fl.client import ClientActor

        with driver_state():
            self.client = ClientActor(self.spec)

    @staticmethod
    def put(value: Any) -> Any:
        """What `ray.put` is for actors: here the object itself (clients copy what they load)."""
        return value

    def wait_ready(self) -> None:
        """The client object was built in `__init__`."""

    def __len__(self) -> int:
        return 1

    def run_round(
        self,
        clients: list[int],
        shard_refs: dict[int, Any],
        params_ref: Any,
        round_idx: int,
        extra: dict[str, Any],
        timeout_s: float | None,
    ) -> tuple[list[ClientResult], list[Dropped]]:
        """Fit every client in turn; one that raises is dropped (`timeout_s` is refused by
        `check_backend`: nothing here could enforce it)."""
        results: list[ClientResult] = []
        dropped: list[Dropped] = []
        with driver_state():
            for cid in clients:
                start = PerClient.start(params_ref, cid)
                job = {**extra, "num_threads": self.threads}
                try:
                    results.append(self.client.fit(cid, shard_refs[cid], start, round_idx, job))
                except Exception as exc:  # noqa: BLE001 - a client's error drops that client
                    dropped.append(Dropped(cid, f"raised {type(exc).__name__}: {exc}"))
        # rebuilt when the Ray pool would replace its actor (`RaisedClients`)
        if self.raised.settle(0, {d.client_id for d in dropped}, bool(results)):
            log.warning("client object rebuilt: two different clients raised on it with no "
                        "fit succeeding between")
            self._build()
        return results, dropped

    def shutdown(self) -> None:
        """Let the client object (its cached shards) go."""
        self.client = None
