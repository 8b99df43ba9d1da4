"""Scratch folders for a benchmark's runs and caches: gone when the benchmark exits.

`FEDRAY_BENCH_KEEP=1 python bench/<name>.py ...` keeps them (their paths are printed), to look
at a run's metrics.jsonl or launch.log afterwards.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A new folder under the system's temp dir, removed at exit unless FEDRAY_BENCH_KEEP is set."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("FEDRAY_BENCH_KEEP"):
        print(f"kept: {path}")
    else:
        atexit.register(shutil.rmtree, path, True)
    return path
