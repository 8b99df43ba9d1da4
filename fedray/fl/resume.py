"""Which run directory `resume=` continues, and the hash that says two configs are one experiment.

`resume=true` picks the latest run under the same output root whose checkpoint was written under
this experiment's hash; `resume=PATH` names it, and is refused (before anything is written there)
when its checkpoint came from another experiment, naming the keys that differ (a sweep trial
that Tune restores, PBT's exploit included, continues under its new hyperparameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedray.config import ConfigError
from fedray.data.datasets import config_hash

# keys that do not change what a run computes (so a run may resume under different values)
_NOT_HASHED = ("run_dir", "resume", "logger", "ray", "sweep")


def experiment_hash(cfg: dict[str, Any]) -> str:
    """Hash of everything that determines the results (fl.rounds excluded: resume may extend)."""
    key = {k: v for k, v in cfg.items() if k not in _NOT_HASHED and not k.startswith("_")}
    key["fl"] = {k: v for k, v in cfg["fl"].items() if k != "rounds"}
    return config_hash(key)


def find_resume_dir(cfg: dict[str, Any]) -> Path | None:
    """The run directory to continue: `resume=PATH`, or the latest matching run if `true`."""
    from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint

    resume = cfg.get("resume")
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if cfg.get("stage") not in ("federated", "isolated"):
        raise ConfigError(f"resume: a stage={cfg.get('stage')} run does not resume "
                          "(federated and isolated runs continue from their checkpoint)")
    if resume is True or str(resume).lower() == "true":
        root = Path(cfg["run_dir"]).parent
        want = cfg["_config_hash"]
        found = sorted(
            (
                p.parent
                for p in root.glob(f"*/{CHECKPOINT}")
                if p.parent != Path(cfg["run_dir"])
                and load_checkpoint(p).get("config_hash") == want
            ),
            key=lambda d: (d / CHECKPOINT).stat().st_mtime,
        )
        if not found:
            raise ConfigError(
                f"resume=true: no checkpoint of this experiment's config under {root}"
            )
        return found[-1]
    path = Path(str(resume)).expanduser()
    if not (path / CHECKPOINT).exists():
        raise ConfigError(f"resume={resume!r}: {path / CHECKPOINT} does not exist")
    try:
        written_by = load_checkpoint(path / CHECKPOINT).get("config_hash")
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the user's file
        raise ConfigError(f"resume={resume!r}: {path / CHECKPOINT} is not a readable "
                          f"checkpoint ({type(exc).__name__})") from None
    trial = isinstance(cfg.get("sweep"), dict) and "trial" in cfg["sweep"]
    # a sweep trial continuing from a checkpoint Tune restored (PBT: a better trial's state under
    # perturbed hyperparameters) changes its config on purpose; a user's resume=PATH may not
    if not trial and written_by not in (None, cfg["_config_hash"]):  # before anything is written
        differ = _differing_keys(cfg, path / "config.yaml")
        raise ConfigError(
            f"resume={resume!r}: that run's checkpoint was written under another config"
            + (f" ({', '.join(differ)})" if differ else "")
            + "; resuming continues the same experiment (only fl.rounds may change): drop "
            "the overrides that differ, or start a new run without resume"
        )
    return path


def _differing_keys(cfg: dict[str, Any], saved_yaml: Path, most: int = 3) -> list[str]:
    """Up to `most` 'key: saved -> now' of the keys that enter experiment_hash and differ."""
    import yaml

    from fedray.logging import flatten

    try:
        saved = yaml.safe_load(saved_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    now = {k: v for k, v in cfg.items() if k not in _NOT_HASHED and not k.startswith("_")}
    was = {k: v for k, v in saved.items() if k not in _NOT_HASHED and not k.startswith("_")}
    a, b = flatten(was), flatten(now)
    skip = {"fl.rounds", "model.pretrained"}  # may change; resolved to a cache path when saved
    keys = [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:most]]
