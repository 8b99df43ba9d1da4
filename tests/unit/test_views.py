"""model.turns, model.zooms and model.taps: the backbone over turned (averaged) and zoomed
(stacked) views, and the head on pooled outputs of chosen blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.config import ConfigError
from fedray.fl.train import extract_features, predict_logits
from fedray.models import build_model
from fedray.models.views import centre_zoom, tapped, turn_mean, view_features

TINY_CNN = {"_target_": "fedray.models.tiny_cnn.TinyCNN", "name": "tiny_cnn"}
SQUEEZENET = {"_target_": "fedray.pill.squeezenet.build_squeezenet", "name": "squeezenet"}



def _images(n=6, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_four_turns_make_the_model_blind_to_how_the_photo_was_held():
    torch.manual_seed(0)
    plain = build_model({**TINY_CNN, "width": 4}, 3).eval()
    turned = build_model({**TINY_CNN, "width": 4, "turns": 4}, 3).eval()
    turned.load_state_dict(plain.state_dict())
    x = _images()
    x90 = np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))
    a, b = predict_logits(turned, x), predict_logits(turned, x90)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # without turns the same weights do see the difference
    assert not torch.allclose(predict_logits(plain, x), predict_logits(plain, x90), atol=1e-5)


def test_cached_features_equal_the_full_forward_with_turns():
    torch.manual_seed(0)
    model = build_model({**SQUEEZENET, "turns": 4}, 5).eval()
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
        build_model({**TINY_CNN, "turns": 3}, 2)
    with pytest.raises(ConfigError, match="model.turns=4 needs a model"):
        build_model(
            {**SQUEEZENET, "batch_norm": False, "turns": 4}, 2
        )
    model = build_model({**TINY_CNN, "turns": 4}, 2)
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
    one = build_model({**TINY_CNN, "width": 4, "turns": 2}, 3).eval()
    two = build_model({**TINY_CNN, "width": 4, "turns": 2, "zooms": [1.0, 1.5]}, 3).eval()
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
    model = build_model({**SQUEEZENET, "turns": 2, "zooms": [1.0, 1.6]}, 5).eval()
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
        build_model({**TINY_CNN, "zooms": zooms}, 2)


def test_zoomed_models_refuse_a_partly_frozen_backbone_and_torchvision():
    with pytest.raises(ConfigError, match="only its first 4 blocks are frozen"):
        extract_features(build_model({**TINY_CNN, "zooms": [1.0, 2.0]}, 2), _images(), 4)
    with pytest.raises(ConfigError, match="torchvision's SqueezeNet"):
        build_model({**SQUEEZENET, "batch_norm": False, "zooms": [1.0, 2.0]}, 2)


def test_taps_pool_the_chosen_blocks_and_size_the_head():
    torch.manual_seed(0)
    model = build_model({**TINY_CNN, "width": 4, "taps": [3, -1], "pool": "avgmax"}, 3)
    model.eval()
    assert model.taps == (3, 11)
    # block 3 has 4 channels, block 11 has 16; avg and max of each: 2 x (4 + 16)
    assert isinstance(model.classifier[1], torch.nn.Linear)
    assert model.classifier[1].in_features == 40
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = view_features(model.features, x, 1, (1.0,), model.taps, model.pool)
        b3 = model.features[:4](x)
        b11 = model.features[4:](b3)
    assert out.shape == (2, 40)
    want = torch.cat([b3.mean((2, 3)), b3.amax((2, 3)), b11.mean((2, 3)), b11.amax((2, 3))], 1)
    torch.testing.assert_close(out, want)


def test_tapped_features_are_turn_averaged_and_zoom_stacked():
    torch.manual_seed(0)
    model = build_model(
        {
            "_target_": "fedray.models.tiny_cnn.TinyCNN", "name": "tiny_cnn",
            "width": 4,
            "turns": 4,
            "zooms": [1.0, 2.0],
            "taps": [7, 11],
            "pool": "max",
        },
        3,
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = view_features(model.features, x, 4, (1.0, 2.0), (7, 11), "max")
        per_zoom = [
            sum(
                tapped(model.features, torch.rot90(centre_zoom(x, z), k, (2, 3)), (7, 11), "max")
                for k in range(4)
            )
            / 4
            for z in (1.0, 2.0)
        ]
    torch.testing.assert_close(got, torch.cat(per_zoom, 1))
    # pooled features do not care how the photo was held
    x90 = np.ascontiguousarray(np.rot90(_images(), 1, axes=(1, 2)))
    torch.testing.assert_close(
        predict_logits(model, _images()), predict_logits(model, x90), rtol=1e-4, atol=1e-5
    )


def test_cached_features_equal_the_full_forward_with_taps():
    torch.manual_seed(0)
    cfg = {**SQUEEZENET, "turns": 2, "zooms": [1.0, 1.6], "taps": [4, 13], "pool": "max"}
    model = build_model(cfg, 5).eval()
    x = _images(n=3, size=64)
    feats = extract_features(model, x)
    assert feats.shape == (3, 2 * (128 + 512))  # one pooled vector per image, not a map
    torch.testing.assert_close(
        predict_logits(model, feats, cached=len(model.features)),
        predict_logits(model, x),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"taps": [12]}, r"model.taps=\[12\]"),
        ({"taps": [1, 1]}, "model.taps"),
        ({"taps": "last"}, "model.taps"),
        ({"taps": [1.5]}, "model.taps"),
        ({"taps": []}, "model.taps"),
        ({"taps": [-1], "pool": "median"}, "model.pool='median'"),
        ({"pool": "max"}, "set model.taps too"),
        ({"dropout": 1.0}, r"dropout=1.0: give a rate in \[0, 1\)"),
    ],
)
def test_bad_taps_pool_and_dropout_are_clear_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_model({**TINY_CNN, **cfg}, 2)


def test_tapped_models_refuse_a_partly_frozen_backbone_and_torchvision():
    with pytest.raises(ConfigError, match="only its first 4 blocks are frozen"):
        extract_features(build_model({**TINY_CNN, "taps": [-1]}, 2), _images(), 4)
    with pytest.raises(ConfigError, match="torchvision's SqueezeNet"):
        build_model({**SQUEEZENET, "batch_norm": False, "taps": [-1]}, 2)


def test_model_dropout_sets_the_heads_rate():
    model = build_model({**SQUEEZENET, "dropout": 0.0}, 2)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.0]


def test_cache_precision_is_checked_and_bf16_features_match_fp32():
    from fedray.fl.train import resolve_precision

    with pytest.raises(ConfigError, match="fl.cache_precision='half'"):
        resolve_precision("half", "fl.cache_precision")
    assert resolve_precision("auto", "k") in ("fp32", "bf16")
    torch.manual_seed(0)
    model = build_model({**SQUEEZENET, "taps": [7, 13], "pool": "max"}, 3).eval()
    x = _images(n=4, size=64)
    fp32 = extract_features(model, x, precision="fp32")
    bf16 = extract_features(model, x, precision="bf16")
    assert bf16.dtype == torch.float32  # cached as float32 whatever the pass ran in
    assert not torch.equal(bf16, fp32)  # it did run in bfloat16 ...
    # ... to bfloat16's precision: about 3 significant digits per op, over 13 blocks
    assert float((bf16 - fp32).norm() / fp32.norm()) < 0.02


def test_hidden_gives_the_pill_squeezenet_an_mlp_head_that_ridge_refuses():
    from fedray.fl.head_init import check_head_init

    torch.manual_seed(0)
    model = build_model({**SQUEEZENET, "taps": [-1], "pool": "max", "hidden": 32}, 5)
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 32), (32, 5)]
    assert model.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    fl = {"head_init": "ridge", "trainable": "classifier", "cache_features": True}
    with pytest.raises(ConfigError, match="one linear map"):
        check_head_init(fl, model, ["classifier.1.weight"], len(model.features))
    with pytest.raises(ConfigError, match="model.hidden"):
        build_model({**SQUEEZENET, "hidden": 32}, 5)  # no taps: the 1x1-conv head
    with pytest.raises(ConfigError, match="model.hidden=0"):
        build_model({**SQUEEZENET, "taps": [-1], "hidden": 0}, 5)


def test_width_shrinks_the_pill_squeezenet_for_a_phone_and_default_stays_the_same():
    cfg = {"_target_": "fedray.pill.squeezenet.build_squeezenet", "zooms": [1.0, 1.6],
           "taps": [4, 5, 7, 8, 10, 11, 12, 13], "pool": "max", "turns": 4}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    full = count(build_model(cfg, 20))
    assert full == count(build_model({**cfg, "width": 1.0}, 20)) == 830_804
    narrow = build_model({**cfg, "width": 0.3}, 20)
    assert full / count(narrow) > 7.6  # MobileDeepPill's compression: 7.6x fewer parameters
    # every channel count a multiple of 8; the forward and the cached-feature path still agree
    convs = [m for m in narrow.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    narrow.eval()
    x = _images(n=3, size=64)
    torch.testing.assert_close(
        predict_logits(narrow, extract_features(narrow, x), cached=len(narrow.features)),
        predict_logits(narrow, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="model.width"):
        build_model({**cfg, "width": 0}, 20)
    with pytest.raises(ConfigError, match="model.width"):
        build_model({**cfg, "width": 0.5, "batch_norm": False, "zooms": [1.0], "taps": None,
                     "pool": "avg", "turns": 1}, 20)
