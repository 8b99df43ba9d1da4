"""DP-FedAvg pieces (McMahan et al. 2018; adaptive clipping: Andrew et al. 2021).

Pure functions over flat update vectors (update = client params - global params): L2 clipping,
Gaussian noise, the adaptive clip-norm step, and an accountant wrapper over Google's
`dp-accounting` (RDP or PLD) that turns the rounds run so far into epsilon at a given delta.

Central DP: every sampled client clips its update to norm C; the server adds N(0, (z·C)^2) to
the sum and divides by the expected number of clients. Local DP: each client adds N(0, (z·C)^2)
to its own clipped update before it leaves the phone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedray.config import ConfigError

NOISE = ("central", "local")
SAMPLING = ("poisson", "fixed")
ACCOUNTANTS = ("rdp", "pld")


def l2_clip(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale `update` down to L2 norm <= clip_norm; returns it and its norm before clipping."""
    norm = float(np.linalg.norm(update))
    if norm <= clip_norm or norm == 0.0:
        return update, norm
    return update * (clip_norm / norm), norm


def gaussian_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """N(0, std^2) noise of the given shape (float64)."""
    return rng.normal(0.0, std, size=shape)


def adaptive_clip_step(
    clip_norm: float, unclipped_frac: float, quantile: float, lr: float
) -> float:
    """Andrew et al.'s geometric update: C <- C·exp(-lr·(b - quantile)).

    `unclipped_frac` is the (noisy) fraction b of clients whose update norm was <= C; the clip
    norm drifts to the `quantile`-th quantile of the update norms.
    """
    return float(clip_norm * math.exp(-lr * (unclipped_frac - quantile)))


def split_noise_multiplier(z: float, count_stddev: float) -> float:
    """The updates' noise multiplier when the clipped-count query also spends budget.

    Andrew et al. (Thm. 1): z_update = (z^-2 - (2·sigma_b)^-2)^(-1/2), so the two Gaussian
    queries together cost exactly what one with multiplier z would. The factor 2 holds for the
    centred count, sum(b_i - 1/2) (`noisy_unclipped_frac`), whose sensitivity is half the
    updates' in units of C under either adjacency (1/2 against C when a client is added or
    removed, 1 against 2C when one is replaced).
    """
    rest = z**-2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ConfigError(
            f"dp.clipped_count_stddev={count_stddev:g} is too small for dp.noise_multiplier={z:g}: "
            f"need 2 x stddev > noise_multiplier, so a value > {z / 2:g} (null: "
            "max(clients_per_round / 20, noise_multiplier))"
        )
    return rest**-0.5


def noisy_unclipped_frac(unclipped: float, summed: float, clients_per_round: int,
                         stddev: float, rng: np.random.Generator) -> float:
    """The noisy fraction of unclipped updates that adaptive clipping steps with, as in
    TF-Privacy's quantile estimator: the centred count sum(b_i - 1/2) of the `summed` clients
    noised by N(0, stddev^2), over the expected clients per round, plus 1/2, in [0, 1]."""
    centred = unclipped - summed / 2 + rng.normal(0.0, stddev)
    return float(np.clip(centred / clients_per_round + 0.5, 0.0, 1.0))


def count_stddev(dp: dict, clients_per_round: int) -> float:
    """The noise on the unclipped-count query: dp.clipped_count_stddev, or when null Andrew et
    al.'s clients_per_round / 20, raised to noise_multiplier where that is larger: below z / 2
    the count would take more than the whole budget (`split_noise_multiplier`), which it does
    under about 10 x z clients per round."""
    given = dp.get("clipped_count_stddev")
    if given is not None:
        return float(given)
    return max(clients_per_round / 20, float(dp["noise_multiplier"]))


