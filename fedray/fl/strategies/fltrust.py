"""FLTrust (Cao et al., NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping").

The server holds a small, clean, labelled root set (the paper: ~100 examples the service provider
collected itself; for the pill app, the provider's own photos of the catalog pills). Each round it
trains the global model on that set with the clients' recipe (their optimizer, batch size and lr
schedule, for as many steps as the round's median client took, ``steps: null``) to get a server
update g0. Each client update g_i gets the trust score ReLU(cos(g_i, g0)), is rescaled to the
norm of g0, and the new model is the global one plus the trust-weighted mean of the rescaled
updates. An update that points against the server's (sign flipping) weighs nothing, one of any
size (scaled, model replacement) moves the model no further than g0, and, unlike coordinate-wise
rules (median, trimmed mean), nothing requires the clients to agree with one another: under
label skew each pill's row of the head is trained by the few phones that hold it, and their
updates still point along the server's.

``weighting: samples`` keeps the cosine as a filter only: the trusted updates (cosine > 0) are
averaged by sample count as FedAvg does, each capped at the norm of g0. Under strong label skew
an honest phone's update agrees only weakly with the server's (its few pills against all of
them), and the paper's weighting then shrinks and reweights the honest updates too.

``norm: median`` takes the median norm of the trusted updates as the reference instead of the
server update's (``norm: server``, the paper): as the global model fits the 100 root images, the
server's update shrinks faster than the clients' (each still far from fitting its own shard), and
capping every update at it slows all learning down. The median of the trusted updates is still
an honest scale while attackers are fewer than half of them, so a scaled update is still cut
down to it.

``server_weight`` (0 by default: the paper, where g0 only judges) also adds g0 to the average as
that many clients' worth of weight: the root set holds every class, so the classes that lost a
holder to an excluded attacker are still trained by someone.

``filter: mad`` also trusts a client whose score is below 0 but no more than 3 scaled median
absolute deviations below the round's median score (``filter: positive``, the paper, trusts
only scores above 0). As the model converges the server's update on 100 root images stops being
a reference (an honest phone's cosine hovers around 0, as often below as above), while a flipped
update still points clearly against it; judged relative to the other phones, the honest ones stay
in and the flippers stay out, as long as they are fewer than half. Early on, when the honest
cosines are spread wide, a positive score is enough. A phone let in by the band must also point
along the trusted phones' consensus (a positive cosine with the mean of their unit updates): under
milder skew (Dirichlet 0.5) the honest phones' spread widened the band until it held the flippers,
whose updates still point against everyone else's. It goes with ``weighting: samples``.

``memory`` (0 by default: the paper) trusts on each client's history instead of one round: its
score is an exponential moving average of its cosines, ``s <- memory * s + (1 - memory) * cos``
(the first cosine as it is), and ReLU(s) replaces ReLU(cos). As the model converges, the server's
update on 100 root images becomes a noisy reference and an honest phone's cosine drifts to about
0, one round above, the next below; a phone that has agreed with the server for many rounds keeps
its trust through such a round, and one that has pointed against it keeps none. The price: a
client that behaves for many rounds and then attacks is trusted for a few rounds (with memory
0.9, a cosine of -c outweighs a history of +c after about 7 rounds). The scores live in the
driver, one float per client seen, and travel in the checkpoint.

``root: null`` re-generates the experiment's own dataset under ``root_seed`` (other images of
the same classes, never a client's) and keeps ``root_size`` of its training images, balanced
over classes. The rule needs each client's update: with secure aggregation or central DP it is a
ConfigError. The server gives the rule its model through ``bind(model_factory, cfg)``; unbound
(a sweep's dry check), FLTrust is FedAvg.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedray.checks import choice
from fedray.config import ConfigError
from fedray.fl.strategies.base import Strategy, average_results, float_param, int_param
from fedray.fl.strategies.server_data import check_data_knob, server_dataset
from fedray.fl.types import ClientResult, Params

log = logging.getLogger("fedray")

WEIGHTINGS = ("cosine", "samples")
NORMS = ("server", "median")
FILTERS = ("positive", "mad")
MAD_K = 3.0  # filter=mad: a score <= 0 is kept within this many scaled MADs below the median


def balanced_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `size` items, spread as evenly as the classes allow (all: size None).
    Labels that are not one class id per item (masks, boxes) are sampled uniformly."""
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 0x7257])
    if labels.ndim != 1:
        return np.sort(rng.choice(n, size, replace=False))
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:  # round robin over the classes, each in its own shuffled order
        for members in by_class:
            if depth < len(members) and len(chosen) < size:
                chosen.append(int(members[depth]))
        depth += 1
    return np.sort(np.array(chosen, dtype=np.int64))


