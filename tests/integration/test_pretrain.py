"""Pretraining on disjoint public classes: cached, loaded, and never downloaded."""

from __future__ import annotations

import pytest
import torch

from fedray.config import ConfigError
from fedray.models import build_model
from fedray.pill.pretrain import pretrained_weights, resolve_pretrained
from fedray.run import run

TINY_CNN = {"_target_": "fedray.models.tiny_cnn.TinyCNN", "name": "tiny_cnn"}


PRETRAIN = ("model.pretrained=public", "pretrain.epochs=2", "data.train_per_class=20")


def test_pretrain_stage_is_cached_and_loaded(make_cfg):
    cfg = make_cfg(*PRETRAIN, "stage=pretrain")
    first = run(cfg)
    weights = pretrained_weights(cfg)
    assert weights.exists() and first["weights"] == str(weights)
    mtime = weights.stat().st_mtime_ns
    resolved = resolve_pretrained(make_cfg(*PRETRAIN))
    assert resolved["model"]["pretrained"] == str(weights)
    assert weights.stat().st_mtime_ns == mtime  # the second use is a cache hit
    # backbone comes from the file; the head (other classes) keeps its fresh init
    loaded = build_model(resolved["model"], num_classes=4)
    saved = torch.load(weights, weights_only=True)["model"]
    key = "features.0.weight"
    assert torch.equal(loaded.state_dict()[key], saved[key])


def test_public_classes_are_disjoint(make_cfg):
    from fedray.data.sources import build_dataset
    from fedray.pill.pretrain import public_data_cfg

    cfg = make_cfg(*PRETRAIN)
    private = build_dataset(cfg["data"], 0).class_names
    public = build_dataset(public_data_cfg(cfg), 0).class_names
    assert not set(private) & set(public)


def test_missing_local_weights_is_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="never downloads"):
        build_model({**TINY_CNN, "pretrained": str(tmp_path / "nope.pt")}, 4)


def test_pretraining_ignores_the_view_keys(make_cfg):
    # the backbone is the same for any turns/zooms/pool/dropout: one pretraining serves all
    plain = pretrained_weights(make_cfg(*PRETRAIN))
    viewed = pretrained_weights(
        make_cfg(
            *PRETRAIN,
            "model.turns=4",
            "model.zooms=[1.0,1.5]",
            "model.pool=max",
            "model.dropout=0.0",
        )
    )
    assert viewed == plain
    # model.taps picks the blocks the head reads: with pretrain.taps=null they do not matter
    assert pretrained_weights(make_cfg(*PRETRAIN, "pretrain.taps=null")) == pretrained_weights(
        make_cfg(*PRETRAIN, "pretrain.taps=null", "model.taps=[-1]")
    )


def test_pretraining_trains_under_the_models_tapped_head(make_cfg):
    from fedray.pill.pretrain import pretrain_head

    # pretrain.taps=model (the default): the backbone is pretrained under the private model's
    # taps (average-pooled), so another model.taps is another backbone
    cfg = make_cfg(*PRETRAIN, "model.taps=[-2,-1]", "model.pool=max")
    assert cfg["pretrain"]["taps"] == "model"
    assert pretrain_head(cfg) == ([-2, -1], "avg")
    tapped = pretrained_weights(cfg)
    assert tapped != pretrained_weights(make_cfg(*PRETRAIN))
    # the saved head is the tapped one: a linear map of the pooled blocks
    state = torch.load(tapped, weights_only=True)["model"]
    model = build_model({**cfg["model"], "pretrained": str(tapped)}, num_classes=4)
    width = model.state_dict()["classifier.1.weight"].shape[1]
    assert state["classifier.1.weight"].shape[1] == width
    assert pretrain_head(make_cfg(*PRETRAIN, "pretrain.taps=[1]")) == ([1], "avg")
    assert pretrain_head(make_cfg(*PRETRAIN, "pretrain.taps=null", "model.taps=[1]"))[0] is None
    with pytest.raises(ConfigError, match="pretrain.pool='mean'"):
        pretrain_head(make_cfg(*PRETRAIN, "model.taps=[1]", "pretrain.pool=mean"))


def test_auto_precision_is_cached_as_what_it_resolves_to(make_cfg):
    from fedray.fl.train import resolve_precision

    here = resolve_precision("auto", "pretrain.precision")
    auto = pretrained_weights(make_cfg(*PRETRAIN, "pretrain.precision=auto"))
    assert auto == pretrained_weights(make_cfg(*PRETRAIN, f"pretrain.precision={here}"))
    with pytest.raises(ConfigError, match="pretrain.precision='fp16'"):
        pretrained_weights(make_cfg(*PRETRAIN, "pretrain.precision=fp16"))
