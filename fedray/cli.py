"""What every fedray console command shares: a reader that stops early ends it quietly.

`python -m fedray.pill.retrieval.report RUN | head` closes the pipe after a few lines; the next
print then raises BrokenPipeError, and Python would show a traceback for it (and again while
flushing stdout at exit). `run` ends the command as the shell's own tools end on SIGPIPE: no
output on stderr, exit status 141 (128 + SIGPIPE), stdout pointed at /dev/null so that the
interpreter's last flush has nowhere to fail.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

SIGPIPE_STATUS = 128 + signal.SIGPIPE


def run(main: Callable[[], int]) -> int:
    """Call `main()` and return its exit status, or 141 when stdout's reader went away."""
    try:
        status = main()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_STATUS
