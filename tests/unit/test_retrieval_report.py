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
