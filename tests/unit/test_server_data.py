"""The server's own data (FedDF's transfer set, FLTrust's root set): strategies/server_data.py."""

from types import SimpleNamespace

import pytest

from fedray.config import ConfigError
from fedray.fl.strategies import server_data


def _capture(monkeypatch):
    built = []

    def fake_build(cfg, seed):
        built.append((dict(cfg), seed))
        return SimpleNamespace(root=f"root-{seed}", image_size=64)

    monkeypatch.setattr("fedray.data.sources.build_dataset", fake_build)
    return built


def test_a_generated_server_set_is_built_in_this_process_not_as_ray_tasks(monkeypatch):
    # the client actors start before the rules bind and may hold every CPU: a build whose Ray
    # tasks waited for a CPU never finished (FedDF on 2 cores, transfer set not yet cached)
    built = _capture(monkeypatch)
    cfg = {"seed": 0, "data": {"_target_": "x", "workers": None, "cache_dir": "/c"}}
    info = server_data.server_dataset(cfg, None, 1001, "transfer")
    (private, _), (server, seed) = built
    assert private["workers"] is None  # the clients' set: a cached lookup, left as configured
    assert server["workers"] == 1 and seed == 1001 and server["cache_dir"] == "/c"
    assert info.root == "root-1001"
    # a data config without the knob (a dataset that is read, not generated) gets none
    built.clear()
    server_data.server_dataset(cfg, {"_target_": "y"}, 7, "root")
    assert "workers" not in built[1][0]


def test_the_clients_own_data_is_refused(monkeypatch):
    _capture(monkeypatch)
    cfg = {"seed": 5, "data": {"_target_": "x", "workers": None}}
    with pytest.raises(ConfigError, match="clients' own dataset"):
        server_data.server_dataset(cfg, None, 5, "transfer")


def test_a_server_data_target_that_does_not_import_is_named_as_given():
    with pytest.raises(ConfigError, match=r"^strategy\.transfer\._target_: 'nosuch\.fn' cannot be "
                                          r"imported"):
        server_data.check_data_knob("transfer", {"_target_": "nosuch.fn"})
    assert server_data.check_data_knob("transfer", None) is None