def trust_weights(
    updates: list[np.ndarray], server: np.ndarray, norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(trust scores ReLU(cos(u_i, g0)), the cosines) of flat client updates against g0;
    `norms`: the updates' L2 norms, when the caller has them."""
    g_norm = float(np.linalg.norm(server))
    if norms is None:
        norms = np.array([np.linalg.norm(u) for u in updates])
    cos = np.array(
        [float(u @ server) / (n * g_norm) if g_norm > 0 and n > 0 else 0.0
         for u, n in zip(updates, norms, strict=True)]
    )
    return np.maximum(cos, 0.0), cos


def _unchanged(global_params: Params) -> Params:
    """The global model as the round's result (nothing trusted to move it)."""
    return {k: np.asarray(v, np.float64) for k, v in global_params.items()}


def mad_keep(scores: np.ndarray, k: float = MAD_K) -> np.ndarray:
    """Which scores are at most `k` scaled MADs (1.4826 x median |s - median|) below the median."""
    med = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - med)))
    return scores >= med - k * mad


def agrees_with_trusted(
    deltas: list[np.ndarray], norms: np.ndarray, kept: np.ndarray
) -> np.ndarray:
    """Which updates point along the trusted ones' consensus: a positive cosine with the mean of
    their unit vectors (so a scaled update counts once); all True when none is trusted yet."""
    if not kept.any():
        return np.ones(len(deltas), dtype=bool)
    units = [d / n for d, n, k in zip(deltas, norms, kept, strict=True) if k and n > 0]
    if not units:
        return np.ones(len(deltas), dtype=bool)
    consensus = np.mean(units, axis=0)
    return np.array([float(d @ consensus) > 0 for d in deltas])


