"""Driver-only run logging: metrics.jsonl, summary.json, config.yaml, plots, and W&B (offline)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedray.config import ConfigError
from fedray.targets import first_line

log = logging.getLogger("fedray")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _json_safe(v: Any) -> Any:
    """A value JSON can hold: numpy/torch scalars as Python numbers, NaN/inf as None (JSON has
    neither; checked after .item(), since np.float32 and tensors are no Python floats)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if type(v) is tuple:
        return tuple(_json_safe(x) for x in v)
    return v


def setup_console_logging() -> None:
    """One concise line per event on stdout (idempotent; a log file is not a console)."""
    if all(isinstance(h, logging.FileHandler) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[fedray %(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


# a log file's line, as Hydra's job log (a run dir's launch.log) writes it
FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextmanager
def log_file(path: str | Path) -> Iterator[None]:
    """fedray's lines also go to `path` (appended) while the block runs: a sweep trial's own
    launch.log, as launch.py's run directory has."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def log_to_files_of(logger: logging.Logger) -> None:
    """Write fedray's lines to `logger`'s log files too. launch.py passes the root logger, whose
    file is Hydra's job log (the run dir's `launch.log`): fedray's logger does not propagate, so
    that file would stay empty."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler not in log.handlers:
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            log.propagate = False


def print_and_log(lines: list[str]) -> None:
    """Print `lines` (a results table) and append them as they are to fedray's log files (the
    run dir's launch.log), so the log holds what the terminal showed at the end."""
    text = "\n".join(lines)
    print(text)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.flush()
                with open(handler.baseFilename, "a", encoding="utf-8") as f:
                    f.write(text + "\n")
            finally:
                handler.release()


def wandb_run_id(run_dir: str | Path) -> str:
    """A W&B run id that is a function of the run directory: a resumed run or a retried trial
    (same directory) logs to the same W&B run instead of opening a second one."""
    import hashlib

    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()
    return f"fedray-{digest[:16]}"


class RunLogger:
    """Writes everything a run records into its run directory; mirrors it to W&B if enabled."""

    def __init__(
        self, run_dir: str | Path, cfg: dict[str, Any], resume_rows: list[dict] | None = None
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        lcfg = cfg.get("logger", {})
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.rows: list[dict[str, Any]] = [_json_safe(r) for r in resume_rows or []]
        self.metrics_path = self.run_dir / "metrics.jsonl"
        # rewrite on resume: rows logged after the checkpoint belong to the killed attempt
        self.metrics_path.write_text(
            "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rows)
        )
        self._fh = open(self.metrics_path, "a") if lcfg.get("jsonl", True) else None
        self.wandb = None
        wcfg = lcfg.get("wandb", {})
        if wcfg.get("enabled") and wcfg.get("mode", "offline") != "disabled":
            self._init_wandb(wcfg)

    def _init_wandb(self, wcfg: dict[str, Any]) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        mode = wcfg.get("mode", "offline")
        run_id = wcfg.get("id") or wandb_run_id(self.run_dir)
        if mode == "offline":
            self._supersede_offline_runs(run_id)
        try:
            self.wandb = self._wandb_init(wandb, wcfg, mode, run_id)
        except wandb.errors.UsageError as exc:  # online without a key, a bad entity, ...
            raise ConfigError(
                f"logger.wandb.mode={mode}: W&B would not start: {first_line(exc)}"
                " (`wandb login` or WANDB_API_KEY for online; logger.wandb.mode=offline keeps "
                "the run on disk)"
            ) from None
        # a resumed run replays the history it restored, so the W&B run is whole (online, only
        # the rounds the server does not have yet)
        first = int(self.wandb.step or 0) if getattr(self.wandb, "resumed", False) else 0
        for row in self.rows:
            if int(row["round"]) >= first:
                self.wandb.log(row, step=int(row["round"]))
        log.info("W&B run %s (%s) in %s", self.wandb.id, mode, self.run_dir / "wandb")

    def _wandb_init(self, wandb: Any, wcfg: dict[str, Any], mode: str, run_id: str) -> Any:
        return wandb.init(
            project=wcfg.get("project", "fedray"),
            entity=wcfg.get("entity"),
            group=wcfg.get("group"),
            name=wcfg.get("name") or self.cfg.get("name"),
            tags=list(wcfg.get("tags") or []),
            config=flatten(self.cfg),
            dir=str(self.run_dir),
            mode=mode,
            id=run_id,
            # online, a resumed run or retried trial continues its W&B run; offline runs cannot
            # resume (W&B ignores it), so the new attempt replays the whole history instead
            **({"resume": "allow"} if mode == "online" else {}),
            reinit="finish_previous",
        )

    def _supersede_offline_runs(self, run_id: str) -> None:
        """Move earlier offline attempts of this run (a killed run, a failed trial) aside.

        They share the run id, and `wandb sync` of two offline runs with one id keeps only one of
        them; the new attempt replays the restored history, so `wandb sync wandb/offline-run-*`
        uploads exactly one complete run. The old attempts stay in `wandb/superseded/`.
        """
        root = self.run_dir / "wandb"
        old = sorted(root.glob(f"offline-run-*-{run_id}")) if root.is_dir() else []
        if not old:
            return
        (root / "superseded").mkdir(exist_ok=True)
        for path in old:
            path.rename(root / "superseded" / path.name)
        log.info(
            "W&B: %d earlier offline attempt(s) of run %s moved to %s",
            len(old),
            run_id,
            root / "superseded",
        )

    def log(self, row: dict[str, Any]) -> None:
        """Append one round's metrics (must contain `round`)."""
        row = {k: _json_safe(v) for k, v in row.items()}
        self.rows.append(row)
        if self._fh is not None:
            self._fh.write(json.dumps(row, allow_nan=False) + "\n")
            self._fh.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=int(row["round"]))

    def log_image(self, key: str, path: str | Path) -> None:
        """Attach a saved plot to the W&B run (the PNG itself stays in the run directory)."""
        if self.wandb is not None:
            import wandb

            self.wandb.log(
                {key: wandb.Image(str(path))}, step=int(self.rows[-1]["round"]) if self.rows else 0
            )

    def summary(self, metrics: dict[str, Any]) -> None:
        """Write summary.json and the W&B summary."""
        metrics = {k: _json_safe(v) for k, v in metrics.items()}
        metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        (self.run_dir / "summary.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in metrics.items() if v is not None})

    def close(self) -> None:
        """Flush and finish."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
