"""Table 5 of the paper from a retrieval run's summary.json: `python -m
fedray.pill.retrieval.report RUN_DIR [QUERY_SET]` prints it as a markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS = (  # (label, model, streams)
    ("Single-CNN (teacher, colour only)", "teacher", "color"),
    ("Multi-CNNs (teacher)", "teacher", "multi"),
    ("Student with KD", "student_kd", "multi"),
    ("Student without KD", "student", "multi"),
    ("Multi-CNNs teacher, federated", "teacher_fed", "multi"),
    ("Student without KD, federated", "student_fed", "multi"),
)


def _cell(summary: dict[str, Any], key: str, pct: bool) -> str:
    """mean ± std over folds (the mean alone from a single fold)."""
    mean, std = summary[key], summary.get(f"{key}_std", 0.0)
    spread = len(summary.get("folds_run") or []) > 1
    if pct:
        return f"{100 * mean:.1f} ± {100 * std:.1f}%" if spread else f"{100 * mean:.1f}%"
    return f"{mean:.3f} ± {std:.3f}" if spread else f"{mean:.3f}"


def table5(summary: dict[str, Any], query_set: str = "consumer") -> str:
    """Markdown rows: model | one-side MAP, top-1, top-5 | two-side MAP, top-1, top-5."""
    lines = ["| Model | one-side MAP | top-1 | top-5 | two-side MAP | top-1 | top-5 |",
             "|---|---|---|---|---|---|---|"]
    for label, model, streams in ROWS:
        base = f"{model}/{query_set}/{streams}"
        if f"{base}/one_side/map" not in summary:
            continue
        cells = [_cell(summary, f"{base}/{scheme}/{m}", m != "map")
                 for scheme in ("one_side", "two_side") for m in ("map", "top1", "top5")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Print the table of the run directory argv[0] (query set argv[1], default consumer)."""
    summary = json.loads((Path(argv[0]) / "summary.json").read_text())
    print(table5(summary, argv[1] if len(argv) > 1 else "consumer"))


if __name__ == "__main__":
    main(sys.argv[1:])
