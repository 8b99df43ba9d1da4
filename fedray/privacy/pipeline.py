"""The privacy seam of a federated round: what the clients do to their update before it leaves
(attacks, DP clipping and noise, secure-aggregation masking) and what the server does before its
strategy aggregates (unmasking the sum, central DP noise, adaptive clipping, the accountant).

Client side: `poison_shard` and `protect_update`, called from `ClientActor.fit` with the round's
`extra["privacy"]`. Server side: `Privacy`, built by `build_privacy(cfg, ...)` (None when secure
aggregation, DP and attacks are all off), called from `FederatedServer.run`.

Under secure aggregation or central DP the strategy is handed one result: the round's (noisy)
average update applied to the global params, so FedAvg, FedProx, Polyak and the server
optimizers (FedAdam, FedYogi, FedAdagrad) work unchanged; rules that need each client's update
(median, trimmed mean, Krum, norm-bounded FedAvg, FLTrust, FedDF) are a ConfigError there
(`fedray.privacy.rules`).

Size: one seam with two sides (client, server) that must agree on every encoding
and on the round state they checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedray.config import ConfigError
from fedray.fl.types import ClientResult, Params
from fedray.privacy import attacks, dp, rules, secagg

log = logging.getLogger("fedray")

MASKED = "secagg/masked"  # the one key of a masked client result's params
LOSS_CLIP = 16.0  # a train loss travels in the masked sum, clipped to [-16, 16]


# ---------------------------------------------------------------- flat update vectors


def flatten_update(params: Params, global_params: Params) -> np.ndarray:
    """params - global, concatenated in the global params' key order (float64)."""
    return np.concatenate(
        [
            (np.asarray(params[k], np.float64) - np.asarray(g, np.float64)).ravel()
            for k, g in global_params.items()
        ]
    )


def unflatten_update(vec: np.ndarray, global_params: Params) -> Params:
    """global + vec, split back into the global params' shapes and dtypes; BatchNorm variances
    floored at 1e-5 (DP noise may push one below 0: NaN downstream)."""
    out, pos = {}, 0
    for k, g in global_params.items():
        g = np.asarray(g)
        n = g.size
        value = g.astype(np.float64) + vec[pos : pos + n].reshape(g.shape)
        if k.endswith("running_var"):
            value = np.maximum(value, 1e-5)
        out[k] = (np.rint(value) if np.issubdtype(g.dtype, np.integer) else value).astype(g.dtype)
        pos += n
    return out


def update_size(global_params: Params) -> int:
    """Number of values in a flat update."""
    return int(sum(np.asarray(v).size for v in global_params.values()))


# ---------------------------------------------------------------- client side


def poison_shard(
    x: Any, y: np.ndarray, client_id: int, round_idx: int, privacy: dict[str, Any]
) -> tuple[Any, np.ndarray]:
    """A malicious client's shard under the data attacks (label flip, backdoor); else as is."""
    attack = privacy.get("attack")
    if not attack or client_id not in attack["clients"]:
        return x, y
    if attack["name"] == "label_flip":
        return x, attacks.flip_labels(y, int(attack["num_classes"]))
    if attack["name"] == "backdoor":
        return attacks.backdoor_shard(
            x,
            y,
            int(attack["target"]),
            float(attack["poison_frac"]),
            int(attack["patch"]),
            seed=int(privacy["seed"]) * 7919 + client_id * 131 + round_idx,
        )
    return x, y


