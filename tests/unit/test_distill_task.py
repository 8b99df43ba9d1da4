"""task=distill: the federated student's loss against a fixed teacher, and its config errors."""

from __future__ import annotations

import pytest
import torch

from fedray.config import ConfigError
from fedray.distill.losses import hinton, l2
from fedray.distill.task import Distillation
from fedray.fl.train import train_local
from fedray.models import build_model
from fedray.tasks import build_task
from fedray.validate import validate

TINY = {"_target_": "fedray.models.tiny_cnn.TinyCNN", "width": 8}


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(3)
    teacher = build_model(TINY, 4)
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return teacher.eval(), path


@pytest.mark.parametrize("loss", ["hinton", "l2"])
def test_train_loss_is_the_distill_loss_against_the_teachers_logits(teacher_file, loss):
    teacher, path = teacher_file
    task = build_task(
        {
            "_target_": "fedray.distill.task.Distillation",
            "name": "distill",
            "teacher": str(path),
            "teacher_model": TINY,
            "loss": loss,
            "temperature": 2.0,
            "lam": 0.7,
        }
    )
    assert isinstance(task, Distillation) and task.needs_images
    torch.manual_seed(0)
    x = torch.rand(5, 3, 32, 32)
    student = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        soft = teacher(x)
    want = hinton(student, soft, y, 2.0, 0.7) if loss == "hinton" else l2(student, soft, y, 0.7)
    assert float(task.train_loss(student, y, x)) == pytest.approx(float(want), rel=1e-6)
    # evaluation's loss is plain cross-entropy, whatever the teacher says
    ce = torch.nn.functional.cross_entropy(student, y)
    assert float(task.loss(student, y)) == pytest.approx(float(ce))
    # the teacher is not trained and does not travel with the pickled task
    assert not any(p.requires_grad for p in task._teacher.parameters())
    assert task.__getstate__()["_teacher"] is None


def test_a_student_trained_under_the_task_moves_towards_the_teacher(teacher_file):
    teacher, path = teacher_file
    task = Distillation(teacher=str(path), teacher_model=TINY, lam=1.0, temperature=1.0)
    rng = torch.Generator().manual_seed(1)
    x = (torch.rand(64, 32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
    y = torch.zeros(64, dtype=torch.long).numpy()  # labels unused at lam=1
    torch.manual_seed(4)
    student = build_model(TINY, 4)

    def kl() -> float:
        from fedray.data.datasets import to_tensor_batch
        from fedray.distill.losses import soft_kl

        with torch.no_grad():
            xb = to_tensor_batch(x)
            return float(soft_kl(student.eval()(xb), teacher(xb)))

    before = kl()
    train_local(
        student,
        x,
        y,
        [n for n, _ in student.named_parameters()],
        epochs=15,
        batch_size=16,
        optimizer_factory=lambda p: torch.optim.Adam(p, lr=3e-3),
        seed=0,
        task=task,
    )
    assert kl() < 0.5 * before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "task.teacher: set it"),
        ({"teacher": "/nonexistent/run"}, "does not exist"),
        ({"teacher": "FILE"}, "task.teacher_model must name"),
        ({"teacher": "FILE", "teacher_model": TINY, "loss": "kl"}, "task.loss"),
        ({"teacher": "FILE", "teacher_model": TINY, "lam": 2}, "task.lam"),
    ],
)
def test_bad_distill_task_configs_name_the_key(teacher_file, kwargs, match):
    _, path = teacher_file
    kwargs = {k: str(path) if v == "FILE" else v for k, v in kwargs.items()}
    with pytest.raises(ConfigError, match=match):
        Distillation(**kwargs)


def test_missing_images_and_wrong_classes_are_clear_errors(teacher_file):
    _, path = teacher_file
    task = Distillation(teacher=str(path), teacher_model=TINY)
    with pytest.raises(ConfigError, match="fl.cache_features=false"):
        task.train_loss(torch.randn(2, 4), torch.tensor([0, 1]), None)
    with pytest.raises(ConfigError, match="same classes"):
        task.train_loss(torch.randn(2, 4), torch.tensor([0, 1]), torch.rand(2, 3, 32, 32))
        task.train_loss(torch.randn(2, 5), torch.tensor([0, 1]), torch.rand(2, 3, 32, 32))


def test_validate_refuses_the_task_on_cached_features(teacher_file, make_cfg):
    _, path = teacher_file
    cfg = make_cfg(
        "task=distill",
        f"task.teacher={path}",
        f"++task.teacher_model={{_target_: {TINY['_target_']}, width: 8}}",
        "fl.trainable=classifier",
    )
    with pytest.raises(ConfigError, match="fl.cache_features=false"):
        validate(cfg)
    cfg["fl"]["cache_features"] = False
    validate(cfg)


@pytest.mark.parametrize("target", ["fedray.tasks.segmentation.Segmentation",
                                    "fedray.pill.retrieval.task.Retrieval"])
