"""A pretraining interrupted after some epoch resumes from its checkpoint to the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from fedray.data.datasets import config_hash
from fedray.pill.pretrain import pretrain_key, pretrained_weights
from fedray.pill.pretrain_record import METRICS, STATE

PRETRAIN = (
    "model.pretrained=public",
    "pretrain.epochs=3",
    "pretrain.checkpoint_every=1",
    "pretrain.eval_every=2",
    "data.train_per_class=10",
    "data.val_per_class=4",
)


class Killed(Exception):
    """Stands in for a kill after an epoch's checkpoint."""


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize(
    "extra",
    [("pretrain.swa=null",), ("pretrain.mix=both",), ("pretrain.swa={start: 0.5, lr: 0.1}",)],
    ids=["plain", "mixed", "averaged"],
)
def test_interrupted_pretraining_resumes_to_the_same_weights(make_cfg, tmp_path, extra):
    # Prepare: one uninterrupted pretraining, and the same one (same key) in another cache; mixed
    # batches draw their boxes and weights from torch's generator, which the checkpoint keeps; the
    # weight average of the epochs done is in the checkpoint too
    whole = _weights(
        pretrained_weights(make_cfg(*PRETRAIN, *extra, f"data.cache_dir={tmp_path / 'a'}"))
    )
    cfg = make_cfg(*PRETRAIN, *extra, f"data.cache_dir={tmp_path / 'b'}")
    partial = tmp_path / "b" / f".pretrain-{config_hash(pretrain_key(cfg))}.partial"

    def kill_after_2(done: int) -> None:
        if done == 2:
            raise Killed

    # Execute: killed after epoch 2, then run again
    with pytest.raises(Killed):
        pretrained_weights(cfg, on_epoch=kill_after_2)
    assert (partial / STATE).exists()
    assert not list((tmp_path / "b").glob("pretrain-*"))  # no finished entry yet
    epochs_run: list[int] = []
    resumed_path = pretrained_weights(cfg, on_epoch=epochs_run.append)

    # Assert: only the last epoch ran again, and the weights are the uninterrupted ones
    assert epochs_run == [3]
    resumed = _weights(resumed_path)
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert not partial.exists()  # the finished entry replaces the checkpoint
    rows = [json.loads(line) for line in (resumed_path.parent / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "pretrain/val_acc" in rows[1] and rows[2]["pretrain/lr"] >= 0


def test_mixed_batches_are_another_pretraining(make_cfg, tmp_path):
    plain = make_cfg(*PRETRAIN, f"data.cache_dir={tmp_path}")
    mixed = make_cfg(*PRETRAIN, "pretrain.mix=mixup", f"data.cache_dir={tmp_path}")
    # no mixing spelt out is the key of a recipe without the knob; mixing is another key
    assert pretrain_key(make_cfg(*PRETRAIN, "pretrain.mix_alpha=0.4")) == pretrain_key(plain)
    assert pretrain_key(mixed) != pretrain_key(plain)
    a, b = _weights(pretrained_weights(plain)), _weights(pretrained_weights(mixed))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_averaged_weights_are_another_pretraining_and_report_the_last(make_cfg, tmp_path):
    plain = make_cfg(*PRETRAIN, "pretrain.swa=null", f"data.cache_dir={tmp_path}")
    averaged = make_cfg(*PRETRAIN, "pretrain.swa={start: 0.5, lr: 0.1}",
                        f"data.cache_dir={tmp_path}")
    assert pretrain_key(averaged) != pretrain_key(plain)
    a, b = pretrained_weights(plain), pretrained_weights(averaged)
    wa, wb = _weights(a), _weights(b)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    report = json.loads((b.parent / "metrics.json").read_text())
    assert 0 <= report["public/val_acc_last"] <= 1 and 0 <= report["public/val_acc"] <= 1
    assert "public/val_acc_last" not in json.loads((a.parent / "metrics.json").read_text())


def test_a_checkpoint_of_another_key_is_not_resumed(make_cfg, tmp_path):
    cfg = make_cfg(*PRETRAIN, f"data.cache_dir={tmp_path}")
    partial = tmp_path / f".pretrain-{config_hash(pretrain_key(cfg))}.partial"
    partial.mkdir(parents=True)
    torch.save({"key": "another", "epoch": 2}, partial / STATE)
    epochs_run: list[int] = []
    pretrained_weights(cfg, on_epoch=epochs_run.append)
    assert epochs_run == [1, 2, 3]


def test_a_taught_pretraining_makes_its_teacher_first_and_learns_from_it(make_cfg, tmp_path):
    # Prepare: a narrow TinyCNN pretrained alone, and the same taught by the width-16 model's
    # own pretraining (the smoke model), in one cache
    narrow = (*PRETRAIN, "model.width=4", f"data.cache_dir={tmp_path}")
    teacher_cfg = make_cfg(*PRETRAIN, f"data.cache_dir={tmp_path}")
    alone = _weights(pretrained_weights(make_cfg(*narrow)))

    # Execute
    taught_path = pretrained_weights(make_cfg(*narrow, "pretrain.teacher={width: 16}"))

    # Assert: the teacher's pretraining was made and cached under its own key on the way, and
    # the student's soft targets changed its weights (same seed, same batches otherwise)
    teacher_root = tmp_path / f"pretrain-{config_hash(pretrain_key(teacher_cfg))}"
    assert (teacher_root / "model.pt").exists()
    taught = _weights(taught_path)
    assert taught.keys() == alone.keys()
    assert not all(torch.equal(taught[k], alone[k]) for k in alone)
    assert json.loads((taught_path.parent / "metrics.json").read_text())["public/val_acc"] >= 0
