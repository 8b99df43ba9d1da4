"""A bounded pool of ClientActors that runs one round's fits and survives failing clients."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedray.fl.types import ClientResult, Dropped, PerClient, RaisedClients

log = logging.getLogger("fedray")


WORKER_PRELOAD = ("torch", "torch._dynamo", "fedray.fl.client")


def ensure_ray(ray_cfg: dict[str, Any]) -> bool:
    """Start (or join) Ray unless already initialised; returns True when this call started it."""
    if ray.is_initialized():
        return False
    init_ray(
        ray_cfg.get("address"),
        local={
            "num_cpus": ray_cfg.get("num_cpus"),
            "num_gpus": ray_cfg.get("num_gpus"),
            # the workers Ray starts with the cluster import what a client actor needs right
            # away, while the driver still prepares the run, instead of once it has asked for
            # the actors (torch, and torch._dynamo which every optimizer's first call imports)
            "_system_config": {"preload_python_modules": list(WORKER_PRELOAD)},
        },
        worker_nice=int(ray_cfg.get("worker_nice", 0)),
        include_dashboard=bool(ray_cfg.get("include_dashboard", False)),
        logging_level=logging.WARNING,
    )
    return True


def init_ray(address: str | None, local: dict[str, Any], worker_nice: int = 0,
             **kwargs: Any) -> None:
    """Join `address`, else RAY_ADDRESS (what `ray job submit` sets); else start a new local Ray
    with the `local` arguments (CPUs, system config). Never a stray cluster that Ray would find
    on this machine (`ray start`), which takes neither the CPU count nor the system config.

    A local Ray's workers (client actors, sweep trials, data-engine tasks) run `worker_nice`
    steps nicer than this process. Ray's own default is 15: its workers yield the CPU to every
    other process on the machine, so beside any busy program the clients of a run crawl while its
    driver does not. 0 runs them at the priority the run was started with (`nice python ...`
    still lowers all of it). A joined cluster keeps the setting it was started with."""
    from fedray.checks import ray_address
    from fedray.config import ConfigError
    from fedray.targets import first_line

    given = address
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        where = f"ray.address={given}" if given else f"RAY_ADDRESS={address}"
        if address != "local":  # `auto` resolved to the cluster `ray start` left; it answers
            ray_address("ray.address" if given else "RAY_ADDRESS", address)
        try:
            with held_sigint():
                ray.init(address=address, **kwargs)
        except ConnectionError as exc:  # a wrong address or a cluster that is down
            raise ConfigError(
                f"{where}: no Ray cluster to join there ({first_line(exc)}); "
                "start one with `ray start --head` or leave ray.address null for a local Ray"
            ) from None
    else:
        system = {**local.get("_system_config", {}), "worker_niceness": int(worker_nice)}
        quiet_token_notice()
        with held_sigint():
            ray.init(address="local", **{**local, "_system_config": system}, **kwargs)


@contextmanager
def held_sigint() -> Iterator[None]:
    """Hold a Ctrl-C that comes while Ray starts and raise it once `ray.init` has returned: an
    interrupted start could crash the process (a segfault) instead of stopping it cleanly. Only
    in the main thread (a run's boot thread cannot set signal handlers; its Ctrl-C reaches the
    main thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


class _Notice(logging.Filter):
    """Drops one of Ray's log lines that says nothing a fedray user needs (by how it starts)."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_notice(logger: str, start: str) -> None:
    """Install `_Notice(start)` on `logger` (once)."""
    log = logging.getLogger(logger)
    if not any(isinstance(f, _Notice) and f.start == start for f in log.filters):
        log.addFilter(_Notice(start))


def quiet_token_notice() -> None:
    """Ray's notice that a new local cluster uses token authentication (Ray's default, a token in
    ~/.ray/auth_token): a WARNING line with a URL in every run, about nothing wrong. Auth stays
    on; its opt-out (RAY_AUTH_MODE=disabled) and other warnings are Ray's as before."""
    quiet_notice("ray._private.authentication.authentication_token_setup",
                 "Token authentication is enabled")


