"""The teacher of a distillation: a finished run directory (its model, data and seed), a saved
state_dict of the experiment's `model`, or an ensemble of either (`distill.teacher`,
`task.teacher`). Loading problems are ConfigErrors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedray.config import ConfigError
from fedray.distill.ensemble import Ensemble


def load_teacher(
    cfg: dict[str, Any], dcfg: dict[str, Any]
) -> tuple[nn.Module | None, dict, int, str]:
    """(teacher model or None to train here, the data config and seed it was trained on, its
    source).

    The student learns on that data built with that seed: a teacher run of another seed split
    its data otherwise (image_folder's val, say), or drew other images (toy, cifar_like), and
    the run's own seed would score the teacher on its training images. A list of run
    directories or state_dicts is an ensemble (`Ensemble`): its members must have been trained
    on one dataset (data config and seed), which the student then learns from."""
    source = dcfg.get("teacher")
    if source in (None, "", "null"):
        return None, cfg["data"], int(cfg["seed"]), "trained here"
    if not isinstance(source, list | tuple):
        model, data_cfg, seed = load_member(cfg, source, "distill.teacher")
        return model, data_cfg, seed, str(Path(str(source)).expanduser())
    members, first = [], None
    for i, member in enumerate(source):
        key = f"distill.teacher[{i}]"
        model, data_cfg, seed = load_member(cfg, member, key)
        if first is None:
            first = (data_cfg, seed)
        elif (data_cfg, seed) != first:
            diff = "seed" if data_cfg == first[0] else "data." + next(
                k for k in sorted({*data_cfg, *first[0]}) if data_cfg.get(k) != first[0].get(k)
            )
            raise ConfigError(
                f"{key}={member!r} was trained on other data than distill.teacher[0] ({diff} "
                "differs): an ensemble's members share one dataset, the student's"
            )
        members.append(model)
    names = ", ".join(str(Path(str(m)).expanduser()) for m in source)
    return Ensemble(members), first[0], first[1], f"ensemble of {len(members)}: {names}"


def load_member(cfg: dict[str, Any], source: Any, key: str) -> tuple[nn.Module, dict, int]:
    """(a run directory's model or `model` loaded from a state_dict, its data config, its seed)."""
    if source in (None, "", "null") or not isinstance(source, str | Path):
        raise ConfigError(f"{key}={source!r}: a teacher is a run directory or a state_dict file")
    path = Path(str(source)).expanduser()
    if path.is_dir():
        model, tcfg = teacher_from_run(path, key)
        return model, tcfg["data"], int(tcfg["seed"])
    if not path.is_file():
        raise ConfigError(f"{key}={source!r} is neither a run directory nor a file")
    from fedray.data.sources import build_dataset

    info = build_dataset(cfg["data"], int(cfg["seed"]))
    return teacher_from_state(path, cfg["model"], info.num_classes, key), cfg["data"], int(
        cfg["seed"]
    )


def teacher_from_run(path: Path, key: str) -> tuple[nn.Module, dict[str, Any]]:
    """(the global model of a finished run directory, the run's config: its data and seed)."""
    import yaml

    from fedray.data.sources import build_dataset, classes_known
    from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint
    from fedray.fl.train import set_params
    from fedray.models import build_model

    if not (path / "config.yaml").exists() or not (path / CHECKPOINT).exists():
        raise ConfigError(
            f"{key}={str(path)!r}: a run directory needs config.yaml and {CHECKPOINT} "
            "(a federated run with fl.checkpoint=true)"
        )
    tcfg = yaml.safe_load((path / "config.yaml").read_text())
    if tcfg.get("stage") == "isolated":
        raise ConfigError(f"{key}={str(path)!r} is an isolated run: no global model")
    # the class count its config tells, else its data's (built: the config check loads the
    # teacher too, and builds nothing where the config tells)
    seed = int(tcfg["seed"])
    classes = classes_known(tcfg["data"]) or build_dataset(tcfg["data"], seed).num_classes
    torch.manual_seed(seed)  # as the server: frozen layers get the same init
    model = build_model(tcfg["model"], classes)
    set_params(model, load_checkpoint(path / CHECKPOINT)["params"])
    return model, tcfg


def teacher_from_state(
    path: Path, model_cfg: dict[str, Any], num_classes: int, key: str
) -> nn.Module:
    """`model_cfg` built for `num_classes` and loaded with the state_dict saved at `path` (a file
    that is none, or does not fit, is a ConfigError naming `key` and the first mismatch)."""
    from fedray.distill.task import TEACHER_IS
    from fedray.models import build_model, read_state_dict

    model = build_model({**model_cfg, "pretrained": None}, num_classes)
    state = read_state_dict(path, key, TEACHER_IS)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # "Error(s) in loading ...:", then one line per mismatch
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[min(1, len(lines) - 1)]
        raise ConfigError(
            f"{key}={str(path)!r} does not fit {model_cfg.get('name') or model_cfg['_target_']} "
            f"built for {num_classes} classes: "
            + (first if len(first) <= 200 else f"{first[:200]} ...")
        ) from None
    return model
