"""Server/client building blocks without Ray: sampling, selection of what travels, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.client import ClientActor, client_seed
from fedray.fl.pool import deal, wave_threads
from fedray.fl.server import clients_per_round, is_finite, sample_clients
from fedray.fl.train import (
    augment_turns_flips,
    extract_features,
    freeze_except,
    get_params,
    set_params,
    train_local,
    travel_names,
)
from fedray.models import TinyCNN, build_model, frozen_prefix, trainable_names
from fedray.models.dropout import Dropout

TINY_CNN = {"_target_": "fedray.models.tiny_cnn.TinyCNN", "name": "tiny_cnn"}



def test_sampling_is_seeded_per_round_and_sorted():
    a = [sample_clients(100, 10, seed=7, round_idx=r) for r in range(5)]
    b = [sample_clients(100, 10, seed=7, round_idx=r) for r in range(5)]
    assert a == b
    assert all(s == sorted(s) and len(set(s)) == 10 for s in a)
    assert len({tuple(s) for s in a}) == 5  # rounds differ
    assert sample_clients(100, 10, seed=8, round_idx=0) != a[0]
    assert sample_clients(5, 5, seed=0, round_idx=3) == [0, 1, 2, 3, 4]


def test_clients_per_round_from_fraction_or_count():
    assert clients_per_round({"num_clients": 100, "fraction": 0.1, "clients_per_round": None}) == 10
    assert clients_per_round({"num_clients": 100, "fraction": 1.0, "clients_per_round": 7}) == 7
    with pytest.raises(ConfigError, match="fl.clients_per_round"):
        clients_per_round({"num_clients": 5, "fraction": 1.0, "clients_per_round": 9})


def test_client_seeds_differ_by_round_and_client():
    seeds = {client_seed(0, r, c) for r in range(3) for c in range(3)}
    assert len(seeds) == 9 and client_seed(0, 1, 2) == client_seed(0, 1, 2)


def test_is_finite_rejects_nan_and_inf():
    assert is_finite({"a": np.ones(3, np.float32)})
    assert not is_finite({"a": np.array([1.0, np.nan], np.float32)})
    assert not is_finite({"a": np.array([np.inf], np.float32)})


def test_trainable_selection():
    model = TinyCNN(3, width=4)
    head = trainable_names(model, "classifier")
    assert head == ["classifier.1.weight", "classifier.1.bias"]
    assert frozen_prefix(model, head) == len(model.features)
    assert frozen_prefix(model, trainable_names(model, r"features\.8\.|classifier")) == 8
    assert frozen_prefix(model, trainable_names(model, "all")) == 0
    assert len(trainable_names(model, "all")) == len(list(model.parameters()))
    assert trainable_names(model, r"features\.4\.") == ["features.4.weight", "features.4.bias"]
    with pytest.raises(ConfigError, match="selects no parameters"):
        trainable_names(model, "nothing_matches")
    with pytest.raises(ConfigError, match="not a valid regex"):
        trainable_names(model, "(")


def test_bn_statistics_travel_only_with_their_layer():
    model = TinyCNN(3, width=4)
    assert "features.1.running_mean" in travel_names(model, trainable_names(model, "all"))
    assert "features.1.running_mean" not in travel_names(
        model, trainable_names(model, "classifier")
    )
    assert not any(
        "num_batches_tracked" in n
        for n in travel_names(model, ["features.1.weight", "features.1.bias"])
    )


def test_frozen_layers_do_not_change_in_local_training():
    torch.manual_seed(0)
    model = TinyCNN(3, width=4)
    names = trainable_names(model, "classifier")
    before = get_params(model, list(model.state_dict()))
    x = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    y = np.array([0, 1, 2] * 4)
    opt = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
    train_local(model, x, y, names, epochs=2, batch_size=4, optimizer_factory=opt, seed=0)
    after = get_params(model, list(model.state_dict()))
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same != k.startswith("classifier."), k  # head moved, all else (BN stats too) fixed


def test_set_params_round_trip_and_freeze_modes():
    model = TinyCNN(3, width=4)
    params = {k: np.full_like(v, 0.5) for k, v in get_params(model, ["classifier.1.bias"]).items()}
    set_params(model, params)
    assert torch.all(model.state_dict()["classifier.1.bias"] == 0.5)
    freeze_except(model, ["classifier.1.weight", "classifier.1.bias"])
    assert not model.features[1].training and model.classifier[0].training
    # the module walk is planned once, but every call re-applies it: after a model.train()
    # (evaluate and extract_features restore the mode) and for another trainable set
    model.train()
    freeze_except(model, ["classifier.1.weight", "classifier.1.bias"])
    assert not model.features[1].training and not model.features[0].weight.requires_grad
    freeze_except(model, ["features.0.weight", "features.0.bias"])
    assert model.features[0].training and not model.features[1].training
    assert model.features[0].weight.requires_grad and not model.classifier[1].weight.requires_grad


def test_pill_augmentation_only_turns_and_flips():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, (8, 5, 5, 3), dtype=np.uint8)
    out = augment_turns_flips(batch, rng)
    for a, b in zip(batch, out, strict=True):
        variants = [np.rot90(a, k) for k in range(4)] + [np.rot90(a, k)[:, ::-1] for k in range(4)]
        assert any(np.array_equal(v, b) for v in variants)


def test_dropout_matches_torch_dropout_in_distribution_and_eval():
    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(200, 50, 3, 3)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.02  # unbiased, like nn.Dropout
    drop.eval()
    assert drop(x) is x
    x.requires_grad_(True)
    drop.train()
    drop(x).sum().backward()
    g = x.grad[x.grad != 0]
    torch.testing.assert_close(g, torch.full_like(g, 1 / 0.7))  # the same mask scales the grad


def test_wave_threads_give_a_rounds_last_partial_wave_the_idle_cpus():
    # 5 clients on 4 half-CPU actors (2 CPUs): four at 1 thread, then the fifth alone on both
    assert wave_threads(5, 4, 0.5) == [1, 1, 1, 1, 2]
    # 5 clients on 2 one-CPU actors: two full waves, the fifth gets both CPUs
    assert wave_threads(5, 2, 1.0) == [1, 1, 1, 1, 2]
    assert wave_threads(4, 2, 1.0) == [1, 1, 1, 1]  # no partial wave
    assert wave_threads(7, 4, 1.0) == [1, 1, 1, 1, 1, 1, 1]  # 3 left on 4 CPUs: 1 each
    assert wave_threads(3, 8, 0.25) == [1, 1, 1]  # never fewer than one thread
    assert wave_threads(1, 1, 2.0) == [2]


def test_client_warm_up_leaves_the_model_as_it_was(tmp_path):
    from fedray.data.datasets import write_split

    rng = np.random.default_rng(0)
    write_split(
        tmp_path, "train", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), np.arange(6) % 3
    )
    torch.manual_seed(0)
    model = build_model({**TINY_CNN, "width": 4}, 3)
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    init = get_params(model, floats)
    spec = {
        "model": {**TINY_CNN, "width": 4},
        "num_classes": 3,
        "seed": 0,
        "init_state": init,
        "trainable": [n for n, _ in model.named_parameters()],
        "travel": floats,
        "cached": 0,
        "client": {
            "batch_size": 4,
            "epochs": 1,
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5},
        },
        "dataset_root": str(tmp_path),
    }
    actor = ClientActor(spec)  # warms up: one training step on a blank batch, then restores
    after = get_params(actor.model, floats)
    for k in floats:  # weights and BN running statistics alike
        np.testing.assert_array_equal(after[k], init[k], err_msg=k)
    assert actor.images is not None  # the dataset is open before round 1


def test_cached_prefix_trains_like_the_full_forward():
    x = np.random.default_rng(1).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    y = np.array([0, 1, 2] * 4)
    opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    results = []
    for use_cache in (False, True):
        torch.manual_seed(0)
        model = TinyCNN(3, width=4)
        names = trainable_names(model, r"features\.8\.|features\.9\.|classifier")
        k = frozen_prefix(model, names) if use_cache else 0
        inputs = extract_features(model, x, upto=k) if k else x
        train_local(model, inputs, y, names, 2, 4, opt, seed=3, cached=k)
        results.append(get_params(model, names))
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-4, atol=1e-5)


def test_lr_schedules():
    import torch

    from fedray.config import ConfigError
    from fedray.fl.train import make_schedule

    def lrs(name, steps=8):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
        sched = make_schedule(opt, name, steps)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        return out

    assert lrs("constant") == [0.2] * 8
    cos = lrs("cosine")
    assert cos[0] == 0.2 and all(a > b for a, b in zip(cos, cos[1:], strict=False))
    one = lrs("onecycle")
    assert one[0] < 0.02 and max(one) == pytest.approx(0.2) and one[-1] < 0.01
    assert one.index(max(one)) == 1  # a quarter of 8 steps warms up
    with pytest.raises(ConfigError, match="onecycle"):
        make_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "step", 4)


def test_round_lr_scale_and_lr_scale_in_local_training():
    from fedray.fl.train import round_lr_scale

    assert [round_lr_scale("constant", r, 4) for r in range(4)] == [1.0] * 4
    cos = [round_lr_scale("cosine", r, 4) for r in range(4)]
    assert cos[0] == 1.0 and cos[2] == pytest.approx(0.5) and 0 < cos[3] < 0.2
    with pytest.raises(ConfigError, match="client.lr_schedule='step'"):
        round_lr_scale("step", 0, 4)
    # lr_scale=0 leaves the weights where they were; 1 moves them
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    y = np.arange(8) % 2
    for scale, moves in ((0.0, False), (1.0, True)):
        torch.manual_seed(0)
        model = TinyCNN(2, width=4)
        names = trainable_names(model, "classifier")
        before = get_params(model, names)
        sgd = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
        train_local(model, x, y, names, 1, 4, sgd, seed=0, lr_scale=scale)
        after = get_params(model, names)
        assert any(not np.array_equal(before[k], after[k]) for k in names) == moves


def test_augment_with_cached_features_is_a_clear_error():
    from fedray.fl.server import check_augment

    cfg = {"client": {"augment": True}}
    with pytest.raises(ConfigError, match="client.augment=true .* fl.cache_features"):
        check_augment(cfg, cached=3)
    check_augment(cfg, cached=0)  # images: fine
    check_augment({"client": {"augment": False}}, cached=3)


def test_travelled_arrays_are_c_ordered_from_a_channels_last_model():
    from fedray.models import build_model

    model = build_model(dict(TINY_CNN), 3)
    params = get_params(model, [n for n, _ in model.named_parameters()])
    assert all(v.flags.c_contiguous for v in params.values())


def test_pool_boot_raises_its_threads_error_in_the_caller_and_closes():
    from fedray.fl.pool import PoolBoot

    def start():
        raise RuntimeError("no cluster here")

    boot = PoolBoot(start, {"client_cpus": 1, "client_gpus": 0}, 2, {}, lambda cfg, k: k)
    with pytest.raises(RuntimeError, match="no cluster here"):
        boot.result()
    boot.close()  # nothing was started: returns, and the thread is gone
    assert not boot._thread.is_alive()


def test_pool_boot_wait_ray_returns_once_the_threads_start_has():
    # a strategy building server data with Ray tasks waits for the thread's ray.init first
    import time

    from fedray.fl.pool import PoolBoot

    done = []

    def start():
        time.sleep(0.3)
        done.append(True)
        raise RuntimeError("no actors in this test")

    boot = PoolBoot(start, {"client_cpus": 1, "client_gpus": 0}, 2, {}, lambda cfg, k: k)
    boot.wait_ray()
    assert done == [True]
    with pytest.raises(RuntimeError, match="no actors"):
        boot.result()
    boot.close()


def test_client_actor_boots_before_its_spec_then_configures(tmp_path):
    # the pool's prestarted actors: a process with no spec yet, configured once the server has one
    from fedray.data.datasets import write_split

    rng = np.random.default_rng(0)
    write_split(
        tmp_path, "train", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), np.arange(6) % 3
    )
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    actor = ClientActor(None, {"num_threads": 1, "optimizer": sgd})
    assert not hasattr(actor, "model")  # nothing of a run yet
    model = build_model({**TINY_CNN, "width": 4}, 3)
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    spec = {
        "model": {**TINY_CNN, "width": 4},
        "num_classes": 3,
        "seed": 0,
        "init_state": get_params(model, floats),
        "trainable": [n for n, _ in model.named_parameters()],
        "travel": floats,
        "cached": 0,
        "client": {"batch_size": 4, "epochs": 1, "optimizer": sgd},
        "dataset_root": str(tmp_path),
    }
    assert actor.configure(spec) > 0  # the process id, as ping() returns it
    res = actor.fit(0, np.arange(6), get_params(model, floats), 0, {})
    assert res.num_samples == 6 and set(res.params) == set(floats)

    # ray.batch_clients: several clients in one call, each the same as its own fit; one that
    # raises comes back dropped and the others stand
    start = get_params(model, floats)
    alone = [actor.fit(c, np.arange(c, 6), start, 1, {}) for c in (0, 1)]
    spec["faults"] = [{"round": 2, "client": 2, "kind": "raise"}]
    calls = [(0, np.arange(0, 6), 1, {}), (2, np.arange(2, 6), 1, {}), (1, np.arange(1, 6), 1, {})]
    many = actor.fit_many(calls, start)
    assert [type(r).__name__ for r in many] == ["ClientResult", "Dropped", "ClientResult"]
    assert many[1].client_id == 2 and "injected fault" in many[1].reason
    for a, b in zip(alone, (many[0], many[2]), strict=True):
        assert a.client_id == b.client_id and a.num_samples == b.num_samples
        assert all(np.array_equal(a.params[k], b.params[k]) for k in floats)

    # under secure aggregation the update and the train loss leave only in the masked vector
    from fedray.fl.strategies import FedAvg
    from fedray.privacy.pipeline import MASKED, build_privacy

    privacy = build_privacy({"seed": 0, "stage": "federated", "logger": {"plots": False},
                             "fl": {"num_clients": 2, "secure_agg": "secagg", "rounds": 1}},
                            FedAvg(), 2, 3, 0)
    res = actor.fit(0, np.arange(6), start, 0, privacy.client_extra([0, 1], 0, start))
    assert set(res.params) == {MASKED} and "train/loss" not in res.metrics


def test_sticky_pools_send_a_client_to_the_same_actor_every_round():
    # cached features live on the actor that computed them: a sampled client must go back there
    for r in range(5):
        sampled = sample_clients(100, 20, seed=0, round_idx=r)
        owners, threads = deal(sampled, 2, 1.0, sticky=True)
        assert owners == [c % 2 for c in sampled]
        assert threads == [1] * 20
    # round robin by position otherwise, with the partial last wave's boost
    owners, threads = deal([3, 8, 9, 14, 20], 2, 1.0, sticky=False)
    assert owners == [0, 1, 0, 1, 0] and threads == [1, 1, 1, 1, 2]
    # all clients every round: sticky is round robin, the boost stays
    assert deal(list(range(5)), 2, 1.0, sticky=True) == ([0, 1, 0, 1, 0], [1, 1, 1, 1, 2])


@pytest.mark.parametrize("who", ["fl", "synth"])
def test_ray_starts_a_local_cluster_of_its_own_unless_told_to_join(monkeypatch, who):
    """Both Ray starters (client actors, the synthetic build's tasks) start a new local Ray with
    their CPU count, never a stray `ray start` cluster; they join one only when named."""
    import ray

    from fedray.fl import pool
    from fedray.pill.runner import Runner

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)

    def start():
        if who == "fl":
            pool.ensure_ray({"num_cpus": 2})
        else:
            with Runner(2):
                pass

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start()
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2
    # its workers at the starter's own priority, not Ray's default of 15 steps nicer
    assert calls[-1]["_system_config"]["worker_niceness"] == 0
    if who == "fl":
        pool.ensure_ray({"num_cpus": 2, "worker_nice": 7})
        assert calls[-1]["_system_config"] == {"preload_python_modules": list(pool.WORKER_PRELOAD),
                                               "worker_niceness": 7}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what `ray job submit` sets
    monkeypatch.setattr("fedray.checks.ray_address", lambda key, address: None)  # "it answers"
    start()
    assert calls[-1]["address"] == "10.0.0.5:6379" and "num_cpus" not in calls[-1]


@pytest.mark.parametrize(("address", "env", "named"),
                         [("10.0.0.1:6379", None, "ray.address=10.0.0.1:6379"),
                          (None, "10.0.0.2:6379", "RAY_ADDRESS=10.0.0.2:6379")])
def test_a_cluster_that_cannot_be_joined_is_a_one_line_error(address, env, named, monkeypatch):
    from fedray.config import ConfigError
    from fedray.fl import pool

    def refuse(address=None, **kw):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(pool.ray, "init", refuse)
    monkeypatch.setattr("fedray.checks.ray_address", lambda key, address: None)  # port answers
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=f"^{named}: no Ray cluster to join there"):
        pool.init_ray(address, local={})


@pytest.mark.parametrize("env", [False, True])
def test_an_address_where_nothing_answers_fails_at_once_instead_of_hanging(env, monkeypatch):
    """`ray.init` waits minutes for a cluster at a closed port (a typo): the port is tried first."""
    import socket

    from fedray.checks import ray_address
    from fedray.config import ConfigError
    from fedray.fl import pool

    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(pool.ray, "init", lambda **kw: pytest.fail("ray.init was called"))
    if env:
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    key = "RAY_ADDRESS" if env else "ray.address"
    with pytest.raises(ConfigError, match=f"^{key}=127.0.0.1:{port}: no Ray cluster answers"):
        pool.init_ray(None if env else f"127.0.0.1:{port}", local={})
    # the same check in the config's validation, with the forms Ray reads
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        live = s.getsockname()[1]
        assert ray_address("ray.address", f"127.0.0.1:{live}") == ("127.0.0.1", live)
        assert ray_address("ray.address", f"ray://localhost:{live}") == ("localhost", live)
        # auto: the cluster `ray start` left its address for on this machine, which must answer
        from ray._private import services

        for known, said in [(None, "no Ray cluster was started on this machine"),
                            (f"127.0.0.1:{port}", "the cluster `ray start` left its address "
                                                  f"for \\(127.0.0.1:{port}\\) does not answer")]:
            monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda a, k=known: k)
            with pytest.raises(ConfigError, match=f"^ray.address=auto: {said}"):
                ray_address("ray.address", "auto")
        monkeypatch.setattr(services, "canonicalize_bootstrap_address",
                            lambda a: f"127.0.0.1:{live}")
        assert ray_address("ray.address", "auto") == ("127.0.0.1", live)
    assert ray_address("k", "local") is None
    for bad in ("abc", "host:", "host:port", "http://h:1", 6379):
        with pytest.raises(ConfigError, match="is not auto, local, HOST:PORT or ray://HOST:PORT"):
            ray_address("ray.address", bad)


def test_a_worker_is_replaced_only_when_different_clients_raise_on_it_in_a_row():
    from fedray.fl.types import RaisedClients

    ledger = RaisedClients()
    # one client raising every round is that client's fault: its worker keeps serving
    assert not any(ledger.settle(0, {3}, succeeded=False) for _ in range(5))
    # a second client raising there with no success between implicates the worker
    assert ledger.settle(0, {5}, succeeded=False)
    assert ledger.since_success == {}  # cleared with the replacement
    # two clients raising in one round while a third fits fine: the worker is sound
    assert not ledger.settle(1, {1, 2}, succeeded=True)
    # a success wipes the record; workers are counted apart
    assert not ledger.settle(1, {1}, succeeded=False)
    assert not ledger.settle(1, set(), succeeded=True)
    assert not ledger.settle(1, {2}, succeeded=False)
    assert not ledger.settle(2, {1}, succeeded=False)
    assert ledger.settle(1, {4}, succeeded=False)
    # every client of one round raising on one worker: replaced at once
    assert ledger.settle(3, {0, 6}, succeeded=False)



def test_only_rays_token_auth_notice_is_quietened(monkeypatch):
    import logging

    from fedray.fl.pool import _Notice, quiet_token_notice

    quiet_token_notice()
    quiet_token_notice()  # once
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert sum(isinstance(f, _Notice) for f in log.filters) == 1
    monkeypatch.setattr(log, "disabled", False)  # a logging config earlier in the session may
    monkeypatch.setattr(log, "level", log.level)  # have turned it off (restored after the test;
    log.setLevel(logging.WARNING)  # setLevel, not the attribute, clears isEnabledFor's cache)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        log.warning("Token authentication is enabled for this Ray cluster. Set ...")
        log.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
    finally:
        log.removeHandler(handler)
    assert seen == ["Token authentication is disabled for this Ray cluster. Anyone ..."]
