"""Table 5 of the paper from retrieval runs' summary.json, as a markdown table:

    python -m fedray.pill.retrieval.report RUN_DIR [RUN_DIR ...] [--queries shifted]

Several run directories (e.g. the central models and a `student_fed` run of the same fold) fill
one table; a model in two of them is read from the last.
"""

from __future__ import annotations

import argparse
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


QUERY_SETS = ("consumer", "shifted", "seen")


def main(argv: list[str]) -> int:
    """Print the table of the run directories in `argv`; 2 on a missing or unreadable summary."""
    ap = argparse.ArgumentParser(prog="python -m fedray.pill.retrieval.report",
                                 description="Table 5 of MobileDeepPill from retrieval runs.")
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--queries", choices=QUERY_SETS, default="consumer",
                    help="consumer photos of unseen pills (default), the same under colour "
                         "casts, or held-out photos of trained pills")
    args = ap.parse_args(argv)
    summary: dict[str, Any] = {}
    for run_dir in args.run_dirs:
        path = run_dir / "summary.json"
        try:
            summary.update(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            print(f"fedray: error: {path}: {getattr(e, 'strerror', None) or e} (a stage=retrieval "
                  "run writes it when it ends)", file=sys.stderr)
            return 2
    print(table5(summary, args.queries))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
