"""The Tune trainable: one federated run per trial, reporting each evaluated round with its
checkpoint.

Each report carries the run's `checkpoint.pkl` (and who wrote it), so Tune can retry a failed
trial from its last reported round (`max_failures`), continue a killed sweep (`sweep.resume`),
and PBT can continue a trial from a better trial's checkpoint under a mutated config. Tune
checks every report for the sweep's metric, so with `fl.eval_every > 1` only the rounds that
evaluate (and the last) are reported; a retry resumes from the last of those.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from fedray.sweep.groups import is_number
from fedray.sweep.plan import check_feasible, fmt_value, train_labels, trial_config, trial_rounds
from fedray.sweep.space import INDEX_KEY, decode

TRIALS_DIR = "trials"
ORIGIN = "origin.json"  # beside checkpoint.pkl in a reported checkpoint: which trial, which round


class InjectedTrialFault(RuntimeError):
    """`sweep.faults`: a trial that fails on purpose after a round (or the first later round a
    retry reaches), on each of its first `attempts` tries.

    For tests and demos of `max_failures` and `sweep.resume`, like `fl.faults` for clients.
    """


def trial_name(index: int) -> str:
    """Stable name of trial `index` (its run directory and W&B run name)."""
    return f"trial_{index:03d}"


def trial_index(trial_id: str, config: dict[str, Any]) -> int:
    """A trial's number: from a searcher's config, else the counter in Tune's trial id."""
    if INDEX_KEY in config:
        return int(config[INDEX_KEY])
    return int(str(trial_id).rsplit("_", 1)[-1])


def trial_dirname(trial: Any) -> str:
    """Tune's directory of a trial: its fedray name and Tune id."""
    return f"{trial_name(trial_index(trial.trial_id, trial.config))}_{trial.trial_id}"


def trial_name_creator(trial: Any) -> str:
    """Tune's name of a trial: trial_NNN."""
    return trial_name(trial_index(trial.trial_id, trial.config))


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The row's scalar numbers as floats (what Tune may compare)."""
    return {
        k: float(v)
        for k, v in row.items()
        if is_number(v) or (hasattr(v, "item") and np.ndim(v) == 0)
    }


def name_wandb_run(
    cfg: dict[str, Any], meta: dict[str, Any], index: int, applied: dict[str, Any]
) -> None:
    """W&B run of a trial: grouped by sweep, named after the trial, tagged with swept values."""
    wcfg = cfg["logger"].setdefault("wandb", {})
    wcfg["group"] = wcfg.get("group") or meta["name"]
    wcfg["name"] = f"{meta['name']}-{trial_name(index)}"
    tags = [*(wcfg.get("tags") or []), str(cfg.get("name")), f"sweep:{meta['name']}"]
    tags += [f"{k}={fmt_value(applied[k])}"[:64] for k in meta["swept"] if k in applied]
    wcfg["tags"] = list(dict.fromkeys(tags))


def _restore(restored: Any, run_dir: Path, index: int, info: dict[str, Any]) -> int:
    """Copy a Tune checkpoint into the run dir; returns its round and records a PBT exploit."""
    from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint

    with restored.as_directory() as d:
        shutil.copy2(Path(d) / CHECKPOINT, run_dir / CHECKPOINT)
        origin_path = Path(d) / ORIGIN
        origin = json.loads(origin_path.read_text()) if origin_path.exists() else {}
    start = int(load_checkpoint(run_dir / CHECKPOINT)["round"])
    if origin and int(origin["trial"]) != index:  # PBT: continue from a better trial's model
        info.setdefault("exploits", []).append(
            {"from": trial_name(int(origin["trial"])), "round": start}
        )
    return start


def _early_end(cfg: dict[str, Any]) -> str:
    """Why a run that returned stopped before its last round."""
    if (cfg.get("dp") or {}).get("max_epsilon") is not None:
        return f"dp.max_epsilon={cfg['dp']['max_epsilon']} spent"
    return "the run ended before its last round"


