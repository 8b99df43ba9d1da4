"""MobileDeepPill networks: Table 3 / Table 4 parameter and MAC counts at the paper's 227 px."""

from __future__ import annotations

import pytest
import torch

from fedray.pill.retrieval.nets import (
    EmbeddingNet,
    MultiStream,
    count_macs,
    count_params,
    load_model,
    save_model,
)


@pytest.mark.parametrize(
    ("arch", "params_m", "macs_m"),
    [("teacher", 13.32, 1093.0), ("student", 1.76, 407.0)],  # Table 2: T and E
)
def test_colour_net_matches_the_papers_counts(arch, params_m, macs_m):
    net = EmbeddingNet(arch, in_channels=3, image_size=227, norm=False)

    params = count_params(net) / 1e6
    macs = count_macs(net, (3, 227, 227)) / 1e6

    assert params == pytest.approx(params_m, rel=0.02)
    assert macs == pytest.approx(macs_m, rel=0.05)


def test_gray_and_gradient_differ_only_in_conv1():
    color = EmbeddingNet("teacher", 3, 227, norm=False)
    gray = EmbeddingNet("teacher", 1, 227, norm=False)

    conv1_gray = sum(p.numel() for p in gray.features[0].parameters())
    shapes_c = [p.shape for p in color.parameters()][2:]
    shapes_g = [p.shape for p in gray.parameters()][2:]

    assert conv1_gray == 11 * 11 * 96 + 96  # the paper rounds it to "12k"
    assert shapes_c == shapes_g


def test_smaller_input_keeps_the_layers_and_embeds_to_the_unit_sphere():
    model = MultiStream("student", ("color", "gradient"), image_size=100)
    x = {"color": torch.rand(2, 3, 100, 100), "gradient": torch.rand(2, 1, 100, 100)}

    out = model.eval()(x)

    assert {s: tuple(e.shape) for s, e in out.items()} == dict.fromkeys(x, (2, 128))
    for e in out.values():
        assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="minimum"):
        EmbeddingNet("student", 3, 96)


def test_a_saved_model_loads_back_to_the_same_embeddings(tmp_path):
    torch.manual_seed(0)
    model = MultiStream("student", ["color", "gradient"], 99, norm=True)
    model.train()
    model({"color": torch.rand(4, 3, 99, 99), "gradient": torch.rand(4, 1, 99, 99)})  # BN stats
    model.eval()
    x = {"color": torch.rand(2, 3, 99, 99), "gradient": torch.rand(2, 1, 99, 99)}

    loaded = load_model(save_model(model, tmp_path / "m" / "student.pt"))

    assert (loaded.arch, loaded.image_size, loaded.norm) == ("student", 99, True)
    assert loaded.streams == ["color", "gradient"]
    with torch.no_grad():
        for s, e in model(x).items():
            assert torch.equal(loaded(x)[s], e)
