"""fedray.malloc: freed buffers stay in the process; a training step does not fault them in again.

Each check runs in a fresh interpreter: malloc's settings belong to the process.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# A step's allocation pattern: buffers of a few sizes up to 24 MiB (under glibc's largest mmap
# threshold), allocated together, each page written, then freed; the minor page faults of each
# repetition after the first two, when every buffer could be reused.
STEPS = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from fedray.malloc import keep_freed_memory
    assert keep_freed_memory()
sizes = [24, 3, 17, 1, 9, 24, 5, 12]
faults = []
for step in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bufs = [np.ones(s << 18, np.float32) for s in (sizes if step % 2 else sizes[::-1])]
    del bufs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(setting: str, env: dict | None = None) -> list[int]:
    out = subprocess.run([sys.executable, "-c", STEPS, setting], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_buffers_are_reused_without_faulting_pages_in_again():
    tuned, default = _faults("tuned"), _faults("default")
    # the first step faults its pages in (fewer faults than 4 KiB pages where the kernel maps
    # transparent huge pages); the later steps reuse them
    assert tuned[0] > 100
    assert max(tuned[2:]) < tuned[0] // 20
    # glibc's own defaults hand the largest buffers back to the kernel each time
    assert sum(default[2:]) > 4 * sum(tuned[2:])


def test_off_by_environment_and_idempotent():
    code = ("import json; from fedray.malloc import keep_freed_memory; "
            "print(json.dumps([keep_freed_memory(), keep_freed_memory()]))")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "FEDRAY_MALLOC": "default"})
    assert json.loads(off.stdout) == [False, False]
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        env={k: v for k, v in os.environ.items() if k != "FEDRAY_MALLOC"})
    expected = platform.libc_ver()[0] == "glibc"
    assert json.loads(on.stdout) == [expected, expected]