@dataclass
class DpAccountant:
    """epsilon(delta) of the rounds run so far, from `dp-accounting`'s RDP or PLD accountant.

    Central DP, Poisson sampling (rate q): each round is PoissonSampled(q, Gaussian(z)) under
    add/remove-one adjacency. Fixed-size sampling (k of n): SampledWithoutReplacement(n, k,
    Gaussian(z / 2)) under replace-one adjacency (RDP only): replacing one client moves the sum
    of clipped updates by up to 2C, against z·C of noise. Local DP: a client's release is
    Gaussian(z / 2) under replace-one adjacency (its clipped update may move anywhere in the
    ball, sensitivity 2C), composed over the rounds it took part in, with no amplification (the
    server sees who took part).
    """

    noise_multiplier: float
    delta: float
    noise: str = "central"
    sampling: str = "poisson"
    num_clients: int = 1
    clients_per_round: int = 1
    accountant: str = "rdp"

    def round_event(self):
        """The dp-accounting event of one round (per client for local DP)."""
        import dp_accounting as dpa

        z = self.noise_multiplier
        if self.noise == "local":
            return dpa.GaussianDpEvent(z / 2)
        if self.sampling == "poisson":
            return dpa.PoissonSampledDpEvent(self.sampling_rate, dpa.GaussianDpEvent(z))
        return dpa.SampledWithoutReplacementDpEvent(
            self.num_clients, self.clients_per_round, dpa.GaussianDpEvent(z / 2)
        )

    @property
    def sampling_rate(self) -> float:
        """q = clients per round / clients."""
        return self.clients_per_round / self.num_clients

    def _new(self):
        from dp_accounting import NeighboringRelation, pld, rdp

        replace = self.noise == "local" or self.sampling == "fixed"
        relation = (
            NeighboringRelation.REPLACE_ONE if replace else NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        if self.accountant == "pld":
            if replace and self.noise != "local":
                raise ConfigError(
                    "dp.accountant=pld does not support dp.sampling=fixed (sampling without "
                    "replacement); use dp.accountant=rdp or dp.sampling=poisson"
                )
            return pld.PLDAccountant(neighboring_relation=relation)
        return rdp.RdpAccountant(neighboring_relation=relation)

    def epsilon(self, rounds: int) -> float:
        """epsilon at `delta` after `rounds` rounds (0 rounds: 0)."""
        if rounds <= 0:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        import dp_accounting as dpa

        acc = self._new()
        acc.compose(dpa.SelfComposedDpEvent(self.round_event(), rounds))
        return float(acc.get_epsilon(self.delta))


def accountant_of(dp: dict, num_clients: int, clients_per_round: int) -> DpAccountant:
    """The accountant of a dp config, as the run's server builds it."""
    return DpAccountant(
        noise_multiplier=float(dp["noise_multiplier"]),
        delta=float(dp["delta"]),
        noise=str(dp["noise"]),
        sampling=str(dp.get("sampling", "poisson")),
        num_clients=num_clients,
        clients_per_round=clients_per_round,
        accountant=str(dp.get("accountant", "rdp")),
    )


def check_dp(dp: dict, num_clients: int, clients_per_round: int) -> None:
    """ConfigError naming the dp.<key> that makes no sense (or the missing accountant)."""
    from fedray.checks import boolean, choice, number
    from fedray.extras import require

    require(f"dp={dp.get('name', dp.get('noise'))}", "dp_accounting")
    choice("dp.noise", dp.get("noise"), NOISE)
    choice("dp.sampling", dp.get("sampling", "poisson"), SAMPLING)
    choice("dp.accountant", dp.get("accountant", "rdp"), ACCOUNTANTS)
    boolean("dp.adaptive_clip", dp.get("adaptive_clip", False))
    number("dp.clip_norm", dp.get("clip_norm"), 0, low_open=True)
    number("dp.delta", dp.get("delta"), 0, low_open=True)
    number("dp.noise_multiplier", dp.get("noise_multiplier"), 0)
    if not float(dp["delta"]) < 1 / num_clients:  # (epsilon, delta)-DP with delta >= 1/n
        raise ConfigError(  # allows publishing one client's data outright
            f"dp.delta: {dp['delta']!r} is not < 1 / fl.num_clients = {1 / num_clients:.3g}: "
            "a delta that large lets the run release one client's update whole, whatever "
            "epsilon says; use e.g. dp.delta=1e-5"
        )
    # checked whether adaptive_clip is on or not: a value nothing reads is a silent mistake too
    number("dp.target_quantile", dp.get("target_quantile", 0.5), 0, 1)
    number("dp.clip_lr", dp.get("clip_lr", 0.2), 0, low_open=True)
    number("dp.clipped_count_stddev", dp.get("clipped_count_stddev"), 0, low_open=True,
           optional=True)
    number("dp.max_epsilon", dp.get("max_epsilon"), 0, low_open=True, optional=True)
    if clients_per_round > num_clients:
        raise ConfigError(f"dp: {clients_per_round} clients per round > {num_clients} clients")
    if dp.get("adaptive_clip") and float(dp["noise_multiplier"]) > 0:
        if dp["noise"] != "central":
            raise ConfigError("dp.adaptive_clip needs dp.noise=central (a noisy count query)")
        split_noise_multiplier(float(dp["noise_multiplier"]), count_stddev(dp, clients_per_round))
    if dp.get("max_epsilon") is not None:  # the server's first budget check, made here
        first = accountant_of(dp, num_clients, clients_per_round).epsilon(1)
        if first > float(dp["max_epsilon"]):
            raise ConfigError(
                f"dp.max_epsilon: round 1 alone reaches epsilon {first:.3f} > "
                f"dp.max_epsilon={dp['max_epsilon']}, so no round could run; raise "
                "dp.max_epsilon above it, or dp.noise_multiplier"
            )


def poisson_sample(num_clients: int, rate: float, seed: int, round_idx: int) -> list[int]:
    """Each client joins independently with probability `rate`; seeded by (seed, round)."""
    rng = np.random.default_rng([seed, round_idx, 0xD9])
    return [int(c) for c in np.flatnonzero(rng.random(num_clients) < rate)]
