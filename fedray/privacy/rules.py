"""The privacy settings against the rest of the run: the stage, the strategy, the task and its
images, the command line, the secure-aggregation ring.

`fedray.privacy.check_privacy` runs them before Ray starts, `check_dealt` runs the ring's again
on the dealt partition (only it knows the shard sizes), and `build_privacy` runs the stage's and
the strategy's on the rule the server built (a server built outside `fedray.run` is held to them
too). Each raises a one-line ConfigError naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedray.config import ConfigError

# tasks whose targets are class ids: what label flipping and the backdoor's target rewrite
CLASS_TASKS = ("classification", "distill")


def switched_on(cfg: dict[str, Any]) -> list[str]:
    """The privacy settings the run turns on, each as the override that turns it on."""
    mode = str(cfg["fl"].get("secure_agg") or "none")
    dpc, attack = cfg.get("dp") or {}, cfg.get("attack") or {}
    on = [f"fl.secure_agg={mode}"] if mode != "none" else []
    if dpc.get("name", "none") != "none":
        on.append(f"dp={dpc['name']}")
    if attack.get("name", "none") != "none":
        on.append(f"attack={attack['name']}")
    return on


def check_stage(cfg: dict[str, Any]) -> None:
    """Secure aggregation, DP and attacks act on the updates clients send a server: a stage
    without one (centralized, isolated) would run as if they were off."""
    on, stage = switched_on(cfg), cfg.get("stage")
    if on and stage != "federated":
        them = "it" if len(on) == 1 else "them"
        raise ConfigError(
            f"{on[0].partition('=')[0]}: {', '.join(on)} appl{'ies' if len(on) == 1 else 'y'} "
            f"to federated runs, not stage={stage}: drop {them} or use stage=federated"
        )


def _needs_each(strategy: Any) -> str | None:
    """What of each client the rule reads ('update', 'model'), or None when the average does."""
    from fedray.fl.strategies import FLTrust, Krum, Median, TrimmedMean
    from fedray.fl.strategies.feddf import FedDF
    from fedray.fl.strategies.norm_bounded import NormBoundedFedAvg

    if isinstance(strategy, FedDF):
        return "model (it distils their ensemble)"
    if isinstance(strategy, Krum | Median | TrimmedMean | NormBoundedFedAvg | FLTrust):
        return "update"
    return None


def check_strategy(cfg: dict[str, Any], strategy: Any) -> None:
    """Under secure aggregation or central DP the server holds only the (noised) sum: a rule that
    reads each client's update or model is refused, and so is fl.head_init=ridge's clear text."""
    fl = cfg["fl"]
    mode = str(fl.get("secure_agg") or "none")
    dpc = cfg.get("dp") or {}
    central = dpc.get("name", "none") != "none" and dpc.get("noise") == "central"
    what = _needs_each(strategy) if mode != "none" or central else None
    if what is not None:
        given = f"fl.secure_agg={mode}" if mode != "none" else "dp=central"
        total = "sum" if mode != "none" and not central else "noised sum"
        raise ConfigError(
            f"strategy: {strategy.name!r} needs each client's {what}, but {given} gives the "
            f"server only their {total}: use strategy=fedavg/fedprox/polyak/fedadam/fedyogi/"
            "fedadagrad" + (" or dp=local" if mode == "none" else "")
        )
    if mode != "none" and fl.get("head_init", "random") != "random":
        raise ConfigError(
            f"fl.secure_agg={mode} masks model updates only; fl.head_init={fl['head_init']} sends "
            "each client's feature sums in the clear: set fl.head_init=random"
        )


def check_idle_secagg(fl: dict[str, Any], given: Sequence[str]) -> None:
    """An `fl.secagg.*` key set on the command line (`given`) while secure aggregation is off
    would change nothing; the YAML defaults of fl.secagg are always there and are left alone."""
    if str(fl.get("secure_agg") or "none") != "none":
        return
    for key in given:
        if key == "fl.secagg" or key.startswith("fl.secagg."):
            raise ConfigError(
                f"{key}: fl.secure_agg=none, so it would change nothing; turn secure "
                "aggregation on with fl.secure_agg=secagg (or secagg+), or drop it"
            )


def check_attack_data(cfg: dict[str, Any]) -> None:
    """The data attacks against the task and the images: they rewrite class ids, and the
    backdoor stamps a patch that must fit in the image."""
    attack = cfg.get("attack") or {}
    kind = attack.get("name", "none")
    task = str((cfg.get("task") or {}).get("name", "classification"))
    if kind in ("label_flip", "backdoor") and task not in CLASS_TASKS:
        raise ConfigError(
            f"attack: attack={kind} rewrites class labels, but task={task} has no class label "
            f"per image; it needs task={' or task='.join(CLASS_TASKS)}"
        )
    size = (cfg.get("data") or {}).get("image_size")
    patch = attack.get("patch", 4)
    if kind == "backdoor" and isinstance(size, int) and int(patch) > size:
        raise ConfigError(
            f"attack.patch: a {patch} px trigger does not fit in the {size} x {size} images "
            f"(data.image_size); allowed: 1 to {size}"
        )


def check_ring(sa: dict[str, Any], weight: int, why: str) -> None:
    """Secure aggregation sums each client's weight x its values' quantization levels in the
    ring Z/2^mod_bits: ConfigError when a round's sum can wrap (`weight`: the most a round's
    weights add up to; `why` names it and where the bound comes from)."""
    bits, mod = int(sa["quant_bits"]), int(sa["mod_bits"])
    levels = (1 << bits) - 1
    if weight * levels < 2**mod:
        return
    fit = math.floor(math.log2((2**mod - 1) // weight + 1))  # the most quant_bits that fit
    ways = [f"fl.secagg.quant_bits <= {fit}"] if fit >= 1 else []
    if mod < 64 and weight * levels < 2**64:
        ways.insert(0, "fl.secagg.mod_bits=64")
    raise ConfigError(
        f"fl.secagg.quant_bits: {bits} bits ({levels} levels) x {why} overflows the 2^{mod} ring "
        f"(fl.secagg.mod_bits); set {' or '.join(ways) or 'fewer clients per round'}"
    )
