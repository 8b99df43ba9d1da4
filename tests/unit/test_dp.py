"""DP-FedAvg: the accountant wrapper against dp-accounting, clipping, noise, the epsilon budget."""

from __future__ import annotations

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedray.config import ConfigError
from fedray.fl.types import ClientResult
from fedray.privacy import dp
from fedray.privacy.pipeline import build_privacy, flatten_update, protect_update


def _event(q, z, rounds):
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)


def test_rdp_epsilon_matches_dp_accounting():
    acc = dp.DpAccountant(noise_multiplier=1.1, delta=1e-5, num_clients=100, clients_per_round=10)
    direct = rdp.RdpAccountant()
    direct.compose(_event(0.1, 1.1, 50))
    assert acc.epsilon(50) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    assert acc.epsilon(0) == 0.0 and acc.epsilon(10) < acc.epsilon(50)


def test_pld_epsilon_matches_dp_accounting():
    acc = dp.DpAccountant(
        noise_multiplier=1.5, delta=1e-5, num_clients=50, clients_per_round=5, accountant="pld"
    )
    direct = pld.PLDAccountant()
    direct.compose(_event(0.1, 1.5, 20))
    assert acc.epsilon(20) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)


def test_fixed_size_and_local_events():
    acc = dp.DpAccountant(
        noise_multiplier=1.0, delta=1e-5, sampling="fixed", num_clients=100, clients_per_round=10
    )
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    # replacing a client moves the sum of clipped updates by 2C: z·C of noise is Gaussian(z / 2)
    ev = dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(0.5))
    direct.compose(dpa.SelfComposedDpEvent(ev, 30))
    assert acc.epsilon(30) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    local = dp.DpAccountant(noise_multiplier=4.0, delta=1e-5, noise="local")
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    direct.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(2.0), 3))
    assert local.epsilon(3) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    with pytest.raises(ConfigError, match="dp.accountant=pld"):
        dp.DpAccountant(1.0, 1e-5, sampling="fixed", accountant="pld").epsilon(1)


def test_l2_clip():
    v = np.array([3.0, 4.0])
    clipped, norm = dp.l2_clip(v, 1.0)
    assert norm == 5.0 and np.allclose(clipped, [0.6, 0.8])
    same, norm = dp.l2_clip(v, 10.0)
    assert same is v and norm == 5.0


def test_adaptive_clip_moves_towards_the_quantile():
    # every update unclipped (b = 1 > 0.5): the norm shrinks; none (b = 0): it grows
    assert dp.adaptive_clip_step(1.0, 1.0, 0.5, 0.2) == pytest.approx(np.exp(-0.1))
    assert dp.adaptive_clip_step(1.0, 0.0, 0.5, 0.2) == pytest.approx(np.exp(0.1))
    z = dp.split_noise_multiplier(1.0, 1.0)
    assert z > 1.0 and z**-2 + (2 * 1.0) ** -2 == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="dp.clipped_count_stddev"):
        dp.split_noise_multiplier(1.0, 0.5)


def _cfg(**dpc):
    base = {
        "name": "central",
        "noise": "central",
        "noise_multiplier": 0.0,
        "clip_norm": 0.5,
        "sampling": "fixed",
        "accountant": "rdp",
        "delta": 1e-5,
        "max_epsilon": None,
    }
    return {
        "seed": 0,
        "stage": "federated",
        "logger": {"plots": False},
        "fl": {"num_clients": 20, "rounds": 100, "secure_agg": "none"},
        "dp": {**base, **dpc},
    }


def test_max_epsilon_stops_before_the_budget_is_exceeded():
    from fedray.fl.strategies import FedAvg

    cfg = _cfg(noise_multiplier=1.0, max_epsilon=6.0, sampling="poisson")
    privacy = build_privacy(cfg, FedAvg(), 5, 3, 0)
    privacy.accountant.epsilon = lambda rounds: 0.7 * rounds  # the stop logic, not the accountant
    stop = next(r for r in range(100) if privacy.budget_exhausted(r))
    assert stop == 8  # round 9 (0-based 8) would reach 6.3 > 6; 8 rounds reach 5.6
    assert privacy.epsilon(stop) <= 6.0 < privacy.epsilon(stop + 1)


def test_central_dp_sums_clipped_updates_and_divides_by_expected_clients():
    from fedray.fl.strategies import FedAvg, Median

    with pytest.raises(ConfigError, match="needs each client's update"):
        build_privacy(_cfg(), Median(), 4, 3, 0)
    privacy = build_privacy(_cfg(), FedAvg(), 4, 3, 0)  # z = 0: no noise
    g = {"w": np.zeros(4, np.float32)}
    local = [{"w": np.array([3.0, 4.0, 0, 0], np.float32)}, {"w": np.full(4, 0.1, np.float32)}]
    plan = privacy.client_extra([0, 1], 0, g)["privacy"]
    results = []
    for cid, p in enumerate(local):
        sent, metrics = protect_update(cid, 0, g, p, 10, plan)
        assert np.linalg.norm(flatten_update(sent, g)) <= 0.5 + 1e-6
        results.append(ClientResult(cid, sent, 10, {"train/loss": 0.0, **metrics}))
    (agg,) = privacy.server_input(g, results, 0)
    ref = (np.array([0.3, 0.4, 0, 0]) + np.full(4, 0.1)) / 4  # expected clients per round: 4
    assert np.allclose(agg.params["w"], ref, atol=1e-6)
    assert privacy.round_metrics(None, 0)["dp/unclipped_frac"] == 0.5


