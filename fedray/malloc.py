"""Keep freed memory in the process: glibc malloc settings for CPU training loops.

A training step on the CPU allocates and frees the same large activation and gradient buffers
every step. By default glibc's malloc serves a buffer over its (adaptive) mmap threshold with a
fresh mmap and unmaps it when freed, and gives the free top of its heap back to the kernel, so the
next step faults every page in again and the kernel zeroes each one: tens of thousands of minor
page faults a second, a large share of the CPU spent in the kernel (`bench/malloc.py` measures
it). `keep_freed_memory` raises the mmap threshold to glibc's largest and turns trimming off
(`mallopt`), so a freed buffer is reused by the next step. The process keeps its peak heap
instead of returning it between steps. Other C libraries (musl, macOS) are left as they are.
`FEDRAY_MALLOC=default` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB * sizeof(long));
# buffers above it are still mapped and unmapped each time
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
ENV = "FEDRAY_MALLOC"

_applied = False


def keep_freed_memory() -> bool:
    """Set the process's malloc to keep freed memory (once); True when it is set (glibc)."""
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "").strip().lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    # the trim threshold is a size_t inside glibc; the int argument's largest value is enough
    ok = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    _applied = ok
    return ok
