"""BatchNorm folded into the conv before it: the same function, fewer layers, original untouched."""

import numpy as np
import torch
from torch import nn

from fedray.fl.train import extract_features
from fedray.models.fold import fold_batchnorm
from fedray.pill.squeezenet import build_squeezenet


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm running statistics and an affine map far from the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def _count(model: nn.Module, kind: type) -> int:
    return sum(type(m) is kind for m in model.modules())


def test_folded_squeezenet_computes_the_same_logits_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = build_squeezenet(5, zooms=(1.0, 1.6), taps=[4, 8, 12], pool="max")
    _randomise_bn(model)
    model = model.to(memory_format=torch.channels_last)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)

    assert model.training  # the original keeps its mode, its layers and its values
    assert _count(model, nn.BatchNorm2d) == 25
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not folded.training
    assert _count(folded, nn.BatchNorm2d) == 0  # every BN of this backbone follows a conv
    assert folded.features[0].weight.is_contiguous(memory_format=torch.channels_last)

    x = torch.rand(4, 3, 64, 64)
    model.eval()
    want = model(x)
    got = folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()
    assert not torch.equal(got, model.train()(x))  # train-mode BN would not have matched


def test_a_batchnorm_that_does_not_follow_a_conv_stays():
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1),
        nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6)), nn.Flatten(), nn.LazyLinear(2),
    )  # fmt: skip
    model(torch.rand(1, 3, 8, 8))  # the lazy layer takes its shape
    _randomise_bn(model, seed=1)
    folded = fold_batchnorm(model)
    assert isinstance(folded[0], nn.BatchNorm2d)  # first, nothing to fold into
    assert isinstance(folded[4][1], nn.Identity)  # the nested conv took its BN
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(folded(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_extract_features_matches_the_unfolded_backbone():
    torch.manual_seed(1)
    model = build_squeezenet(3, taps=[4, 12], pool="avg")
    _randomise_bn(model, seed=2)
    model.turns = 2
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    got = extract_features(model, images, batch_size=4)
    assert model.training  # extract_features leaves the model's mode as it was
    from fedray.data.datasets import to_tensor_batch
    from fedray.models.views import view_args, view_features

    with torch.no_grad():
        want = view_features(model.eval().features, to_tensor_batch(images), *view_args(model))
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
