"""Console commands whose reader stops early (`... | head`) end quietly, as Unix tools do."""

from __future__ import annotations

import subprocess
import sys

# Prints far more than a pipe buffer holds, so the writer is still writing when the reader goes.
_FLOOD = ("import sys; from fedray.cli import run\n"
          "def main():\n"
          "    for i in range(200_000):\n"
          "        print('row', i)\n"
          "    return 0\n"
          "sys.exit(run(main))\n")


def test_closed_pipe_ends_quietly_with_sigpipe_status():
    proc = subprocess.Popen([sys.executable, "-c", _FLOOD], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == b"row 0\nrow "
    proc.stdout.close()  # the reader goes away, as `head` does
    _, err = proc.communicate(timeout=60)
    assert err.decode() == ""
    assert proc.returncode == 141


def test_status_passes_through(capsys):
    from fedray.cli import run

    assert run(lambda: 2) == 2
    assert run(lambda: print("table") or 0) == 0
    assert capsys.readouterr().out == "table\n"
