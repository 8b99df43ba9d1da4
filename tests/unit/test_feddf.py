"""FedDF: distilling a drifted ensemble beats averaging it; composition, checks and state."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.strategies import STRATEGIES, build_strategy
from fedray.fl.strategies.fedavg import FedAvg
from fedray.fl.strategies.feddf import FedDF
from fedray.fl.train import evaluate, get_params, train_local
from fedray.fl.types import ClientResult
from fedray.models.tiny_cnn import TinyCNN
from tests.conftest import toy_server


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    """Two clients from different random inits, each trained on half the data: their logits
    ensemble well, their weights do not average (hidden units are matched in neither order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster, and the cores are shared
    data, x, y, server, names, travel, val = toy_server(tmp_path_factory.mktemp("cache"))
    cfg = {"data": data, "seed": 0}
    opt = functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9)
    halves = np.random.default_rng(0).permutation(len(y))
    results = []
    for cid in range(2):
        torch.manual_seed(10 + cid)
        client = TinyCNN(4, width=8)
        idx = np.sort(halves[cid::2])
        train_local(client, x[idx], y[idx], names, 8, 16, opt, seed=cid)
        results.append(ClientResult(cid, get_params(client, travel), len(idx)))
    yield cfg, server, get_params(server, travel), results, val
    torch.set_num_threads(threads)


def _acc(server, params, val) -> float:
    model = copy.deepcopy(server)
    state = model.state_dict()
    with torch.no_grad():
        for k, v in params.items():
            state[k].copy_(torch.from_numpy(v))
    return evaluate(model, val[0], val[1], 4)[0]["acc"]


def test_feddf_beats_the_plain_average_of_a_drifted_ensemble(drifted):
    cfg, server, start, results, val = drifted
    plain = FedAvg().aggregate(start, results)
    feddf = FedDF(steps=60, lr=3e-3, batch_size=32, eval_every=10, patience=3)
    feddf.bind(functools.partial(copy.deepcopy, server), cfg)
    distilled = feddf.aggregate(start, results)
    acc_plain, acc_df = _acc(server, plain, val), _acc(server, distilled, val)
    assert acc_df > acc_plain + 0.25, (acc_plain, acc_df)
    assert feddf.last["held_kl_after"] < feddf.last["held_kl_before"]
    assert set(distilled) == set(plain)
    # the server logs the plain average beside the distilled model (val_base/*), and the KLs
    reference = feddf.reference()
    assert all(np.array_equal(reference[k], plain[k]) for k in plain)
    metrics = feddf.round_metrics()
    assert metrics["feddf/held_kl_after"] == feddf.last["held_kl_after"]
    assert metrics["feddf/steps"] <= 60


def test_unbound_feddf_is_its_base_rule_and_state_round_trips(drifted):
    _, _, start, results, _ = drifted
    from fedray.fl.strategies.fedadam import FedAdam

    feddf = build_strategy(
        {"_target_": "fedray.fl.strategies.feddf.FedDF", "base": {"name": "fedadam"}}
    )
    base = FedAdam()
    got, want = feddf.aggregate(start, results), base.aggregate(start, results)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    state = feddf.state_dict()
    again = FedDF(base={"name": "fedadam"})
    again.load_state_dict(state)
    assert again.rounds_done == 1 and np.array_equal(
        again.base.m[next(iter(start))], base.m[next(iter(start))]
    )
    assert "feddf" in STRATEGIES


def test_transfer_set_must_not_be_the_clients_data(drifted):
    cfg, server, *_ = drifted
    with pytest.raises(ConfigError, match="strategy.transfer"):
        FedDF(transfer_seed=0).bind(functools.partial(copy.deepcopy, server), cfg)
    with pytest.raises(ConfigError, match="strategy.steps"):
        FedDF(steps=-1)
    with pytest.raises(ConfigError, match="strategy.base"):
        FedDF(base={"name": "nope"})


def test_the_ensemble_is_the_plain_or_the_sample_weighted_mean_of_logits():
    from fedray.fl.strategies.feddf import ensemble_logits

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = np.random.default_rng(0).integers(0, 255, (4, 2, 2, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    results = [
        ClientResult(
            client_id=i,
            params={"1.weight": rng.normal(size=(3, 12)).astype(np.float32),
                    "1.bias": rng.normal(size=3).astype(np.float32)},
            num_samples=n,
            metrics={},
        )
        for i, n in enumerate((1, 3))
    ]
    from fedray.fl.train import predict_logits, set_params

    each = []
    for r in results:
        set_params(model, r.params)
        each.append(predict_logits(model, x))
    plain = ensemble_logits(model, results, x)
    weighted = ensemble_logits(model, results, x, weighted=True)
    torch.testing.assert_close(plain, (each[0] + each[1]) / 2)
    torch.testing.assert_close(weighted, (each[0] + 3 * each[1]) / 4)
    with pytest.raises(ConfigError, match="strategy.weighted"):
        FedDF(weighted="yes")


def test_distillation_draws_its_dropout_from_the_round_alone_and_leaves_the_global_rng(drifted):
    """The student trains with Dropout on; its masks come from (seed, transfer_seed, round), not
    from the driver's global torch RNG (which a resumed run re-seeds at construction), and that RNG
    is left as it was: a resumed FedDF run distills what the uninterrupted one distilled."""
    cfg, server, start, results, _ = drifted
    assert any(isinstance(m, torch.nn.Dropout) or "Dropout" in type(m).__name__
               for m in server.classifier.modules())

    def feddf() -> FedDF:
        rule = FedDF(steps=6, batch_size=32, val_fraction=0.0)  # no early stop: the last step
        rule.bind(functools.partial(copy.deepcopy, server), cfg)
        return rule

    def same(a, b) -> bool:
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    torch.manual_seed(0)
    full = feddf()
    first = full.aggregate(start, results)
    checkpoint = copy.deepcopy(full.state_dict())  # what the server saves after round 1
    second = full.aggregate(first, results)  # round 2 of the uninterrupted run
    assert not same(first, full.reference())  # the distillation did change the params

    torch.manual_seed(0)
    torch.rand(123)  # the global RNG elsewhere than the first run had it
    before = torch.random.get_rng_state()
    again = feddf().aggregate(start, results)
    assert torch.equal(torch.random.get_rng_state(), before)  # not drawn from, not re-seeded
    assert same(first, again)

    resumed = feddf()  # a fresh process continuing after round 1, its torch seeded otherwise
    resumed.load_state_dict(checkpoint)
    torch.manual_seed(1)
    assert same(second, resumed.aggregate(first, results))
    assert resumed.rounds_done == full.rounds_done == 2
