"""The pill detector: an ultralytics YOLOv3 trained on synthetic scenes (`stage=detect`)."""

from __future__ import annotations

import os
from pathlib import Path

from fedray.config import ConfigError

DETECT_HINT = "python launch.py +experiment=pill_detect stage=detect"


def latest_detector(cache_dir: str | Path | None = None,
                    instead: str = "pass --detector PATH") -> Path:
    """The newest detector weights that `stage=detect` left in the cache (a ConfigError saying
    how to train one, or what to do `instead`, when there are none)."""
    from fedray.data.datasets import default_cache_dir

    root = Path(cache_dir or os.environ.get("FEDRAY_CACHE") or default_cache_dir()).expanduser()
    found = sorted(root.glob("detector-*/weights.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"no trained pill detector in {root}: train one with `{DETECT_HINT}` "
                          f"(or {instead})")
    return found[-1]
