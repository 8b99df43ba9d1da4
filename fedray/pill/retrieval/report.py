"""Table 5 of the paper from retrieval runs, as a markdown table:

    python -m fedray.pill.retrieval.report RUN_DIR [RUN_DIR ...] [--queries shifted]

Several run directories fill one table: the central models and a `student_fed` run of the same
fold, or the folds of one cross-validation run in pieces (`retrieval.run_folds=[0]` on one
machine, `[1,2,3,4]` on another). Each run's folds are read from its `metrics.jsonl` (so a run
still going, or killed, counts the folds it finished), and every model's figures are the mean ±
std over all the folds found for it; a (model, fold) in two runs is read from the last. Runs
whose folds hold other pills (another seed, catalog, number of folds or training photos) are
refused. A run without per-fold rows is read from its summary.json as a whole. When a model has
more than one fold, a second table gives its two-side MAP fold by fold, and each federated
model's gap to its central twin (`student_fed` - `student`) in points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedray.cli import run
from fedray.pill.retrieval.metrics import REPORTED

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
    model = key.split("/", 1)[0]
    spread = len(summary.get(f"{model}/folds_run") or summary.get("folds_run") or []) > 1
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
# what decides a fold's pills and query photos: runs that differ here cannot share a table
SPLIT_KEYS = ("seed", "retrieval.folds", "retrieval.train_photos", "retrieval.catalog")


class ReportError(Exception):
    """A run directory that cannot be read or joined (the message names it)."""


def _split_of(run_dir: Path) -> dict[str, Any] | None:
    """The run's SPLIT_KEYS from its config.yaml (None when it has none)."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    out = {}
    for dotted in SPLIT_KEYS:
        node: Any = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = {k: v for k, v in node.items() if k != "cache_dir"}
        out[dotted] = node
    return out


def fold_rows(run_dir: Path) -> dict[tuple[str, int], dict[str, float]]:
    """{(model, fold): {"consumer/multi/two_side/map": ..., ...}} from metrics.jsonl's eval rows."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    out: dict[tuple[str, int], dict[str, float]] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError as e:
            if n == len(lines):  # a run killed while writing its last line
                break
            raise ReportError(f"{path}:{n}: not a JSON line ({e})") from e
        if "fold" in row and "model" in row and any(k.startswith("eval/") for k in row):
            out[(str(row["model"]), int(row["fold"]))] = {
                k[len("eval/"):]: float(v) for k, v in row.items()
                if k.startswith("eval/") and k.rsplit("/", 1)[-1] in REPORTED}
    return out


def combine(run_dirs: list[Path]) -> dict[str, Any]:
    """One summary (summary.json's keys, mean and _std over folds, `<model>/folds_run`) from the
    folds of every run in `run_dirs`; a later run's (model, fold) replaces an earlier one's."""
    folds: dict[tuple[str, int], dict[str, float]] = {}
    whole: dict[str, Any] = {}
    first: tuple[Path, dict[str, Any]] | None = None
    for run_dir in run_dirs:
        split = _split_of(run_dir)
        if split is not None and first is not None:
            for key in SPLIT_KEYS:
                if split[key] != first[1][key]:
                    raise ReportError(
                        f"{run_dir}: {key} is {split[key]!r}, {first[0]} has {first[1][key]!r}: "
                        "their folds hold other pills and photos, so they are not one table")
        if split is not None and first is None:
            first = (run_dir, split)
        rows = fold_rows(run_dir)
        if not rows:
            path = run_dir / "summary.json"
            try:
                summary = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                if (run_dir / "metrics.jsonl").exists() and not path.exists():
                    raise ReportError(f"{run_dir}: no fold has finished yet (no evaluation rows "
                                      "in its metrics.jsonl, no summary.json)") from e
                raise ReportError(f"{path}: {getattr(e, 'strerror', None) or e} (a stage=retrieval "
                                  "run writes it when it ends)") from e
            models = {k.split("/", 1)[0] for k in summary if k.count("/") >= 4}
            folds = {k: v for k, v in folds.items() if k[0] not in models}
            whole = {k: v for k, v in whole.items() if k.split("/", 1)[0] not in models}
            whole.update(summary)
            for m in models:
                whole[f"{m}/folds_run"] = summary.get("folds_run") or []
            continue
        models = {m for m, _ in rows}
        whole = {k: v for k, v in whole.items() if k.split("/", 1)[0] not in models}
        folds.update(rows)
    out = dict(whole)
    for model in sorted({m for m, _ in folds}):
        results = [folds[(m, f)] for m, f in sorted(folds) if m == model]
        out[f"{model}/folds_run"] = sorted(f for m, f in folds if m == model)
        for key in results[0]:
            vals = [r[key] for r in results if key in r]
            out[f"{model}/{key}"] = float(np.mean(vals))
            out[f"{model}/{key}_std"] = float(np.std(vals))
        out[f"{model}/per_fold"] = {f: folds[(m, f)] for m, f in sorted(folds) if m == model}
    return out


def per_fold_table(summary: dict[str, Any], query_set: str = "consumer") -> str:
    """Two-side MAP of each model (column) on each fold (row), and the mean; '' with <2 folds."""
    key = f"{query_set}/multi/two_side/map"
    models = [(label, m) for label, m, streams in ROWS
              if streams == "multi" and len(summary.get(f"{m}/folds_run") or []) > 1]
    if not models:
        return ""
    folds = sorted({f for _, m in models for f in summary[f"{m}/folds_run"]})
    names = [m for _, m in models]
    gaps = [(m.removesuffix("_fed"), m) for m in names
            if m.endswith("_fed") and m.removesuffix("_fed") in names]
    lines = ["| fold | " + " | ".join([label for label, _ in models]
                                      + [f"{fed} - {cen} (points)" for cen, fed in gaps]) + " |",
             "|---" * (len(models) + len(gaps) + 1) + "|"]

    def row(name: Any, value) -> str:
        cells = [value(m) for m in names]
        diffs = [None if value(fed) is None or value(cen) is None
                 else 100 * (value(fed) - value(cen)) for cen, fed in gaps]
        return (f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
                + "".join(" | -" if d is None else f" | {d:+.1f}" for d in diffs) + " |")

    for f in folds:
        lines.append(row(f, lambda m, f=f: summary.get(f"{m}/per_fold", {}).get(f, {}).get(key)))
    lines.append(row("mean", lambda m: summary[f"{m}/{key}"]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Print the table of the run directories in `argv`; 2 on a missing or unreadable summary."""
    ap = argparse.ArgumentParser(prog="python -m fedray.pill.retrieval.report",
                                 description="Table 5 of MobileDeepPill from retrieval runs.")
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--queries", choices=QUERY_SETS, default="consumer",
                    help="consumer photos of unseen pills (default), the same under colour "
                         "casts, or held-out photos of trained pills")
    args = ap.parse_args(argv)
    try:
        summary = combine(args.run_dirs)
    except ReportError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    print(table5(summary, args.queries))
    folds = per_fold_table(summary, args.queries)
    if folds:
        print(f"\nTwo-side MAP per fold ({args.queries}):\n\n{folds}")
    return 0


if __name__ == "__main__":
    sys.exit(run(lambda: main(sys.argv[1:])))
