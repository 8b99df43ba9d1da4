"""The public pretraining's record: per-epoch rows (metrics.jsonl in the cache entry, W&B when
the run logs there) and the resumable training state in the `.partial` directory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("fedray")
METRICS = "metrics.jsonl"  # one row per epoch
STATE = "state.pt"  # the resumable training state in the .partial directory


class EpochLog:
    """Per-epoch rows: metrics.jsonl in the cache entry, and W&B when the run logs there."""

    def __init__(self, cfg: dict[str, Any], root: Path, key_hash: str, rows: list[dict]) -> None:
        self.rows = list(rows)
        self.path = root / METRICS
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.wandb = None
        wcfg = (cfg.get("logger") or {}).get("wandb") or {}
        if wcfg.get("enabled") and wcfg.get("mode", "offline") != "disabled" and cfg.get("run_dir"):
            self._init_wandb(cfg, wcfg, key_hash)

    def _init_wandb(self, cfg: dict[str, Any], wcfg: dict[str, Any], key_hash: str) -> None:
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            run_dir = Path(cfg["run_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            self.wandb = wandb.init(
                project=wcfg.get("project", "fedray"),
                entity=wcfg.get("entity"),
                group=wcfg.get("group"),
                name=f"{cfg.get('name', 'run')}-pretrain",
                job_type="pretrain",
                config={"pretrain_key": key_hash},
                dir=str(run_dir),
                mode=wcfg.get("mode", "offline"),
                reinit="finish_previous",
            )
            for row in self.rows:
                self.wandb.log(row, step=int(row["epoch"]))
        except Exception as exc:  # noqa: BLE001 - W&B is a mirror: the pretraining goes on
            log.warning("pretraining: W&B not logged (%s)", exc)
            self.wandb = None

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=int(row["epoch"]))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def save_state(partial: Path, state: dict[str, Any]) -> None:
    """Write the training state atomically: a kill mid-write leaves the previous one."""
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / f"{STATE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, partial / STATE)


def load_state(partial: Path, key_hash: str) -> dict[str, Any] | None:
    path = partial / STATE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: start over
        log.warning("pretraining: %s unreadable (%s); starting from epoch 0", path, exc)
        return None
    return state if state.get("key") == key_hash else None