def test_adaptive_clipping_steps_with_the_centred_count_of_the_clients_summed():
    """Andrew et al.'s budget split holds for sum(b_i - 1/2) (sensitivity 1/2), not for the plain
    count sum(b_i): Poisson drew 2 of an expected 4, both unclipped: (2 - 2/2) / 4 + 1/2 = 0.75
    (the plain count over 4 said 0.5, and charged the count query half its true cost)."""
    from fedray.fl.strategies import FedAvg

    cfg = _cfg(sampling="poisson", adaptive_clip=True, clipped_count_stddev=1e-12,
               target_quantile=0.5, clip_lr=0.2)
    privacy = build_privacy(cfg, FedAvg(), 4, 3, 0)
    g = {"w": np.zeros(4, np.float32)}
    plan = privacy.client_extra([0, 1], 0, g)["privacy"]
    results = []
    for cid in range(2):
        sent, metrics = protect_update(cid, 0, g, {"w": np.full(4, 0.01, np.float32)}, 10, plan)
        results.append(ClientResult(cid, sent, 10, {"train/loss": 0.0, **metrics}))
    privacy.server_input(g, results, 0)
    row = privacy.round_metrics(None, 0)
    assert row["dp/unclipped_frac"] == pytest.approx(0.75)
    assert row["dp/clip_norm"] == pytest.approx(0.5 * np.exp(-0.2 * (0.75 - 0.5)))
    rng = np.random.default_rng(0)
    one_more = [dp.noisy_unclipped_frac(u, 5, 10, 1.0, np.random.default_rng(0)) for u in (2, 3)]
    base = dp.noisy_unclipped_frac(2, 4, 10, 1.0, rng)
    assert one_more[1] - base == pytest.approx(0.05) and one_more[0] - base == pytest.approx(-0.05)
    assert dp.noisy_unclipped_frac(0, 10, 2, 0.0, rng) == 0.0  # clipped to [0, 1]


def test_a_round_poisson_left_empty_still_releases_central_dp_noise():
    """The accountant counts every round as a sampled Gaussian release; a round nobody was drawn
    into released nothing, so its emptiness (more likely when a client is absent) showed. Now it
    releases the noise alone, N(0, (z C)^2) over the expected clients, and adaptive clipping
    steps with a noisy count of none; local DP (each sender's own noise) releases nothing."""
    from fedray.fl.strategies import FedAvg

    privacy = build_privacy(_cfg(noise_multiplier=2.0, sampling="poisson"), FedAvg(), 4, 3, 0)
    g = {"w": np.zeros(20000, np.float32), "bn.running_var": np.full(3, 1e-4, np.float32)}
    assert privacy.skip_reason([]) is not None
    (noise,) = privacy.empty_release(g, 0)
    assert np.std(noise.params["w"]) == pytest.approx(2.0 * 0.5 / 4, rel=0.05)
    assert (noise.params["bn.running_var"] >= 1e-5).all()  # noise cannot make a variance < 0
    assert privacy.round_metrics(None, 0)["privacy/epsilon"] > 0
    adaptive = build_privacy(
        _cfg(noise_multiplier=0.0, sampling="poisson", adaptive_clip=True,
             clipped_count_stddev=1e-12, target_quantile=0.9, clip_lr=0.2), FedAvg(), 4, 3, 0)
    adaptive.skip_reason([])
    adaptive.empty_release(g, 0)
    row = adaptive.round_metrics(None, 0)  # a count of none is 1/2 (centred): below 0.9
    assert row["dp/unclipped_frac"] == pytest.approx(0.5)
    assert row["dp/clip_norm"] == pytest.approx(0.5 * np.exp(-0.2 * (0.5 - 0.9)))
    local = build_privacy(_cfg(name="local", noise="local", noise_multiplier=1.0,
                               sampling="poisson"), FedAvg(), 4, 3, 0)
    assert local.empty_release(g, 0) is None


def test_local_dp_noises_each_update():
    from fedray.fl.strategies import Median

    privacy = build_privacy(
        _cfg(name="local", noise="local", noise_multiplier=1.0), Median(), 4, 3, 0
    )
    g = {"w": np.zeros(1000, np.float32)}
    plan = privacy.client_extra([0], 0, g)["privacy"]
    sent, _ = protect_update(0, 0, g, {"w": np.zeros(1000, np.float32)}, 10, plan)
    assert np.std(sent["w"]) == pytest.approx(0.5, rel=0.1)  # z * C


