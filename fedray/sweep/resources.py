"""Ray resources of one trial: a placement group holding its driver and its client actors."""

from __future__ import annotations

from typing import Any

from fedray.sweep.plan import trial_config
from fedray.sweep.space import decode


def trial_bundles(
    cfg: dict[str, Any], driver_cpus: float, cluster_cpus: float, driver_gpus: float = 0.0
) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: its driver, then one per client actor (or the
    driver alone, sized for a client, when the clients fit in it: `ray.backend=inprocess`).
    The driver's bundle holds `driver_gpus` of a GPU, if any (`sweep.driver_gpus`): Ray shows a
    trial's process only the GPUs it holds, and its pretraining and server run there.

    The actor count is what the run's pool would start (one per sampled client, at most
    `ray.max_actors`) capped by what fits next to the driver, so a trial never waits for CPUs
    the cluster does not have.
    """
    from fedray.fl.inprocess import backend
    from fedray.fl.server import clients_per_round

    ray_cfg = cfg["ray"]
    per_cpu = float(ray_cfg.get("client_cpus") or 0.0)
    per_gpu = float(ray_cfg.get("client_gpus") or 0.0)
    driver: dict[str, float] = {"CPU": float(driver_cpus)}
    if driver_gpus > 0:
        driver["GPU"] = float(driver_gpus)
    if backend(cfg) == "inprocess":  # the clients fit inside the trial's own process
        one: dict[str, float] = {"CPU": max(float(driver_cpus), per_cpu)}
        gpus = max(per_gpu, float(driver_gpus))
        return [{**one, "GPU": gpus} if gpus > 0 else one]
    n = clients_per_round(cfg["fl"])
    if ray_cfg.get("max_actors"):
        n = min(n, int(ray_cfg["max_actors"]))
    if per_cpu > 0:
        n = min(n, int((cluster_cpus - driver_cpus) / per_cpu + 1e-9))
    n = max(1, n)
    client: dict[str, float] = {"CPU": per_cpu}
    if per_gpu > 0:
        client["GPU"] = per_gpu
    return [driver] + [dict(client) for _ in range(n)]


def trial_resources(
    config: dict[str, Any],
    base: dict[str, Any],
    options: dict,
    variants: dict,
    driver_cpus: float,
    cluster_cpus: float,
    driver_gpus: float = 0.0,
) -> Any:
    """Tune resources callback: the trial's PlacementGroupFactory (PACK: one node if it fits)."""
    from ray.tune import PlacementGroupFactory

    cfg, _ = trial_config(base, decode(config, variants), options)
    return PlacementGroupFactory(trial_bundles(cfg, driver_cpus, cluster_cpus, driver_gpus),
                                 strategy="PACK")


def check_fits(cfg: dict[str, Any], driver_cpus: float, cluster_cpus: float) -> float:
    """CPUs one trial of `cfg` needs (driver + actors); the caller compares with the cluster."""
    return sum(b["CPU"] for b in trial_bundles(cfg, driver_cpus, cluster_cpus))
