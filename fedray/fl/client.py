"""ClientActor: one Ray actor serves one or many virtual clients (simulated phones).

The server hands an actor a client id and that client's shard *description* (dataset root +
indices); the actor loads those images itself, trains, and returns only parameters and counts.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from fedray.data.datasets import load_images
from fedray.fl.head_init import feature_stats
from fedray.fl.train import (
    augment_turns_flips,
    extract_features,
    get_params,
    set_params,
    train_local,
)
from fedray.fl.types import ClientResult, Dropped, Params
from fedray.malloc import keep_freed_memory
from fedray.models import quiet_left_out
from fedray.privacy.pipeline import poison_shard, protect_update

log = logging.getLogger("fedray")


def in_actor() -> bool:
    """Whether this code runs in a Ray actor's process (not the driver, nor the in-process
    backend's clients, which live in the driver)."""
    import sys

    ray = sys.modules.get("ray")  # a process that never imported Ray is no actor
    return bool(ray and ray.is_initialized() and ray.get_runtime_context().get_actor_id())


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """Each client's RNG derives from (seed, round, client_id) and nothing else."""
    return int(np.random.SeedSequence([seed, round_idx, client_id]).generate_state(1)[0])


class ClientActor:
    """Local training for virtual clients; `make_client_actor` turns it into a Ray actor class."""

    def __init__(
        self, spec: dict[str, Any] | None = None, boot: dict[str, Any] | None = None
    ) -> None:
        keep_freed_memory()  # local steps reuse their freed buffers (fedray/malloc.py)
        if in_actor():  # a Ray actor's own process: the driver has warned of left-out keys
            quiet_left_out()
        if boot is not None:
            self._boot(boot)
        if spec is not None:
            self.configure(spec)

    def _boot(self, boot: dict[str, Any]) -> None:
        """A process started before its run's spec exists (`ClientPool.prestart`, while the driver
        prepares): set the thread count and pay the first optimizer's one-off costs now (its
        first step imports `torch._dynamo`, 2.5 s on a 2-core machine)."""
        from hydra.utils import instantiate

        torch.set_num_threads(max(1, int(boot.get("num_threads", 1))))
        try:
            param = torch.nn.Parameter(torch.zeros(2))
            optimizer = instantiate(boot["optimizer"])([param])
            param.grad = torch.ones_like(param)
            optimizer.step()
        except Exception as exc:  # noqa: BLE001 - an optimisation only; configure() reports errors
            log.debug("client actor boot warm-up skipped: %s", exc)

    def configure(self, spec: dict[str, Any]) -> int:
        """Build the model, task and optimizer of `spec` and warm them up; returns the pid."""
        from hydra.utils import instantiate

        from fedray.models import build_model
        from fedray.tasks import build_task

        self.threads = max(1, int(spec.get("num_threads", 1)))
        torch.set_num_threads(self.threads)
        self.spec = spec
        self.task = build_task(spec.get("task"))  # the loss, and what a shard's targets are
        torch.manual_seed(spec["seed"])
        # a GPU only when the actor was given one (ray.client_gpus > 0) and CUDA is there
        self.device = "cuda" if spec.get("num_gpus", 0) > 0 and torch.cuda.is_available() else "cpu"
        self.model = build_model(spec["model"], spec["num_classes"])
        set_params(self.model, spec["init_state"])  # frozen layers identical to the server's
        self.model.to(self.device)
        self.state = self.model.state_dict()  # aliases the model's tensors; saves a walk per fit
        self.trainable: list[str] = spec["trainable"]
        self.travel: list[str] = spec["travel"]
        self.cached = int(spec["cached"])  # output of features[:cached] is cached per shard
        self.precision = str(spec.get("cache_precision", "fp32"))
        client = spec["client"]
        self.optimizer_factory = instantiate(client["optimizer"])
        self.shards: OrderedDict[int, tuple[Any, np.ndarray]] = OrderedDict()
        self.max_shards = int(spec.get("shard_cache", 8))
        self.images = None
        self._warm_up()
        return os.getpid()

    def _load_dataset(self) -> None:
        if self.images is None:
            root = self.spec["dataset_root"]
            self.images = load_images(root, "train")
            self.labels = self.task.load_targets(root, "train")

    def _warm_up(self) -> None:
        """One training step on a blank batch of the real shape, the model's state restored after.

        A fresh process pays once for lazy set-up: the dataset's memory map, oneDNN kernels for
        every conv shape, the optimizer's first step. Paying it while the pool starts lets round 1
        cost what every later round costs. An error here is left for the real fit to report.
        """
        try:
            self._load_dataset()
            client = self.spec["client"]
            bs = min(int(client["batch_size"]), len(self.labels))
            if bs == 0:
                return
            state = {k: v.clone() for k, v in self.model.state_dict().items()}
            x: Any = np.zeros((bs, *self.images.shape[1:]), dtype=self.images.dtype)
            if self.cached:
                x = extract_features(
                    self.model, x, upto=self.cached, device=self.device, precision=self.precision
                )
            train_local(
                self.model,
                x,
                np.zeros((bs, *self.labels.shape[1:]), dtype=np.int64),
                self.trainable,
                epochs=1,
                batch_size=bs,
                optimizer_factory=self.optimizer_factory,
                seed=0,
                cached=self.cached,
                device=self.device,
                task=self.task,
            )
            self.model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - an optimisation only; fit() reports real errors
            log.debug("client actor warm-up skipped: %s", exc)

    def _shard(self, client_id: int, indices: np.ndarray) -> tuple[Any, np.ndarray]:
        if client_id in self.shards:
            self.shards.move_to_end(client_id)
            return self.shards[client_id]
        self._load_dataset()
        idx = np.sort(np.asarray(indices))
        x = np.asarray(self.images[idx])
        y = self.labels[idx]
        if self.cached:
            x = extract_features(
                self.model, x, upto=self.cached, device=self.device, precision=self.precision
            )
        self.shards[client_id] = (x, y)
        if len(self.shards) > self.max_shards:
            self.shards.popitem(last=False)
        return x, y

    def _inject_fault(self, client_id: int, round_idx: int) -> str | None:
        for f in self.spec.get("faults") or []:
            # rounds are 1-based here, as they are logged
            if int(f.get("client", -1)) == client_id and int(f.get("round", -1)) == round_idx + 1:
                kind = f.get("kind", "raise")
                if kind == "raise":
                    raise RuntimeError(
                        f"injected fault: client {client_id} raised in round {round_idx}"
                    )
                if kind == "crash":
                    os._exit(1)
                if kind == "hang":
                    time.sleep(float(f.get("seconds", 3600)))
                return kind
        return None

    def fit(
        self,
        client_id: int,
        indices: np.ndarray,
        global_params: Params,
        round_idx: int,
        extra: dict[str, Any],
    ) -> ClientResult:
        """Train on this client's shard starting from `global_params`; return the new params."""
        t0 = time.perf_counter()
        if self.device == "cpu":  # the pool gives a round's last, partial wave more threads
            # (the idle actors' CPUs, which may sit on other nodes: never more than this one's)
            wanted = int(extra.get("num_threads", self.threads))
            torch.set_num_threads(max(1, min(wanted, os.cpu_count() or 1)))
        fault = self._inject_fault(client_id, round_idx)
        x, y = self._shard(client_id, indices)
        set_params(self.model, global_params, self.state)
        if extra.get("task") == "head_stats":  # fl.head_init=ridge: this client's feature sums
            stats = feature_stats(x, y, int(self.spec["num_classes"]))
            metrics = {"train/loss": float("nan"), "time/fit_s": time.perf_counter() - t0}
            return ClientResult(client_id, stats, len(y), metrics)
        privacy = extra.get("privacy")  # fedray/privacy: attacks, DP, secure-aggregation masking
        if privacy:
            x, y = poison_shard(x, y, client_id, round_idx, privacy)
        client = self.spec["client"]
        stats = train_local(
            self.model,
            x,
            y,
            self.trainable,
            epochs=int(client["epochs"]),
            batch_size=int(client["batch_size"]),
            optimizer_factory=self.optimizer_factory,
            seed=client_seed(self.spec["seed"], round_idx, client_id),
            cached=self.cached,
            proximal_mu=float(extra.get("proximal_mu", 0.0)),
            augment=augment_turns_flips if client.get("augment") and not self.cached else None,
            device=self.device,
            lr_scale=float(extra.get("lr_scale", 1.0)),
            task=self.task,
        )
        params = get_params(self.model, self.travel, self.state)
        if fault == "nan":
            first = next(iter(params))
            params[first][...] = np.nan
        metrics = {"train/loss": stats["loss"], "time/fit_s": time.perf_counter() - t0}
        if privacy:  # the update leaves the client attacked / clipped / noised / masked
            kept = {k: params.pop(k) for k in self.spec.get("local") or ()}  # fl.local: not sent
            start = {k: v for k, v in global_params.items() if k not in kept}
            params, extra_metrics = protect_update(
                client_id, round_idx, start, params, int(stats["num_samples"]), privacy,
                loss=metrics["train/loss"]
            )
            if privacy.get("secagg"):  # the loss travels inside the masked sum only
                del metrics["train/loss"]
            params.update(kept)
            metrics.update(extra_metrics)
        return ClientResult(client_id, params, int(stats["num_samples"]), metrics)

    def fit_many(
        self, calls: list[tuple[int, np.ndarray, int, dict[str, Any]]], global_params: Params
    ) -> list[ClientResult | Dropped]:
        """Several clients' `fit`s from the same broadcast model in one actor call
        (`ray.batch_clients`): one dispatch and one reply per actor and round instead of one per
        client. A client that raises comes back as a `Dropped` and the others' results stand."""
        out: list[ClientResult | Dropped] = []
        for client_id, indices, round_idx, extra in calls:
            try:
                out.append(self.fit(client_id, indices, global_params, round_idx, extra))
            except Exception as exc:  # noqa: BLE001 - reported per client, as the pool does
                out.append(Dropped(client_id, f"raised {type(exc).__name__}: {exc}"))
        return out

    def stale(self) -> str | None:
        """A loaded module's file that changed on disk since this process started (its code in
        memory is older), or None: a kept actor (`fedray/fl/kept.py`) is then replaced."""
        from fedray.fl.kept import changed_module, process_start_time

        path = changed_module(process_start_time())
        return f"{path} changed since it started" if path else None

    def ping(self) -> int:
        """Liveness check; returns the process id."""
        return os.getpid()

    def release(self) -> None:
        """Drop what the finished run left in memory (its clients' shards and cached features,
        the dataset's memory map) while the actor waits for another run: a kept actor
        (`ray.keep_actors`) or a sweep trial's parked one. `configure` builds the rest anew."""
        import gc

        self.shards = OrderedDict()
        self.images = None
        gc.collect()


def make_client_actor(num_cpus: float, num_gpus: float):
    """The Ray actor class with this experiment's per-client resources."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(ClientActor)
