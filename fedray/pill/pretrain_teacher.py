"""A teacher for the public pretraining: a small backbone learns the public pills from a big one.

`pretrain.teacher` names another model whose own public pretraining (cached like any other)
teaches this one: on every augmented public batch the pretraining loss becomes
`lam * T^2 * KL(p_teacher^T || p_student^T) + (1 - lam) * CE`, Hinton's loss with the recipe's
label-smoothed cross-entropy as the hard term (`pretrain.teacher_temperature` T,
`pretrain.teacher_lam` lam). Both networks are pretrained under the same head on the same public
classes, so the teacher's logits are soft targets over exactly the student's classes. This is
where a narrow student's features are made (MobileDeepPill distils its teacher on the same
images): distilling only the private head later cannot lift a backbone that learnt less.

The value is a mapping: with a `_target_`, a model config of its own; without, keys changed on
the run's model (`{width: 1.0}`: the same network at full width). `stage=distill` fills it with
the experiment's model when `distill.pretrain_teacher=true`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedray.checks import as_key
from fedray.config import ConfigError

TEACHER_KEYS = ("teacher", "teacher_temperature", "teacher_lam")


def teacher_cfg(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The config whose public pretraining is the teacher's (its own `pretrain.teacher` unset),
    or None without a teacher; a clear error for a value that is not a model."""
    from fedray.pill.pretrain import model_key

    pcfg = cfg["pretrain"]
    spec = pcfg.get("teacher")
    if spec is None:
        return None
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"pretrain.teacher={spec!r}: null, a model config (with a _target_) or the keys to "
            "change on the run's model, e.g. {width: 1.0}"
        )
    if "_target_" in spec:
        model = dict(spec)
    else:  # keys changed on the run's model: each one it has, or its builder takes
        from fedray.models import target_params

        known = set(cfg["model"]) | set(target_params(cfg["model"].get("_target_")))
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(
                f"pretrain.teacher.{unknown[0]}: not a key of model={cfg['model'].get('name')} "
                f"nor an argument of its builder; it has {sorted(known - {'_target_'})}"
            )
        model = {**cfg["model"], **spec}
    out = {**cfg, "model": model, "pretrain": {**pcfg, "teacher": None}}
    if model_key(out) == model_key(cfg):
        raise ConfigError(
            f"pretrain.teacher={spec!r} is the model being pretrained: name a bigger one "
            "(e.g. {width: 1.0} for a narrow model)"
        )
    return out


def teacher_knobs(pcfg: dict[str, Any]) -> tuple[float, float]:
    """(temperature, lam) of the teacher's loss, checked."""
    from fedray.checks import number

    temperature, lam = pcfg.get("teacher_temperature", 4.0), pcfg.get("teacher_lam", 0.9)
    number("pretrain.teacher_temperature", temperature, 0, low_open=True)
    number("pretrain.teacher_lam", lam, 0, 1)
    return float(temperature), float(lam)


def teacher_recipe(cfg: dict[str, Any], key_of: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """What the teacher adds to the pretraining's cache key: the teacher's own key (`key_of` its
    config) and the loss's knobs; nothing without a teacher, so other keys stay as they were."""
    tcfg = teacher_cfg(cfg)
    if tcfg is None:
        return {}
    temperature, lam = teacher_knobs(cfg["pretrain"])
    with as_key("pretrain.teacher"):
        key = key_of(tcfg)
    return {"teacher": key, "teacher_temperature": temperature, "teacher_lam": lam}


def load_teacher(cfg: dict[str, Any], num_classes: int) -> torch.nn.Module | None:
    """The teacher's pretrained public model in eval mode (pretrained first if not cached)."""
    from fedray.models import build_model, load_pretrained
    from fedray.pill.pretrain import pretrain_model_cfg, pretrained_weights

    tcfg = teacher_cfg(cfg)
    if tcfg is None:
        return None
    weights = pretrained_weights(tcfg)
    model = build_model(pretrain_model_cfg(tcfg), num_classes)
    load_pretrained(model, weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def taught_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, hard: torch.Tensor,
                temperature: float, lam: float) -> torch.Tensor:
    """lam * T^2 * KL(teacher^T || student^T) + (1 - lam) * the recipe's hard loss (Hinton's
    loss, fedray.distill.losses.hinton, with the recipe's label-smoothed CE as its hard term)."""
    from fedray.distill.losses import soft_kl

    soft = temperature**2 * soft_kl(logits, teacher_logits, temperature)
    return lam * soft + (1.0 - lam) * hard
