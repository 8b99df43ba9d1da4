"""`ray.keep_actors=true`: client actors kept warm on a running cluster between runs."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from fedray.config import ConfigError
from fedray.fl.inprocess import check_backend
from fedray.fl.kept import (
    NAMESPACE,
    changed_module,
    kept_actors,
    kept_names,
    park,
    park_key,
    parking,
    parking_on,
    process_start_time,
    unpark,
)
from fedray.run import run

pytestmark = pytest.mark.usefixtures("ray_session")


def _kept() -> list[str]:
    return sorted(kept_names())


@pytest.fixture
def no_kept_actors():
    """Kept actors outlive a run (memory, names): none before, none left after."""
    import ray

    def clear() -> None:
        for name in _kept():
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        for _ in range(100):
            if not _kept():
                return
            time.sleep(0.05)

    clear()
    yield
    clear()


def _all_cpus_free() -> bool:
    """Every CPU of the test Ray is free again (a killed actor's come back shortly after)."""
    import ray

    for _ in range(100):
        if ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]:
            return True
        time.sleep(0.1)
    return False


def _pids(names: list[str]) -> list[int]:
    import ray

    return ray.get([ray.get_actor(n, namespace=NAMESPACE).ping.remote() for n in names])


@pytest.mark.slow
def test_a_second_run_reuses_the_warm_actors_with_the_same_numbers(make_cfg, tmp_path,
                                                                   no_kept_actors):
    import ray

    address = ray.get_runtime_context().gcs_address
    fresh = run(make_cfg("fl.rounds=2", run_dir=tmp_path / "fresh"))
    assert _kept() == []  # without the switch nothing outlives the run
    keep = ("fl.rounds=2", "ray.keep_actors=true", f"ray.address={address}")
    first = run(make_cfg(*keep, run_dir=tmp_path / "first"))
    names = _kept()
    assert len(names) == 2, names  # the smoke run's pool: one actor per client (2)
    pids = _pids(names)
    # idle between runs they hold none of the run's data (shards, the dataset's memory map)
    held = [ray.get_actor(n, namespace=NAMESPACE).__ray_call__.remote(
        lambda self: (len(self.shards), self.images is None)) for n in names]
    assert ray.get(held) == [(0, True), (0, True)]
    # and no CPUs: a data build's Ray tasks or a run without them
    # (a pool of its own, 0.5 CPU an actor here) is not left waiting for the test Ray's 2
    assert _all_cpus_free()
    second = run(make_cfg(*keep, run_dir=tmp_path / "second"))
    assert _kept() == names and _pids(names) == pids  # the same processes served both runs
    for key in ("val/acc", "val/loss"):
        assert first[key] == second[key] == fresh[key], key
    rows = [
        [json.loads(line)["val/acc"] for line in (tmp_path / d / "metrics.jsonl").open()]
        for d in ("fresh", "first", "second")
    ]
    assert rows[0] == rows[1] == rows[2]


@pytest.mark.slow
def test_actors_of_another_shape_are_stopped(no_kept_actors):
    from fedray.fl.client import make_client_actor

    boot = {"num_threads": 1, "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True,
                                            "lr": 0.1}}
    ray_cfg = {"client_cpus": 1.0, "client_gpus": 0.0}
    kept_actors(make_client_actor(1.0, 0.0), ray_cfg, 2, boot)
    before = _kept()
    assert len(before) == 2
    half = {"client_cpus": 0.5, "client_gpus": 0.0}
    b = kept_actors(make_client_actor(0.5, 0.0), half, 3, boot)
    import ray

    assert len(ray.get([x.ping.remote() for x in b], timeout=120)) == 3
    assert len(_kept()) == 3 and not set(before) & set(_kept())


def test_an_actor_whose_code_changed_is_started_afresh(tmp_path, no_kept_actors):
    """The replacement path, with a stand-in actor class whose `stale` reads a marker file."""
    import ray

    marker, gone = tmp_path / "changed", tmp_path / "gone"

    class Stub:
        def __init__(self, spec=None, boot=None) -> None:
            pass

        def stale(self):
            if gone.exists():
                os._exit(1)  # its process dies: as good as stale
            return str(marker) if marker.exists() else None

        def ping(self) -> int:
            return os.getpid()

    cls = ray.remote(num_cpus=0.5)(Stub)
    shape = {"client_cpus": 0.5, "client_gpus": 0.0}
    first = ray.get([a.ping.remote() for a in kept_actors(cls, shape, 2, {})])
    again = ray.get([a.ping.remote() for a in kept_actors(cls, shape, 2, {})])
    assert again == first
    marker.write_text("edited")
    renewed = ray.get([a.ping.remote() for a in kept_actors(cls, shape, 2, {})])
    assert not set(renewed) & set(first)
    marker.unlink()
    gone.write_text("")
    actors = kept_actors(cls, shape, 2, {})  # the old ones die answering and are replaced
    gone.unlink()
    assert len(set(ray.get([a.ping.remote() for a in actors])) - set(renewed)) == 2


