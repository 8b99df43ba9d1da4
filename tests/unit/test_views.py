"""model.turns and model.zooms: the backbone over turned (averaged) and zoomed (stacked) views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.train import extract_features, predict_logits
from fedray.models import build_model
from fedray.models.views import centre_zoom, turn_mean, view_features


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
        predict_logits(model, feats, cached=len(model.features)),
        predict_logits(model, x),
        rtol=1e-4,
        atol=1e-4,
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


def test_centre_zoom_enlarges_the_centre_and_keeps_the_size():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:6, 2:6] = 1.0  # a bright 4x4 square in the middle of a dark 8x8 crop
    z = centre_zoom(x, 2.0)
    assert z.shape == x.shape
    torch.testing.assert_close(z, torch.ones_like(x))  # the centre half fills the whole crop
    assert centre_zoom(x, 1.0) is x


def test_zooms_stack_each_views_features_and_widen_the_head():
    torch.manual_seed(0)
    one = build_model({"name": "tiny_cnn", "width": 4, "turns": 2}, 3).eval()
    two = build_model({"name": "tiny_cnn", "width": 4, "turns": 2, "zooms": [1.0, 1.5]}, 3).eval()
    assert two.classifier[1].in_channels == 2 * one.classifier[1].in_channels
    two.features.load_state_dict(one.features.state_dict())
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        stacked = view_features(two.features, x, 2, (1.0, 1.5))
        plain = turn_mean(one.features, x, 2)
        zoomed = turn_mean(one.features, centre_zoom(x, 1.5), 2)
    torch.testing.assert_close(stacked, torch.cat([plain, zoomed], 1))


def test_cached_features_equal_the_full_forward_with_zooms():
    torch.manual_seed(0)
    model = build_model({"name": "squeezenet", "turns": 2, "zooms": [1.0, 1.6]}, 5).eval()
    x = _images(n=3, size=32)
    feats = extract_features(model, x)
    assert feats.shape[1] == 1024
    torch.testing.assert_close(
        predict_logits(model, feats, cached=len(model.features)),
        predict_logits(model, x),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("zooms", [[], [0.5], [1.0, 1.0], "big", [1.0, "x"]])
def test_bad_zooms_are_clear_errors(zooms):
    with pytest.raises(ConfigError, match="model.zooms"):
        build_model({"name": "tiny_cnn", "zooms": zooms}, 2)


def test_zoomed_models_refuse_a_partly_frozen_backbone_and_torchvision():
    with pytest.raises(ConfigError, match="only its first 4 blocks are frozen"):
        extract_features(build_model({"name": "tiny_cnn", "zooms": [1.0, 2.0]}, 2), _images(), 4)
    with pytest.raises(ConfigError, match="torchvision's SqueezeNet"):
        build_model({"name": "squeezenet", "batch_norm": False, "zooms": [1.0, 2.0]}, 2)
