"""Sweep results: one row per trial, the ranked CSV and markdown table, summary JSON, plots."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from fedray.logging import _json_safe, print_and_log
from fedray.sweep.groups import is_number
from fedray.sweep.plan import fmt_point, fmt_value, trial_config, trial_rounds
from fedray.sweep.space import decode
from fedray.sweep.trainable import TRIALS_DIR, trial_name

STATUSES = ("completed", "stopped", "error", "skipped")
SUMMARY = "sweep_summary.json"  # the ranked results, written once every trial has ended


def _index(result: Any) -> int:
    """The trial's number, from its Tune directory `trial_NNN_<id>`."""
    return int(Path(result.path).name.split("_")[1])


def collect_results(grid: Any, state: dict[str, Any], sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: status, rounds run, assigned values, final metrics, per-round history."""
    metric = state["spec"]["metric"]
    rows = []
    for result in grid:
        index = _index(result)
        assignment = decode(dict(result.config or {}), state.get("variants", {}))
        cfg, _ = trial_config(state["base"], assignment, state["options"])
        metrics = dict(result.metrics or {})
        history = []
        df = result.metrics_dataframe
        if df is not None and len(df):
            keys = dict.fromkeys(("round", metric, "val/acc", "comm/bytes_total"))
            cols = [c for c in keys if c in df.columns]
            history = [{c: _plain(r[c]) for c in cols} for r in df[cols].to_dict("records")]
        rounds_run = int(max([h.get("round") or 0 for h in history] + [metrics.get("round") or 0]))
        max_rounds = trial_rounds(cfg)
        trial_dir = sweep_dir / TRIALS_DIR / trial_name(index)
        info_path = trial_dir / "trial.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        ended = info.get("ended")  # the run returned (trainable.py): nothing cut it short
        if result.error is not None:
            status = "error"
        elif info.get("skipped"):
            status = "skipped"
        elif ended and rounds_run >= int(ended["round"]):  # e.g. dp.max_epsilon spent early
            status, max_rounds = "completed", min(max_rounds, rounds_run)
        elif rounds_run < max_rounds:
            status = "stopped"
        else:
            status = "completed"
        rows.append(
            {
                "trial": trial_name(index),
                "index": index,
                "status": status,
                "rounds": rounds_run,
                "max_rounds": max_rounds,
                "assignment": assignment,
                "not_applicable": info.get("not_applicable", []),
                "metric": _plain(metrics.get(metric)),
                "val/acc": _plain(metrics.get("val/acc")),
                "val/loss": _plain(metrics.get("val/loss")),
                "comm/bytes_total": _plain(metrics.get("comm/bytes_total")),
                "attempts": info.get("attempts"),
                "exploits": len(info.get("exploits", [])),
                "node_id": info.get("node_id"),
                "error": _error_line(result.error) or info.get("skipped"),
                "run_dir": str(trial_dir),
                "history": history,
            }
        )
    return sorted(rows, key=lambda r: r["index"])


def summarize_unfinished(rows: list[dict[str, Any]]) -> None:
    """summary.json (and the curves) for trials that did not finish their run.

    A trial that ASHA stops, or that fails for good, ends inside a round report, before its run
    writes summary.json; its metrics.jsonl holds every round it ran. The sweep driver writes the
    summary from those rows, with the status, so every trial directory reads the same way.
    """
    from fedray.plots import plot_curves

    for r in rows:
        run_dir = Path(r["run_dir"])
        metrics_path = run_dir / "metrics.jsonl"
        if r["status"] in ("completed", "skipped") or (run_dir / "summary.json").exists():
            continue
        if not metrics_path.exists():
            continue
        history = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
        last = history[-1] if history else {}
        summary = {
            k: _json_safe(v) for k, v in last.items() if k.startswith(("val/", "comm/", "train/"))
        }
        summary.update(
            status=r["status"],
            rounds=r["rounds"],
            max_rounds=r["max_rounds"],
            stopped_by="scheduler" if r["status"] == "stopped" else None,
            error=r["error"],
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        has_acc = any(is_number(_json_safe(h.get("val/acc"))) for h in history)
        if has_acc and not (run_dir / "acc_vs_round.png").exists():  # (none: ended before one)
            plot_curves(history, run_dir / "acc_vs_round.png", x="round", ys=("val/acc",))


def _error_line(error: BaseException | None) -> str | None:
    """`Type: message` of the exception a trial raised (unwrapped from Ray's task error)."""
    if error is None:
        return None
    cause = getattr(error, "cause", None) or error
    lines = [ln for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def usable(r: dict[str, Any]) -> bool:
    """Whether a trial's metric may rank: it has one and did not end in an error."""
    return r["metric"] is not None and r["status"] != "error"


def rank(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Rows best first by the metric; errored trials and trials without a value after every
    usable one (errored ones by their last value), then by trial index."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(
        rows,
        key=lambda r: (not usable(r), r["metric"] is None, sign * (r["metric"] or 0.0), r["index"]),
    )


def trial_round_savings(rows: list[dict[str, Any]]) -> tuple[int, int, float]:
    """(trial-rounds run, trial-rounds if they had run to the end, fraction saved), over the
    trials that completed or a scheduler stopped (not skipped draws, nor errors)."""
    ran = [r for r in rows if r["status"] in ("completed", "stopped")]
    run = sum(int(r["rounds"]) for r in ran)
    most = sum(int(r["max_rounds"]) for r in ran)
    return run, most, (1.0 - run / most) if most else 0.0


def write_results(
    sweep_dir: Path, state: dict[str, Any], rows: list[dict[str, Any]], wall_s: float = 0.0
) -> dict:
    """sweep_results.csv, sweep_results.md (ranked), plots/, sweep_summary.json; returns paths."""
    spec = state["spec"]
    metric, swept = spec["metric"], state["swept"]
    ranked = rank(rows, spec["mode"])
    run, most, saved = trial_round_savings(rows)
    csv_path = sweep_dir / "sweep_results.csv"
    fields = ["rank", "trial", "status", "rounds", *swept, metric]
    fields += [k for k in ("val/acc", "val/loss", "comm/bytes_total") if k != metric]
    if spec.get("scheduler", {}).get("name") == "pbt":
        fields.append("exploits")  # times PBT continued this trial from a better one
    fields += ["attempts", "node_id", "run_dir", "error"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i, r in enumerate(ranked, 1):
            writer.writerow(_flat_row(r, i, swept, metric, fields))
    plots = plot_results(sweep_dir / "plots", rows, swept, metric)
    md_path = sweep_dir / "sweep_results.md"
    md_path.write_text(
        _markdown(state, ranked, fields, (run, most, saved), plots, sweep_dir, wall_s)
    )
    best = next((r for r in ranked if usable(r)), None)  # never an errored trial
    summary = {
        "sweep": spec["name"],
        "sweep_dir": str(sweep_dir),
        "metric": metric,
        "mode": spec["mode"],
        "scheduler": _scheduler(spec),
        "trials": len(rows),
        "status": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        "grid_points_skipped": len(state.get("notes") or []),  # before any trial: infeasible
        "trial_rounds": run,
        "trial_rounds_max": most,
        "trial_rounds_saved": saved,
        "wall_s": wall_s,
        "best": None
        if best is None
        else {"trial": best["trial"], metric: best["metric"], "assignment": best["assignment"]},
        "results_csv": str(csv_path),
        "results_md": str(md_path),
        "plots": [str(p) for p in plots],
        "rows": [{k: v for k, v in r.items() if k != "history"} for r in ranked],
    }
    summary_path = sweep_dir / SUMMARY
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_json"] = str(summary_path)
    return summary


def _cell(r: dict[str, Any], key: str) -> Any:
    if key in r["not_applicable"] or key not in r["assignment"]:
        return "n/a"
    return r["assignment"][key]


def _flat_row(
    r: dict[str, Any], rank_: int, swept: list[str], metric: str, fields: list[str]
) -> dict[str, Any]:
    row = {k: r.get(k) for k in fields}
    row.update({k: _cell(r, k) for k in swept})
    row["rank"] = rank_
    row[metric] = r["metric"]
    return row


def _markdown(
    state: dict[str, Any],
    ranked: list[dict[str, Any]],
    fields: list[str],
    rounds: tuple[int, int, float],
    plots: list[Path],
    sweep_dir: Path,
    wall_s: float,
) -> str:
    spec = state["spec"]
    metric, swept = spec["metric"], state["swept"]
    cols = [c for c in fields if c not in ("run_dir", "error", "node_id")]
    lines = [
        f"# Sweep `{spec['name']}` on experiment `{state['base'].get('name')}`",
        "",
        f"{len(ranked)} trials, {spec['search']} search, scheduler {spec['scheduler']['name']}, "
        f"ranked by the last reported `{metric}` ({spec['mode']}).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for i, r in enumerate(ranked, 1):
        row = _flat_row(r, i, swept, metric, fields)
        lines.append("| " + " | ".join(_md(row[c]) for c in cols) + " |")
    run, most, saved = rounds
    stopping = f" (**{100 * saved:.0f}% saved** by early stopping)" if _scheduler(spec) else ""
    lines += [
        "",
        f"Trial-rounds run: **{run}** of {most} if every completed or stopped trial ran all its "
        f"rounds{stopping}; wall time {wall_s:.0f} s.",
    ]
    other = [f"{r['trial']} ({r['status']}, {r['rounds']} rounds)" for r in ranked
             if r["status"] not in ("completed", "stopped")]
    if other:
        lines.append(f"Not counted: {', '.join(other)}.")
    errors = [r for r in ranked if r["error"]]
    if errors:
        lines += ["", "Errors and skipped draws:", ""]
        lines += [f"- {r['trial']}: {r['error']}" for r in errors]
    if state.get("notes"):
        lines += ["", "Skipped grid points / draws:", ""] + [f"- {n}" for n in state["notes"]]
    if plots:
        lines += [""] + [f"![{p.stem}]({p.relative_to(sweep_dir)})" for p in plots]
    return "\n".join(lines) + "\n"


def _scheduler(spec: dict[str, Any]) -> str | None:
    """The early-stopping scheduler's name (asha, pbt), None without one."""
    name = (spec.get("scheduler") or {}).get("name")
    return None if name in (None, "none") else str(name)


def _md(v: Any) -> str:
    if v is None:
        return "-"
    return fmt_value(v).replace("|", "\\|")


def _figure(width: float = 5.0, height: float = 3.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).strip("_")


def plot_results(
    out_dir: Path, rows: list[dict[str, Any]], swept: list[str], metric: str
) -> list[Path]:
    """metric vs each swept key (one point per trial) and val/acc vs bytes (one line per trial)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    markers = {"completed": "o", "stopped": "v", "error": "x"}
    for key in swept:
        pts = [
            (_cell(r, key), r["metric"], r["status"])
            for r in rows
            if r["metric"] is not None and _cell(r, key) != "n/a"
        ]
        if not pts:
            continue
        fig = _figure()
        ax = fig.add_subplot()
        numeric = all(is_number(x) for x, _, _ in pts)
        if numeric:
            xs = [float(x) for x, _, _ in pts]
            if min(xs) > 0 and max(xs) / min(xs) >= 50:
                ax.set_xscale("log")
        else:
            cats = list(dict.fromkeys(str(x) for x, _, _ in pts))
            xs = [cats.index(str(x)) for x, _, _ in pts]
            ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0)
        for status, marker in markers.items():
            sel = [(x, y) for (x, (_, y, s)) in zip(xs, pts, strict=True) if s == status]
            if sel:
                ax.scatter(*zip(*sel, strict=True), marker=marker, label=status)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        path = out_dir / f"{_safe_name(metric)}_vs_{_safe_name(key)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    curves = [
        (
            r["trial"],
            [
                (h["comm/bytes_total"], h["val/acc"])
                for h in r["history"]
                if h.get("comm/bytes_total") is not None and h.get("val/acc") is not None
            ],
        )
        for r in rows
    ]
    curves = [(name, pts) for name, pts in curves if pts]
    if curves:
        fig = _figure(6.0, 4.0)
        ax = fig.add_subplot()
        for name, pts in curves:
            ax.plot(*zip(*pts, strict=True), marker=".", label=name)
        ax.set_xlabel("cumulative bytes communicated")
        ax.set_ylabel("val/acc")
        if len(curves) <= 12:
            ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
        path = out_dir / "acc_vs_bytes.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def print_results(out: dict[str, Any]) -> None:
    """The ranked table's head, the trial-round saving and every output path."""
    metric = out["metric"]
    skipped = out.get("grid_points_skipped") or 0
    note = f"; {skipped} grid point(s) skipped before the sweep (listed above)" if skipped else ""
    lines = [f"\nsweep {out['sweep']}: {out['trials']} trials {out['status']}{note}"]
    lines += [
        f"  {r['trial']}  {r['status']:<9}  rounds {r['rounds']:>3}  "
        f"{metric} {_md(r['metric']):>8}  {fmt_point(r['assignment'])}"
        for r in out["rows"][:10]
    ]
    saved = f" ({100 * out['trial_rounds_saved']:.0f}% saved)" if out.get("scheduler") else ""
    lines.append(
        f"trial-rounds run: {out['trial_rounds']} of {out['trial_rounds_max']}{saved}   "
        f"wall {out.get('wall_s', 0):.1f}s"
    )
    lines += [f"results: {out['results_csv']}", f"         {out['results_md']}",
              f"summary: {out['summary_json']}", *(f"plot:    {p}" for p in out["plots"]),
              f"trials:  {Path(out['sweep_dir']) / TRIALS_DIR}"]
    print_and_log(lines)