class FLTrust(Strategy):
    """Client updates rescaled to the server's root-set update and weighted by ReLU(cosine)."""

    name = "fltrust"

    def __init__(
        self,
        *,
        root: Any = None,
        root_seed: int = 1002,
        root_size: int | None = 100,
        steps: int | None = None,
        weighting: str = "cosine",
        memory: float = 0.0,
        norm: str = "server",
        server_weight: float = 0.0,
        filter: str = "positive",  # noqa: A002 - the config key's name
    ) -> None:
        self.root = check_data_knob("root", root)
        self.root_seed = int_param("root_seed", root_seed, 0)
        self.root_size = None if root_size is None else int_param("root_size", root_size, 1)
        self.steps = None if steps is None else int_param("steps", steps, 1)
        choice("strategy.weighting", weighting, WEIGHTINGS)
        choice("strategy.norm", norm, NORMS)
        choice("strategy.filter", filter, FILTERS)
        self.weighting = weighting
        self.norm = norm
        self.server_weight = float_param("server_weight", server_weight, 0.0)
        if filter == "mad" and weighting != "samples":
            raise ConfigError(
                "strategy.filter=mad needs strategy.weighting=samples (the cosine weighting "
                "weighs by the score itself, which is about 0 for every phone once mad matters)"
            )
        self.filter = filter
        self.memory = float_param("memory", memory, 0.0, 1.0, high_open=True)
        self.scores: dict[int, float] = {}
        self.rounds_done = 0
        self._model_factory: Callable[[], torch.nn.Module] | None = None
        self._model: torch.nn.Module | None = None
        self._x: Any = None
        self._y: np.ndarray | None = None
        self._cfg: dict[str, Any] = {}
        self.last: dict[str, float] = {}

    def bind(self, model_factory: Callable[[], torch.nn.Module], cfg: dict[str, Any]) -> None:
        """Take a factory for the server's model and load the root set."""
        from fedray.data.datasets import load_images
        from fedray.tasks import build_task

        info = server_dataset(cfg, self.root, self.root_seed, "root")
        task = build_task(cfg.get("task"))
        labels = np.asarray(task.load_targets(info.root, "train"))
        idx = balanced_subset(labels, self.root_size, self.root_seed)
        self._x = np.asarray(load_images(info.root, "train")[idx])
        self._y = labels[idx]
        self._cfg = {
            "client": dict(cfg["client"]),
            "rounds": int(cfg["fl"]["rounds"]),
            "task": task,
            "precision": str(cfg["fl"].get("cache_precision", "fp32")),
        }
        self._model_factory = model_factory
        self._model = None
        log.info(
            "fltrust: root set of %d images over %d classes (seed %d)",
            len(idx),
            len(np.unique(self._y)) if self._y.ndim == 1 else 0,
            self.root_seed,
        )

    def _root_inputs(self, model: torch.nn.Module, trainable: list[str]) -> tuple[int, Any]:
        """The root images, or once-computed features of the frozen leading blocks."""
        from fedray.fl.train import extract_features
        from fedray.models import frozen_prefix
        from fedray.models.views import has_views

        cached = frozen_prefix(model, trainable)
        if has_views(model) and cached < len(model.features):
            cached = 0  # turned/zoomed views need the whole backbone: train on the images
        if cached and not isinstance(self._x, torch.Tensor):
            self._x = extract_features(
                model, self._x, upto=cached, precision=self._cfg["precision"]
            )
        return cached, self._x

    def server_update(self, global_params: Params, client_steps: int) -> Params:
        """The global model trained on the root set with the clients' recipe, minus the global
        model: FLTrust's g0."""
        from hydra.utils import instantiate

        from fedray.fl.train import get_params, round_lr_scale, set_params, train_local

        if self._model is None:
            self._model = self._model_factory()
        model = self._model
        names = list(global_params)
        trainable = [n for n, _ in model.named_parameters() if n in global_params]
        cached, x = self._root_inputs(model, trainable)
        set_params(model, global_params)
        client = self._cfg["client"]
        batch = min(int(client["batch_size"]), len(self._y))
        per_epoch = -(-len(self._y) // batch)
        steps = self.steps if self.steps is not None else client_steps
        train_local(
            model,
            x,
            self._y,
            trainable,
            epochs=max(1, round(steps / per_epoch)),
            batch_size=batch,
            optimizer_factory=instantiate(client["optimizer"]),
            seed=self.root_seed * 7919 + self.rounds_done,
            cached=cached,
            lr_scale=round_lr_scale(
                client.get("lr_schedule", "constant"), self.round_idx, self._cfg["rounds"]
            ),
            task=self._cfg["task"],
        )
        trained = get_params(model, names)
        return {k: trained[k].astype(np.float64) - np.asarray(global_params[k], np.float64)
                for k in names}

    def _client_steps(self, results: list[ClientResult]) -> int:
        """The median client's optimizer steps this round (epochs x batches)."""
        client = self._cfg["client"]
        bs, epochs = int(client["batch_size"]), int(client["epochs"])
        return int(np.median([epochs * math.ceil(r.num_samples / bs) for r in results]))

    def _aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        if self._model_factory is None:  # unbound: no root set, plain FedAvg
            return average_results(results)
        names = list(global_params)
        g0 = self.server_update(global_params, self._client_steps(results))
        self.rounds_done += 1
        flat_g0 = np.concatenate([g0[k].ravel() for k in names])
        g0_norm = float(np.linalg.norm(flat_g0))
        deltas = [
            np.concatenate(
                [(np.asarray(r.params[k], np.float64) - global_params[k]).ravel() for k in names]
            )
            for r in results
        ]
        norms = np.array([np.linalg.norm(d) for d in deltas])
        _, cos = trust_weights(deltas, flat_g0, norms)
        score = self._remember(results, cos) if self.memory > 0 else cos
        kept = score > 0
        if self.filter == "mad":
            kept |= mad_keep(score) & agrees_with_trusted(deltas, norms, kept)
        self.last = {
            "trusted": float(kept.sum()),
            "mean_cos": float(cos.mean()),
            "min_cos": float(cos.min()),
            "server_norm": g0_norm,
            "ref_norm": g0_norm,
        }
        if not kept.any():  # every update points away from the server's: the model stays
            log.warning("fltrust: no client update has a positive cosine with the server's")
            return _unchanged(global_params)
        safe = np.where(norms > 0, norms, 1.0)
        ref = g0_norm if self.norm == "server" else float(np.median(norms[kept]))
        self.last["ref_norm"] = ref
        if self.weighting == "cosine":  # the paper: rescaled to |g0| (ref), weighted by trust
            weights = np.where(kept, np.maximum(score, 0.0), 0.0)
            scale = ref / safe
        else:  # the cosine only filters; FedAvg weights of the trusted, norms capped at ref
            weights = np.where(kept, [float(r.num_samples) for r in results], 0.0)
            scale = np.minimum(1.0, ref / safe)
        # g0 as server_weight clients of the trusted ones' mean weight (capped/rescaled to ref)
        w0 = self.server_weight * float(weights[weights > 0].mean()) if weights.any() else 0.0
        total = weights.sum() + w0
        if total <= 0:  # the kept clients have no samples (or no positive trust): stay
            return _unchanged(global_params)
        step = sum(w / total * c * d for w, c, d in zip(weights, scale, deltas, strict=True))
        if w0 > 0 and g0_norm > 0:
            step = step + w0 / total * min(1.0, ref / g0_norm) * flat_g0
        out, pos = {}, 0
        for k in names:
            g = np.asarray(global_params[k], np.float64)
            out[k] = g + step[pos : pos + g.size].reshape(g.shape)
            pos += g.size
        return out

    def _remember(self, results: list[ClientResult], cos: np.ndarray) -> np.ndarray:
        """Each client's moving average of its cosines, updated with this round's."""
        m = self.memory
        for r, c in zip(results, cos, strict=True):
            prev = self.scores.get(r.client_id)
            self.scores[r.client_id] = float(c) if prev is None else m * prev + (1 - m) * float(c)
        return np.array([self.scores[r.client_id] for r in results])

    def round_metrics(self) -> dict[str, float]:
        """Clients trusted, mean and lowest cosine, the server update's norm and the norm every
        update is rescaled or capped to (`ref_norm`)."""
        return {f"fltrust/{k}": float(v) for k, v in self.last.items()}

    def _state(self) -> dict[str, Any]:
        return {"rounds_done": self.rounds_done, "scores": dict(self.scores)}

    def _load_state(self, state: dict[str, Any]) -> None:
        if "rounds_done" not in state or not set(state) <= {"rounds_done", "scores"}:
            raise ValueError(
                f"fltrust state needs keys ['rounds_done', 'scores'], got {sorted(state)}"
            )
        self.rounds_done = int(state["rounds_done"])  # a checkpoint from before memory: no scores
        self.scores = {int(k): float(v) for k, v in state.get("scores", {}).items()}
