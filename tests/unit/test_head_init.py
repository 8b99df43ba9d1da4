"""Closed-form (ridge) head initialisation: exact over any split of the data, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.head_init import (
    check_head_init,
    feature_stats,
    gram_matrix,
    linear_head,
    solve_head,
)
from fedray.fl.train import get_params, predict_logits, set_params
from fedray.models import TinyCNN, build_model, frozen_prefix, trainable_names

SQUEEZENET = {"_target_": "fedray.pill.squeezenet.build_squeezenet", "name": "squeezenet"}



def _features(n=120, dim=16, classes=4, seed=0):
    """Pooled-feature-like data: one Gaussian blob per class, plus their (N, D, 2, 2) maps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(0, 3, (classes, dim))
    pooled = centres[y] + rng.normal(0, 1, (n, dim))
    maps = np.repeat(pooled[:, :, None, None], 4, axis=2).reshape(n, dim, 2, 2)
    return torch.tensor(maps, dtype=torch.float32), y


def test_stats_are_the_two_sums():
    x, y = _features(n=12, dim=3, classes=2)
    s = feature_stats(x, y, 2)
    xa = np.c_[x.double().mean((2, 3)).numpy(), np.ones(12)]
    np.testing.assert_allclose(gram_matrix(s["gram"]), xa.T @ xa, rtol=1e-6)
    np.testing.assert_allclose(s["xty"], xa.T @ np.eye(2)[y])
    # the upper triangle, in float32: half the bytes twice over
    assert s["gram"].dtype == np.float32 and s["gram"].shape == (4 * 5 // 2,)
    with pytest.raises(ValueError, match="upper triangle"):
        gram_matrix(np.zeros(7))


def test_sums_over_label_skewed_clients_solve_the_centralized_head():
    x, y = _features()
    model = TinyCNN(4, width=4)  # 16 features
    pooled = solve_head([feature_stats(x, y, 4)], model, 1e-3, 10.0)
    # 4 clients, one class each: the most skewed split there is
    clients = [feature_stats(x[y == c], y[y == c], 4) for c in range(4)]
    federated = solve_head(clients, model, 1e-3, 10.0)
    assert set(federated) == {"classifier.1.weight", "classifier.1.bias"}
    assert federated["classifier.1.weight"].shape == (4, 16, 1, 1)
    for k in pooled:
        np.testing.assert_allclose(federated[k], pooled[k], rtol=1e-5, atol=1e-5)
    # and it is a good classifier of the blobs: the head on top of these features gets them right
    set_params(model, federated)
    logits = torch.flatten(model.classifier.eval()(x), 1)
    assert (logits.argmax(1).numpy() == y).mean() > 0.95
    # the scale only sharpens the logits
    half = solve_head(clients, model, 1e-3, 5.0)
    np.testing.assert_allclose(
        half["classifier.1.bias"] * 2, federated["classifier.1.bias"], rtol=1e-5, atol=1e-6
    )


def test_ridge_penalty_is_relative_to_feature_energy():
    x, y = _features()
    model = TinyCNN(4, width=4)
    a = solve_head([feature_stats(x, y, 4)], model, 1e-2, 1.0)
    b = solve_head([feature_stats(x * 10, y, 4)], model, 1e-2, 1.0)  # same data, 10x the scale
    np.testing.assert_allclose(
        b["classifier.1.weight"] * 10, a["classifier.1.weight"], rtol=1e-4, atol=1e-6
    )


def test_heads_that_are_not_linear_are_refused():
    plain = build_model({**SQUEEZENET, "batch_norm": False}, 5)  # ReLU on the logits
    with pytest.raises(ConfigError, match=r"fl.head_init=ridge needs .*ReLU"):
        linear_head(plain)
    assert isinstance(linear_head(build_model(dict(SQUEEZENET), 5)), torch.nn.Conv2d)


def test_a_model_without_features_and_classifier_is_refused_by_name():
    class Net(torch.nn.Module):  # the README's bring-your-own model: body and out
        def __init__(self):
            super().__init__()
            self.body, self.out = torch.nn.Flatten(), torch.nn.Linear(12, 2)

    with pytest.raises(ConfigError, match=r"fl.head_init=ridge .* Net has no such split"):
        linear_head(Net())


def test_head_init_needs_a_frozen_cached_backbone():
    model = TinyCNN(4, width=4)
    head = trainable_names(model, "classifier")
    every = trainable_names(model, "all")
    ok = {"head_init": "ridge", "trainable": "classifier", "cache_features": True}
    assert check_head_init(ok, model, head, frozen_prefix(model, head)) == "ridge"
    assert check_head_init({"head_init": "random"}, model, every, 0) == "random"
    with pytest.raises(ConfigError, match="fl.trainable=classifier and fl.cache_features=true"):
        check_head_init({**ok, "trainable": "all"}, model, every, 0)
    with pytest.raises(ConfigError, match="fl.trainable=classifier and fl.cache_features=true"):
        check_head_init({**ok, "cache_features": False}, model, head, 0)
    with pytest.raises(ConfigError, match="fl.head_init='lda'"):
        check_head_init({**ok, "head_init": "lda"}, model, head, 3)


def test_solved_head_scores_like_a_forward_pass():
    # the solve is in pooled-feature space; the model applies conv then pool: same logits
    x, y = _features(dim=16)
    model = TinyCNN(4, width=4)
    set_params(model, solve_head([feature_stats(x, y, 4)], model, 1e-3, 10.0))
    logits = predict_logits(model, x, cached=len(model.features))
    xa = np.c_[x.double().mean((2, 3)).numpy(), np.ones(len(y))]
    params = get_params(model, ["classifier.1.weight", "classifier.1.bias"])
    w = np.r_[params["classifier.1.weight"].reshape(4, 16).T, params["classifier.1.bias"][None]]
    np.testing.assert_allclose(logits.numpy(), xa @ w, rtol=1e-4, atol=1e-4)