def _dp(**kw):
    return {"name": "central", "noise": "central", "noise_multiplier": 1.0, "clip_norm": 1.0,
            "adaptive_clip": False, "target_quantile": 0.5, "clip_lr": 0.2,
            "clipped_count_stddev": None, "sampling": "poisson", "accountant": "rdp",
            "delta": 1e-5, "max_epsilon": None, **kw}


@pytest.mark.parametrize("noise", ["central", "local"])
def test_a_budget_round_1_alone_exceeds_is_refused_before_the_run(noise):
    """Once the server stopped before round 1 and the run crashed plotting zero rounds."""
    first = dp.accountant_of(_dp(noise=noise), 10, 2).epsilon(1)  # what the server computes
    with pytest.raises(ConfigError, match=rf"dp.max_epsilon: round 1 alone reaches epsilon "
                                          rf"{first:.3f} > dp.max_epsilon=0.5"):
        dp.check_dp(_dp(noise=noise, max_epsilon=0.5), 10, 2)
    dp.check_dp(_dp(noise=noise, max_epsilon=first * 1.01), 10, 2)  # round 1 fits: it runs


def test_the_count_noise_default_works_with_few_clients_and_a_too_small_value_says_the_bound():
    """Andrew et al.'s clients_per_round / 20 (0.1 for 2) cannot pass 2 x stddev > z = 1."""
    dp.check_dp(_dp(adaptive_clip=True), 2, 2)  # docs/privacy.md's command, on smoke's 2 clients
    assert dp.count_stddev(_dp(), 2) == 1.0 and dp.count_stddev(_dp(), 100) == 5.0
    assert dp.count_stddev(_dp(clipped_count_stddev=0.7), 2) == 0.7
    with pytest.raises(ConfigError, match=r"so a value > 0.5 \(null: max"):
        dp.check_dp(_dp(adaptive_clip=True, clipped_count_stddev=0.1), 2, 2)


@pytest.mark.parametrize(
    ("key", "value", "adaptive"),
    [("clipped_count_stddev", -1, True), ("clipped_count_stddev", 0, False),
     ("clip_lr", -1, True), ("clip_lr", -1, False), ("target_quantile", 1.5, False),
     ("target_quantile", -0.1, True)],
)
def test_adaptive_clip_knobs_are_checked_whether_on_or_not(key, value, adaptive):
    with pytest.raises(ConfigError, match=rf"^dp.{key}: {value} is not a number"):
        dp.check_dp(_dp(adaptive_clip=adaptive, **{key: value}), 10, 2)
    dp.check_dp(_dp(adaptive_clip=adaptive, target_quantile=1.0), 10, 2)  # the ends are allowed


def test_delta_must_be_below_one_over_the_clients():
    with pytest.raises(ConfigError, match=r"^dp.delta: 0.9 is not < 1 / fl.num_clients = 0.5"):
        dp.check_dp(_dp(delta=0.9), 2, 2)
    with pytest.raises(ConfigError, match=r"^dp.delta: 0.1 is not < 1 / fl.num_clients = 0.1"):
        dp.check_dp(_dp(delta=0.1), 10, 2)
    dp.check_dp(_dp(delta=0.09), 10, 2)


def test_feddf_is_refused_with_central_dp_and_allowed_with_local():
    from fedray.fl.strategies.feddf import FedDF
    from fedray.privacy.rules import check_strategy

    feddf = FedDF.__new__(FedDF)  # the rule's kind is what matters, not its transfer set
    with pytest.raises(ConfigError, match=r"^strategy: 'feddf' needs each client's model .* "
                                          r"dp=central gives the server only their noised sum"):
        check_strategy({"fl": {}, "dp": _dp()}, feddf)
    check_strategy({"fl": {}, "dp": _dp(name="local", noise="local")}, feddf)


@pytest.mark.parametrize(("key", "value", "line"), [
    ("noise_multiplier", -1, "dp.noise_multiplier: -1 is not a number >= 0"),
    ("noise_multiplier", "abc", "dp.noise_multiplier: 'abc' is not a number >= 0"),
    ("clip_norm", 0, "dp.clip_norm: 0 is not a number > 0"),
    ("max_epsilon", -2, "dp.max_epsilon: -2 is not a number > 0 (or null)"),
    ("sampling", "uniform", "dp.sampling: 'uniform' is not one of poisson, fixed"),
    ("adaptive_clip", "yes", "dp.adaptive_clip: 'yes' is not true or false"),
])
def test_each_dp_value_is_refused_in_the_one_form_of_every_config_check(key, value, line):
    with pytest.raises(ConfigError) as err:
        dp.check_dp(_dp(**{key: value}), 10, 2)
    assert str(err.value) == line
