"""FLTrust: trust scores, rescaling to the server update, the root set, checks and state."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.strategies import STRATEGIES, FedAvg, build_strategy
from fedray.fl.strategies.fltrust import FLTrust, balanced_subset, mad_keep, trust_weights
from fedray.fl.train import evaluate, get_params, set_params, train_local
from fedray.fl.types import ClientResult
from fedray.privacy.pipeline import build_privacy
from tests.conftest import toy_server


def test_trust_is_relu_of_the_cosine_and_updates_take_the_server_norm(monkeypatch):
    g = {"w": np.zeros(2, np.float32)}
    g0 = {"w": np.array([2.0, 0.0])}  # norm 2
    ups = [np.array([1.0, 1.0]), np.array([30.0, 0.0]), np.array([-4.0, 0.0])]
    trust, cos = trust_weights(ups, g0["w"])
    assert np.allclose(cos, [np.sqrt(0.5), 1.0, -1.0])
    assert np.allclose(trust, [np.sqrt(0.5), 1.0, 0.0])

    rule = FLTrust()
    rule._model_factory = object  # bound, with the server's training replaced by a fixed g0
    rule._cfg = {"client": {"batch_size": 4, "epochs": 1}}
    monkeypatch.setattr(rule, "server_update", lambda params, steps: g0)
    results = [ClientResult(i, {"w": u.astype(np.float32)}, 10) for i, u in enumerate(ups)]
    out = rule.aggregate(g, results)
    # each update rescaled to norm 2, weighted by trust / sum(trust); the flipped one weighs 0
    t = np.sqrt(0.5)
    want = (t * np.array([np.sqrt(2), np.sqrt(2)]) + 1.0 * np.array([2.0, 0.0])) / (t + 1.0)
    assert np.allclose(out["w"], want, atol=1e-6)
    assert rule.round_metrics()["fltrust/trusted"] == 2.0
    assert rule.round_metrics()["fltrust/min_cos"] == pytest.approx(-1.0)
    # weighting=samples: the cosine only filters; FedAvg of the trusted updates, norms capped at 2
    by_samples = FLTrust(weighting="samples")
    by_samples._model_factory = object
    by_samples._cfg = rule._cfg
    monkeypatch.setattr(by_samples, "server_update", lambda params, steps: g0)
    results[1].num_samples = 30
    out = by_samples.aggregate(g, results)
    assert np.allclose(out["w"], 0.25 * np.array([1.0, 1.0]) + 0.75 * np.array([2.0, 0.0]))
    with pytest.raises(ConfigError, match="strategy.weighting"):
        FLTrust(weighting="votes")
    # nobody agrees with the server: the model does not move
    flipped = [ClientResult(0, {"w": np.array([-1.0, 0.0], np.float32)}, 10)]
    assert np.array_equal(rule.aggregate(g, flipped)["w"], g["w"])


def test_memory_trusts_on_each_clients_moving_average_of_cosines(monkeypatch):
    g = {"w": np.zeros(2, np.float32)}
    g0 = {"w": np.array([1.0, 0.0])}
    rule = FLTrust(weighting="samples", memory=0.75)
    rule._model_factory = object
    rule._cfg = {"client": {"batch_size": 4, "epochs": 1}}
    monkeypatch.setattr(rule, "server_update", lambda params, steps: g0)

    def round_of(*vectors):
        results = [ClientResult(i, {"w": np.array(v, np.float32)}, 10) for i, v in vectors]
        return rule.aggregate(g, results), rule.round_metrics()["fltrust/trusted"]

    # round 1: client 0 agrees (cos 0.8), client 1 points against the server (cos -0.6)
    out, trusted = round_of((0, [0.8, 0.6]), (1, [-0.6, 0.8]))
    assert trusted == 1.0 and np.allclose(out["w"], [0.8, 0.6])
    assert rule.scores == pytest.approx({0: 0.8, 1: -0.6})
    # round 2: client 0 dips below 0 (cos -0.6), client 1 now agrees a little (cos 0.6):
    # on history 0 keeps its trust (0.75 * 0.8 + 0.25 * -0.6 = 0.45), 1 stays out (-0.3)
    out, trusted = round_of((0, [-0.6, 0.8]), (1, [0.6, 0.8]))
    assert rule.scores == pytest.approx({0: 0.45, 1: -0.3})
    assert trusted == 1.0 and np.allclose(out["w"], [-0.6, 0.8])
    # a client seen for the first time starts from its own cosine; absent clients keep theirs
    round_of((2, [1.0, 0.0]))
    assert rule.scores == pytest.approx({0: 0.45, 1: -0.3, 2: 1.0})
    # the scores travel in the checkpoint; a checkpoint from before memory loads with none
    again = FLTrust(memory=0.75)
    again.load_state_dict(rule.state_dict())
    assert again.scores == rule.scores and again.rounds_done == 3
    again.load_state_dict({"name": "fltrust", "rounds_done": 2})
    assert again.scores == {} and again.rounds_done == 2
    # memory 0 is the paper: the same two rounds trust on this round's cosine alone
    plain = FLTrust(weighting="samples")
    plain._model_factory, plain._cfg = object, rule._cfg
    monkeypatch.setattr(plain, "server_update", lambda params, steps: g0)
    r2 = [ClientResult(0, {"w": np.array([-0.6, 0.8], np.float32)}, 10),
          ClientResult(1, {"w": np.array([0.6, 0.8], np.float32)}, 10)]
    assert np.allclose(plain.aggregate(g, r2)["w"], [0.6, 0.8])
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(ConfigError, match="strategy.memory"):
            FLTrust(memory=bad)


def test_norm_median_caps_at_the_trusted_updates_median_norm(monkeypatch):
    g = {"w": np.zeros(2, np.float32)}
    g0 = {"w": np.array([0.1, 0.0])}  # a server update far smaller than the clients'
    ups = [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [40.0, 0.0], [-5.0, 0.0]]  # norms 1, 2, 3, 40; 5
    results = [ClientResult(i, {"w": np.array(u, np.float32)}, 10) for i, u in enumerate(ups)]
    for weighting in ("samples", "cosine"):
        rule = FLTrust(weighting=weighting, norm="median")
        rule._model_factory = object
        rule._cfg = {"client": {"batch_size": 4, "epochs": 1}}
        monkeypatch.setattr(rule, "server_update", lambda params, steps: g0)
        out = rule.aggregate(g, results)
        m = rule.round_metrics()
        # trusted: 0, 2 and 3 (1 is orthogonal to g0: cosine 0; 4 points against it)
        assert m["fltrust/trusted"] == 3.0 and m["fltrust/ref_norm"] == pytest.approx(3.0)
        if weighting == "samples":  # capped at 3: [1,0], [3,0], [40,0] -> [3,0]; equal counts
            assert np.allclose(out["w"], [(1.0 + 3.0 + 3.0) / 3, 0.0])
        else:  # every trusted update rescaled to 3 and weighted by its trust (all cosines 1)
            assert np.allclose(out["w"], [3.0, 0.0])
    # server_weight 1: g0 joins the average as one more client of the trusted ones' mean weight
    joined = FLTrust(weighting="samples", norm="median", server_weight=1.0)
    joined._model_factory, joined._cfg = object, rule._cfg
    monkeypatch.setattr(joined, "server_update", lambda params, steps: g0)
    assert np.allclose(joined.aggregate(g, results)["w"], [(1.0 + 3.0 + 3.0 + 0.1) / 4, 0.0])
    server = FLTrust(weighting="samples")  # the paper's reference: everything capped at 0.1
    server._model_factory, server._cfg = object, rule._cfg
    monkeypatch.setattr(server, "server_update", lambda params, steps: g0)
    assert np.allclose(server.aggregate(g, results)["w"], [0.1, 0.0])
    with pytest.raises(ConfigError, match="strategy.norm"):
        FLTrust(norm="mean")
    with pytest.raises(ConfigError, match="strategy.server_weight"):
        FLTrust(server_weight=-1)


def test_filter_mad_keeps_phones_near_the_median_score_and_drops_the_flippers(monkeypatch):
    assert mad_keep(np.array([0.01, -0.01, 0.0, 0.02, -0.02, -0.15])).tolist() == [
        True, True, True, True, True, False]
    # early rounds: honest cosines high and close, one honest phone low but positive
    early = FLTrust(weighting="samples", filter="mad")
    early._model_factory, early._cfg = object, {"client": {"batch_size": 4, "epochs": 1}}
    g2 = {"w": np.zeros(2, np.float32)}
    monkeypatch.setattr(early, "server_update", lambda params, steps: {"w": np.array([1.0, 0])})
    cosines = np.array([0.3, 0.32, 0.31, 0.05, -0.3])
    assert mad_keep(cosines).tolist() == [True, True, True, False, False]
    spread = [[c, np.sqrt(1 - c * c)] for c in cosines]
    early.aggregate(g2, [ClientResult(i, {"w": np.array(u, np.float32)}, 10)
                         for i, u in enumerate(spread)])
    assert early.round_metrics()["fltrust/trusted"] == 4.0  # the flipper alone is out
    g = {"w": np.zeros(3, np.float32)}
    g0 = {"w": np.array([1.0, 0.0, 0.0])}
    # late in training: honest updates nearly orthogonal to g0, two just below 0; one flipper
    ups = [[0.02, 1.0, 0.0], [-0.01, 0.0, 1.0], [-0.02, 1.0, 0.0], [0.01, 0.0, 1.0],
           [-0.5, 0.5, 0.0]]
    results = [ClientResult(i, {"w": np.array(u, np.float32)}, 10) for i, u in enumerate(ups)]
    for flt, kept in (("positive", [0, 3]), ("mad", [0, 1, 2, 3])):
        rule = FLTrust(weighting="samples", norm="median", filter=flt)
        rule._model_factory = object
        rule._cfg = {"client": {"batch_size": 4, "epochs": 1}}
        monkeypatch.setattr(rule, "server_update", lambda params, steps: g0)
        out = rule.aggregate(g, results)
        assert rule.round_metrics()["fltrust/trusted"] == len(kept)
        want = np.mean([np.array(ups[i]) for i in kept], axis=0)  # norms ~1: no cap bites
        assert np.allclose(out["w"], want, atol=1e-3)
    # a flipper inside the band (scores spread by the honest phones) points against the trusted
    # phones' consensus and stays out; the honest ones below 0 point along it and come in
    flip = [*ups[:4], [-0.05, -0.5, -0.5]]
    assert mad_keep(np.array([u[0] / np.linalg.norm(u) for u in flip])).tolist() == [True] * 5
    rule = FLTrust(weighting="samples", norm="median", filter="mad")
    rule._model_factory, rule._cfg = object, {"client": {"batch_size": 4, "epochs": 1}}
    monkeypatch.setattr(rule, "server_update", lambda params, steps: g0)
    out = rule.aggregate(g, [ClientResult(i, {"w": np.array(u, np.float32)}, 10)
                             for i, u in enumerate(flip)])
    assert rule.round_metrics()["fltrust/trusted"] == 4.0
    assert np.allclose(out["w"], np.mean(np.array(ups[:4]), axis=0), atol=1e-3)
    with pytest.raises(ConfigError, match="strategy.filter"):
        FLTrust(filter="vote")
    with pytest.raises(ConfigError, match="weighting=samples"):
        FLTrust(filter="mad")


def test_root_subset_is_balanced_over_classes_and_seeded():
    labels = np.repeat(np.arange(5), [50, 40, 30, 20, 2])
    idx = balanced_subset(labels, 20, 3)
    counts = np.bincount(labels[idx], minlength=5)
    assert counts.tolist() == [5, 5, 4, 4, 2]  # round robin; the 2-item class gives what it has
    assert len(set(idx.tolist())) == 20 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, balanced_subset(labels, 20, 3))
    assert not np.array_equal(idx, balanced_subset(labels, 20, 4))
    assert len(balanced_subset(labels, None, 0)) == len(labels)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Four honest clients, each holding 2 of the 4 classes, one step of local training from a
    shared start, and a fifth that sends its honest update flipped and scaled 4x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    client = {
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05},
        "batch_size": 16,
        "epochs": 2,
        "lr_schedule": "constant",
    }
    data, x, y, server, names, travel, val = toy_server(tmp_path_factory.mktemp("cache"))
    cfg = {"data": data, "seed": 0, "client": client, "fl": {"rounds": 5}}
    start = get_params(server, travel)
    opt = functools.partial(torch.optim.SGD, lr=0.05)
    results = []
    for cid, pair in enumerate([(0, 1), (2, 3), (0, 2), (1, 3), (0, 1)]):
        model = copy.deepcopy(server)
        idx = np.flatnonzero(np.isin(y, pair))
        train_local(model, x[idx], y[idx], names, 2, 16, opt, seed=cid)
        params = get_params(model, travel)
        if cid == 4:  # the attacker: -4 x its update
            params = {k: start[k] - 4.0 * (params[k] - start[k]) for k in params}
        results.append(ClientResult(cid, params, len(idx)))
    yield cfg, server, start, results, val
    torch.set_num_threads(threads)


def _acc(server, params, val) -> float:
    model = copy.deepcopy(server)
    set_params(model, params)
    return evaluate(model, val[0], val[1], 4)[0]["acc"]


def test_fltrust_gives_a_sign_flipper_no_weight_and_keeps_the_honest_direction(attacked):
    cfg, server, start, results, val = attacked
    rule = build_strategy({"_target_": "fedray.fl.strategies.fltrust.FLTrust", "root_size": 40})
    rule.bind(functools.partial(copy.deepcopy, server), cfg)
    assert len(rule._y) == 40 and np.bincount(rule._y).tolist() == [10, 10, 10, 10]
    out = rule.aggregate(start, results)
    m = rule.round_metrics()
    assert m["fltrust/min_cos"] < 0 and m["fltrust/trusted"] == 4.0  # the flipper is out
    honest = FedAvg().aggregate(start, results[:4])
    attacked_avg = FedAvg().aggregate(start, results)
    flat = lambda p: np.concatenate([(p[k] - start[k]).ravel() for k in start])  # noqa: E731
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(flat(out), flat(honest)) > 0.8
    assert cos(flat(attacked_avg), flat(honest)) < 0  # FedAvg is dragged backwards
    assert rule.rounds_done == 1
    state = rule.state_dict()
    again = FLTrust()
    again.load_state_dict(state)
    assert again.rounds_done == 1
    # unbound (a sweep's dry check): FedAvg
    plain = FLTrust().aggregate(start, results)
    assert all(np.allclose(plain[k], attacked_avg[k]) for k in plain)
    assert _acc(server, out, val) >= _acc(server, attacked_avg, val)


def test_root_set_must_not_be_the_clients_data_and_knobs_are_checked(attacked):
    cfg, server, *_ = attacked
    with pytest.raises(ConfigError, match="strategy.root"):
        FLTrust(root_seed=0).bind(functools.partial(copy.deepcopy, server), cfg)
    with pytest.raises(ConfigError, match="strategy.root_size"):
        FLTrust(root_size=0)
    with pytest.raises(ConfigError, match="strategy.root "):
        FLTrust(root="somewhere")
    with pytest.raises(ConfigError, match="strategy.nope"):
        build_strategy({"name": "fltrust", "nope": 1})
    assert "fltrust" in STRATEGIES


def test_fltrust_needs_each_update_so_secure_aggregation_is_refused():
    cfg = {
        "seed": 0,
        "stage": "federated",
        "fl": {"num_clients": 4, "secure_agg": "secagg", "head_init": "random", "rounds": 1,
               "secagg": {"clip": 1.0, "quant_bits": 16}},
        "logger": {"plots": False},
    }
    with pytest.raises(ValueError, match="needs each client's update"):
        build_privacy(cfg, FLTrust(), 4, 3, 0)


def test_the_server_update_follows_the_lr_schedule_of_the_round_it_aggregates(attacked):
    """g0 took its lr scale from the aggregations counted (rounds_done), so after a round that
    aggregated nothing (a Poisson round left empty under local DP) the server trained with the
    round before's scale while the clients used this round's; now the server's round index."""
    cfg, server, start, _, _ = attacked
    cosine = {**cfg, "client": {**cfg["client"], "lr_schedule": "cosine"}}
    norms = []
    for round_idx in (0, 4):  # cosine over 5 rounds: scale 1, then 0.5 (1 + cos(4 pi / 5))
        rule = build_strategy({"_target_": "fedray.fl.strategies.fltrust.FLTrust",
                               "root_size": 40})
        rule.bind(functools.partial(copy.deepcopy, server), cosine)
        rule.round_idx = round_idx
        g0 = rule.server_update(start, client_steps=1)
        weights = [v for k, v in g0.items() if "running" not in k and "batches" not in k]
        norms.append(np.sqrt(sum(float((v**2).sum()) for v in weights)))
    assert rule.rounds_done == 0  # the same aggregation count: only the round differs
    # a few SGD steps at 0.095 x the lr (1 + cos(4 pi / 5)) / 2: a step about that much shorter
    assert norms[1] < 0.2 * norms[0]
