"""Attacks by a seeded fraction of clients: data poisoning (label flip, backdoor) and model
poisoning (sign flip, scaled / model replacement, Gaussian noise).

Which clients are malicious is a function of (seed, fraction, num_clients) alone
(`malicious_clients`). Data attacks change a malicious client's shard before local training;
update attacks change its update (params - global) after it. All functions are pure.
"""

from __future__ import annotations

import numpy as np

from fedray.config import ConfigError

KINDS = ("none", "label_flip", "sign_flip", "scaled", "gaussian", "backdoor")
DATA_KINDS = ("label_flip", "backdoor")


# each kind's keys (besides name): what `poison_shard` and `poison_update` read for it
KEYS = {
    "none": (),
    "label_flip": ("fraction",),
    "sign_flip": ("fraction", "scale"),
    "scaled": ("fraction", "scale"),
    "gaussian": ("fraction", "std"),
    "backdoor": ("fraction", "target", "patch", "poison_frac", "boost"),
}


def check_attack(attack: dict, num_classes: int) -> None:
    """ConfigError naming the attack.<key> that makes no sense, or that this kind never reads."""
    from fedray.checks import number
    from fedray.config import refuse_unknown

    kind = attack.get("name", "none")
    if kind not in KINDS:
        raise ConfigError(f"attack.name={kind!r} is not a known attack; choose one of {KINDS}")
    refuse_unknown("attack", [k for k in attack if k != "name"], KEYS[kind], f" for attack={kind}")
    if kind == "none":
        return
    if not 0 <= float(attack.get("fraction", 0.2)) <= 1:
        raise ConfigError(f"attack.fraction must be in [0, 1], got {attack.get('fraction')!r}")
    # a factor <= 0 turns the attack into another one (a flip un-flipped, a zeroed update)
    for key in ("scale", "std", "boost"):
        if key in KEYS[kind] and key in attack:
            number(f"attack.{key}", attack[key], 0, low_open=True)
    if kind == "backdoor":
        target = int(attack.get("target", 0))
        if not 0 <= target < num_classes:
            raise ConfigError(f"attack.target={target} is not a class id in 0..{num_classes - 1}")
        if not 0 < float(attack.get("poison_frac", 0.5)) <= 1:
            raise ConfigError(
                f"attack.poison_frac must be in (0, 1], got {attack['poison_frac']!r}"
            )
        if int(attack.get("patch", 4)) < 1:
            raise ConfigError(f"attack.patch must be >= 1 pixel, got {attack['patch']!r}")


def malicious_clients(num_clients: int, fraction: float, seed: int) -> list[int]:
    """The round(fraction x num_clients) attacking clients, drawn from `seed` alone; sorted."""
    k = int(round(float(fraction) * num_clients))
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping: class c is relabelled num_classes - 1 - c."""
    return (num_classes - 1 - np.asarray(y)).astype(np.asarray(y).dtype)


def add_trigger(x: np.ndarray, patch: int, value: int = 255) -> np.ndarray:
    """A copy of images (N, H, W, C) with a `patch` x `patch` checkerboard in the bottom-right
    corner (the backdoor's trigger); values are the image dtype's (255 for uint8)."""
    out = np.array(x, copy=True)
    yy, xx = np.indices((patch, patch))
    board = np.where((yy + xx) % 2 == 0, value, 0).astype(out.dtype)
    out[:, -patch:, -patch:, :] = board[None, :, :, None]
    return out


def backdoor_shard(
    x: np.ndarray, y: np.ndarray, target: int, poison_frac: float, patch: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poison a seeded `poison_frac` of a shard: trigger stamped, label set to `target`.

    The poisoned copies are added beside the clean samples (the client keeps its main task, so
    its update looks ordinary while it teaches the trigger).
    """
    rng = np.random.default_rng([seed, 0xB4C])
    n = max(1, int(round(poison_frac * len(y))))
    idx = np.sort(rng.choice(len(y), size=min(n, len(y)), replace=False))
    px = add_trigger(np.asarray(x)[idx], patch)
    py = np.full(len(idx), target, dtype=np.asarray(y).dtype)
    return np.concatenate([np.asarray(x), px]), np.concatenate([np.asarray(y), py])


def poison_update(
    update: dict[str, np.ndarray], attack: dict, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A malicious client's update (params - global) under the model attacks.

    sign_flip: -scale·u; scaled: scale·u (model replacement's boost); gaussian: N(0, std²) in
    place of u; others (data attacks): u, times `boost` if set (the backdoor's model replacement).
    """
    kind = attack.get("name", "none")
    scale = float(attack.get("scale", 1.0))
    if kind == "sign_flip":
        return {k: -scale * v for k, v in update.items()}
    if kind == "scaled":
        return {k: scale * v for k, v in update.items()}
    if kind == "gaussian":
        std = float(attack.get("std", 1.0))
        return {k: rng.normal(0.0, std, size=np.shape(v)) for k, v in update.items()}
    boost = float(attack.get("boost", 1.0))
    return update if boost == 1.0 else {k: boost * v for k, v in update.items()}
