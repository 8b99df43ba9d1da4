"""stage=distill end to end on the tiny config, the students' sizes, and FedDF inside a real run."""

from __future__ import annotations

import json

import pytest
import torch

from fedray.config import ConfigError
from fedray.distill.profile import count_macs, count_params
from fedray.models import build_model
from fedray.run import run

FAST = (
    "stage=distill",
    "data.train_per_class=20",
    "distill.teacher_epochs=3",
    "distill.pre_epochs=1",
    "distill.epochs=2",
    "distill.latency_runs=3",
)


def test_students_parameter_counts_and_macs():
    narrow = build_model({"_target_": "fedray.models.tiny_cnn.TinyCNN", "width": 4}, 4)
    # convs 3->4->8->16 (3x3, bias), three BNs, 1x1 head 16->4
    assert count_params(narrow) == 112 + 8 + 296 + 16 + 1168 + 32 + 68
    # 32 px: conv1 at 32x32, conv2 at 16x16, conv3 at 8x8, head at 4x4
    want = 32 * 32 * 4 * 27 + 16 * 16 * 8 * 36 + 8 * 8 * 16 * 72 + 4 * 4 * 4 * 16
    assert count_macs(narrow, 32) == want
    half = build_model(
        {"_target_": "fedray.distill.students.mobilenet_v3_small", "width_mult": 0.5}, 20
    )
    full = build_model(
        {"_target_": "fedray.distill.students.mobilenet_v3_small", "width_mult": 1.0}, 20
    )
    assert count_params(full) / count_params(half) > 3
    assert half(torch.zeros(2, 3, 32, 32)).shape == (2, 20)