def test_a_sweep_trials_parked_actors_serve_the_next_pool_of_their_shape_only(tmp_path):
    """`parking` (a sweep trial in a process Tune may reuse): the next run here takes the parked
    pool of its own shape, replaces a parked actor that died, and stops a pool of another shape."""
    import ray
    from ray.exceptions import RayActorError

    gone = tmp_path / "gone"

    class Stub:
        def __init__(self, spec=None, boot=None) -> None:
            pass

        def stale(self):
            if gone.exists():
                os._exit(1)
            return None

        def ping(self) -> int:
            return os.getpid()

    cls = ray.remote(num_cpus=0.25)(Stub)
    shape = {"client_cpus": 0.25, "client_gpus": 0.0}
    assert not parking_on()
    with parking():
        assert parking_on()
        first = unpark(cls, shape, 2, {})  # nothing parked: new ones
        pids = ray.get([a.ping.remote() for a in first])
        park(park_key(shape, 2), first)
        again = unpark(cls, shape, 2, {})
        assert ray.get([a.ping.remote() for a in again]) == pids  # the same processes
    assert not parking_on()
    park(park_key(shape, 2), again)
    gone.write_text("")
    renewed = unpark(cls, shape, 2, {})  # both die answering: replaced
    gone.unlink()
    new_pids = ray.get([a.ping.remote() for a in renewed])
    assert not set(new_pids) & set(pids)
    park(park_key(shape, 2), renewed)
    bigger = unpark(cls, shape, 3, {})  # another pool size: the parked two are stopped
    assert len(set(ray.get([a.ping.remote() for a in bigger])) - set(new_pids)) == 3
    for old in renewed:
        with pytest.raises(RayActorError):
            ray.get(old.ping.remote(), timeout=60)
    for a in bigger:
        ray.kill(a, no_restart=True)
    assert _all_cpus_free()


def test_changed_module_finds_a_source_edited_after_the_process_started(tmp_path, monkeypatch):
    started = process_start_time()
    assert started <= time.time()
    source = tmp_path / "fedray_kept_probe.py"
    source.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fedray_kept_probe  # noqa: F401

    try:
        later = time.time() + 5
        os.utime(source, (later, later))
        assert changed_module(time.time()) == str(source)
        source.unlink()  # a file removed since: its code in memory is stale too
        assert changed_module(time.time()) == str(source)
    finally:
        sys.modules.pop("fedray_kept_probe", None)


@pytest.mark.parametrize(
    ("ray_cfg", "env", "says"),
    [
        ({"keep_actors": "yes"}, {}, "not true or false"),
        ({"keep_actors": True}, {}, "ray start --head"),
        ({"keep_actors": True, "backend": "inprocess"}, {}, "starts no client actors"),
    ],
)
def test_keep_actors_is_refused_where_nothing_could_keep_them(ray_cfg, env, says, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="ray.keep_actors") as err:
        check_backend({"ray": ray_cfg})
    assert says in str(err.value)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster to keep them on
    if ray_cfg.get("backend") != "inprocess" and ray_cfg["keep_actors"] is True:
        check_backend({"ray": ray_cfg})


@pytest.mark.slow
def test_a_failed_kept_actor_is_replaced_for_the_run_only(make_cfg, tmp_path, no_kept_actors):
    """A client whose actor dies has it replaced; the replacement is the run's own and ends
    with it (its CPU free again), and the kept pool is one actor short until the next run
    starts it again."""
    import ray

    address = ray.get_runtime_context().gcs_address
    cfg = make_cfg("fl.rounds=2", "ray.keep_actors=true", f"ray.address={address}",
                   "fl.quorum=0.5")
    cfg["fl"]["faults"] = [{"round": 1, "client": 0, "kind": "crash"}]
    run(cfg)
    assert len(_kept()) == 1
    assert _all_cpus_free()
    run(make_cfg("fl.rounds=1", "ray.keep_actors=true", f"ray.address={address}",
                 run_dir=tmp_path / "next"))
    assert len(_kept()) == 2
