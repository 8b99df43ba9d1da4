"""stage=distill: how the student is built (fedray/distill/stage.py)."""


def test_a_students_pretrained_public_is_its_own_pretraining_through_the_pretrain_stage(
        monkeypatch):
    import fedray.run as run
    from fedray.distill.stage import student_cfg

    asked = []

    def pretrain(cfg):  # stands in for the pill application's public-pill pretraining
        asked.append(cfg["model"])
        return {**cfg, "model": {**cfg["model"], "pretrained": "/cache/narrow.pt"}}

    monkeypatch.setattr(run, "_pretrain_resolver", lambda cfg: pretrain)
    cfg = {"pretrain": {"_target_": "x", "name": "public"},
           "model": {"_target_": "teacher", "pretrained": "/cache/teacher.pt"}}
    student = {"_target_": "student", "width": 0.3, "pretrained": "public"}
    out = student_cfg(cfg, {"student": student})
    assert out == {**student, "pretrained": "/cache/narrow.pt"}
    assert asked == [student]  # the student's architecture is pretrained, not the teacher's
    for given in (None, "/my/weights.pt"):  # a path or nothing is taken as it is
        out = student_cfg(cfg, {"student": {**student, "pretrained": given}})
        assert out["pretrained"] == given
    assert len(asked) == 1


def test_pretrain_teacher_makes_the_experiments_model_teach_the_students_pretraining(
        monkeypatch):
    import fedray.run as run
    from fedray.distill.stage import student_cfg

    seen = []
    monkeypatch.setattr(run, "_pretrain_resolver", lambda cfg: lambda c: seen.append(c) or c)
    model = {"_target_": "teacher", "pretrained": "public"}
    cfg = {"pretrain": {"_target_": "x", "name": "public", "teacher": None}, "model": model}
    student = {"_target_": "student", "width": 0.3, "pretrained": "public"}
    student_cfg(cfg, {"student": student, "pretrain_teacher": True})
    student_cfg(cfg, {"student": student, "pretrain_teacher": False})
    assert [c["pretrain"]["teacher"] for c in seen] == [model, None]
    assert all(c["model"] == student for c in seen)
    assert cfg["pretrain"]["teacher"] is None  # the experiment's own config is left as it was


def test_a_student_larger_than_its_teacher_is_said_to_be(caplog, monkeypatch):
    import logging

    from fedray.distill.stage import compression_words

    monkeypatch.setattr(logging.getLogger("fedray"), "propagate", True)
    assert compression_words(7.6, {"name": "squeezenet_small"}) == "7.6x fewer"
    assert "no compression" not in caplog.text
    assert compression_words(0.1, {"name": "mobilenet_v3_small"}) == "10.0x more"
    assert "the student (mobilenet_v3_small) has 10.0x the teacher's parameters" in caplog.text