def test_distill_stage_reports_both_models(make_cfg, tmp_path):
    cfg = make_cfg(*FAST)
    summary = run(cfg)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "summary.json").read_text())["val/acc"] == summary["val/acc"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all("val/acc_alone" in r for r in rows)
    assert summary["teacher/params"] == 24068 and summary["student/params"] == 1700
    assert summary["compression/params"] == pytest.approx(24068 / 1700)
    assert summary["student/size_bytes"] == (run_dir / "student.pt").stat().st_size
    assert summary["teacher/macs"] > summary["student/macs"] > 0
    assert summary["student/latency_ms_p50"] > 0
    for key in ("teacher/val_acc", "student/val_acc", "student_alone/val_acc"):
        assert 0.0 <= summary[key] <= 1.0, key


@pytest.mark.slow
def test_distill_from_a_saved_teacher_unlabelled_l2(make_cfg, tmp_path):
    first = run(make_cfg(*FAST, run_dir=tmp_path / "a"))
    teacher = tmp_path / "a" / "teacher.pt"
    cfg = make_cfg(
        *FAST,
        f"distill.teacher={teacher}",
        "distill.loss=l2",
        "distill.baseline=false",
        "distill.transfer_size=30",
        run_dir=tmp_path / "b",
    )
    cfg["distill"]["transfer"] = {**cfg["data"], "class_offset": 20}  # other toy classes
    summary = run(cfg)
    assert summary["teacher/val_acc"] == pytest.approx(first["teacher/val_acc"])
    assert summary["transfer/size"] == 30 and summary["transfer/labelled"] is False
    assert summary["student_alone/val_acc"] is None


def test_an_ensemble_of_teachers_is_one_teacher_of_all_their_weights(make_cfg, tmp_path):
    # two teachers of the same data: the same recipe, trained for 3 and for 4 epochs
    run(make_cfg(*FAST, run_dir=tmp_path / "a"))
    run(make_cfg(*FAST, "distill.teacher_epochs=4", run_dir=tmp_path / "b"))
    members = [str(tmp_path / x / "teacher.pt") for x in "ab"]
    cfg = make_cfg(*FAST, f"distill.teacher=[{','.join(members)}]", run_dir=tmp_path / "e")
    summary = run(cfg)
    assert summary["teacher/members"] == 2 and summary["teacher/source"].startswith("ensemble of 2")
    assert summary["teacher/params"] == 2 * 24068 and summary["student/params"] == 1700
    assert summary["compression/params"] == pytest.approx(2 * 24068 / 1700)
    assert 0.0 <= summary["teacher/val_acc"] <= 1.0
    # what the stage saved is the whole ensemble: both members' weights, as they were trained
    saved = torch.load(tmp_path / "e" / "teacher.pt", weights_only=True)
    first = torch.load(members[0], weights_only=True)
    assert sorted(saved) == sorted([f"members.{i}.{k}" for i in (0, 1) for k in first])
    assert all(torch.equal(saved[f"members.0.{k}"], v) for k, v in first.items())


def test_an_ensembles_runs_must_share_their_dataset(make_cfg, tmp_path):
    fed = ("ray=inprocess", "fl.rounds=1")
    a = run(make_cfg(*fed, run_dir=tmp_path / "a"))
    run(make_cfg(*fed, "seed=1", run_dir=tmp_path / "b"))
    twice = f"distill.teacher=[{tmp_path / 'a'},{tmp_path / 'a'}]"
    summary = run(make_cfg(*FAST, twice, run_dir=tmp_path / "e"))
    assert summary["teacher/val_acc"] == pytest.approx(a["val/acc"])  # a run's mean with itself
    other = f"distill.teacher=[{tmp_path / 'a'},{tmp_path / 'b'}]"
    with pytest.raises(ConfigError, match=r"distill.teacher\[1\]=.* \(seed differs\)"):
        run(make_cfg(*FAST, other, run_dir=tmp_path / "f"))
    run(make_cfg(*fed, "data.noise=0.5", run_dir=tmp_path / "c"))
    other = f"distill.teacher=[{tmp_path / 'a'},{tmp_path / 'c'}]"
    with pytest.raises(ConfigError, match=r"\(data.noise differs\)"):
        run(make_cfg(*FAST, other, run_dir=tmp_path / "f"))


def test_the_ensemble_is_its_members_mean_logits():
    from fedray.distill.ensemble import Ensemble

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x = torch.randn(5, 3)
    torch.testing.assert_close(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    # the mean logits are the normalised geometric mean of the members' tempered softmaxes
    t = 3.0
    geo = (torch.log_softmax(a(x) / t, 1) + torch.log_softmax(b(x) / t, 1)) / 2
    torch.testing.assert_close(
        torch.softmax(Ensemble([a, b])(x) / t, 1), torch.softmax(geo, 1)
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("distill.loss=kl", "distill.loss"),
        ("distill.lam=1.5", "distill.lam"),
        ("distill.teacher=/nonexistent", "distill.teacher"),
        ("distill.teacher=[/nonexistent]", r"distill.teacher\[0\]"),
        ("distill.teacher=[]", "distill.teacher"),
    ],
)
def test_bad_distill_config_is_a_one_line_error(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        run(make_cfg(*FAST, override))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_feddf_federated_run_and_distilling_its_model(make_cfg, tmp_path, lines):
    """The teacher run's seed (1) builds the student's data, not the distill run's (0): toy data
    draws its images from the seed, so the teacher scored on seed 0's was scored on other data
    (and image_folder's val split would have held the teacher's training images)."""
    fed = run(
        make_cfg(
            "strategy=feddf",
            "strategy.steps=10",
            "strategy.eval_every=5",
            "fl.rounds=2",
            "seed=1",
            run_dir=tmp_path / "fed",
        )
    )
    assert 0.0 <= fed["val/acc"] <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "fed" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val/acc" in r][-1]  # FedAvg's aggregate of the round, beside it
    assert 0.0 <= last["val_base/acc"] <= 1.0 and last["feddf/steps"] <= 10
    assert (tmp_path / "fed" / "acc_vs_round.png").exists()
    summary = run(make_cfg(*FAST, f"distill.teacher={tmp_path / 'fed'}", run_dir=tmp_path / "d"))
    assert summary["teacher/val_acc"] == pytest.approx(fed["val/acc"])
    assert summary["teacher/source"] == str(tmp_path / "fed")
    assert "distill: the data is built with the teacher run's seed 1 (this run's seed 0 seeds " \
           "the student)" in lines


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_federated_distillation_trains_a_student_from_a_teacher_run(make_cfg, tmp_path):
    run(make_cfg("fl.rounds=1", run_dir=tmp_path / "teacher"))  # TinyCNN width 16, federated
    cfg = make_cfg(
        "task=distill",
        f"task.teacher={tmp_path / 'teacher'}",
        "model.width=4",  # the student
        "fl.cache_features=false",
        "fl.rounds=2",
        run_dir=tmp_path / "student",
    )
    summary = run(cfg)
    assert 0.0 <= summary["val/acc"] <= 1.0
    lines = (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["round"] for r in rows if "train/loss" in r] == [1, 2]
    # the hinton term (T^2 KL) is in the training loss: not the plain CE the run would log
    plain = run(make_cfg("model.width=4", "fl.cache_features=false", "fl.rounds=2",
                         run_dir=tmp_path / "plain"))
    assert summary["train/loss"] != pytest.approx(plain["train/loss"])
