"""How the synthetic build's chunk tasks run: inline (one worker) or as Ray tasks.

Where and on how many workers a chunk runs never changes its bytes (each spec carries its own
seed), so this module is not part of the synthetic cache key (synth.py's `_PIPELINE_SOURCES`):
changing how the build is scheduled does not rebuild anyone's data.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2

from fedray.pill.synth_plan import chunks


def _run_chunks(fn: Callable[..., Any], specs: list[Any], *shared: Any) -> list[tuple[Any, float]]:
    """Run chunks one after another, single-threaded; (result, seconds) per chunk."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one task per core: nested threads would only contend
    try:
        out = []
        for spec in specs:
            t0 = time.perf_counter()
            out.append((fn(spec, *shared), time.perf_counter() - t0))
        return out
    finally:
        cv2.setNumThreads(threads)


class Runner:
    """Runs chunk functions inline (one worker) or as Ray tasks; results come back in order."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers
        self._ray: Any = None
        self._started = False
        self._remote: Any = None

    def __enter__(self) -> Runner:
        if self.workers == 1:
            return self
        import ray

        if self.workers is None:  # all cores: of the running Ray cluster, else of this machine
            self.workers = (int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized()
                            else os.cpu_count() or 1)
        if self.workers > 1:
            if not ray.is_initialized():
                from fedray.fl.pool import init_ray

                # a new local Ray of `workers` CPUs (or the cluster RAY_ADDRESS names), never a
                # stray one that `ray start` left on this machine
                init_ray(None, {"num_cpus": self.workers}, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False)
                self._started = True
            self._ray = ray
            self._remote = ray.remote(num_cpus=1)(_run_chunks)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._ray.shutdown()

    def share(self, value: Any) -> Any:
        """A handle every task can read (a Ray object ref, or the value itself inline)."""
        return self._ray.put(value) if self._ray else value

    def submit(self, fn: Callable[..., Any], specs: Sequence[Any], *shared: Any,
               tasks: int | None = None) -> list[Any]:
        """Start the chunks as `tasks` tasks (default: one per chunk); read them with `results`.

        Fewer, longer tasks keep a heavy import (albumentations pulls in torch) to few workers;
        which task runs a chunk never changes what the chunk computes.
        """
        groups = chunks(specs, max(1, -(-len(specs) // tasks))) if tasks else [[s] for s in specs]
        if self._ray is None:
            return [(fn, g, shared) for g in groups]
        return [self._remote.remote(fn, g, *shared) for g in groups]

    def results(self, handles: list[Any]) -> Iterator[tuple[Any, float]]:
        """(result, task seconds) per chunk, in submission order; frees each handle when read."""
        for i in range(len(handles)):
            h, handles[i] = handles[i], None  # drop the ref so the object store can free it
            if self._ray is None:
                fn, group, shared = h
                yield from _run_chunks(fn, group, *shared)
            else:
                yield from self._ray.get(h)
