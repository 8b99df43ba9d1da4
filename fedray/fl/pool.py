"""A bounded pool of ClientActors that runs one round's fits and survives failing clients."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedray.fl.types import ClientResult

log = logging.getLogger("fedray")


@dataclass
class Dropped:
    """A sampled client whose update did not make it into the round, and why."""

    client_id: int
    reason: str


def wave_threads(num_clients: int, size: int, actor_cpus: float) -> list[int]:
    """Torch threads for each of a round's clients, dealt round-robin over `size` actors.

    Clients go out in waves of `size`. A last, partial wave of r clients runs while the other
    actors sit idle, so each of its clients gets the pool's CPUs split r ways instead of one
    actor's share: 5 clients on 4 single-thread actors no longer end with one thread working
    while the other cores wait.
    """
    base = max(1, round(actor_cpus))
    full, r = divmod(num_clients, size)
    last = max(base, int(size * actor_cpus // r)) if r else base
    return [base if j < full * size else last for j in range(num_clients)]


class ClientPool:
    """`size` actors serve any number of virtual clients; a failed actor is replaced."""

    def __init__(
        self, actor_cls: Any, spec_ref: Any, size: int, actor_cpus: float = 1.0, wait: bool = True
    ) -> None:
        self.actor_cls = actor_cls
        self.spec_ref = spec_ref
        self.actor_cpus = float(actor_cpus)
        self.actors = [actor_cls.remote(spec_ref) for _ in range(size)]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every actor has started (imports, model build, warm-up run in parallel),
        so round 1 times training only."""
        ray.get([a.ping.remote() for a in self.actors])

    def __len__(self) -> int:
        return len(self.actors)

    def _replace(self, i: int) -> None:
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # noqa: BLE001 - already dead is fine
            pass
        self.actors[i] = self.actor_cls.remote(self.spec_ref)

    def run_round(
        self,
        clients: list[int],
        shard_refs: dict[int, Any],
        params_ref: Any,
        round_idx: int,
        extra: dict[str, Any],
        timeout_s: float | None,
    ) -> tuple[list[ClientResult], list[Dropped]]:
        """Fit every client (round-robin over actors); collect results and the dropped ones.

        `params_ref` is the broadcast global model, or a dict client id -> that client's own
        params (isolated training).
        """
        futures: dict[Any, tuple[int, int]] = {}
        threads = wave_threads(len(clients), len(self.actors), self.actor_cpus)
        for j, cid in enumerate(clients):
            a = j % len(self.actors)
            start = params_ref[cid] if isinstance(params_ref, dict) else params_ref
            job = {**extra, "num_threads": threads[j]}
            fut = self.actors[a].fit.remote(cid, shard_refs[cid], start, round_idx, job)
            futures[fut] = (cid, a)
        ready, pending = ray.wait(list(futures), num_returns=len(futures), timeout=timeout_s)
        results: list[ClientResult] = []
        dropped: list[Dropped] = []
        broken: set[int] = set()
        for fut in ready:
            cid, a = futures[fut]
            try:
                results.append(ray.get(fut))
            except RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                dropped.append(Dropped(cid, f"raised {type(cause).__name__}: {cause}"))
                broken.add(a)
            except (RayActorError, GetTimeoutError) as exc:
                dropped.append(Dropped(cid, f"actor died ({type(exc).__name__})"))
                broken.add(a)
        for fut in pending:
            cid, a = futures[fut]
            dropped.append(Dropped(cid, f"timed out after {timeout_s}s"))
            broken.add(a)
        for a in sorted(broken):
            self._replace(a)
        return results, dropped

    def shutdown(self) -> None:
        """Kill every actor."""
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
