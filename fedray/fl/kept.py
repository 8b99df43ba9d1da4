"""Client actors kept warm on a running cluster between runs (`ray.keep_actors=true`).

A run that joins a cluster (`ray.address=auto`) skips Ray's own start, but its client actors are
new processes that import torch and take a first optimizer step: seconds each on a small
machine, most of a quick experiment's start-up. With `ray.keep_actors=true` they are named,
detached actors in the `fedray` namespace: they outlive the run, and the next run of the same
shape (actor resources, working directory, import path) finds them warm and only configures
them (`ClientActor.configure` rebuilds model, data and caches from the run's spec).

An actor whose code changed on disk since its process started (an edited model module, an
upgraded package) is replaced, and actors of another shape are stopped. Between runs a kept
actor is an idle process holding memory (a model's worth and torch) but no CPUs: it is created
with `num_cpus=0`, so the next run's own Ray tasks (a data build, a sweep's trials) and a run
that does not use it are never left waiting for CPUs it would hold (its GPU share, with
`ray.client_gpus` > 0, it does hold). `ray stop` ends them; one run at a time uses them.

Sweep trials keep theirs another way (`parking`): Tune hands a finished trial's process and
placement group to the next trial of the same resources (`sweep.reuse_processes`), and the
trial's client actors, scheduled in that placement group and owned by that process, stay parked
in it for the next trial instead of being killed and started again. They end with the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("fedray")

NAMESPACE = "fedray"
PREFIX = "client-"


def shape_key(ray_cfg: dict[str, Any]) -> str:
    """What a kept actor shares with every run that reuses it: its resources and where its
    code comes from (the driver's working directory and import path, which Ray hands the
    workers of the job that started it)."""
    shape = [float(ray_cfg["client_cpus"]), float(ray_cfg["client_gpus"]), os.getcwd(), sys.path]
    return hashlib.sha1(json.dumps(shape, default=str).encode()).hexdigest()[:12]


def actor_names(ray_cfg: dict[str, Any], size: int) -> list[str]:
    """The names of a pool of `size` kept actors of this run's shape."""
    key = shape_key(ray_cfg)
    return [f"{PREFIX}{key}-{i}" for i in range(size)]


def _kill(name: str) -> None:
    """Stop the kept actor `name` and wait until its name is free again."""
    import ray

    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    except ValueError:  # already gone
        return
    for _ in range(200):
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.05)


def kept_actors(actor_cls: Any, ray_cfg: dict[str, Any], size: int, boot: dict[str, Any]) -> list:
    """`size` warm client actors of this run's shape: the kept ones, else new kept ones.

    Kept actors of another shape (or beyond `size`) are stopped first, so that one pool's
    worth of idle processes stays on the cluster. An actor whose loaded code changed on disk is
    started afresh.
    """
    names = actor_names(ray_cfg, size)
    present = set(kept_names())  # one listing of the cluster's named actors serves both
    for name in sorted(present - set(names)):
        log.info("stopping kept client actor %s (another pool shape)", name)
        _kill(name)

    def named(name: str) -> Any:
        opts = {"name": name, "namespace": NAMESPACE, "lifetime": "detached", "num_cpus": 0}
        # no CPUs held: nothing packs them onto one node, so spread them over the cluster's
        opts["scheduling_strategy"] = "SPREAD"
        return actor_cls.options(**opts, get_if_exists=True).remote(None, boot)

    reused = present & set(names)
    actors = [named(n) for n in names]
    for i, changed in enumerate(_ask_stale(actors)):
        if changed:
            log.info("kept client actor %s: %s; starting it afresh", names[i], changed)
            _kill(names[i])
            actors[i] = named(names[i])
            reused.discard(names[i])
    log.info("client actors kept warm on the cluster (ray.keep_actors): %d reused, %d started",
             len(reused), size - len(reused))
    return actors


def _ask_stale(actors: list[Any], timeout_s: float = 300.0) -> list[str | None]:
    """Each actor's `stale()`; one that died, or is busy (another run's fit, a hang) past
    `timeout_s`, is as good as stale: it is replaced too."""
    import ray
    from ray.exceptions import RayActorError

    refs = [a.stale.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out: list[str | None] = []
    for ref in refs:
        if ref not in ready:
            out.append(f"no answer in {timeout_s:.0f} s")
            continue
        try:
            out.append(ray.get(ref))
        except RayActorError as exc:
            out.append(f"its process is gone ({type(exc).__name__})")
    return out


def kept_names() -> list[str]:
    """Every kept client actor on the cluster, of any shape."""
    import ray

    return [
        e["name"]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == NAMESPACE and e["name"].startswith(PREFIX)
    ]


class _Parking:
    """This process's parked client actors (`parking`): on while a sweep trial runs."""

    on = False
    key: str | None = None
    actors: list[Any] = []


_PARK = _Parking()


@contextmanager
def parking() -> Iterator[None]:
    """Within it, a run's client actors outlive the run in this process: the next run here of the
    same pool (size, CPUs and GPUs per actor, code location) configures them instead of starting
    new ones. For a sweep trial whose process Tune may hand to the next trial
    (`sweep.reuse_processes`): the actors sit in that trial's placement group, which goes with the
    process, and die with it."""
    _PARK.on = True
    try:
        yield
    finally:
        _PARK.on = False


def parking_on() -> bool:
    """Whether a run started now parks its client actors when it ends (`parking`)."""
    return _PARK.on


def park_key(ray_cfg: dict[str, Any], size: int) -> str:
    """What a parked pool shares with the run that takes it: its size and actor shape."""
    return f"{shape_key(ray_cfg)}-{size}"


def _stop(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone is fine
        pass


def park(key: str, actors: list[Any]) -> None:
    """Leave `actors` (a finished run's pool) in this process for the next run of pool `key`."""
    _PARK.key, _PARK.actors = key, list(actors)


def unpark(actor_cls: Any, ray_cfg: dict[str, Any], size: int, boot: dict[str, Any]) -> list:
    """`size` client actors for this run: the last run's parked ones when its pool had the same
    key, else new ones. A parked actor that died or does not answer is replaced; parked actors
    of another pool are stopped (their placement-group bundles then take the new ones)."""
    key = park_key(ray_cfg, size)
    actors, _PARK.actors = _PARK.actors, []
    if actors and _PARK.key != key:
        for a in actors:
            _stop(a)
        actors = []
    reused = len(actors)
    for i, why in enumerate(_ask_stale(actors, timeout_s=60.0)):
        if why:
            log.info("client actor from the last trial in this process: %s; starting one", why)
            _stop(actors[i])
            actors[i] = actor_cls.remote(None, boot)
            reused -= 1
    actors += [actor_cls.remote(None, boot) for _ in range(size - len(actors))]
    if reused:
        log.info("client actors from the last trial in this process: %d reused, %d started",
                 reused, size - reused)
    return actors


def process_start_time() -> float:
    """When this process started (seconds since the epoch); Linux's /proc, else now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def changed_module(since: float) -> str | None:
    """The first loaded module whose source file changed after `since`, or None."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not os.path.isabs(path):  # torch.ops' is "_ops.py"
            continue
        try:
            if os.stat(path).st_mtime > since:
                return path
        except OSError:  # a file since removed: the code in memory is stale too
            return path
    return None
