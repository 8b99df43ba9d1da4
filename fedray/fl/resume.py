"""Which run directory `resume=` continues, and the hash that says two configs are one experiment.

`resume=true` picks the latest run under the same output root whose checkpoint was written under
this experiment's hash; `resume=PATH` names it, and is refused (before anything is written there)
when its checkpoint came from another experiment, naming the keys that differ (a sweep trial
that Tune restores, PBT's exploit included, continues under its new hyperparameters).
`resume=true` reads each candidate's `checkpoint.json` side file (the pickle only for an older
checkpoint) and skips, with a warning, one it cannot read. `fl.rounds` may change on resume only
under `client.lr_schedule=constant` (any other schedule anneals over fl.rounds), and a run that
already finished all its rounds is not run again (`finished_summary`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedray.config import ConfigError
from fedray.data.datasets import config_hash

log = logging.getLogger("fedray")

# keys that do not change what a run computes (so a run may resume under different values)
_NOT_HASHED = ("run_dir", "resume", "logger", "ray", "sweep")


def experiment_hash(cfg: dict[str, Any]) -> str:
    """Hash of everything that determines the results (fl.rounds excluded: resume may extend)."""
    key = {k: v for k, v in cfg.items() if k not in _NOT_HASHED and not k.startswith("_")}
    key["fl"] = {k: v for k, v in cfg["fl"].items() if k != "rounds"}
    return config_hash(key)


def find_resume_dir(cfg: dict[str, Any]) -> Path | None:
    """The run directory to continue: `resume=PATH`, or the latest matching run if `true`."""
    from fedray.fl.checkpoint import CHECKPOINT, checkpoint_meta

    resume = cfg.get("resume")
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if cfg.get("stage") not in ("federated", "isolated"):
        raise ConfigError(f"resume: a stage={cfg.get('stage')} run does not resume "
                          "(federated and isolated runs continue from their checkpoint)")
    if resume is True or str(resume).lower() == "true":
        root = Path(cfg["run_dir"]).parent
        found: list[tuple[float, Path, dict[str, Any]]] = []
        for p in root.glob(f"*/{CHECKPOINT}"):
            if p.parent == Path(cfg["run_dir"]):
                continue
            try:  # another run's file: one the user cannot read is skipped, not a traceback
                meta = checkpoint_meta(p)
            except Exception as exc:  # noqa: BLE001 - truncated, garbage, an older format
                log.warning("resume=true: skipping unreadable checkpoint %s (%s)", p,
                            type(exc).__name__)
                continue
            if meta.get("config_hash") == cfg["_config_hash"]:
                found.append((p.stat().st_mtime, p.parent, meta))
        if not found:
            raise ConfigError(
                f"resume=true: no checkpoint of this experiment's config under {root}"
            )
        _, path, meta = max(found, key=lambda f: f[0])
        _check_rounds(cfg, path, meta)
        return path
    path = Path(str(resume)).expanduser()
    if not (path / CHECKPOINT).exists():
        raise ConfigError(f"resume={resume!r}: {path / CHECKPOINT} does not exist")
    try:
        meta = checkpoint_meta(path / CHECKPOINT)
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the user's file
        raise ConfigError(f"resume={resume!r}: {path / CHECKPOINT} is not a readable "
                          f"checkpoint ({type(exc).__name__})") from None
    written_by = meta.get("config_hash")
    trial = isinstance(cfg.get("sweep"), dict) and "trial" in cfg["sweep"]
    # a sweep trial continuing from a checkpoint Tune restored (PBT: a better trial's state under
    # perturbed hyperparameters) changes its config on purpose; a user's resume=PATH may not
    if not trial and written_by not in (None, cfg["_config_hash"]):  # before anything is written
        differ = _differing_keys(cfg, path / "config.yaml")
        raise ConfigError(
            f"resume={resume!r}: that run's checkpoint was written under another config"
            + (f" ({', '.join(differ)})" if differ else "")
            + "; resuming continues the same experiment (only fl.rounds may change, under a "
            "constant client.lr_schedule): drop "
            "the overrides that differ, or start a new run without resume"
        )
    if not trial:
        _check_rounds(cfg, path, meta)
    return path


def _check_rounds(cfg: dict[str, Any], run_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse a changed fl.rounds unless the lr schedule is constant (the others anneal over
    fl.rounds: a 10-round cosine run extended to 20 would jump back up and anneal again)."""
    schedule = str((cfg.get("client") or {}).get("lr_schedule", "constant"))
    was = meta.get("rounds")
    if was is None:  # a checkpoint from before checkpoints kept fl.rounds: the run's config
        was = _saved(run_dir / "config.yaml").get("fl", {}).get("rounds")
    now = int(cfg["fl"]["rounds"])
    if schedule != "constant" and was is not None and int(was) != now:
        raise ConfigError(
            f"fl.rounds={now}: {run_dir} ran with fl.rounds={was} under client.lr_schedule="
            f"{schedule}, which anneals the lr over fl.rounds, so a resumed run cannot change "
            f"it (keep fl.rounds={was}, or start a new run without resume)"
        )


def _saved(saved_yaml: Path) -> dict[str, Any]:
    import yaml

    try:
        saved = yaml.safe_load(saved_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return saved if isinstance(saved, dict) else {}


def finished_summary(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The summary of a resumed run that already ran all of cfg's fl.rounds, else None.

    Nothing runs again: its summary.json is kept when it describes the checkpoint's last round,
    else rebuilt from the last logged row (never a new one without train/loss or privacy/*).
    """
    from fedray.fl.checkpoint import CHECKPOINT, checkpoint_meta, load_checkpoint

    done = int(checkpoint_meta(run_dir / CHECKPOINT).get("round", 0))
    if done < int(cfg["fl"]["rounds"]):
        return None
    log.info("%s already finished (%d rounds): nothing to resume", run_dir, done)
    try:
        kept = json.loads((run_dir / "summary.json").read_text())
        if isinstance(kept, dict) and kept.get("rounds") == done:
            return kept
    except (OSError, ValueError):
        pass
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    last = dict(ckpt["rows"][-1]) if ckpt.get("rows") else {}
    scopes = ("val/", "val_local/", "val_base/", "privacy/", "dp/", "secagg/", "attack/")
    summary = {k: v for k, v in last.items() if k.startswith(scopes)}
    summary.update(ckpt.get("head_init") or {})
    summary.update({
        "rounds": int(last.get("round", done)), "comm/bytes_total": ckpt.get("bytes_total"),
        "train/loss": last.get("train/loss"), "num_clients": int(cfg["fl"]["num_clients"]),
        "stage": cfg["stage"], "summary_from": "the checkpoint's last row",
    })
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _differing_keys(cfg: dict[str, Any], saved_yaml: Path, most: int = 3) -> list[str]:
    """Up to `most` 'key: saved -> now' of the keys that enter experiment_hash and differ."""
    from fedray.logging import flatten

    saved = _saved(saved_yaml)
    if not saved:
        return []
    now = {k: v for k, v in cfg.items() if k not in _NOT_HASHED and not k.startswith("_")}
    was = {k: v for k, v in saved.items() if k not in _NOT_HASHED and not k.startswith("_")}
    a, b = flatten(was), flatten(now)
    skip = {"fl.rounds", "model.pretrained"}  # may change; resolved to a cache path when saved
    keys = [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:most]]
