"""Secure aggregation: exact cancellation, recovery of dropped clients, thresholds, encoding."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.fl.types import ClientResult
from fedray.privacy import secagg
from fedray.privacy.pipeline import MASKED, build_privacy, flatten_update, protect_update

D = 257


def _setup(n=6, mode="secagg", **kw):
    ids = list(range(n))
    clients = secagg.SecAggClients.setup(ids, b"test-round", D, mode=mode, **kw)
    rng = np.random.default_rng(1)
    plain = {i: rng.integers(0, 2**16, D) for i in ids}
    return ids, clients, plain


def _ring_sum(vectors, mod_bits=32):
    dtype = secagg.ring_dtype(mod_bits)
    return np.sum(np.stack(vectors).astype(dtype), axis=0, dtype=dtype)  # wraps: the ring


@pytest.mark.parametrize("mod_bits", [32, 64])
def test_masks_cancel_exactly(mod_bits):
    ids, clients, plain = _setup(mod_bits=mod_bits)
    server = secagg.SecAggServer(clients.public)
    for i in ids:
        server.receive(i, secagg.mask_vector(plain[i], i, clients.secrets[i], clients.public))
    total = server.unmask(ids, clients.reveal)
    assert np.array_equal(total, _ring_sum([plain[i] for i in ids], mod_bits))


def test_server_never_holds_an_unmasked_vector():
    ids, clients, plain = _setup()
    server = secagg.SecAggServer(clients.public)
    for i in ids:
        server.receive(i, secagg.mask_vector(plain[i], i, clients.secrets[i], clients.public))
    for i, y in server.received.items():
        assert np.mean(y == plain[i].astype(np.uint32)) < 0.01  # masked everywhere
        assert y.max() > 2**20  # spread over the ring, not the 16-bit encoding
    server.unmask(ids, clients.reveal)
    assert set(vars(server)) == {"public", "received"}  # nothing else was handed over


def test_dropped_before_masking_is_recovered_from_key_shares():
    ids, clients, plain = _setup()
    server = secagg.SecAggServer(clients.public)
    senders = [0, 1, 3, 5]  # 2 and 4 never sent a masked vector
    for i in senders:
        server.receive(i, secagg.mask_vector(plain[i], i, clients.secrets[i], clients.public))
    total = server.unmask(senders, clients.reveal)
    assert np.array_equal(total, _ring_sum([plain[i] for i in senders]))


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_vanished_after_masking_still_summed(mode):
    ids, clients, plain = _setup(n=10, mode=mode, degree=6 if mode == "secagg+" else None)
    server = secagg.SecAggServer(clients.public)
    senders = [i for i in ids if i != 9]  # 9 dropped before masking
    for i in senders:
        server.receive(i, secagg.mask_vector(plain[i], i, clients.secrets[i], clients.public))
    responders = [i for i in senders if i not in (1, 4, 7)]  # 30% vanish after masking
    total = server.unmask(responders, clients.reveal)
    assert np.array_equal(total, _ring_sum([plain[i] for i in senders]))


def test_below_threshold_fails_clearly():
    ids, clients, plain = _setup(n=5, threshold=0.75)  # 3 of 4 neighbours
    server = secagg.SecAggServer(clients.public)
    for i in ids:
        server.receive(i, secagg.mask_vector(plain[i], i, clients.secrets[i], clients.public))
    with pytest.raises(secagg.SecAggError, match="reconstruction threshold"):
        server.unmask([0, 1], clients.reveal)


def test_a_client_never_reveals_both_shares_of_one_owner():
    _, clients, _ = _setup(n=4)
    clients.reveal(0, senders={1, 2, 3}, dropped=set())
    with pytest.raises(secagg.SecAggError, match="both shares"):
        clients.reveal(0, senders={2, 3}, dropped={1})


def test_shamir_any_threshold_subset_rebuilds():
    secret = bytes(range(32))
    shares = secagg.shamir_split(secret, [3, 5, 8, 9, 12], threshold=3)
    assert secagg.shamir_combine({h: shares[h] for h in (5, 9, 12)}) == secret
    assert secagg.shamir_combine({h: shares[h] for h in (3, 8, 9)}) == secret
    with pytest.raises(secagg.SecAggError, match="do not rebuild"):
        secagg.shamir_combine({h: shares[h] for h in (3, 8)})  # below threshold: garbage


def test_quantization_round_trip_bound():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, 1000)
    clip, bits = 2.0, 16
    q, clipped = secagg.quantize(x, clip, bits)
    assert q.min() >= 0 and q.max() <= 2**bits - 1
    assert clipped == int(np.sum(np.abs(x) > clip))
    back = secagg.dequantize_sum(q, 1.0, clip, bits)
    inside = np.abs(x) <= clip
    assert np.max(np.abs(back[inside] - x[inside])) <= clip / (2**bits - 1) + 1e-12
    assert np.allclose(back[~inside], np.sign(x[~inside]) * clip)
    # a weighted sum decodes to the weighted mean
    w = np.array([3, 5])
    qs = np.stack([secagg.quantize(part, clip, bits)[0] for part in (x[:10], x[10:20])])
    mean = secagg.dequantize_sum((w[:, None] * qs).sum(0), w.sum(), clip, bits)
    ref = (3 * np.clip(x[:10], -2, 2) + 5 * np.clip(x[10:20], -2, 2)) / 8
    assert np.max(np.abs(mean - ref)) <= clip / (2**bits - 1)


@pytest.mark.parametrize("n,k", [(10, 4), (11, 6), (30, 10)])
def test_secagg_plus_graph_is_k_regular(n, k):
    graph = secagg.neighbour_graph(range(n), "secagg+", k, b"tag")
    assert all(len(v) == k for v in graph.values())
    assert all(i in graph[j] for i, nb in graph.items() for j in nb)  # symmetric
    assert all(i not in nb for i, nb in graph.items())
    assert graph != secagg.neighbour_graph(range(n), "secagg+", k, b"other")  # random per round
    assert secagg.default_degree(100) % 2 == 0 and secagg.default_degree(100) <= 16


def test_pipeline_masks_in_the_client_and_unmasks_the_average():
    cfg = {
        "seed": 0,
        "stage": "federated",
        "fl": {
            "num_clients": 4,
            "secure_agg": "secagg",
            "head_init": "random",
            "rounds": 1,
            "secagg": {"clip": 1.0, "quant_bits": 16, "drop_after_mask": 0.25},
        },
        "logger": {"plots": False},
    }
    from fedray.fl.strategies import FedAvg, Median

    with pytest.raises(ValueError, match="needs each client's update"):
        build_privacy(cfg, Median(), 4, 3, 0)
    privacy = build_privacy(cfg, FedAvg(), 4, 3, 0)
    g = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
    rng = np.random.default_rng(0)
    local = [
        {k: rng.uniform(-0.5, 0.5, v.shape).astype(np.float32) for k, v in g.items()}
        for _ in range(4)
    ]
    counts, losses = [10, 20, 30, 40], [0.5, 1.0, 1.5, 2.0]
    plan = privacy.client_extra([0, 1, 2, 3], 0, g)["privacy"]
    results = []
    for cid in range(4):
        sent, _ = protect_update(cid, 0, g, local[cid], counts[cid], plan, loss=losses[cid])
        assert set(sent) == {MASKED}  # the driver only ever sees the masked vector
        results.append(ClientResult(cid, sent, counts[cid], {}))  # the loss is in the mask too
    (agg,) = privacy.server_input(g, results, 0)
    assert agg.metrics["train/loss"] == pytest.approx(1.5, abs=32 / 65535)  # sample-weighted
    ref = sum(c * flatten_update(p, g) for c, p in zip(counts, local, strict=True)) / 100
    assert np.max(np.abs(flatten_update(agg.params, g) - ref)) <= 1.0 / 65535 + 1e-6
    received = privacy._round["received"].received
    for cid in range(4):
        q, _ = secagg.quantize(flatten_update(local[cid], g), 1.0, 16)
        assert np.mean(received[cid][:-3] == (q * counts[cid]).astype(np.uint32)) < 0.05
    assert privacy._round["vanished"] == 1


def test_secagg_keys_given_while_it_is_off_are_refused_but_not_its_defaults():
    from fedray.config import ConfigError
    from fedray.privacy.rules import check_idle_secagg

    with pytest.raises(ConfigError, match=r"^fl.secagg.drop_after_mask: fl.secure_agg=none, so "
                                          "it would change nothing"):
        check_idle_secagg({"secure_agg": "none"}, ["fl.rounds", "fl.secagg.drop_after_mask"])
    check_idle_secagg({"secure_agg": "none", "secagg": {"clip": 2.0}}, ["fl.rounds"])
    check_idle_secagg({"secure_agg": "secagg"}, ["fl.secagg.drop_after_mask"])


def test_a_ring_the_sum_would_wrap_is_refused_before_the_run():
    """Once a SecAggError traceback after round 1."""
    from fedray.config import ConfigError, compose_plain
    from fedray.privacy import check_dealt, check_privacy

    cfg = compose_plain(["+experiment=smoke", "fl.secure_agg=secagg", "fl.secagg.quant_bits=40"])
    with pytest.raises(ConfigError, match=r"^fl.secagg.quant_bits: 40 bits .* x a single "
                                          r"sample's weight overflows the 2\^32 ring .*; set "
                                          r"fl.secagg.mod_bits=64 or fl.secagg.quant_bits <= 32"):
        check_privacy(cfg, 2, 4)
    cfg["fl"]["secagg"]["quant_bits"] = 16  # 2^16 - 1 levels x 2 shards of 24 samples: fits
    parts = [np.arange(24), np.arange(24)]
    check_dealt(cfg, parts)
    cfg["fl"]["secagg"]["quant_bits"] = 27  # x 48 samples: wraps 2^32 (26 bits fit)
    with pytest.raises(ConfigError, match=r"up to 48 samples \(its 2 largest shards\) overflows "
                                          r"the 2\^32 ring .* or fl.secagg.quant_bits <= 26"):
        check_dealt(cfg, parts)
    cfg["attack"] = {"name": "backdoor", "fraction": 0.5, "poison_frac": 1.0}
    cfg["fl"]["secagg"]["quant_bits"] = 26  # fits 48 samples, not the attacker's 24 copies more
    with pytest.raises(ConfigError, match=r"up to 72 samples .* fl.secagg.quant_bits <= 25"):
        check_dealt(cfg, parts)
    cfg["dp"] = {"name": "central", "noise": "central"}  # each client weighs 1
    check_dealt(cfg, parts)


def test_feddf_is_refused_under_secure_aggregation():
    from fedray.config import ConfigError
    from fedray.fl.strategies.feddf import FedDF
    from fedray.privacy.rules import check_strategy

    with pytest.raises(ConfigError, match=r"^strategy: 'feddf' needs each client's model .* "
                                          r"fl.secure_agg=secagg gives the server only their sum"):
        check_strategy({"fl": {"secure_agg": "secagg"}}, FedDF.__new__(FedDF))


def _secagg_dp(clients: int, z: float, sampling: str) -> dict:
    """Secure aggregation with central DP (clip 0.5, noise multiplier z) over `clients`."""
    return {"seed": 0, "stage": "federated", "logger": {"plots": False},
            "fl": {"num_clients": clients, "secure_agg": "secagg", "rounds": 20,
                   "secagg": {"clip": 1.0, "quant_bits": 16}},
            "dp": {"name": "central", "noise": "central", "noise_multiplier": z,
                   "clip_norm": 0.5, "sampling": sampling, "accountant": "rdp", "delta": 1e-5,
                   "max_epsilon": None}}


def test_under_secure_aggregation_no_clients_figure_travels_in_the_clear():
    """A client's update norm and whether DP clipped it travelled next to its masked vector (the
    server learnt each phone's norm); the unclipped bit now travels only inside the masked sum."""
    from fedray.fl.strategies import FedAvg

    privacy = build_privacy(_secagg_dp(3, 0.0, "fixed"), FedAvg(), 3, 3, 0)
    g = {"w": np.zeros(4, np.float32)}
    plan = privacy.client_extra([0, 1, 2], 0, g)["privacy"]
    ups = [np.full(4, 0.01), np.full(4, 0.02), np.array([3.0, 4.0, 0, 0])]  # the last clipped
    results = []
    for cid, up in enumerate(ups):
        sent, metrics = protect_update(cid, 0, g, {"w": up.astype(np.float32)}, 10, plan)
        assert set(sent) == {MASKED} and metrics == {}
        results.append(ClientResult(cid, sent, 10, {"train/loss": 0.0}))
    privacy.server_input(g, results, 0)
    assert privacy.round_metrics(None, 0)["dp/unclipped_frac"] == pytest.approx(2 / 3)
    assert privacy.skip_reason([]) is not None  # a skipped round next: not the last one's figure
    assert "dp/unclipped_frac" not in privacy.round_metrics(None, 1)


def test_a_poisson_round_of_one_client_is_skipped_under_secure_aggregation_only():
    """Secure aggregation cannot hide one client's update (SecAggError killed the run)."""
    from fedray.fl.strategies import FedAvg

    cfg = _secagg_dp(5, 1.0, "poisson")
    privacy = build_privacy(cfg, FedAvg(), 2, 3, 0)
    assert privacy.skip_reason([]) == "Poisson sampling drew no client"
    assert "secure aggregation needs 2" in privacy.skip_reason([3])
    assert privacy.skip_reason([1, 3]) is None
    with pytest.raises(secagg.SecAggError, match="at least 2 clients"):
        privacy.client_extra([3], 0, {"w": np.zeros(4, np.float32)})
    plain = build_privacy({**cfg, "fl": {**cfg["fl"], "secure_agg": "none"}}, FedAvg(), 2, 3, 0)
    assert plain.skip_reason([3]) is None
