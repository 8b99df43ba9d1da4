"""Progress of long stages: a bar on a terminal, a log line every few seconds anywhere else.

    with Progress(total=len(batches), desc="features", unit="batch") as bar:
        for batch in batches:
            ...
            bar.update(1, loss=0.31)

On a terminal (stderr a TTY, and not CI: `CI=true`) it draws a tqdm bar, and the `fedray`
logger's lines print above the bar instead of through it; the logger's log files (a run's
`launch.log`) still get the periodic line below. Elsewhere (a log file, CI, a Ray
worker, pytest) it logs `desc: n/total (pct) elapsed, eta, postfix` at most every
`FEDRAY_PROGRESS_SECONDS` (10 s by default), so a long stage never goes quiet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("fedray")
T = TypeVar("T")


def interactive() -> bool:
    """True when progress draws a bar: stderr is a terminal and the environment is not CI."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def log_every_s() -> float:
    """Seconds between progress lines when no bar is drawn (FEDRAY_PROGRESS_SECONDS, else 10)."""
    try:
        return max(0.0, float(os.environ.get("FEDRAY_PROGRESS_SECONDS", 10)))
    except ValueError:
        return 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _to_log_files(message: str) -> None:
    """`message` to the fedray logger's log files only (a bar is on the console)."""
    files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    if files:
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None)
        for handler in files:
            handler.handle(record)


class Progress:
    """Counts the steps of one stage; see the module docstring for what it shows where."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "it", every_s: float | None = None
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = log_every_s() if every_s is None else every_s
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.t0 = self._last = time.monotonic()
        self._bar: Any = None
        self._redirect: contextlib.AbstractContextManager | None = None
        if interactive():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm(loggers=[log])
            self._redirect.__enter__()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count `n` more steps; `postfix` values (loss, lr, ...) are shown with the count."""
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _value(v) for k, v in self.postfix.items()},
                                      refresh=False)
            self._bar.update(n)
            if time.monotonic() - self._last >= self.every_s:  # log files get the lines anyway
                self._last = time.monotonic()
                _to_log_files(self.line())
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        """`desc: n/total unit (pct), elapsed, eta, postfix` as one log line."""
        elapsed = time.monotonic() - self.t0
        if self.total:
            done = f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            done = f"{self.n} {self.unit}"
        parts = [f"{self.desc}: {done}", f"{_duration(elapsed)} elapsed"]
        if self.total and 0 < self.n < self.total:
            parts.append(f"eta {_duration(elapsed * (self.total - self.n) / self.n)}")
        parts += [f"{k} {_value(v)}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def close(self) -> None:
        """Remove the bar (a terminal) and restore the logger's own handlers."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Yield `items`, counting each one with a `Progress` (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
