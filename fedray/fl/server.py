"""The server round loop: sample -> broadcast -> ClientActor.fit -> aggregate -> evaluate -> log
-> checkpoint.

Size: one concept, the round loop; sampling, dropping, aggregation, evaluation and
checkpointing are steps of the same loop and share its state.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray.config import ConfigError
from fedray.data.datasets import DatasetInfo, load_groups, load_images
from fedray.fl.checkpoint import save_checkpoint
from fedray.fl.client import make_client_actor
from fedray.fl.head_init import check_head_init, solve_head
from fedray.fl.local import LocalLayers, local_names
from fedray.fl.scores import own_mean
from fedray.fl.train import (
    extract_features,
    get_params,
    resolve_precision,
    round_lr_scale,
    set_params,
    travel_names,
)
from fedray.fl.types import (
    ClientResult,
    Dropped,
    Params,
    PerClient,
    human_bytes,
    params_nbytes,
)
from fedray.logging import RunLogger
from fedray.models import build_model, frozen_prefix, trainable_names
from fedray.privacy.pipeline import build_privacy
from fedray.tasks import build_task

log = logging.getLogger("fedray")


class QuorumError(RuntimeError):
    """Too few clients reported in a round for its aggregate to be trusted."""


def clients_per_round(fl: dict[str, Any]) -> int:
    """How many clients a round samples: fl.clients_per_round, else fraction x num_clients."""
    n = int(fl["num_clients"])
    k = fl.get("clients_per_round")
    k = int(k) if k is not None else max(1, round(float(fl["fraction"]) * n))
    if not 1 <= k <= n:
        raise ConfigError(f"fl.clients_per_round/fl.fraction give {k} clients, need 1..{n}")
    return k


def sample_clients(num_clients: int, k: int, seed: int, round_idx: int) -> list[int]:
    """Clients for this round, from an RNG seeded by (seed, round) only; sorted by id."""
    if k >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, round_idx, 0x5A])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def check_augment(cfg: dict[str, Any], cached: int) -> None:
    """client.augment turns and flips images; cached backbone features cannot be augmented."""
    if cfg["client"].get("augment") and cached:
        raise ConfigError(
            "client.augment=true augments images, but fl.cache_features=true trains on the frozen "
            "backbone's cached features: set client.augment=false or fl.cache_features=false"
        )


def is_finite(params: Params) -> bool:
    """True when every travelled value is finite."""
    return all(np.isfinite(v).all() for v in params.values())


class FederatedServer:
    """Holds the global model and runs rounds; the one loop every federated experiment uses."""

    def __init__(
        self,
        cfg: dict[str, Any],
        info: DatasetInfo,
        parts: list[np.ndarray],
        run_logger: RunLogger,
        before_bind: Callable[[], None] | None = None,
    ) -> None:
        from fedray.fl.strategies import build_strategy

        self.cfg, self.info, self.parts, self.logger = cfg, info, parts, run_logger
        self.fl = cfg["fl"]
        self.seed = int(cfg["seed"])
        torch.manual_seed(self.seed)
        self.model = build_model(cfg["model"], info.num_classes)
        self.trainable = trainable_names(self.model, self.fl["trainable"])
        self.travel = travel_names(self.model, self.trainable)
        # frozen leading blocks run once: clients and server cache their output
        self.cached = frozen_prefix(self.model, self.trainable) if self.fl["cache_features"] else 0
        check_augment(cfg, self.cached)
        resolve_precision(self.fl.get("cache_precision", "fp32"), "fl.cache_precision")
        self.head_init = check_head_init(self.fl, self.model, self.trainable, self.cached)
        self.head_init_metrics: dict[str, Any] = {}
        self.strategy = build_strategy(cfg["strategy"])
        if hasattr(self.strategy, "bind"):  # rules with the model and server data (FedDF, FLTrust)
            if before_bind is not None:  # their data may be built with Ray tasks: Ray must be up
                before_bind()
            self.strategy.bind(functools.partial(copy.deepcopy, self.model), cfg)
        self.params: Params = get_params(self.model, self.travel)
        self.k = clients_per_round(self.fl)
        # fedray/privacy: secure aggregation, DP, attacks (None when all are off)
        self.privacy = build_privacy(cfg, self.strategy, self.k, info.num_classes, self.cached)
        self.val_x: Any = load_images(info.root, "val")
        self.task = build_task(cfg.get("task"))  # loss, targets and metrics (fedray.tasks)
        self.val_y = np.array(self.task.load_targets(info.root, "val"))
        self.val_groups = load_groups(info.root, "val")  # sites/devices, if the data has them
        if self.cached:
            self.val_x = extract_features(
                self.model,
                np.asarray(self.val_x),
                upto=self.cached,
                precision=self.fl.get("cache_precision", "fp32"),
            )
        # full val passes of the current params (and, isolated, the clients' models) by object:
        # the final evaluation reuses the last round's; emptied whenever the params change
        self._evals: dict[int, tuple[Params, dict[str, Any], np.ndarray | None]] = {}
        self.start_round = 0
        self.round = 0
        self.bytes_total = 0
        # isolated baseline: each client trains alone, never averaged (the per-client lower bound)
        self.isolated = cfg.get("stage") == "isolated"
        # only the isolated baseline keeps a model per client; federated runs keep nothing per
        # client in the driver beyond the index arrays in `parts` (and, fl.local, each client's
        # local entries, what its phone would keep: fedray/fl/local.py)
        self.client_params: dict[int, Params] = (
            dict.fromkeys(range(len(parts)), self.params) if self.isolated else {}
        )
        local = [] if self.isolated else local_names(self.model, self.travel, self.fl.get("local"))
        self.local = LocalLayers(local, get_params(self.model, local)) if local else None

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written after some round (as `load_checkpoint` reads it)."""
        self.params = ckpt["params"]
        if ckpt.get("client_params") is not None:
            self.client_params = ckpt["client_params"]
        if self.local is not None and ckpt.get("local") is not None:
            self.local.load_state_dict(ckpt["local"])
        self.strategy.load_state_dict(ckpt["strategy"])
        if self.privacy is not None and ckpt.get("privacy") is not None:
            self.privacy.load_state_dict(ckpt["privacy"])
        self.start_round, self.bytes_total = int(ckpt["round"]), int(ckpt["bytes_total"])
        self.head_init_metrics = dict(ckpt.get("head_init") or {})  # older checkpoints: none
        set_params(self.model, self.params)

    def _start_pool(self, ray_cfg: dict[str, Any], actors: list[Any] | None = None) -> Any:
        # the full float state once, so frozen layers on every client equal the server's
        full_state = get_params(
            self.model, [k for k, v in self.model.state_dict().items() if v.is_floating_point()]
        )
        spec = {
            "model": self.cfg["model"],
            "num_classes": self.info.num_classes,
            "seed": self.seed,
            "init_state": full_state,
            "trainable": self.trainable,
            "travel": self.travel,
            "local": self.local.names if self.local is not None else [],  # fl.local: kept
            "cached": self.cached,
            "cache_precision": self.fl.get("cache_precision", "fp32"),
            "client": self.cfg["client"],
            "dataset_root": self.info.root,
            "task": self.cfg.get("task"),
            "num_threads": max(1, round(float(ray_cfg["client_cpus"]))),
            "num_gpus": float(ray_cfg["client_gpus"]),
            "shard_cache": int(ray_cfg.get("shard_cache", 8)),
            "faults": self.fl.get("faults") or [],
        }
        from fedray.fl.inprocess import InProcessPool, backend

        if backend({"ray": ray_cfg}) == "inprocess":
            log.info("clients fit one after another in this process (ray.backend=inprocess)")
            return InProcessPool(spec, float(ray_cfg["client_cpus"]))
        import ray

        from fedray.fl.kept import park_key, parking_on
        from fedray.fl.pool import ClientPool, pool_size

        actor_cls = make_client_actor(float(ray_cfg["client_cpus"]), float(ray_cfg["client_gpus"]))
        size = pool_size(ray_cfg, self.k)
        gpus = float(ray_cfg["client_gpus"])
        # kept (on the cluster) or parked (in a sweep trial's process): fedray/fl/kept.py
        verb = "using" if ray_cfg.get("keep_actors") or parking_on() else "starting"
        log.info("%s %d client actors (%.2g CPU%s each) for %d clients, %d per round", verb,
                 size, float(ray_cfg["client_cpus"]), f" + {gpus:.2g} GPU" if gpus else "",
                 self.fl["num_clients"], self.k)
        # cached features: each client sticks to actor `client_id % size`, which so serves up to
        # `per_actor` clients; a smaller LRU evicts a client's features before its next turn
        per_actor = -(-int(self.fl["num_clients"]) // size)
        if self.cached and per_actor > spec["shard_cache"]:
            log.warning(
                "each client actor serves up to %d clients but keeps ray.shard_cache=%d "
                "shards: their cached features would be recomputed when they come back; set "
                "ray.shard_cache=%d (memory: one client's cached features each)",
                per_actor, spec["shard_cache"], per_actor,
            )  # fmt: skip
        return ClientPool(
            actor_cls,
            ray.put(spec),
            size,
            float(ray_cfg["client_cpus"]),
            wait=False,
            actors=actors,
            sticky=bool(self.cached),
            batch=bool(ray_cfg.get("batch_clients", False)),
            keep=bool(ray_cfg.get("keep_actors", False)),
            park_key=park_key(ray_cfg, size) if parking_on() else None,
        )

    def _warm_up(self) -> None:
        """One evaluation batch through the server's model while the actors start: a fresh
        process's first evaluation (importing torchmetrics, oneDNN kernels for every conv shape)
        costs seconds that round 1 would otherwise pay."""
        n = min(len(self.val_y), 256)  # evaluate()'s batch
        if n:
            from fedray.fl.train import evaluate

            evaluate(
                self.model,
                self.val_x[:n],
                self.val_y[:n],
                self.info.num_classes,
                cached=self.cached,
                task=self.task,
            )

    def evaluate(
        self, params: Params | None = None, subset: np.ndarray | None = None
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The global model (or `params`) on the held-out split (or the val indices `subset`):
        the task's metrics and its confusion matrix."""
        from fedray.fl.train import evaluate

        params = self.params if params is None else params
        # the entry holds `params` itself, so no other live object can share its id
        hit = self._evals.get(id(params)) if subset is None else None
        if hit is not None:  # already scored since the last aggregation
            return dict(hit[1]), hit[2]
        set_params(self.model, params)
        x, y = self.val_x, self.val_y
        if subset is not None:
            x, y = x[subset], y[subset]
        metrics, cm = evaluate(
            self.model, x, y, self.info.num_classes, cached=self.cached, task=self.task
        )
        if subset is None:
            if cm is not None:
                cm.flags.writeable = False  # shared by the callers of the cached pass
            self._evals[id(params)] = (params, metrics, cm)
        return dict(metrics), cm

    def _shared(self) -> Params:
        """The global entries that are federated (all of them unless fl.local keeps some)."""
        return self.params if self.local is None else self.local.shared(self.params)

    def _check_quorum(self, good: list[ClientResult], dropped: list[Dropped], sampled: list[int]):
        needed = max(1, math.ceil(float(self.fl["quorum"]) * len(sampled)))
        if len(good) < needed:
            raise QuorumError(
                f"round {self.round + 1}: only {len(good)} of {len(sampled)} sampled clients "
                f"returned a usable update ({len(dropped)} dropped"
                + (f"; client {dropped[0].client_id}: {dropped[0].reason}" if dropped else "")
                + f"); fl.quorum={self.fl['quorum']} needs {needed}"
            )

    def _fit_round(
        self,
        pool: Any,
        shard_refs: dict[int, Any],
        sampled: list[int],
        extra: dict[str, Any],
    ) -> tuple[list[ClientResult], list[Dropped], int]:
        """One round of local training; returns usable results, dropped clients, bytes up."""
        if self.isolated:  # every client continues from its own model; nothing is shared
            start: Any = PerClient({cid: pool.put(self.client_params[cid]) for cid in sampled})
        elif self.local is not None:  # the shared entries and each client's own local ones
            own = self.local.start
            start = PerClient({cid: pool.put(own(self.params, cid)) for cid in sampled})
        else:
            start = pool.put(self.params)  # broadcast once; actors read the same object
        results, dropped = pool.run_round(
            sampled, shard_refs, start, self.round, extra, self.fl.get("round_timeout_s")
        )
        up = self.local.shared if self.local is not None else dict  # local: never uploaded
        bytes_up = sum(params_nbytes(up(res.params)) for res in results)
        good, idle = [], set()
        for res in results:
            if res.num_samples == 0:  # dealt no sample (partition.min_size=0): trained nothing
                idle.add(res.client_id)
            elif is_finite(res.params):
                good.append(res)
            else:
                dropped.append(Dropped(res.client_id, "non-finite (NaN/Inf) update: lr too high?"))
        if self.local is not None and extra.get("task") != "head_stats":
            good = self.local.keep(good)  # stored for their clients; the rest sees the shared
        for d in dropped:
            log.warning("round %d: dropped client %d: %s", self.round + 1, d.client_id, d.reason)
        if len(idle) < len(sampled):  # none usable, all idle: the caller skips the round
            self._check_quorum(good, dropped, [c for c in sampled if c not in idle])
        return good, dropped, bytes_up

    def run(
        self,
        ray_cfg: dict[str, Any],
        ckpt_path: Path | None,
        on_round: Callable[[dict[str, Any], Path | None], None] | None = None,
        actors: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Run rounds start_round..rounds-1; returns the last round's metrics row.

        `on_round(row, checkpoint_path)` is called after each round is logged and checkpointed
        (Tune trials report through it, so schedulers can stop a trial at round granularity).
        `actors`: client actors already started (`PoolBoot`) for the pool to configure.
        """
        rounds = int(self.fl["rounds"])
        if rounds < 1:
            raise ConfigError(f"fl.rounds must be >= 1, got {rounds}")
        row: dict[str, Any] = dict(self.logger.rows[-1]) if self.logger.rows else {}
        if self.start_round >= rounds:  # resumed after its last round: no pool, nothing to run
            log.info("already finished: %d of %d rounds ran", self.start_round, rounds)
            return row
        pool = self._start_pool(ray_cfg, actors)
        # a client's index array travels with its fit call (Ray inlines small arguments); one
        # object-store entry per client would grow the driver with num_clients (10,000 and more)
        shard_refs: Any = self.parts
        extra = self.strategy.client_config()
        try:
            self._warm_up()  # while the actors start
            pool.wait_ready()
            if self.cached:  # the first call on each client is longer than the rest: say why
                log.info("clients compute their frozen backbone's features once (%d blocks, %d "
                         "train images), then train on the cached features", self.cached,
                         sum(len(p) for p in self.parts))
            if self.head_init == "ridge" and self.start_round == 0:
                self._init_head(pool, shard_refs)
            for r in range(self.start_round, rounds):
                self.round = r
                t0 = time.perf_counter()
                sampled = sample_clients(int(self.fl["num_clients"]), self.k, self.seed, r)
                schedule = str(self.cfg["client"].get("lr_schedule", "constant"))
                self.strategy.round_idx = r  # e.g. FLTrust's server step follows the lr schedule
                job = {**extra, "lr_scale": round_lr_scale(schedule, r, rounds)}
                if self.privacy is not None:  # Poisson sampling, epsilon budget, client secrets
                    sampled = self.privacy.sample(sampled, r)
                    if self.privacy.budget_exhausted(r, sampled):
                        break
                    skip = self.privacy.skip_reason(sampled)
                    if skip:
                        row = self._skip_round(r, rounds, len(pool), skip, ckpt_path, on_round)
                        continue
                    job.update(self.privacy.client_extra(sampled, r, self._shared()))
                good, dropped, bytes_up = self._fit_round(pool, shard_refs, sampled, job)
                if not good:  # every client drawn was dealt no sample
                    why = "its clients hold no sample"
                    row = self._skip_round(r, rounds, len(pool), why, ckpt_path, on_round)
                    continue
                self._evals.clear()  # a strategy may update the params in place
                to_aggregate = good  # masked / DP updates: the privacy seam sums them first
                if self.isolated:
                    self.client_params.update({res.client_id: res.params for res in good})
                    bytes_up = bytes_down = 0
                else:
                    if self.privacy is not None:
                        to_aggregate = self.privacy.server_input(self._shared(), good, r)
                    self.params = self.strategy.aggregate(self._shared(), to_aggregate)
                    bytes_down = params_nbytes(self.params) * len(sampled)
                    if self.local is not None:  # the server's copy: the clients' mean
                        merged = {**self.params, **self.local.mean()}
                        self.params = {k: merged[k] for k in self.travel}
                self.bytes_total += bytes_up + bytes_down
                n = sum(res.num_samples for res in to_aggregate)  # masked: the loss in the sum
                loss = sum(res.metrics["train/loss"] * res.num_samples for res in to_aggregate)
                row = {"round": r + 1, "clients": len(sampled), "clients/dropped": len(dropped),
                       "actors": len(pool), "train/loss": loss / n}
                if not self.isolated:
                    row.update(self.strategy.round_metrics())
                if (r + 1) % int(self.fl["eval_every"]) == 0 or r + 1 == rounds:
                    reference = None if self.isolated else self.strategy.reference()
                    if reference is not None:  # e.g. FedDF's plain average before distillation
                        base = self.evaluate(reference)[0]
                        row.update({f"val_base/{k}": v for k, v in base.items()})
                    row.update({f"val/{k}": v for k, v in self.round_metrics().items()})
                    if self.local is not None and good:  # each client's own model, own data
                        own = own_mean(self, sorted(res.client_id for res in good))
                        row[f"val_local/{self.task.metric}"] = own
                row.update({"comm/bytes_up": bytes_up, "comm/bytes_down": bytes_down,
                            "comm/bytes_total": self.bytes_total,
                            "time/round_s": time.perf_counter() - t0})
                log.info("round %d/%d  %s %s  val/loss %s  train/loss %.4f  up %s  %.1fs", r + 1,
                         rounds, self.task.rank_key, _fmt(row.get(self.task.rank_key)),
                         _fmt(row.get("val/loss")), row["train/loss"], human_bytes(bytes_up),
                         row["time/round_s"])
                self._close_round(row, r, ckpt_path, on_round)
        finally:
            pool.shutdown()
        return row

    def _skip_round(self, r: int, rounds: int, actors: int, why: str, ckpt_path: Path | None,
                    on_round: Callable[[dict[str, Any], Path | None], None] | None) -> dict:
        """Round r trains nothing (`why`), its row logged; central DP still releases its noise."""
        log.info("round %d/%d skipped: %s", r + 1, rounds, why)
        noise = self.privacy.empty_release(self._shared(), r) if self.privacy else None
        if noise is not None:
            self.params = self.strategy.aggregate(self._shared(), noise)
            self._evals.clear()
        row = {"round": r + 1, "clients": 0, "clients/dropped": 0, "actors": actors,
               "comm/bytes_total": self.bytes_total}
        if (r + 1) % int(self.fl["eval_every"]) == 0 or r + 1 == rounds:
            row.update({f"val/{k}": v for k, v in self.round_metrics().items()})
        self._close_round(row, r, ckpt_path, on_round)
        return row

    def _close_round(self, row: dict[str, Any], r: int, ckpt_path: Path | None,
                     on_round: Callable[[dict[str, Any], Path | None], None] | None) -> None:
        """Round r's row logged (with its privacy/epsilon, dp/*, secagg/*, attack/* figures),
        its checkpoint written, then `on_round` called."""
        if self.privacy is not None:
            row.update(self.privacy.round_metrics(self, r))
        self.logger.log(row)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, self._checkpoint_state(r + 1))
        if on_round is not None:
            on_round(row, ckpt_path)

    def _init_head(self, pool: Any, shard_refs: dict[int, Any]) -> None:
        """fl.head_init=ridge: every client's feature sums once, the head solved from them.

        Runs through the pool like a round (faults, timeouts, quorum and byte counts alike);
        isolated clients each solve from their own sums only.
        """
        t0 = time.perf_counter()
        self.round = -1  # logged as round 0
        clients = list(range(int(self.fl["num_clients"])))
        good, dropped, bytes_up = self._fit_round(pool, shard_refs, clients, {"task": "head_stats"})
        good = sorted(good, key=lambda res: res.client_id)
        lam, scale = float(self.fl["ridge_lambda"]), float(self.fl["ridge_scale"])
        if self.isolated:
            for res in good:
                head = solve_head([res.params], self.model, lam, scale)
                self.client_params[res.client_id] = {**self.client_params[res.client_id], **head}
        else:
            head = solve_head([res.params for res in good], self.model, lam, scale)
            self.params = {**self.params, **head}
        self.bytes_total += bytes_up
        metrics = self.round_metrics()
        self.head_init_metrics = {
            "head_init/val_acc": metrics["acc"],
            "head_init/clients": len(good),
            "head_init/bytes_up": bytes_up,
            "head_init/time_s": time.perf_counter() - t0,
        }
        log.info("head init (ridge) from %d clients' feature sums: val/acc %.4f, %s up, %.1fs",
                 len(good), metrics["acc"], human_bytes(bytes_up),
                 self.head_init_metrics["head_init/time_s"])

    def round_metrics(self) -> dict[str, Any]:
        """Val metrics of the global model; isolated: the mean over the clients' own models."""
        if not self.isolated:
            return self.evaluate()[0]
        per = [self.evaluate(self.client_params[c])[0] for c in sorted(self.client_params)]
        return {k: float(np.mean([m[k] for m in per])) for k in per[0]}

    def _checkpoint_state(self, next_round: int) -> dict[str, Any]:
        return {
            "round": next_round,
            "rounds": int(self.fl["rounds"]),  # a non-constant lr schedule anneals over it
            "params": self.params,
            "client_params": self.client_params if self.isolated else None,
            "local": self.local.state_dict() if self.local is not None else None,
            "strategy": self.strategy.state_dict(),
            "privacy": self.privacy.state_dict() if self.privacy is not None else None,
            "bytes_total": self.bytes_total,
            "rows": self.logger.rows,
            "config_hash": self.cfg.get("_config_hash"),
            "head_init": self.head_init_metrics,  # fl.head_init=ridge: in a resumed summary too
        }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"
