"""Federated metric learning: the embedding streams trained across clients that each hold a few
pills, with the framework's partitioners and aggregation strategies, in one process.

Each client mines its triplets inside its own data (its images are its gallery: the anchor's
ranking of the client's own images gives the negatives), trains `local_epochs` and returns its
weights (below one, a round covers a 1/k share of every pill's images and k rounds one pass:
the same local compute in more, shorter rounds, whose clients drift apart less); the strategy
(`strategy` group: FedAvg, FedProx with its proximal term on the clients, median, ...)
aggregates them in client-id order. Everything a client touches is its shard of the training
pool; with the proxy loss, a client's proxies (one per pill it holds) are its own state across
rounds and are never sent: they would tell the server which pills the phone holds. With
`drift: scaffold`, each client also sends its mean gradient of the round (SCAFFOLD's control
variate), and the next round's local gradients are corrected by the federation's mean minus
the client's own.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedray.fl.types import ClientResult, Params, params_nbytes
from fedray.pill.retrieval.nets import MultiStream
from fedray.pill.retrieval.train import init_proxies, train_embedding


def _params(model: torch.nn.Module) -> Params:
    """Weights and BatchNorm statistics (float32); the step counters stay home."""
    return {k: v.detach().cpu().float().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _load(model: torch.nn.Module, params: Params) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()},
                          strict=False)


def _first_proxies(model: MultiStream, images: np.ndarray, pills: np.ndarray,
                   tcfg: dict[str, Any], seed: int, device: str) -> dict:
    """A client's proxies made from all its images, before its first share is trained."""
    labels = np.unique(pills, return_inverse=True)[1]
    return init_proxies(model, images, labels, str(tcfg.get("proxy_init", "random")),
                        torch.Generator().manual_seed(seed),
                        bool(tcfg.get("standardize", True)), device)


def round_share(local_epochs: float) -> int:
    """k where a round is a 1/k share of an epoch (`local_epochs` = 1/k), else 1."""
    if local_epochs >= 1:
        return 1
    k = round(1.0 / local_epochs)
    if k < 2 or abs(k * local_epochs - 1.0) > 1e-2:
        raise ValueError(f"local_epochs={local_epochs}: below 1 it must be 1/k (0.5, 0.25, ...)")
    return k