def protect_update(
    client_id: int,
    round_idx: int,
    global_params: Params,
    params: Params,
    num_samples: int,
    privacy: dict[str, Any],
    loss: float = float("nan"),
) -> tuple[Params, dict[str, float]]:
    """The update as it leaves the client: attacked, clipped, noised and masked as configured.

    Returns the params to send (masked ring vector under secure aggregation, which carries the
    client's train `loss` too, within [-LOSS_CLIP, LOSS_CLIP]) and metrics.
    """
    seed = int(privacy["seed"])
    rng = np.random.default_rng([seed, round_idx, client_id, 0xC11])
    metrics: dict[str, float] = {}
    attack = privacy.get("attack")
    if attack and client_id in attack["clients"] and attack["name"] not in ("label_flip",):
        upd = {k: np.asarray(params[k], np.float64) - g for k, g in global_params.items()}
        upd = attacks.poison_update(upd, attack, rng)
        params = {k: g + upd[k] for k, g in global_params.items()}
    delta = flatten_update(params, global_params)
    if not np.isfinite(delta).all():
        return params, metrics  # sent as is: the server drops it (its masks are recovered)
    dpc = privacy.get("dp")
    sa = privacy.get("secagg")
    weight, unclipped = num_samples, 1
    if dpc:
        delta, norm = dp.l2_clip(delta, float(dpc["clip_norm"]))
        unclipped = int(norm <= float(dpc["clip_norm"]))
        if not sa:  # under secure aggregation the bit travels only inside the masked sum
            metrics["dp/unclipped"] = float(unclipped)
        if dpc["noise"] == "local":
            delta = delta + dp.gaussian_noise(delta.shape, float(dpc["local_std"]), rng)
        else:
            weight = 1  # central DP: uniform weights bound each client's influence by C
    if not sa:
        return unflatten_update(delta, global_params), metrics
    q, _ = secagg.quantize(delta, float(sa["clip"]), int(sa["quant_bits"]))
    ql, _ = secagg.quantize(np.array([np.nan_to_num(loss, nan=LOSS_CLIP)]), LOSS_CLIP,
                            int(sa["quant_bits"]))
    vec = np.concatenate([q * weight, [weight, unclipped], ql * weight])
    public: secagg.RoundPublic = sa["public"]
    mine: secagg.ClientSecrets = sa["secrets"][client_id]
    return {MASKED: secagg.mask_vector(vec, client_id, mine, public)}, metrics


# ---------------------------------------------------------------- server side


def build_privacy(
    cfg: dict[str, Any], strategy: Any, clients_per_round: int, num_classes: int, cached: int
) -> Privacy | None:
    """The round's privacy/robustness plan, or None when secure_agg, dp and attack are all off."""
    fl = cfg["fl"]
    mode = str(fl.get("secure_agg") or "none")
    dpc = cfg.get("dp") or {}
    attack = cfg.get("attack") or {}
    on_dp = dpc.get("name", "none") != "none"
    on_attack = attack.get("name", "none") != "none"
    if mode == "none" and not on_dp and not on_attack:
        return None
    secagg.check_config(fl)
    rules.check_stage(cfg)
    rules.check_strategy(cfg, strategy)
    if on_dp:
        dp.check_dp(dpc, int(fl["num_clients"]), clients_per_round)
    if on_attack:
        attacks.check_attack(attack, num_classes)
        if attack["name"] == "backdoor" and cached:
            raise ConfigError(
                "attack=backdoor stamps a trigger on images, but fl.cache_features=true trains on "
                "cached backbone features: set fl.cache_features=false"
            )
    return Privacy(
        cfg,
        mode,
        dpc if on_dp else None,
        attack if on_attack else None,
        clients_per_round,
        num_classes,
    )