def run_trial(
    config: dict[str, Any], *, base: dict[str, Any], options: dict, meta: dict[str, Any]
) -> None:
    """Tune function trainable: one federated run, reporting every round with a checkpoint."""
    import ray
    from ray import tune

    from fedray.fl.checkpoint import CHECKPOINT
    from fedray.fl.kept import parking
    from fedray.logging import log_file
    from fedray.run import run

    if meta.get("cwd") and Path(meta["cwd"]).is_dir():
        os.chdir(meta["cwd"])  # relative paths in the config mean what they meant at launch
    ctx = tune.get_context()
    index = trial_index(ctx.get_trial_id(), config)
    assignment = decode(config, meta["variants"])
    cfg, skipped = trial_config(base, assignment, options)
    bundles = ctx.get_trial_resources().bundles
    cfg["ray"]["max_actors"] = max(1, len(bundles) - 1)  # the pool fills this trial's bundles
    run_dir = Path(meta["sweep_dir"]) / TRIALS_DIR / trial_name(index)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg["run_dir"] = str(run_dir)
    cfg["resume"] = False
    cfg["sweep"] = {"name": meta["name"], "trial": index, "assignment": assignment}
    name_wandb_run(cfg, meta, index, {k: v for k, v in assignment.items() if k not in skipped})
    info_path = run_dir / "trial.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"attempts": 0}
    info.update(
        index=index,
        trial_id=ctx.get_trial_id(),
        assignment=assignment,
        not_applicable=skipped,
        node_id=ray.get_runtime_context().get_node_id(),
        pid=os.getpid(),  # trials may share a process (sweep.reuse_processes)
        bundles=bundles,
        attempts=int(info["attempts"]) + 1,
        resumed_from_round=0,
    )
    info.pop("ended", None)  # set once this attempt's run returns
    if meta.get("check_feasible"):  # Tune drew this point: can the experiment run it?
        why = check_feasible(cfg, train_labels(cfg))
        if why:
            info["skipped"] = why
            info_path.write_text(json.dumps(info, indent=2, default=str))
            return  # ends the trial without a result: it is listed as skipped
    restored = tune.get_checkpoint()
    if restored is not None:
        info["resumed_from_round"] = _restore(restored, run_dir, index, info)
        cfg["resume"] = str(run_dir)
    info_path.write_text(json.dumps(info, indent=2, default=str))
    # (round, attempts): each of the first `attempts` tries fails after the first round >= round
    # it reports (a retry resumes after the round its try failed at: one round further each)
    faults = [(f["round"], f["attempts"]) for f in meta.get("faults", []) if f["trial"] == index]
    staging = run_dir / ".tune_checkpoint"
    rounds = trial_rounds(cfg)
    last: list[tuple[dict[str, Any], Path | None]] = []
    seen: list[int] = []  # the rounds this run reached (a distillation may end before fl.rounds)

    def report(row: dict[str, Any], ckpt_path: Path | None) -> None:
        metrics = numeric(row)
        if ckpt_path is None:
            tune.report(metrics)
        else:
            # a fixed staging dir: report may block until Tune continues or stops this trial
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            shutil.copy2(ckpt_path, staging / CHECKPOINT)
            origin = {"trial": index, "round": int(row["round"])}
            (staging / ORIGIN).write_text(json.dumps(origin))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
        if any(int(row["round"]) >= r and info["attempts"] <= n for r, n in faults):
            raise InjectedTrialFault(
                f"sweep.faults: trial {index} fails after round {row['round']} "
                f"(attempt {info['attempts']})"
            )

    metric = meta.get("metric")

    def on_round(row: dict[str, Any], ckpt_path: Path | None) -> None:
        seen.append(int(row["round"]))
        if int(row["round"]) < rounds:
            # Tune refuses a result without the metric: a round that did not evaluate
            # (fl.eval_every > 1) is not reported, nor is its checkpoint
            if metric is None or metric in numeric(row):
                report(row, ckpt_path)
        else:
            # the last round is reported once the run has finished (summary, plots, W&B run),
            # since a scheduler's decision at that report may end this process
            last.append((dict(row), ckpt_path))

    # sweep.reuse_processes: this process may serve the next trial, and its client actors with it
    parked = parking() if meta.get("reuse_processes") else nullcontext()
    with log_file(run_dir / "launch.log"), parked:
        summary = run(cfg, on_round)
    # the run ended itself (all its rounds, or fewer: dp.max_epsilon spent): not cut short by
    # the scheduler or a kill, whatever the final report below decides (results.py reads it)
    reached = seen[-1] if seen else int(summary.get("rounds") or rounds)
    info["ended"] = {
        "round": reached,
        "reason": "all rounds run" if reached >= rounds else _early_end(cfg),
    }
    info_path.write_text(json.dumps(info, indent=2, default=str))
    if last:
        report(*last[-1])
    else:  # ended before fl.rounds (dp.max_epsilon), or resumed after its last round: the
        # final state once (the summary's metrics: evaluated at the end), at the round it reached
        report({**numeric(summary), "round": reached}, None)
    shutil.rmtree(staging, ignore_errors=True)