def pool_size(ray_cfg: dict[str, Any], k: int) -> int:
    """Actors to start: at most one per sampled client, at most what the cluster's CPUs hold."""
    if ray_cfg.get("max_actors"):
        return max(1, min(k, int(ray_cfg["max_actors"])))
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per = float(ray_cfg["client_cpus"]) or 1.0
    return max(1, min(k, int(cpus // per) or 1))


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


def deal(
    clients: list[int], size: int, actor_cpus: float, sticky: bool
) -> tuple[list[int], list[int]]:
    """Which actor fits each of a round's clients, and with how many torch threads.

    Round robin by position, or, `sticky`, actor `client_id % size` (see `ClientPool.run_round`).
    The last partial wave's thread boost (`wave_threads`) applies when that is round robin.
    """
    owners = [cid % size if sticky else j % size for j, cid in enumerate(clients)]
    if owners == [j % size for j in range(len(clients))]:
        return owners, wave_threads(len(clients), size, actor_cpus)
    return owners, [max(1, round(actor_cpus))] * len(clients)


class ClientPool:
    """`size` actors serve any number of virtual clients; a failed actor is replaced.

    `actors`: processes already started by `PoolBoot` (their imports and first optimizer step
    paid while the driver prepared the run); they are configured with the spec here.
    `batch`: each actor gets its clients of a round in one `fit_many` call (`ray.batch_clients`).
    `keep`: `actors` are kept on the cluster for later runs (`ray.keep_actors`): `shutdown`
    leaves them running (not the run's own replacements of failed ones).
    `park_key`: `shutdown` parks every actor in this process for the next run of that pool key
    (a sweep trial's, `fedray.fl.kept.parking`) instead of killing it.
    """

    def __init__(
        self,
        actor_cls: Any,
        spec_ref: Any,
        size: int,
        actor_cpus: float = 1.0,
        wait: bool = True,
        actors: list[Any] | None = None,
        sticky: bool = False,
        batch: bool = False,
        keep: bool = False,
        park_key: str | None = None,
    ) -> None:
        self.actor_cls = actor_cls
        self.park_key = park_key
        self.kept: set[int] = set(range(size)) if keep and actors else set()
        self.batch = batch
        self.spec_ref = spec_ref
        self.actor_cpus = float(actor_cpus)
        self.sticky = sticky
        self.raised = RaisedClients()  # a client's error drops it, not its actor
        if actors and len(actors) == size:
            self.actors = list(actors)
            self._starting = [a.configure.remote(spec_ref) for a in self.actors]
        else:
            for a in actors or []:  # a pool of another size: start afresh
                ray.kill(a, no_restart=True)
            self.actors = [actor_cls.remote(spec_ref) for _ in range(size)]
            self._starting = [a.ping.remote() for a in self.actors]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every actor has started (imports, model build, warm-up run in parallel),
        so round 1 times training only."""
        ray.get(self._starting)

    def __len__(self) -> int:
        return len(self.actors)

    @staticmethod
    def put(value: Any) -> Any:
        """Into the object store once, for every actor to read (parameters, per round)."""
        return ray.put(value)

    def _replace(self, i: int) -> None:
        self.kept.discard(i)  # its replacement is the run's own
        self.raised.since_success.pop(i, None)
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
        """Fit every client; collect results and the dropped ones.

        Clients go round robin over the actors, or, when the pool is `sticky`, each to actor
        `client_id % size`: a client sampled again finds its cached backbone features on the
        actor that computed them (round robin by position sends it to any actor, so with
        sampling every actor ends up caching, and evicting, every client). The thread boost for
        a round's last partial wave applies when the clients go round robin.
        `params_ref` is the broadcast global model, or a `PerClient` dict client id -> that
        client's own params (isolated training).
        """
        futures: dict[Any, tuple[list[int], int]] = {}
        owners, threads = deal(clients, len(self.actors), self.actor_cpus, self.sticky)
        batches: dict[int, list[tuple[int, Any, int, dict[str, Any]]]] = {}
        for j, (cid, a) in enumerate(zip(clients, owners, strict=True)):
            job = {**extra, "num_threads": threads[j]}
            if self.batch and not isinstance(params_ref, PerClient):
                batches.setdefault(a, []).append((cid, shard_refs[cid], round_idx, job))
                continue
            start = PerClient.start(params_ref, cid)
            fut = self.actors[a].fit.remote(cid, shard_refs[cid], start, round_idx, job)
            futures[fut] = ([cid], a)
        for a, calls in batches.items():  # one call per actor: its clients in turn
            fut = self.actors[a].fit_many.remote(calls, params_ref)
            futures[fut] = ([c[0] for c in calls], a)
        ready, pending = ray.wait(list(futures), num_returns=len(futures), timeout=timeout_s)
        results: list[ClientResult] = []
        dropped: list[Dropped] = []
        broken: dict[int, str] = {}  # actor -> why it is replaced
        raised: dict[int, set[int]] = {}  # actor -> its clients that raised (it lives on)
        succeeded: set[int] = set()
        for fut in ready:
            cids, a = futures[fut]
            try:
                out = ray.get(fut)
            except RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                dropped += [Dropped(c, f"raised {type(cause).__name__}: {cause}") for c in cids]
                raised.setdefault(a, set()).update(cids)
                continue
            except (RayActorError, GetTimeoutError) as exc:
                dropped += [Dropped(c, f"actor died ({type(exc).__name__})") for c in cids]
                broken[a] = "it died"
                continue
            for res in out if isinstance(out, list) else [out]:
                if isinstance(res, Dropped):  # raised inside a batch; its neighbours stand
                    dropped.append(res)
                    raised.setdefault(a, set()).add(res.client_id)
                else:
                    results.append(res)
                    succeeded.add(a)
        for fut in pending:
            cids, a = futures[fut]
            dropped += [Dropped(c, f"timed out after {timeout_s}s") for c in cids]
            broken[a] = f"it was still busy after {timeout_s}s"
        for a in sorted(set(raised) | succeeded):
            if self.raised.settle(a, raised.get(a, set()), a in succeeded) and a not in broken:
                broken[a] = "two different clients raised on it with no fit succeeding between"
        for a, why in sorted(broken.items()):
            log.warning("client actor %d replaced: %s", a, why)
            self._replace(a)
        return results, dropped

    def shutdown(self) -> None:
        """Kill every actor, but the kept ones; or park them all (`park_key`). Those that stay
        drop the run's shards (`ClientActor.release`, not waited for)."""
        if self.park_key is not None:
            from fedray.fl.kept import park

            for actor in self.actors:
                actor.release.remote()
            park(self.park_key, self.actors)
            self.actors = []
            return
        for i, actor in enumerate(self.actors):
            if i in self.kept:
                actor.release.remote()
                continue
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []


class _NotMainThread(logging.Filter):
    """Drops `ray.init`'s warning that it could not set its SIGTERM handler from a thread:
    `_main_thread_sigterm` sets the same one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SIGTERM handler is not set")


_NOT_MAIN_THREAD = _NotMainThread()


def _main_thread_sigterm() -> None:
    """What `ray.init` does in the main thread, for a `ray.init` called from another: SIGTERM
    exits through `sys.exit`, unless someone already handles it. (Ray's C++ failure handler may
    still abort the process first, as it may when `ray.init` runs in the main thread; Ray's
    processes die with their parent either way.)"""
    import signal
    import sys
    import threading

    logging.getLogger("ray._private.worker").addFilter(_NOT_MAIN_THREAD)  # once: same object
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


class PoolBoot:
    """Ray and the client actors' processes, started in a thread while the driver prepares a run.

    Between its config check and round 1 a federated run's driver partitions the data, draws the
    partition heatmap, builds the server's model and loads the validation split, while the actor
    processes it will need import torch and take a first optimizer step: on 2 cores those are
    seconds each, and serial they made most of a short run's start-up. `start()` (the caller's
    `ensure_ray`) runs in the thread; `result()` waits for it and returns the started actors,
    raising whatever the thread raised; `release()` lets the thread stop Ray (when it started
    it) while the driver finishes; `close()` kills the actors nobody took, releases and waits.

    The thread lives until `close()`: Ray ties its processes to the thread that spawned them
    (`PR_SET_PDEATHSIG`), so a thread that returned would take the cluster down with it.
    """

    def __init__(
        self,
        start: Any,
        ray_cfg: dict[str, Any],
        k: int,
        optimizer: dict[str, Any],
        sizer: Any,
    ) -> None:
        import threading

        from fedray.fl.client import make_client_actor

        self._start, self._sizer, self._make = start, sizer, make_client_actor
        self.ray_cfg, self.k, self.optimizer = ray_cfg, k, optimizer
        self.started = False
        self.actors: list[Any] = []
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._ray_up = threading.Event()
        self._release = threading.Event()
        _main_thread_sigterm()
        self._thread = threading.Thread(target=self._run, name="fedray-pool-boot", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from fedray.fl.kept import parking_on, unpark

        try:
            try:
                self.started = bool(self._start())
            finally:
                self._ray_up.set()
            cpus = float(self.ray_cfg["client_cpus"])
            actor_cls = self._make(cpus, float(self.ray_cfg["client_gpus"]))
            boot = {"num_threads": max(1, round(cpus)), "optimizer": self.optimizer}
            size = self._sizer(self.ray_cfg, self.k)
            if self.ray_cfg.get("keep_actors"):  # warm ones from an earlier run (fedray/fl/kept.py)
                from fedray.fl.kept import kept_actors

                self.actors = kept_actors(actor_cls, self.ray_cfg, size, boot)
            elif parking_on():  # a sweep trial: the last trial's in this process, if any
                self.actors = unpark(actor_cls, self.ray_cfg, size, boot)
            else:
                self.actors = [actor_cls.remote(None, boot) for _ in range(size)]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver's thread by result()
            self._error = exc
        finally:
            self._ready.set()
        self._release.wait()
        if self.started:
            ray.shutdown()

    def wait_ray(self) -> None:
        """Wait until the thread's `ray.init` has returned (or failed: `result()` raises it).
        Whoever starts Ray tasks in the driver meanwhile (a strategy building its server-side
        data) calls this first: a second `ray.init` racing the thread's would fail."""
        self._ray_up.wait()

    def result(self) -> list[Any]:
        """Wait for Ray and the actors' start; the actors (the caller's pool owns them now)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        actors, self.actors = self.actors, []
        return actors

    def release(self) -> None:
        """The run needs Ray no more: let the thread stop it (if it started it) without waiting."""
        self._release.set()

    def close(self) -> None:
        """Kill the actors nobody took (not kept ones), stop Ray if the thread started it, end
        the thread."""
        self._ready.wait()
        for a in [] if self.ray_cfg.get("keep_actors") else self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
        self.actors = []
        self._release.set()
        self._thread.join()
