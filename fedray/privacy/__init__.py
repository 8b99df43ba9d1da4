"""Secure aggregation, differential privacy and attacks: `check_privacy` is what
`fedray.validate` runs on their config keys before anything starts (`check_dealt`, what
`fedray.run` runs once the partition is dealt); the modules are imported
only for what is on (`secagg` imports cryptography, `dp` the accountant)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedray.config import ConfigError


def check_privacy(
    cfg: dict[str, Any], per_round: int, num_classes: int | None, strategy: Any = None
) -> None:
    """fl.secure_agg and its knobs, attack.*, and dp.* with the accountant's package (the
    `privacy` extra), each when it is on, and each against the stage, the task, the images and
    `strategy` (the built rule; None: a stage without one); `num_classes` None: not known before
    the data."""
    from fedray.config import command_line_keys
    from fedray.privacy import rules

    fl = cfg["fl"]
    rules.check_stage(cfg)
    rules.check_idle_secagg(fl, command_line_keys())
    dpc = cfg.get("dp")
    on_dp = isinstance(dpc, Mapping) and dpc.get("name", "none") != "none"
    if (fl.get("secure_agg") or "none") != "none":
        from fedray.privacy.secagg import check_config, settings

        check_config(fl)
        if on_dp and dpc.get("noise") == "central":  # every client weighs 1
            n = int(fl["num_clients"]) if dpc.get("sampling", "poisson") == "poisson" else per_round
            why = f"a round's total weight of up to {n} (central DP weighs each of {n} clients 1)"
        else:  # the shard sizes are known once the data is dealt (check_dealt)
            n, why = 1, "a single sample's weight"
        rules.check_ring(settings(fl.get("secagg") or {}), n, why)
    attack = cfg.get("attack") or {}
    if attack:
        from fedray.privacy.attacks import check_attack

        _read("attack", check_attack, attack, num_classes or 2**31)  # any target id, if unknown
    if attack.get("name", "none") != "none":
        fraction, n = float(attack.get("fraction", 0.2)), int(fl["num_clients"])
        if round(fraction * n) == 0:  # an attack by nobody: the run is clean
            raise ConfigError(
                f"attack.fraction={fraction:g} of fl.num_clients={n} is round({fraction * n:g}) "
                "= 0 attacking clients: raise either (e.g. fl.num_clients=10), or use "
                "attack=none for a run without attackers"
            )
        rules.check_attack_data(cfg)
    if on_dp:
        from fedray.privacy.dp import check_dp

        _read("dp", check_dp, dict(dpc), int(fl["num_clients"]), per_round)
    if strategy is not None:
        rules.check_strategy(cfg, strategy)


def check_dealt(cfg: dict[str, Any], parts: list[Any]) -> None:
    """Secure aggregation's ring against the dealt shards: a round's total weight is at most the
    samples of its largest shards (a backdoor attacker's grown by its triggered copies); called
    by `fedray.run` after the partition is dealt, before Ray starts."""
    from fedray.privacy import attacks, rules
    from fedray.privacy.secagg import settings
    from fedray.validate import clients_per_round

    fl, dpc = cfg["fl"], cfg.get("dp") or {}
    if (fl.get("secure_agg") or "none") == "none" or dpc.get("noise") == "central":
        return  # central DP weighs each client 1: check_privacy knew the bound
    weights = [len(p) for p in parts]
    attack = cfg.get("attack") or {}
    if attack.get("name") == "backdoor":  # backdoor_shard adds its copies to the shard
        for c in attacks.malicious_clients(len(parts), attack["fraction"], int(cfg["seed"])):
            n = weights[c]
            weights[c] += min(n, max(1, round(float(attack["poison_frac"]) * n)))
    poisson = dpc.get("name", "none") != "none" and dpc.get("sampling", "poisson") == "poisson"
    k = len(parts) if poisson else clients_per_round(fl)
    total = sum(sorted(weights, reverse=True)[:k])
    why = f"a round's total weight of up to {total} samples (its {k} largest shards)"
    rules.check_ring(settings(fl.get("secagg") or {}), total, why)


def _read(group: str, check: Any, *args: Any) -> None:
    """`check(*args)`; a value float() or int() cannot read is a ConfigError naming `group`."""
    from fedray.targets import first_line

    try:
        check(*args)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{group}: {first_line(exc)} ({group}.* takes numbers)") from None
