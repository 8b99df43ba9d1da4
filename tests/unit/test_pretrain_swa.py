"""Stochastic weight averaging in the public pretraining: the held schedule and the average."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedray.config import ConfigError
from fedray.fl.train import held_factor, make_schedule
from fedray.pill.pretrain_swa import Averager, check_swa, first_averaged_epoch


def test_onecycle_held_warms_up_anneals_to_the_floor_and_stays():
    f = held_factor("onecycle", 4000, 0.75, 0.1)
    assert f(0) == pytest.approx(1 / 25)
    assert f(1000) == pytest.approx(1.0)  # the peak after the first quarter, as OneCycleLR
    assert f(2000) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert [f(s) for s in (3000, 3500, 3999)] == pytest.approx([0.1] * 3)
    falling = [f(s) for s in range(1000, 3001, 250)]
    assert falling == sorted(falling, reverse=True)
    g = held_factor("cosine", 100, 0.5, 0.2)  # cosine: from the peak at once
    assert [g(0), g(50), g(99)] == pytest.approx([1.0, 0.2, 0.2])


def test_make_schedule_holds_the_optimizers_lr_at_the_floor():
    w = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.2, momentum=0.9)
    sched = make_schedule(opt, "onecycle", 40, (0.75, 0.1))
    lrs = []
    for _ in range(40):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-10:] == pytest.approx([0.02] * 10)
    assert max(lrs) == pytest.approx(0.2)
    assert opt.param_groups[0]["momentum"] == 0.9  # not cycled, as OneCycleLR would
    assert make_schedule(opt, "constant", 40, (0.75, 0.1)) is None


def test_the_average_starts_where_the_lr_holds_and_bn_is_recomputed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    assert first_averaged_epoch(0.5, 4) == 2
    avg = Averager(model, 0.5, 4)
    conv = model[0]
    seen = []
    for done in (1, 2, 3, 4):
        with torch.no_grad():
            conv.weight.fill_(float(done))
        seen.append(float(done))
        avg.epoch_done(model, done)
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    # equal batches: update_bn averages the batches' means
    out = avg.finish(images, torch.device("cpu"), batch_size=5)
    # epochs 2, 3 and 4 averaged; epoch 1 (before the hold) left out
    assert torch.allclose(out[0].weight, torch.full_like(conv.weight, 3.0))
    from fedray.data.datasets import to_tensor_batch

    with torch.no_grad():
        feats = out[0](to_tensor_batch(images))
    assert torch.allclose(out[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not out.training


def test_the_average_survives_a_checkpoint():
    model = nn.Linear(2, 1)
    a = Averager(model, 0.5, 2)
    a.epoch_done(model, 1)
    b = Averager(nn.Linear(2, 1), 0.5, 2)
    b.load_state_dict(a.state_dict())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("swa, key", [
    ({"start": 1.0, "lr": 0.1}, "pretrain.swa.start"),
    ({"start": 0.75, "lr": 0}, "pretrain.swa.lr"),
    ({"start": 0.75, "lr": 0.1, "sart": 1}, "pretrain.swa.sart"),
    ({"start": 0.75}, "pretrain.swa.lr: missing"),
    ("yes", "pretrain.swa"),
])
def test_bad_swa_knobs_name_their_key(swa, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_swa({"swa": swa})
    check_swa({"swa": None})
    check_swa({"swa": {"start": 0.75, "lr": 0.1}})
