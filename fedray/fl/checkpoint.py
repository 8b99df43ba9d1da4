"""Atomic round checkpoints: params, strategy state, round number, logged rows.

Next to `checkpoint.pkl`, `checkpoint.json` holds its config hash, round and rounds, with the
pickle's size and a hash of its last bytes (a pickle copied over it, as a sweep trial's restore
does, is not described by it), so `resume=true` picks a run without unpickling every checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint.pkl"
_META_KEYS = ("config_hash", "round", "rounds", "stage")


def _atomic_write(path: Path, write: Any) -> None:
    """`write(fh)` to a unique temp file in path's directory, fsync, rename over `path`.

    The temp file is removed if writing fails; the directory is fsynced after the rename (where
    the OS allows) so the new name survives a power loss."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # no O_DIRECTORY / dir fsync: Windows
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def meta_path(path: str | Path) -> Path:
    """The small side file of a checkpoint (`checkpoint.json` next to `checkpoint.pkl`)."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` so that a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    _atomic_write(path, lambda fh: pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL))
    meta = {k: state[k] for k in _META_KEYS if k in state}
    meta["tail"] = _tail(path)  # a pickle of another size or ending is not the one described
    _atomic_write(meta_path(path), lambda fh: fh.write(json.dumps(meta).encode()))


def _tail(path: Path, n: int = 4096) -> str:
    """The file's size and a hash of its last `n` bytes (where the rows and config hash lie)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - n))
        return f"{size}:{hashlib.sha256(fh.read()).hexdigest()[:16]}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """config_hash, round (and rounds) of a checkpoint: from its side file when that describes
    this very pickle, else (an older fedray, a crash between the two writes) from the pickle.
    Raises whatever reading an unreadable pickle raises."""
    path = Path(path)
    try:
        meta = json.loads(meta_path(path).read_text())
        if isinstance(meta, dict) and meta.get("tail") == _tail(path):
            return meta
    except (OSError, ValueError):
        pass
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise TypeError(f"a {type(ckpt).__name__}, not a checkpoint's dict")
    return {k: ckpt[k] for k in _META_KEYS if k in ckpt}
