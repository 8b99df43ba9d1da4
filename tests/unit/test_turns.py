"""model.turns: the backbone averaged over quarter turns of the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.train import extract_features, predict_logits
from fedray.models import build_model
from fedray.models.turns import turn_mean


def _images(n=6, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_four_turns_make_the_model_blind_to_how_the_photo_was_held():
    torch.manual_seed(0)
    plain = build_model({"name": "tiny_cnn", "width": 4}, 3).eval()
    turned = build_model({"name": "tiny_cnn", "width": 4, "turns": 4}, 3).eval()
    turned.load_state_dict(plain.state_dict())
    x = _images()
    x90 = np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))
    a, b = predict_logits(turned, x), predict_logits(turned, x90)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # without turns the same weights do see the difference
    assert not torch.allclose(predict_logits(plain, x), predict_logits(plain, x90), atol=1e-5)


def test_cached_features_equal_the_full_forward_with_turns():
    torch.manual_seed(0)
    model = build_model({"name": "squeezenet", "turns": 4}, 5).eval()
    x = _images(n=4, size=32)
    feats = extract_features(model, x)
    torch.testing.assert_close(
        predict_logits(model, feats, cached=len(model.features)), predict_logits(model, x),
        rtol=1e-4, atol=1e-4,
    )


def test_turn_mean_of_one_turn_is_the_plain_backbone_and_two_turns_use_half_turns():
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(turn_mean(conv, x, 1), conv(x))
    half = (conv(x) + torch.rot90(conv(torch.rot90(x, 2, (2, 3))), -2, (2, 3))) / 2
    torch.testing.assert_close(turn_mean(conv, x, 2), half)


def test_turns_errors_are_clear():
    with pytest.raises(ConfigError, match="model.turns=3"):
        build_model({"name": "tiny_cnn", "turns": 3}, 2)
    with pytest.raises(ConfigError, match="torchvision's SqueezeNet"):
        build_model({"name": "squeezenet", "batch_norm": False, "turns": 4}, 2)
    model = build_model({"name": "tiny_cnn", "turns": 4}, 2)
    with pytest.raises(ConfigError, match="only its first 4 blocks are frozen"):
        extract_features(model, _images(), upto=4)
    with pytest.raises(ConfigError, match="square images"):
        turn_mean(torch.nn.Identity(), torch.zeros(1, 3, 8, 6), 4)
