"""Secure aggregation, differential privacy and attacks: `check_privacy` is what
`fedray.validate` runs on their config keys before anything starts; the modules are imported
only for what is on (`secagg` imports cryptography, `dp` the accountant)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedray.config import ConfigError


def check_privacy(cfg: dict[str, Any], per_round: int, num_classes: int | None) -> None:
    """fl.secure_agg and its knobs, attack.*, and dp.* with the accountant's package (the
    `privacy` extra), each when it is on; `num_classes` None: not known before the data."""
    if (cfg["fl"].get("secure_agg") or "none") != "none":
        from fedray.privacy.secagg import check_config

        check_config(cfg["fl"])
    attack = cfg.get("attack") or {}
    if attack.get("name", "none") != "none":
        from fedray.privacy.attacks import check_attack

        _read("attack", check_attack, attack, num_classes or 2**31)  # any target id, if unknown
        fraction, n = float(attack.get("fraction", 0.2)), int(cfg["fl"]["num_clients"])
        if fraction > 0 and round(fraction * n) == 0:  # an attack by nobody: the run is clean
            raise ConfigError(
                f"attack.fraction={fraction:g} of fl.num_clients={n} is round({fraction * n:g}) "
                "= 0 attacking clients: raise either (e.g. fl.num_clients=10)"
            )
    dpc = cfg.get("dp")
    if isinstance(dpc, Mapping) and dpc.get("name", "none") != "none":
        from fedray.privacy.dp import check_dp

        _read("dp", check_dp, dict(dpc), int(cfg["fl"]["num_clients"]), per_round)


def _read(group: str, check: Any, *args: Any) -> None:
    """`check(*args)`; a value float() or int() cannot read is a ConfigError naming `group`."""
    from fedray.targets import first_line

    try:
        check(*args)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{group}: {first_line(exc)} ({group}.* takes numbers)") from None
