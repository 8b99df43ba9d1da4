"""The torchvision adapter: same forward as torchvision, and a split that caching relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import models as tv

from fedray.config import ConfigError
from fedray.fl.head_init import linear_head
from fedray.fl.train import extract_features, predict_logits
from fedray.models import build_model, frozen_prefix, has_split, trainable_names
from fedray.models.torchvision_split import (
    convert_torchvision_weights,
    split_torchvision,
    torchvision_classifier,
)

FAMILIES = ["resnet18", "mobilenet_v3_small", "alexnet", "squeezenet1_1", "efficientnet_b0"]
MORE = [
    "mobilenet_v2",
    "mnasnet0_5",
    "densenet121",
    "shufflenet_v2_x0_5",
    "regnet_x_400mf",
    "convnext_tiny",
]
HEAVY = ["vgg11", "resnext50_32x4d"]
TARGET = "fedray.models.torchvision_split.torchvision_classifier"


def _images(n: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _same_as_torchvision(arch: str) -> None:
    torch.manual_seed(0)
    reference = tv.get_model_builder(arch)(weights=None, num_classes=3).eval()
    torch.manual_seed(0)  # the adapter builds the same network, so draws the same weights
    split = torchvision_classifier(arch, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = reference(x), split(x)
    assert has_split(split) and isinstance(split.features, torch.nn.Sequential)
    assert sum(p.numel() for p in split.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", FAMILIES)
def test_forward_equals_torchvision(arch):
    _same_as_torchvision(arch)


@pytest.mark.slow  # the other families: a few seconds each to build
@pytest.mark.parametrize("arch", MORE + HEAVY)
def test_forward_equals_torchvision_more_families(arch):
    _same_as_torchvision(arch)


@pytest.mark.parametrize("arch", FAMILIES)
def test_cached_features_give_the_same_logits(arch):
    torch.manual_seed(0)
    model = build_model({"_target_": TARGET, "arch": arch}, num_classes=3)
    images = _images()
    full = predict_logits(model, images)
    # fl.trainable=classifier: the whole backbone is frozen and cached
    head_only = trainable_names(model, "classifier")
    cached = frozen_prefix(model, head_only)
    assert cached == len(model.features)
    feats = extract_features(model, images, upto=cached)
    torch.testing.assert_close(predict_logits(model, feats, cached=cached), full, atol=1e-5, rtol=0)
    # the last backbone block with weights trains too: only the blocks before it are cached
    last = max(i for i, b in enumerate(model.features) if any(True for _ in b.parameters()))
    names = trainable_names(model, rf"^features\.{last}\.|^classifier\.")
    assert frozen_prefix(model, names) == last
    feats = extract_features(model, images, upto=last)
    torch.testing.assert_close(predict_logits(model, feats, cached=last), full, atol=1e-5, rtol=0)


def test_views_taps_zooms_turns():
    torch.manual_seed(0)
    cfg = {"_target_": TARGET, "arch": "resnet18", "taps": [-1], "turns": 4}
    model = build_model(cfg, num_classes=2)
    assert model.turns == 4 and isinstance(model.classifier[-1], torch.nn.Linear)
    linear_head(model)  # one linear map of pooled features: fl.head_init=ridge applies
    images = _images(2, size=32)
    # the backbone averaged over quarter turns and pooled: a turned photo scores the same
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    torch.testing.assert_close(
        predict_logits(model, turned), predict_logits(model, images), atol=1e-4, rtol=1e-4
    )
    feats = extract_features(model, images, upto=len(model.features))
    assert feats.shape == (2, 512)  # one pooled vector per image
    torch.testing.assert_close(
        predict_logits(model, feats, cached=len(model.features)),
        predict_logits(model, images),
        atol=1e-5,
        rtol=0,
    )
    zoomed = build_model({"_target_": TARGET, "arch": "alexnet", "zooms": [1.0, 1.5]}, 2)
    assert predict_logits(zoomed, _images(2)).shape == (2, 2)
    assert zoomed.classifier[3].in_features == 2 * 256 * 6 * 6  # the stacked zooms' channels


def test_bad_arch_and_weights_are_config_errors():
    with pytest.raises(ConfigError, match="model.arch='resnet19'"):
        torchvision_classifier("resnet19", 2)
    with pytest.raises(ConfigError, match="not a torchvision CNN classifier"):
        torchvision_classifier("vit_b_32", 2)
    with pytest.raises(ConfigError, match="never downloads"):
        torchvision_classifier("resnet18", 2, options={"weights": "IMAGENET1K_V1"})
    with pytest.raises(ConfigError, match="model.zooms"):
        torchvision_classifier("convnext_tiny", 2, zooms=(1.0, 1.5))


def test_converted_torchvision_weights_load_as_pretrained(tmp_path):
    torch.manual_seed(1)
    reference = tv.squeezenet1_1(weights=None)  # 1000 classes, like a downloaded checkpoint
    torch.save(reference.state_dict(), tmp_path / "squeezenet1_1.pth")
    dst = convert_torchvision_weights(
        "squeezenet1_1", tmp_path / "squeezenet1_1.pth", tmp_path / "s.pt"
    )
    torch.manual_seed(2)
    cfg = {"_target_": TARGET, "arch": "squeezenet1_1", "pretrained": str(dst)}
    model = build_model(cfg, num_classes=3)
    torch.testing.assert_close(model.features[0].weight, reference.features[0].weight)
    assert model.classifier[1].weight.shape[0] == 3  # the 1000-way head was skipped


def test_split_of_a_built_model_shares_its_weights():
    reference = tv.resnet18(weights=None, num_classes=4)
    split = split_torchvision(reference)
    assert split.features[0] is reference.conv1 and split.classifier[-1] is reference.fc
    assert [n for n, _ in split.named_parameters()][0] == "features.0.weight"


def test_convert_renames_weights_and_names_a_bad_argument(tmp_path, capsys):
    from torchvision.models import squeezenet1_1

    from fedray.models import load_pretrained
    from fedray.models.convert import main

    src = tmp_path / "sq.pth"
    net = squeezenet1_1(weights=None)
    torch.save(net.state_dict(), src)
    assert main(["squeezenet1_1", str(src), str(tmp_path / "out.pt")]) == 0
    model = torchvision_classifier("squeezenet1_1", 5)
    load_pretrained(model, tmp_path / "out.pt")
    assert torch.equal(model.features[0].weight, net.features[0].weight)
    capsys.readouterr()
    for args, said in [(["resnet99", str(src), "o.pt"], "'resnet99' is not a torchvision"),
                       (["squeezenet1_1", str(tmp_path / "no.pth"), "o.pt"], "no such file"),
                       (["alexnet", str(src), "o.pt"], "not alexnet's torchvision weights")]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedray: error: ") and said in err[0], err
