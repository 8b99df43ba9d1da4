"""Atomic round checkpoints: params, strategy state, round number, logged rows."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint.pkl"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` so that a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint."""
    with open(path, "rb") as fh:
        return pickle.load(fh)
