"""FedDF (Lin et al. 2020, "Ensemble Distillation for Robust Model Fusion in Federated Learning").

Each round: the base rule (FedAvg, or a server optimizer such as FedAdam) gives the new server
model; it is then distilled towards the ensemble of the round's client models, i.e. the mean of
their logits, on an unlabelled transfer set that only the server holds: KL at temperature T
(default 1), Adam (1e-3) with a cosine schedule, batches of 128, early stopping on a held-out
part of the transfer set (the params with the lowest held-out KL are kept, the averaged model
included). Only the travelled params are distilled; frozen layers stay what the clients have.
The ensemble is the plain mean of the clients' logits (the paper's); ``weighted: true`` weights
each client by its sample count, as FedAvg weights its params.

The server gives the rule its model through ``bind(model_factory, cfg)``; unbound (e.g. a
sweep's dry feasibility check) FedDF is its base rule. ``transfer: null`` re-generates the
experiment's own dataset under ``transfer_seed`` (synthetic or toy data: other images of the same
kind); a transfer set that resolves to the clients' own dataset is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fedray.config import ConfigError
from fedray.fl.strategies.base import Strategy, float_param, int_param
from fedray.fl.strategies.server_data import check_data_knob, server_dataset
from fedray.fl.types import ClientResult, Params

log = logging.getLogger("fedray")


def ensemble_logits(
    model: torch.nn.Module,
    results: list[ClientResult],
    inputs: Any,
    cached: int = 0,
    weighted: bool = False,
) -> torch.Tensor:
    """The clients' mean logits on `inputs` (each client's params loaded into `model` in turn);
    `weighted`: each client weighted by its `num_samples`."""
    from fedray.fl.train import predict_logits, set_params

    total = None
    weights = [float(r.num_samples) if weighted else 1.0 for r in results]
    for res, w in zip(results, weights, strict=True):
        set_params(model, res.params)
        logits = w * predict_logits(model, inputs, cached=cached)
        total = logits if total is None else total + logits
    return total / sum(weights)


class FedDF(Strategy):
    """The base rule's aggregate, distilled from the clients' averaged logits on server data."""

    name = "feddf"

    def __init__(
        self,
        *,
        base: Any = None,
        steps: int = 200,
        temperature: float = 1.0,
        lr: float = 1e-3,
        batch_size: int = 128,
        transfer: Any = None,
        transfer_seed: int = 1001,
        transfer_size: int | None = None,
        val_fraction: float = 0.2,
        eval_every: int = 20,
        patience: int = 5,
        weighted: bool = False,
    ) -> None:
        from fedray.fl.strategies import build_strategy

        if base is None:
            base = {"name": "fedavg"}
        if isinstance(base, Strategy):
            self.base = base
        elif isinstance(base, Mapping):
            try:
                self.base = build_strategy(base)
            except ConfigError as exc:
                raise ConfigError(f"strategy.base: {exc}") from None
        else:
            raise ConfigError(f"strategy.base must be a strategy config, got {base!r}")
        if isinstance(self.base, FedDF):
            raise ConfigError("strategy.base cannot itself be feddf")
        self.steps = int_param("steps", steps, 0)
        self.temperature = float_param("temperature", temperature, 0.0, low_open=True)
        self.lr = float_param("lr", lr, 0.0, low_open=True)
        self.batch_size = int_param("batch_size", batch_size, 2)
        self.transfer = check_data_knob("transfer", transfer)
        self.transfer_seed = int_param("transfer_seed", transfer_seed, 0)
        self.transfer_size = (
            None if transfer_size is None else int_param("transfer_size", transfer_size, 4)
        )
        self.val_fraction = float_param("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.eval_every = int_param("eval_every", eval_every, 1)
        self.patience = int_param("patience", patience, 1)
        if not isinstance(weighted, bool):
            raise ConfigError(f"strategy.weighted must be true or false, got {weighted!r}")
        self.weighted = weighted
        self.rounds_done = 0
        self._run_seed = 0  # the experiment's seed (bind): the dropout masks follow it
        self._model_factory: Callable[[], torch.nn.Module] | None = None
        self._model: torch.nn.Module | None = None
        self._x: np.ndarray | None = None  # transfer images: distillation part
        self._hx: np.ndarray | None = None  # held-out part (early stopping)
        self._feats: tuple[int, Any, Any] | None = None  # (cached blocks, features, held-out)
        self.last: dict[str, float] = {}
        self._reference: Params | None = None

    # -- wiring --------------------------------------------------------------------------------

    def bind(self, model_factory: Callable[[], torch.nn.Module], cfg: dict[str, Any]) -> None:
        """Take a factory for the server's model (full state) and load the transfer set."""
        self._run_seed = int(cfg.get("seed") or 0)
        images = self._load_transfer(cfg)
        rng = np.random.default_rng([self.transfer_seed, 0xDF])
        order = rng.permutation(len(images))
        if self.transfer_size is not None:
            order = order[: self.transfer_size]
        n_val = int(round(self.val_fraction * len(order)))
        self._hx = images[np.sort(order[:n_val])] if n_val else None
        self._x = images[np.sort(order[n_val:])]
        self._model_factory = model_factory
        self._model = None
        self._feats = None
        log.info(
            "feddf: transfer set of %d images (+%d held out), %d steps at T=%g",
            len(self._x),
            0 if self._hx is None else len(self._hx),
            self.steps,
            self.temperature,
        )

    def _load_transfer(self, cfg: dict[str, Any]) -> np.ndarray:
        from fedray.data.datasets import load_images

        info = server_dataset(cfg, self.transfer, self.transfer_seed, "transfer")
        return np.asarray(load_images(info.root, "train"))

    def client_config(self) -> dict[str, Any]:
        """The base rule's client knobs (FedProx's mu under FedDF)."""
        return self.base.client_config()

    # -- aggregation ---------------------------------------------------------------------------

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        averaged = self.base.aggregate(global_params, results)
        self.rounds_done += 1
        self._reference = averaged
        if self._model_factory is None or self.steps == 0:
            return averaged
        # every random draw of the distillation (the student's dropout masks; the batch order
        # has its own NumPy generator) is a function of (seed, transfer_seed, round), and the
        # driver's global torch RNG is left as it was: a resumed run (which re-seeds torch at
        # construction) distills exactly as the uninterrupted one did
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._round_seed())
            return self._distill(averaged, results)

    def _round_seed(self) -> int:
        """The torch seed of this round's distillation, from (the run's seed, transfer_seed,
        rounds_done) only; `rounds_done` is checkpointed, so a resumed run draws what the
        uninterrupted one drew."""
        seq = np.random.SeedSequence([self._run_seed, self.transfer_seed, self.rounds_done, 0xDF7])
        return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))

    def reference(self) -> Params | None:
        """The base rule's aggregate of the last round, before distillation."""
        return self._reference

    def round_metrics(self) -> dict[str, float]:
        """Distillation steps and the held-out KL to the ensemble before and after."""
        return {f"feddf/{k}": float(v) for k, v in self.last.items()}

    def _inputs(self, model: torch.nn.Module, trainable: list[str]) -> tuple[int, Any, Any]:
        """The transfer images, or once-computed features of the frozen leading blocks."""
        from fedray.fl.train import extract_features
        from fedray.models import frozen_prefix

        cached = frozen_prefix(model, trainable)
        if self._feats is None or self._feats[0] != cached:
            if cached:
                x = extract_features(model, self._x, upto=cached)
                hx = None if self._hx is None else extract_features(model, self._hx, upto=cached)
            else:
                x, hx = self._x, self._hx
            self._feats = (cached, x, hx)
        return self._feats

    def _distill(self, averaged: Params, results: list[ClientResult]) -> Params:
        from fedray.data.datasets import to_tensor_batch
        from fedray.distill.losses import soft_kl
        from fedray.fl.train import (
            forward_from,
            freeze_except,
            get_params,
            predict_logits,
            set_params,
        )

        if self._model is None:
            self._model = self._model_factory()
        model = self._model
        names = list(averaged)
        trainable = [n for n, _ in model.named_parameters() if n in averaged]
        cached, x, hx = self._inputs(model, trainable)

        def ensemble(inputs: Any) -> torch.Tensor:
            return ensemble_logits(model, results, inputs, cached, self.weighted)

        with torch.no_grad():
            target = ensemble(x)
            held_target = ensemble(hx) if hx is not None else None
        set_params(model, averaged)

        def held_kl() -> float:
            if held_target is None:
                return float("nan")
            out = predict_logits(model, hx, cached=cached)
            return float(soft_kl(out, held_target, self.temperature))

        best_kl, best = held_kl(), averaged
        first_kl = best_kl
        freeze_except(model, trainable)
        named = dict(model.named_parameters())
        opt = torch.optim.Adam([named[n] for n in trainable], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.steps))
        rng = np.random.default_rng([self.transfer_seed, self.rounds_done])
        n = len(target)
        order, pos, stale, step = rng.permutation(n), 0, 0, 0
        for step in range(1, self.steps + 1):
            if pos + self.batch_size > n:
                order, pos = rng.permutation(n), 0
            idx = np.sort(order[pos : pos + self.batch_size])
            pos += self.batch_size
            if cached:
                out = forward_from(model, x[idx], cached)
            else:
                out = model(to_tensor_batch(x[idx]))
            loss = soft_kl(out.float(), target[idx], self.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if held_target is not None and (step % self.eval_every == 0 or step == self.steps):
                kl = held_kl()
                freeze_except(model, trainable)  # predict_logits left the model in eval mode
                if kl < best_kl:
                    best_kl, best, stale = kl, get_params(model, names), 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
        if held_target is None:
            best = get_params(model, names)
        model.eval()
        self.last = {"steps": step, "held_kl_before": first_kl, "held_kl_after": best_kl}
        log.info(
            "feddf: %d clients' ensemble distilled in %d steps, held-out KL %.4f -> %.4f",
            len(results),
            step,
            first_kl,
            best_kl,
        )
        return best

    # -- state ---------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "rounds_done": self.rounds_done}

    def _load_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"base", "rounds_done"}:
            raise ValueError(f"feddf state needs keys ['base', 'rounds_done'], got {sorted(state)}")
        self.base.load_state_dict(state["base"])
        self.rounds_done = int(state["rounds_done"])
