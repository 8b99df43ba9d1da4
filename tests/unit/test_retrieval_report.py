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