def test_stage_distill_refuses_a_teacher_run_without_class_logits(target, tmp_path):
    import yaml

    from fedray.config import ConfigError, compose_plain
    from fedray.distill.stage import check_stage

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"stage": "federated", "task": {"_target_": target}}))
    (tmp_path / "checkpoint.pkl").write_bytes(b"")
    cfg = compose_plain(["+experiment=smoke", "stage=distill", f"distill.teacher={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^distill\.teacher='.*' is a \w+ run: a teacher gives "
                                          r"class logits"):
        check_stage(cfg)
    cfg["distill"]["teacher"] = [str(tmp_path)]  # an ensemble's member alike
    with pytest.raises(ConfigError, match=r"^distill\.teacher\[0\]="):
        check_stage(cfg)


def _teacher_run(run_dir, cfg, model_cfg, num_classes):
    """A finished run directory: config.yaml and a checkpoint of `model_cfg`'s params."""
    import yaml

    from fedray.fl.checkpoint import save_checkpoint

    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"stage": "federated", "seed": 0, "data": cfg["data"], "model": model_cfg}))
    model = build_model(model_cfg, num_classes)
    save_checkpoint(run_dir / "checkpoint.pkl",
                    {"params": {k: v.numpy() for k, v in model.state_dict().items()}})
    return run_dir


def test_validate_loads_the_teacher_and_matches_it_to_the_student(teacher_file, make_cfg,
                                                                  tmp_path):
    """Once found by each client after Ray started (a round with no usable update), or a
    traceback: a teacher that does not fit its model, of other classes, or no state_dict."""
    _, path = teacher_file  # TinyCNN width 8, 4 classes; smoke's data has 4

    def cfg_with(teacher, width=8, *more):
        return make_cfg("task=distill", f"task.teacher={teacher}", "fl.cache_features=false",
                        f"++task.teacher_model={{_target_: {TINY['_target_']}, width: {width}}}",
                        *more)

    validate(cfg_with(path))
    with pytest.raises(ConfigError, match=r"^task\.teacher='.*' does not fit fedray\.models\."
                                          r"tiny_cnn\.TinyCNN built for 4 classes: size mismatch "
                                          r"for features\.0\.weight"):
        validate(cfg_with(path, 32))
    with pytest.raises(ConfigError, match=r"built for 6 classes: size mismatch for classifier"):
        validate(cfg_with(path, 8, "data.num_classes=6"))
    text = tmp_path / "metrics.jsonl"
    text.write_text('{"round": 1}\n')
    with pytest.raises(ConfigError, match=r"^task\.teacher='.*' is not a saved state_dict .*; a "
                                          r"teacher is a finished run directory or a state_dict"):
        validate(cfg_with(text))
    run_dir = _teacher_run(tmp_path / "teacher_run", cfg_with(path), TINY, 4)
    validate(cfg_with(run_dir))
    with pytest.raises(ConfigError, match=r"^task\.teacher='.*' gives outputs of shape \(2, 4\), "
                                          r"the student \(2, 6\)"):
        validate(cfg_with(run_dir, 8, "data.num_classes=6"))


def test_stage_distill_loads_a_state_dict_teacher_into_model(make_cfg, tmp_path):
    from fedray.distill.stage import check_stage

    text = tmp_path / "metrics.jsonl"
    text.write_text('{"round": 1}\n')
    cfg = make_cfg("stage=distill", f"distill.teacher={text}")
    with pytest.raises(ConfigError, match=r"^distill\.teacher='.*' is not a saved state_dict"):
        check_stage(cfg)
    wide = tmp_path / "wide.pt"  # smoke's model is TinyCNN width 16
    torch.save(build_model({**TINY, "width": 32}, 4).state_dict(), wide)
    cfg["distill"]["teacher"] = str(wide)
    with pytest.raises(ConfigError, match=r"^distill\.teacher='.*' does not fit tiny_cnn built "
                                          r"for 4 classes: size mismatch for features\.0\.weight"):
        check_stage(cfg)
    cfg["distill"]["teacher"] = [str(tmp_path / "nope.pt")]
    with pytest.raises(ConfigError, match=r"^distill\.teacher\[0\]="):
        check_stage(cfg)
    torch.save(build_model({**TINY, "width": 16}, 4).state_dict(), wide)
    cfg["distill"]["teacher"] = str(wide)
    check_stage(cfg)


def test_stage_distill_refuses_data_overrides_a_run_dir_teacher_would_ignore(make_cfg, tmp_path,
                                                                              monkeypatch):
    import fedray.config
    from fedray.distill.stage import check_stage

    cfg = make_cfg("stage=distill")
    cfg["distill"]["teacher"] = str(_teacher_run(tmp_path / "run", cfg, TINY, 4))
    monkeypatch.setattr(fedray.config, "command_line_keys", lambda: ["seed", "stage"])
    check_stage(cfg)
    monkeypatch.setattr(fedray.config, "command_line_keys", lambda: ["data.num_classes"])
    with pytest.raises(ConfigError, match=r"^data\.num_classes: distill\.teacher is a run "
                                          r"directory, and the student learns on the data that "
                                          r"run was trained on"):
        check_stage(cfg)