class Privacy:
    """Server-side state of secure aggregation, DP and attacks across rounds."""

    def __init__(
        self,
        cfg: dict[str, Any],
        mode: str,
        dpc: dict[str, Any] | None,
        attack: dict[str, Any] | None,
        clients_per_round: int,
        num_classes: int,
    ) -> None:
        self.cfg, self.mode, self.dpc, self.attack = cfg, mode, dpc, attack
        self.seed = int(cfg["seed"])
        self.num_clients = int(cfg["fl"]["num_clients"])
        self.k = clients_per_round
        self.num_classes = num_classes
        self.sa_cfg = secagg.settings(dict(cfg["fl"].get("secagg") or {}))
        fraction = float((attack or {}).get("fraction", 0.2))
        self.malicious = (attacks.malicious_clients(self.num_clients, fraction, self.seed)
                          if attack else [])
        self.clip_norm = float(dpc["clip_norm"]) if dpc else 0.0
        self.participation = np.zeros(self.num_clients, dtype=np.int64)
        self.rounds_done = 0
        self.accountant = dp.accountant_of(dpc, self.num_clients, self.k) if dpc else None
        if dpc and dpc.get("adaptive_clip") and dpc.get("clipped_count_stddev") is None:
            log.info(
                "dp.clipped_count_stddev=null: %g (max(clients_per_round / 20, noise_multiplier))",
                dp.count_stddev(dpc, self.k),
            )
        if dpc and float(dpc["noise_multiplier"]) == 0:  # the accountant's epsilon is infinite
            log.warning("dp.noise_multiplier=0: updates are clipped but not noised, so the run "
                        "has no privacy guarantee (privacy/epsilon is logged as null)")
        self._eps_cache: dict[int, float] = {}
        self._round: dict[str, Any] = {}
        if attack:
            log.info("attack %s by clients %s", attack["name"], self.malicious)

    # -- sampling and budget

    def sample(self, sampled: list[int], round_idx: int) -> list[int]:
        """dp.sampling=poisson replaces the fixed-size sample: each client joins with rate k/n."""
        if self.dpc and self.dpc.get("sampling", "poisson") == "poisson":
            return dp.poisson_sample(
                self.num_clients, self.k / self.num_clients, self.seed, round_idx
            )
        return sampled

    def skip_reason(self, sampled: list[int]) -> str | None:
        """Why a (Poisson-)sampled round trains and releases nothing, else None: nobody drawn,
        or one client under secure aggregation (its masked sum would be its own update).
        The accountant still counts the round; a skipped round's row gets none of the last
        round's dp/secagg/attack figures."""
        reason = None
        if not sampled:
            reason = "Poisson sampling drew no client"
        elif self.mode != "none" and len(sampled) < 2:
            reason = (f"Poisson sampling drew only client {sampled[0]}, and secure aggregation "
                      "needs 2")
        if reason:
            self._round = {"sampled": list(sampled), "key_bytes": 0}
        return reason

    def epsilon(self, rounds: int, participation: np.ndarray | None = None) -> float:
        """epsilon after `rounds` rounds (local DP: the most-sampled client's participations)."""
        if self.accountant is None:
            return 0.0
        if self.accountant.noise == "local":
            part = self.participation if participation is None else participation
            rounds = int(part.max()) if len(part) else 0
        if rounds not in self._eps_cache:
            self._eps_cache[rounds] = self.accountant.epsilon(rounds)
        return self._eps_cache[rounds]

    def next_epsilon(self, round_idx: int, sampled: list[int] | None = None) -> float:
        """epsilon once round `round_idx` (0-based) has run with `sampled` taking part."""
        part = self.participation.copy()
        if sampled:
            part[sampled] += 1
        return self.epsilon(round_idx + 1, part)

    def budget_exhausted(self, round_idx: int, sampled: list[int] | None = None) -> bool:
        """True when running round `round_idx` would take epsilon past dp.max_epsilon."""
        if not self.dpc or self.dpc.get("max_epsilon") is None:
            return False
        eps = self.next_epsilon(round_idx, sampled)
        if eps > float(self.dpc["max_epsilon"]):
            log.warning(
                "dp.max_epsilon=%s: round %d would reach epsilon %.3f; training stops here",
                self.dpc["max_epsilon"],
                round_idx + 1,
                eps,
            )
            return True
        return False

    # -- what the clients get

    def client_extra(
        self, sampled: list[int], round_idx: int, global_params: Params
    ) -> dict[str, Any]:
        """The round's `extra["privacy"]` for ClientActor.fit."""
        plan: dict[str, Any] = {"seed": self.seed}
        if self.attack:
            plan["attack"] = {
                **self.attack,
                "clients": self.malicious,
                "num_classes": self.num_classes,
            }
        if self.dpc:
            z = float(self.dpc["noise_multiplier"])
            plan["dp"] = {
                "noise": self.dpc["noise"],
                "clip_norm": self.clip_norm,
                "local_std": z * self.clip_norm,
            }
        self._round = {"sampled": list(sampled), "key_bytes": 0}
        if self.mode != "none":
            tag = hashlib.sha256(f"fedray|{self.seed}|{round_idx}".encode()).digest()
            clients = secagg.SecAggClients.setup(
                sampled,
                tag,
                length=update_size(global_params) + 3,  # + total weight, unclipped count, loss
                mode=self.mode,
                degree=self.sa_cfg["degree"],
                threshold=float(self.sa_cfg["threshold"]),
                mod_bits=int(self.sa_cfg["mod_bits"]),
            )
            self._round["clients"] = clients
            # 32-byte public keys to everyone, two 66-byte shares per (owner, neighbour)
            edges = sum(len(v) for v in clients.public.graph.values())
            self._round["key_bytes"] = 32 * len(sampled) * (len(sampled) + 1) + 2 * 66 * edges
            plan["secagg"] = {
                "public": clients.public,
                "secrets": clients.secrets,  # each client reads only its own entry
                "clip": float(self.sa_cfg["clip"]),
                "quant_bits": int(self.sa_cfg["quant_bits"]),
            }
        return {"privacy": plan}

    # -- what the strategy gets

    def server_input(
        self, global_params: Params, good: list[ClientResult], round_idx: int
    ) -> list[ClientResult]:
        """Results for strategy.aggregate: the unmasked / DP-noised average as one result, or
        the clients' own (attacked, locally noised) results when nothing needs the sum."""
        self.participation[[r.client_id for r in good]] += 1
        self.rounds_done = round_idx + 1
        central = bool(self.dpc) and self.dpc["noise"] == "central"
        if self.mode == "none" and not central:
            if self.dpc:
                self._round["unclipped"] = sum(r.metrics.get("dp/unclipped", 1.0) for r in good)
            return good
        d = update_size(global_params)
        if self.mode != "none":
            total, weight, unclipped = self._unmask(good, d, round_idx)
            bits = int(self.sa_cfg["quant_bits"])
            sum_delta = secagg.dequantize_sum(total[:d], weight, float(self.sa_cfg["clip"]), bits)
            sum_delta *= weight
            loss = float(secagg.dequantize_sum(total[d:], weight, LOSS_CLIP, bits)[0])
        else:
            sum_delta = np.zeros(d)
            for r in good:  # the trusted server re-clips what it sees
                sum_delta += dp.l2_clip(flatten_update(r.params, global_params), self.clip_norm)[0]
            weight = float(len(good))
            unclipped = sum(r.metrics.get("dp/unclipped", 1.0) for r in good)
            loss = sum(r.metrics["train/loss"] * r.num_samples for r in good) / sum(
                r.num_samples for r in good)
        self._round["unclipped"] = unclipped
        if central:
            avg = self._central_noise(sum_delta, unclipped, weight, round_idx)
        else:
            avg = sum_delta / weight
        n = sum(r.num_samples for r in good)
        params = unflatten_update(avg, global_params)
        return [ClientResult(min(r.client_id for r in good), params, n, {"train/loss": loss})]

    def empty_release(self, global_params: Params, round_idx: int) -> list[ClientResult] | None:
        """What a skipped round (`skip_reason`) still releases under central DP: the noise alone,
        N(0, (z C)^2) over the expected clients, as DP-FedAvg with nobody in the sum (and
        adaptive clipping steps with a noisy count of none), so every round the accountant
        counts is the mechanism it analysed. None without central DP (local DP's noise is each
        sending client's: with none sending, nothing is released)."""
        if not self.dpc or self.dpc["noise"] != "central":
            return None
        self.rounds_done = round_idx + 1
        self._round["unclipped"] = 0.0
        avg = self._central_noise(np.zeros(update_size(global_params)), 0.0, 0.0, round_idx)
        return [ClientResult(0, unflatten_update(avg, global_params), 1, {})]

    def _unmask(
        self, good: list[ClientResult], d: int, round_idx: int
    ) -> tuple[np.ndarray, float, float]:
        clients: secagg.SecAggClients = self._round["clients"]
        server = secagg.SecAggServer(clients.public)
        for r in good:
            if set(r.params) != {MASKED}:
                raise secagg.SecAggError(f"client {r.client_id} sent an unmasked update")
            server.receive(r.client_id, r.params[MASKED])
        senders = sorted(server.received)
        frac = float(self.sa_cfg["drop_after_mask"])
        rng = np.random.default_rng([self.seed, round_idx, 0x5EC])
        size = int(round(frac * len(senders)))
        vanished = set(rng.choice(senders, size=size, replace=False).tolist()) if size else set()
        responders = [c for c in senders if c not in vanished]
        total = server.unmask(responders, clients.reveal)
        self._round.update(
            vanished=len(vanished),
            dropped=len(clients.public.public_keys) - len(senders),
            received=server,
        )
        weight = float(total[d])
        levels = (1 << int(self.sa_cfg["quant_bits"])) - 1
        if weight * levels >= 2.0 ** int(self.sa_cfg["mod_bits"]):
            raise secagg.SecAggError(
                f"secure aggregation: total weight {weight:g} x {levels} quantization levels "
                f"overflows the 2^{self.sa_cfg['mod_bits']} ring; set fl.secagg.mod_bits=64 or "
                "lower fl.secagg.quant_bits"
            )
        unclipped = float(total[d + 1])
        return np.delete(total, [d, d + 1]).astype(np.float64), weight, unclipped  # update, loss

    def _central_noise(
        self, sum_delta: np.ndarray, unclipped: float, summed: float, round_idx: int
    ) -> np.ndarray:
        """(sum of `summed` clipped updates + N(0, (z·C)^2)) / expected clients; adaptive C
        steps with the noisy centred count of unclipped updates (dp.noisy_unclipped_frac)."""
        assert self.dpc is not None
        z = float(self.dpc["noise_multiplier"])
        rng = np.random.default_rng([self.seed, round_idx, 0xCE])
        c = self.clip_norm
        if self.dpc.get("adaptive_clip"):
            count_std = dp.count_stddev(self.dpc, self.k)
            z_update = dp.split_noise_multiplier(z, float(count_std)) if z > 0 else 0.0
            noisy_frac = dp.noisy_unclipped_frac(unclipped, summed, self.k, count_std, rng)
            self._round["noisy_unclipped_frac"] = noisy_frac
            self.clip_norm = dp.adaptive_clip_step(
                c, noisy_frac, float(self.dpc["target_quantile"]), float(self.dpc["clip_lr"])
            )
        else:
            z_update = z
        noise = rng.normal(0.0, z_update * c, size=sum_delta.shape) if z_update > 0 else 0.0
        return (sum_delta + noise) / self.k

    # -- metrics

    def round_metrics(self, server: Any, round_idx: int) -> dict[str, Any]:
        """privacy/epsilon, dp/clip_norm, secagg/*, attack/* for this round's row."""
        row: dict[str, Any] = {}
        if self.dpc:
            row["privacy/epsilon"] = self.epsilon(round_idx + 1)
            row["privacy/delta"] = float(self.dpc["delta"])
            row["dp/clip_norm"] = self.clip_norm
            if "noisy_unclipped_frac" in self._round:  # what adaptive clipping stepped with
                row["dp/unclipped_frac"] = self._round["noisy_unclipped_frac"]
            elif "unclipped" in self._round:
                row["dp/unclipped_frac"] = self._round["unclipped"] / max(
                    1, len(self._round["sampled"])
                )
        if self.mode != "none":
            row["secagg/dropped_before_mask"] = self._round.get("dropped", 0)
            row["secagg/vanished_after_mask"] = self._round.get("vanished", 0)
            row["comm/secagg_key_bytes"] = self._round.get("key_bytes", 0)
        if self.attack:
            row["attack/malicious_sampled"] = len(
                set(self.malicious) & set(self._round.get("sampled", []))
            )
            if self.attack["name"] == "backdoor":
                row["val/backdoor_success"] = self.backdoor_success(server)
        last = round_idx + 1 == int(self.cfg["fl"]["rounds"])
        cap = (self.dpc or {}).get("max_epsilon")
        if self.dpc and (last or (cap is not None and self.next_epsilon(round_idx + 1) > cap)):
            self._plot(server, row)
        self._round.pop("clients", None)
        self._round.pop("received", None)
        return row

    def backdoor_success(self, server: Any) -> float:
        """Share of triggered val images of the other classes that the global model reads as
        the backdoor's target class."""
        from fedray.fl.train import predict_logits, set_params

        target = int(self.attack["target"])
        keep = server.val_y != target
        if not keep.any():
            return float("nan")
        x = attacks.add_trigger(np.asarray(server.val_x)[keep], int(self.attack["patch"]))
        set_params(server.model, server.params)
        pred = predict_logits(server.model, x, cached=server.cached).argmax(1).numpy()
        return float((pred == target).mean())

    def _plot(self, server: Any, row: dict[str, Any]) -> None:
        if not self.cfg["logger"].get("plots", True):
            return
        if not np.isfinite(row.get("privacy/epsilon", np.inf)):  # no noise: no guarantee to draw
            return
        from fedray.plots import plot_curves

        rows = [*server.logger.rows, {"round": server.round + 1, **row}]
        path = Path(server.logger.run_dir) / "privacy_epsilon.png"
        plot_curves(rows, path, x="round", ys=("privacy/epsilon",))

    # -- checkpoint

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the clip norm and who took part how often."""
        return {
            "clip_norm": self.clip_norm,
            "participation": self.participation.copy(),
            "rounds_done": self.rounds_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`'s output."""
        self.clip_norm = float(state["clip_norm"])
        self.participation = np.asarray(state["participation"], dtype=np.int64).copy()
        self.rounds_done = int(state["rounds_done"])