def shares(pills: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k disjoint shares of a client's images 0..n-1, stratified by pill: each share holds
    about 1/k of every pill's images, so every pill (and its proxy) is in every round; a pill
    with fewer than k images lends one to the shares that would have none."""
    out: list[list[np.ndarray]] = [[] for _ in range(k)]
    for p in np.unique(pills):
        idx = rng.permutation(np.flatnonzero(pills == p))
        for j, to in enumerate(rng.permutation(k)):  # which share gets the larger parts
            part = idx[j * len(idx) // k:(j + 1) * len(idx) // k]
            out[to].append(part if len(part) else idx[[j % len(idx)]])
    return [np.sort(np.concatenate(s)) for s in out]


DRIFTS = ("none", "scaffold")


def _gradient_hooks(model: torch.nn.Module, correction: dict[str, torch.Tensor],
                    sums: dict[str, list] | None, mu: float = 0.0) -> list:
    """Hooks on every weight's gradient, before the local optimiser (Adam here) sees it:

    - FedProx (the strategy's `proximal_mu`): + mu (w - w_start), the gradient of
      (mu / 2) ||w - w_start||^2, which holds a phone near the round's global model;
    - SCAFFOLD's control variates (Karimireddy et al., ICML 2020) in gradient space: +
      `correction` (c - c_i: the federation's mean gradient minus this client's own, both from
      the last round), so a phone's local steps follow the federation's direction instead of
      drifting to its own pills; the raw gradients are summed into `sums` (name -> [sum,
      count]) for the client's next c_i. Made for any optimiser rather than SCAFFOLD's
      (x - y) / (K lr) estimate, which assumes SGD.
    BatchNorm statistics and the client's proxies are left alone."""
    def hook(name: str, p: torch.nn.Parameter):
        start = p.detach().clone() if mu > 0 else None

        def add(g: torch.Tensor) -> torch.Tensor:
            if sums is not None:
                s = sums.setdefault(name, [torch.zeros_like(g), 0])
                s[0] += g.detach()
                s[1] += 1
            c = correction.get(name)
            out = g if c is None else g + c.to(g.device)
            return out if start is None else out + mu * (p.detach() - start)
        return add
    return [p.register_hook(hook(n, p)) for n, p in model.named_parameters()]


def _control(sums: dict[str, list]) -> dict[str, torch.Tensor]:
    return {n: total.cpu() / count for n, (total, count) in sums.items()}


def _mean_control(controls: list[dict[str, torch.Tensor]],
                  weights: list[int]) -> dict[str, torch.Tensor]:
    """c: the clients' c_i averaged with the weights FedAvg gives their models."""
    total = float(sum(weights))
    return {n: sum(c[n] * (w / total) for c, w in zip(controls, weights, strict=True))
            for n in controls[0]} if controls else {}


def train_federated(model: MultiStream, pool: np.ndarray, pool_pill: np.ndarray,
                    fcfg: dict[str, Any], tcfg: dict[str, Any], partition_cfg: dict[str, Any],
                    strategy_cfg: dict[str, Any], seed: int,
                    on_round: Callable[[dict[str, Any]], None] | None = None,
                    device: str = "cpu") -> list[dict[str, Any]]:
    """`fcfg`: clients, rounds, local_epochs (an integer, or 1/k), lr, batch_size and loss
    (null: `tcfg`'s), drift (`none`, or `scaffold`: `_gradient_hooks`). Trains `model` in place (the
    clients on `device`, one after another); one row per round."""
    from fedray.data.partition import partition
    from fedray.fl.strategies import build_strategy

    labels = np.unique(pool_pill, return_inverse=True)[1]
    parts = partition(labels, partition_cfg, int(fcfg["clients"]), seed)
    strategy = build_strategy(strategy_cfg)
    global_params = _params(model)
    lr = float(fcfg.get("lr") or tcfg["lr"])  # the clients' own lr, else the central one
    k = round_share(float(fcfg["local_epochs"]))
    local_cfg = {**tcfg, "epochs": max(1, int(fcfg["local_epochs"])), "lr": lr,
                 "batch_size": int(fcfg.get("batch_size") or tcfg["batch_size"]),
                 "loss": str(fcfg.get("loss") or tcfg.get("loss", "triplet"))}
    proxies: list[dict] = [{} for _ in parts]  # each client's own (loss proxy/both): stay home
    share_rngs = [np.random.default_rng([seed, c]) for c in range(len(parts))]
    client_shares: list[list[np.ndarray]] = [[] for _ in parts]
    scaffold = str(fcfg.get("drift", "none")) == "scaffold"
    mu = float(strategy.client_config().get("proximal_mu", 0.0))  # strategy=fedprox
    c_global: dict[str, torch.Tensor] = {}
    c_own: list[dict[str, torch.Tensor]] = [{} for _ in parts]  # each client's c_i
    history = []
    rounds = int(fcfg["rounds"])
    for r in range(rounds):
        t0 = time.perf_counter()
        results, losses, bytes_up = [], [], 0
        if str(tcfg.get("schedule", "constant")) == "cosine":  # decays over rounds, not per call
            local_cfg = {**local_cfg, "schedule": "constant",
                         "lr": lr * 0.5 * (1.0 + math.cos(math.pi * r / rounds))}
        for c, idx in enumerate(parts):
            if len(np.unique(pool_pill[idx])) < 2:  # no negative to mine: nothing to learn
                continue
            local = copy.deepcopy(model)
            _load(local, global_params)
            if k > 1:  # this round's share; a fresh split into k shares every k rounds
                if r % k == 0:
                    client_shares[c] = shares(pool_pill[idx], k, share_rngs[c])
                if not proxies[c] and local_cfg["loss"] != "triplet":  # from all its images
                    proxies[c].update(_first_proxies(local, pool[idx], pool_pill[idx],
                                                     local_cfg, seed + c, device))
            mine = idx[client_shares[c][r % k]] if k > 1 else idx  # what this round trains on
            sums: dict[str, list] = {}
            hooks = _gradient_hooks(local, {n: v - c_own[c].get(n, 0.0) for n, v in
                                            c_global.items()}, sums if scaffold else None,
                                    mu) if scaffold or mu > 0 else []
            rows = train_embedding(local, pool[mine], pool_pill[mine], np.arange(len(mine)),
                                   local_cfg, seed + 7919 * (r + 1) + c, device=device,
                                   proxies=proxies[c])
            for h in hooks:
                h.remove()
            if scaffold:
                c_own[c] = _control(sums)
                bytes_up += params_nbytes(c_own[c])  # c_i travels beside the weights
            losses.append(rows[-1]["train/loss"])
            results.append(ClientResult(c, _params(local), len(mine)))
        global_params = strategy.aggregate(global_params, results)
        if scaffold:
            c_global = _mean_control([c_own[x.client_id] for x in results],
                                     [x.num_samples for x in results])
        _load(model, global_params)
        row = {"epoch": r + 1, "train/loss": float(np.mean(losses)),
               "fl/clients": len(results),
               "comm/bytes_up": bytes_up + sum(params_nbytes(x.params) for x in results),
               "fl/pills_per_client": float(np.mean([len(np.unique(pool_pill[i]))
                                                     for i in parts])),
               "time/epoch_s": time.perf_counter() - t0}
        history.append(row)
        if on_round is not None:
            on_round(row)
    return history
