"""The server round loop: sample -> broadcast -> ClientActor.fit -> aggregate -> evaluate -> log
-> checkpoint."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from fedray.config import ConfigError
from fedray.data.datasets import DatasetInfo, load_images, load_labels
from fedray.fl.checkpoint import load_checkpoint, save_checkpoint
from fedray.fl.client import make_client_actor
from fedray.fl.pool import ClientPool, Dropped
from fedray.fl.train import extract_features, get_params, set_params, travel_names
from fedray.fl.types import ClientResult, Params, params_nbytes
from fedray.logging import RunLogger
from fedray.models import build_model, head_only, trainable_names

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


def is_finite(params: Params) -> bool:
    """True when every travelled value is finite."""
    return all(np.isfinite(v).all() for v in params.values())


def pool_size(ray_cfg: dict[str, Any], k: int) -> int:
    """Actors to start: at most one per sampled client, at most what the cluster's CPUs hold."""
    if ray_cfg.get("max_actors"):
        return max(1, min(k, int(ray_cfg["max_actors"])))
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per = float(ray_cfg["client_cpus"]) or 1.0
    return max(1, min(k, int(cpus // per) or 1))


class FederatedServer:
    """Holds the global model and runs rounds; the one loop every federated experiment uses."""

    def __init__(
        self, cfg: dict[str, Any], info: DatasetInfo, parts: list[np.ndarray], run_logger: RunLogger
    ) -> None:
        from fedray.fl.strategies import build_strategy

        self.cfg, self.info, self.parts, self.logger = cfg, info, parts, run_logger
        self.fl = cfg["fl"]
        self.seed = int(cfg["seed"])
        torch.manual_seed(self.seed)
        self.model = build_model(cfg["model"], info.num_classes)
        self.trainable = trainable_names(self.model, self.fl["trainable"])
        self.travel = travel_names(self.model, self.trainable)
        self.use_features = bool(self.fl["cache_features"]) and head_only(self.trainable)
        self.strategy = build_strategy(cfg["strategy"])
        self.params: Params = get_params(self.model, self.travel)
        self.k = clients_per_round(self.fl)
        self.val_x: Any = load_images(info.root, "val")
        self.val_y = load_labels(info.root, "val")
        if self.use_features:
            self.val_x = extract_features(self.model, np.asarray(self.val_x))
        self.start_round = 0
        self.bytes_total = 0

    def restore(self, ckpt_path: Path) -> None:
        """Continue from a checkpoint written after some round."""
        ckpt = load_checkpoint(ckpt_path)
        self.params = ckpt["params"]
        self.strategy.load_state_dict(ckpt["strategy"])
        self.start_round = int(ckpt["round"])
        self.bytes_total = int(ckpt["bytes_total"])
        set_params(self.model, self.params)

    def _start_pool(self, ray_cfg: dict[str, Any]) -> ClientPool:
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
            "cache_features": self.use_features,
            "client": self.cfg["client"],
            "dataset_root": self.info.root,
            "num_threads": max(1, round(float(ray_cfg["client_cpus"]))),
            "shard_cache": int(ray_cfg.get("shard_cache", 8)),
            "faults": self.fl.get("faults") or [],
        }
        actor_cls = make_client_actor(float(ray_cfg["client_cpus"]), float(ray_cfg["client_gpus"]))
        size = pool_size(ray_cfg, self.k)
        log.info(
            "starting %d client actors (%.2g CPU each) for %d clients, %d per round",
            size,
            float(ray_cfg["client_cpus"]),
            self.fl["num_clients"],
            self.k,
        )
        return ClientPool(actor_cls, ray.put(spec), size)

    def evaluate(self) -> tuple[dict[str, Any], np.ndarray]:
        """Global model on the held-out split."""
        from fedray.fl.train import evaluate

        set_params(self.model, self.params)
        return evaluate(
            self.model, self.val_x, self.val_y, self.info.num_classes, features=self.use_features
        )

    def _aggregate(self, results: list[ClientResult], dropped_n: int, sampled: list[int]) -> None:
        needed = max(1, math.ceil(float(self.fl["quorum"]) * len(sampled)))
        if len(results) < needed:
            raise QuorumError(
                f"only {len(results)} of {len(sampled)} sampled clients returned a usable update "
                f"({dropped_n} dropped); fl.quorum={self.fl['quorum']} needs {needed}"
            )
        self.params = self.strategy.aggregate(self.params, results)  # sorts by client id

    def run(
        self,
        ray_cfg: dict[str, Any],
        ckpt_path: Path | None,
        on_round: Callable[[dict[str, Any], Path | None], None] | None = None,
    ) -> dict[str, Any]:
        """Run rounds start_round..rounds-1; returns the last round's metrics row.

        `on_round(row, checkpoint_path)` is called after each round is logged and checkpointed
        (Tune trials report through it, so schedulers can stop a trial at round granularity).
        """
        rounds = int(self.fl["rounds"])
        if rounds < 1:
            raise ConfigError(f"fl.rounds must be >= 1, got {rounds}")
        pool = self._start_pool(ray_cfg)
        shard_refs = {cid: ray.put(idx) for cid, idx in enumerate(self.parts)}
        extra = self.strategy.client_config()
        row: dict[str, Any] = {}
        try:
            for r in range(self.start_round, rounds):
                t0 = time.perf_counter()
                sampled = sample_clients(int(self.fl["num_clients"]), self.k, self.seed, r)
                params_ref = ray.put(self.params)  # broadcast once; actors read the same object
                results, dropped = pool.run_round(
                    sampled, shard_refs, params_ref, r, extra, self.fl.get("round_timeout_s")
                )
                bytes_up = sum(params_nbytes(res.params) for res in results)
                good = []
                for res in results:
                    if is_finite(res.params):
                        good.append(res)
                    else:
                        dropped.append(Dropped(res.client_id, "non-finite (NaN/Inf) update"))
                for d in dropped:
                    log.warning("round %d: dropped client %d: %s", r + 1, d.client_id, d.reason)
                self._aggregate(good, len(dropped), sampled)
                bytes_down = params_nbytes(self.params) * len(sampled)
                self.bytes_total += bytes_up + bytes_down
                row = {"round": r + 1, "clients": len(sampled), "clients/dropped": len(dropped)}
                n = sum(res.num_samples for res in good)
                row["train/loss"] = (
                    sum(res.metrics["train/loss"] * res.num_samples for res in good) / n
                )
                if (r + 1) % int(self.fl["eval_every"]) == 0 or r + 1 == rounds:
                    metrics, _ = self.evaluate()
                    row.update({f"val/{k}": v for k, v in metrics.items()})
                row.update(
                    {
                        "comm/bytes_up": bytes_up,
                        "comm/bytes_down": bytes_down,
                        "comm/bytes_total": self.bytes_total,
                        "time/round_s": time.perf_counter() - t0,
                    }
                )
                self.logger.log(row)
                log.info(
                    "round %d/%d  val/acc %s  val/loss %s  train/loss %.4f  up %s  %.1fs",
                    r + 1,
                    rounds,
                    _fmt(row.get("val/acc")),
                    _fmt(row.get("val/loss")),
                    row["train/loss"],
                    _human_bytes(bytes_up),
                    row["time/round_s"],
                )
                if ckpt_path is not None:
                    save_checkpoint(
                        ckpt_path,
                        {
                            "round": r + 1,
                            "params": self.params,
                            "strategy": self.strategy.state_dict(),
                            "bytes_total": self.bytes_total,
                            "rows": self.logger.rows,
                            "config_hash": self.cfg.get("_config_hash"),
                        },
                    )
                if on_round is not None:
                    on_round(row, ckpt_path)
        finally:
            pool.shutdown()
        return row


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TB"
