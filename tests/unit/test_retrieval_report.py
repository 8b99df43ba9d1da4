"""The Table-5 printout of a retrieval run's summary."""

from __future__ import annotations

from fedray.pill.retrieval.report import table5


def test_table5_rows_follow_the_paper_and_skip_missing_models():
    summary = {"folds_run": [0, 1]}
    for scheme in ("one_side", "two_side"):
        for m, v in (("map", 0.5), ("top1", 0.25), ("top5", 0.75)):
            summary[f"teacher/consumer/multi/{scheme}/{m}"] = v
            summary[f"teacher/consumer/multi/{scheme}/{m}_std"] = 0.01

    lines = table5(summary).splitlines()

    assert len(lines) == 3  # header, rule, the teacher (no colour-only, student or KD entries)
    assert lines[2] == ("| Multi-CNNs (teacher) | 0.500 ± 0.010 | 25.0 ± 1.0% | 75.0 ± 1.0% "
                        "| 0.500 ± 0.010 | 25.0 ± 1.0% | 75.0 ± 1.0% |")


def test_cli_joins_run_dirs_and_names_a_missing_summary(tmp_path, capsys):
    import json

    from fedray.pill.retrieval.report import main

    for name, model in (("central", "student"), ("fed", "student_fed")):
        summary = {"folds_run": [0]}
        for scheme in ("one_side", "two_side"):
            for m in ("map", "top1", "top5"):
                summary[f"{model}/shifted/multi/{scheme}/{m}"] = 0.5
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))

    assert main([str(tmp_path / "central"), str(tmp_path / "fed"), "--queries", "shifted"]) == 0
    out = capsys.readouterr().out
    assert "| Student without KD | 0.500 |" in out
    assert "| Student without KD, federated | 0.500 |" in out

    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedray: error: ") and "nowhere/summary.json" in err
    assert "Traceback" not in err


def _fold_run(path, seed, rows, tail=""):
    """A retrieval run directory as the stage leaves it: config.yaml and per-fold eval rows."""
    import json

    import yaml

    path.mkdir()
    cfg = {"seed": seed, "retrieval": {"folds": 5, "train_photos": 6,
                                       "catalog": {"num_pills": 1000, "cache_dir": str(path)}}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = [json.dumps({"round": 1, "fold": 0, "model": "student", "epoch": 1, "loss": 9.0})]
    for model, fold, value in rows:
        lines.append(json.dumps({"round": 2, "fold": fold, "model": model, **{
            f"eval/consumer/multi/{s}/{m}": value for s in ("one_side", "two_side")
            for m in ("map", "top1", "top5")}}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)


def test_folds_of_several_runs_make_one_cross_validation(tmp_path, capsys):
    from fedray.pill.retrieval.report import main

    # fold 0 in one run; folds 1-2 in another, which was killed mid-line after its last fold;
    # a third run re-did fold 2 of the federated model: the last run's (model, fold) counts
    _fold_run(tmp_path / "a", 2, [("student", 0, 0.8), ("student_fed", 0, 0.7)])
    _fold_run(tmp_path / "b", 2, [("student", 1, 0.9), ("student_fed", 1, 0.9),
                                  ("student", 2, 0.7), ("student_fed", 2, 0.1)], tail='{"rou')
    _fold_run(tmp_path / "c", 2, [("student_fed", 2, 0.8)])

    assert main([str(tmp_path / d) for d in "abc"]) == 0
    out = capsys.readouterr().out
    # mean ± population std over the 3 folds: 0.8 ± 0.0816, and 80.0 ± 8.2% for top-k
    assert "| Student without KD | 0.800 ± 0.082 | 80.0 ± 8.2% |" in out
    assert "| Student without KD, federated | 0.800 ± 0.082 |" in out
    assert ("| fold | Student without KD | Student without KD, federated "
            "| student_fed - student (points) |") in out
    assert "| 0 | 0.800 | 0.700 | -10.0 |" in out and "| 2 | 0.700 | 0.800 | +10.0 |" in out
    assert "| mean | 0.800 | 0.800 | +0.0 |" in out


def test_runs_of_other_pills_are_not_joined_and_bad_lines_are_named(tmp_path, capsys):
    from fedray.pill.retrieval.report import main

    _fold_run(tmp_path / "a", 2, [("student", 0, 0.8)])
    _fold_run(tmp_path / "b", 1, [("student", 1, 0.9)])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedray: error: ") and "seed is 1" in err and "Traceback" not in err

    _fold_run(tmp_path / "c", 2, [("student", 1, 0.9)])
    path = tmp_path / "c" / "metrics.jsonl"
    path.write_text("{oops\n" + path.read_text())
    assert main([str(tmp_path / "c")]) == 2
    assert "metrics.jsonl:1: not a JSON line" in capsys.readouterr().err


def test_a_run_with_no_fold_finished_says_so(tmp_path, capsys):
    from fedray.pill.retrieval.report import main

    _fold_run(tmp_path / "a", 2, [])  # training rows only
    assert main([str(tmp_path / "a")]) == 2
    assert "no fold has finished yet" in capsys.readouterr().err
