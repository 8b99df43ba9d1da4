"""The pretraining cache key: the public set, the model and the recipe; nothing else."""

from __future__ import annotations

import pytest
import torch

from fedray.config import ConfigError
from fedray.data.datasets import config_hash
from fedray.fl.train import batch_mixer
from fedray.pill.pretrain import pretrain_key
from tests.conftest import compose_plain

PILL = ["+experiment=pill_noniid"]


def _key(*overrides: str) -> str:
    return config_hash(pretrain_key(compose_plain([*PILL, *overrides])))


def test_two_private_datasets_share_one_pretraining(tmp_path):
    # the private data differ (synthetic pills vs an imported YOLO folder); the public set both
    # pretrain on is the same 100 synthetic public pills at the same crop size
    synthetic = _key()
    imported = _key("data=yolo_import", f"data.root={tmp_path}", "data.image_size=64")
    assert imported == synthetic
    # and neither the private set's own knobs nor where/how fast things are built count
    assert _key("data.num_pills=12", "data.detection_scenes=0", "data.workers=1") == synthetic
    assert _key(f"data.cache_dir={tmp_path}", "+data.public_set.workers=1") == synthetic
    assert _key("pretrain.eval_every=3", "pretrain.checkpoint_every=1") == synthetic
    assert _key("model.name=renamed", "model.turns=1", "model.zooms=[1.0]") == synthetic
    # taps spelt out instead of `pretrain.taps: model`: the same head, the same weights
    taps = compose_plain(PILL)["model"]["taps"]
    assert _key(f"pretrain.taps=[{','.join(map(str, taps))}]") == synthetic


def test_what_changes_the_weights_changes_the_key(tmp_path):
    base = _key()
    assert _key("data.image_size=96") != base  # the public crops' size follows the private one
    assert _key("data.public_set.num_pills=50") != base
    assert _key("data=yolo_import", f"data.root={tmp_path}") != base  # 96 px crops
    assert _key("pretrain.epochs=2") != base
    assert _key("pretrain.optimizer.lr=0.1") != base
    assert _key("model.taps=[12,13]") != base  # pretrain.taps=model: another head
    assert _key("seed=1") != base
    assert _key("pretrain.seed=1") != base


def test_a_pretraining_seed_of_its_own_names_that_seeds_pretraining():
    # pretrain.seed: another backbone for the same private data (an ensemble's members); it is
    # the pretraining the run of that seed makes, so each is made once and shared
    assert _key("pretrain.seed=3") == _key("seed=3")
    assert _key("seed=5", "pretrain.seed=0") == _key()
    assert _key("pretrain.seed=null") == _key()


def test_a_teacher_enters_the_key_as_its_own_pretraining(tmp_path):
    # the default recipe has no teacher: its key is what it was before teachers existed
    base = _key()
    assert _key("pretrain.teacher_lam=0.5", "pretrain.teacher_temperature=2") == base
    narrow = _key("++model.width=0.3")
    taught = "pretrain.teacher={width: 1.0}"
    assert _key("++model.width=0.3", taught) not in (narrow, base)
    # the teacher is named by its own pretraining's key: {width: 1.0} is pill_noniid's model,
    # whose key never spelt its width, so the cached pretraining is reused, not made again
    cfg = compose_plain([*PILL, "++model.width=0.3", taught])
    assert pretrain_key(cfg)["recipe"]["teacher"] == base
    # the loss's knobs count only with a teacher
    assert _key("++model.width=0.3", taught, "pretrain.teacher_lam=0.5") != _key(
        "++model.width=0.3", taught
    )


def test_a_teacher_spelt_as_a_bare_target_names_the_run_that_pretrained_it():
    # model=resnet18 carries `options: {}`; a teacher written by hand leaves it out (the builder's
    # None): one network, so the teacher's pretraining is the cached one, not a second of its own
    r18 = ["model=resnet18", "model.pretrained=public", "model.taps=[4,5,6,7]"]
    spec = ("pretrain.teacher={_target_: fedray.models.torchvision_split.torchvision_classifier,"
            " arch: resnet18, taps: [4,5,6,7]}")
    assert pretrain_key(compose_plain([*PILL, spec]))["recipe"]["teacher"] == _key(*r18)
    assert _key(*r18, "++model.options.zero_init_residual=true") != _key(*r18)


def test_a_teacher_that_is_no_model_or_the_same_model_is_a_config_error():
    for overrides, words in (
        (["pretrain.teacher={width: 1.0}"], "is the model being pretrained"),
        (["pretrain.teacher=3"], "a model config"),
        (["++model.width=0.3", "pretrain.teacher={width: 1.0}", "pretrain.teacher_lam=2"],
         "pretrain.teacher_lam"),
        (["++model.width=0.3", "pretrain.teacher={width: 1.0}",
          "pretrain.teacher_temperature=0"], "pretrain.teacher_temperature"),
    ):
        with pytest.raises(ConfigError, match=words):
            pretrain_key(compose_plain([*PILL, *overrides]))


def test_the_device_counts_only_through_the_precision_it_resolves(monkeypatch):
    import torch

    from fedray.fl import train

    # a machine whose GPU has bf16 and whose CPU has not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train, "bf16_native", lambda device="cpu": str(device).startswith("cuda"))
    assert _key("device=cpu") == _key("device=cuda") == _key("device=auto")  # fp32: one backbone
    auto = ("pretrain.precision=auto",)
    assert _key(*auto, "device=cpu") == _key("pretrain.precision=fp32")
    assert _key(*auto, "device=cuda") == _key(*auto, "device=auto") == _key(
        "pretrain.precision=bf16")


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mixed_batches_carry_soft_targets_of_two_pills(kind):
    torch.manual_seed(0)
    mixer = batch_mixer(kind, 1.0, 7)
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, targets = mixer(x, y)
    assert mixed.shape == x.shape and targets.shape == (6, 7)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    # each image's target is its own pill and the one before it in the batch, nothing else
    for i in range(6):
        assert set(torch.nonzero(targets[i]).flatten().tolist()) <= {int(y[i]), int(y[i - 1])}
    assert batch_mixer(None, 1.0, 7) is None


def test_weight_averaging_is_keyed_only_when_on():
    off = compose_plain([*PILL, "pretrain.swa=null"])
    key = pretrain_key(off)
    assert "swa" not in key["recipe"]
    del off["pretrain"]["swa"]  # a config from before the knob names the same pretraining
    assert pretrain_key(off) == key
    on = _key("pretrain.swa={start: 0.75, lr: 0.1}")
    assert on != config_hash(key)
    assert _key("pretrain.swa={start: 0.8, lr: 0.1}") != on
