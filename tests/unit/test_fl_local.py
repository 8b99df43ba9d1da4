"""fl.local (client-local layers, FedBN): which entries stay local, and the clients' store."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from fedray.config import ConfigError
from fedray.fl.local import LocalLayers, local_names
from fedray.fl.train import travel_names
from fedray.fl.types import ClientResult


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 2), nn.LayerNorm(2))


def test_norm_names_every_norm_layer_that_travels_and_nothing_else():
    net = _net()
    travel = travel_names(net, [n for n, _ in net.named_parameters()])
    assert local_names(net, travel, "norm") == [
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "5.weight", "5.bias"]
    assert local_names(net, travel, r"^1\.") == ["1.weight", "1.bias", "1.running_mean",
                                                 "1.running_var"]
    assert local_names(net, travel, None) == []
    # a BatchNorm whose parameters do not train does not travel, so it cannot stay local either
    frozen_bn = travel_names(net, ["0.weight", "0.bias", "4.weight", "4.bias"])
    with pytest.raises(ConfigError, match="fl.local=norm: no normalization layer"):
        local_names(net, frozen_bn, "norm")
    with pytest.raises(ConfigError, match="matches none"):
        local_names(net, travel, "nosuch")
    with pytest.raises(ConfigError, match="nothing would be federated"):
        local_names(net, travel, ".")
    with pytest.raises(ConfigError, match="not a valid regex"):
        local_names(net, travel, "(")
    with pytest.raises(ConfigError, match="is not null, norm or a regex"):
        local_names(net, travel, 3)


def test_clients_keep_their_own_entries_and_the_server_holds_their_weighted_mean():
    init = {"bn": np.zeros(2, np.float32)}
    store = LocalLayers(["bn"], init)
    shared = {"w": np.ones(3, np.float32), "bn": np.full(2, 9.0, np.float32)}
    assert store.start(shared, 4)["bn"].tolist() == [0, 0]  # never seen: the initial entries
    assert store.mean()["bn"].tolist() == [0, 0]
    results = [
        ClientResult(0, {"w": np.full(3, 1.0, np.float32), "bn": np.array([1, 2], np.float32)}, 1),
        ClientResult(1, {"w": np.full(3, 2.0, np.float32), "bn": np.array([4, 8], np.float32)}, 3),
    ]
    out = store.keep(results)
    assert [sorted(r.params) for r in out] == [["w"], ["w"]]  # what is uploaded and aggregated
    assert [r.num_samples for r in out] == [1, 3]
    assert store.start(shared, 1)["bn"].tolist() == [4, 8]
    assert store.start(shared, 1)["w"].tolist() == [1, 1, 1]  # the shared entries as given
    assert store.mean()["bn"].tolist() == [3.25, 6.5]  # (1x[1,2] + 3x[4,8]) / 4
    again = LocalLayers(["bn"], init)
    again.load_state_dict(store.state_dict())
    assert again.start(shared, 0)["bn"].tolist() == [1, 2]
