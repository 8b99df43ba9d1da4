"""Drive a sweep: plan it, build Tune's Tuner (searcher, scheduler, resources), run, write results.

`sweep(cfg)` is what `launch.py ... sweep=NAME` calls. The sweep's directory is the Hydra run
directory: `sweep.json` (the plan, for `sweep.resume`), `tune/` (Tune's experiment state),
`trials/trial_NNN/` (each trial's run directory) and the results (`fedray/sweep/results.py`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedray.sweep.keys import group_options
from fedray.sweep.plan import (
    check_trials,
    fmt_point,
    max_rounds,
    plan_trials,
    submission_order,
    train_labels,
    trial_config,
)
from fedray.sweep.resources import check_fits, trial_resources
from fedray.sweep.results import SUMMARY  # written once every trial has ended
from fedray.sweep.space import variant_table
from fedray.sweep.spec import SweepError, SweepSpec, load_sweep
from fedray.sweep.trainable import run_trial, trial_dirname, trial_name_creator

log = logging.getLogger("fedray")
SWEEP_STATE = "sweep.json"
TUNE_DIR = "tune"


def sweep_hash(base: dict[str, Any], spec: SweepSpec) -> str:
    """What a resumed sweep must match: the experiment's hash, its rounds (a resumed sweep runs
    the rounds it was planned with) and the sweep's name."""
    from fedray.run import experiment_hash

    return f"{experiment_hash(base)}-r{base['fl']['rounds']}-{spec.name}"


def find_sweep_dir(resume: Any, sweep_dir: Path, want: str) -> Path | None:
    """The sweep to continue: `sweep.resume=PATH`, or with `true` the latest matching sweep under
    the same output root (this run's own directory included), an unfinished one first."""
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        found = sorted(
            (
                p.parent
                for p in sweep_dir.parent.glob(f"*/{SWEEP_STATE}")
                if json.loads(p.read_text()).get("hash") == want
                and (p.parent / TUNE_DIR).is_dir()
            ),
            key=lambda d: (not (d / SUMMARY).exists(), (d / SWEEP_STATE).stat().st_mtime),
        )
        if not found:
            raise SweepError(
                f"sweep.resume=true: no earlier run of this sweep and experiment under "
                f"{sweep_dir.parent}"
            )
        return found[-1]
    path = Path(str(resume)).expanduser()
    if not (path / SWEEP_STATE).exists():
        raise SweepError(f"sweep.resume={resume!r}: {path / SWEEP_STATE} does not exist")
    return path


def sweep(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the sweep `cfg["sweep"]` over the experiment `cfg`; returns the results and paths."""
    from fedray.fl.pool import ensure_ray
    from fedray.logging import setup_console_logging
    from fedray.sweep.results import (
        collect_results,
        print_results,
        summarize_unfinished,
        write_results,
    )
    from fedray.sweep.search import check_search_available

    setup_console_logging()
    t0 = time.perf_counter()
    if not cfg.get("run_dir"):
        raise SweepError("run_dir is not set (launch.py sets it to Hydra's output directory)")
    base = copy.deepcopy(cfg)
    sweep_node = base.pop("sweep")
    base["sweep"] = None
    spec = load_sweep(sweep_node, base)
    check_search_available(spec)  # before Ray starts: a missing extra is a one-line error
    sweep_dir = Path(cfg["run_dir"]).resolve()
    want = sweep_hash(base, spec)
    resume_dir = find_sweep_dir(spec.resume, sweep_dir, want)
    if resume_dir is None:  # every trial's config checked as a run's is, before Ray starts
        labels: dict[str, np.ndarray] = {}
        check_trials(spec, base, lambda c: train_labels(c, labels))
    started = ensure_ray(cfg["ray"])
    try:
        if resume_dir is not None:
            state = json.loads((resume_dir / SWEEP_STATE).read_text())
            log.info("resuming sweep %s in %s", spec.name, resume_dir)
            grid = run_tuner(resume_dir, state, restore=True)
            sweep_dir = resume_dir
        else:
            state = plan(spec, base, sweep_dir, want)
            grid = run_tuner(sweep_dir, state, restore=False)
        rows = collect_results(grid, state, sweep_dir)
        check_not_interrupted(grid, state, sweep_dir, rows)
        summarize_unfinished(rows)
        out = write_results(sweep_dir, state, rows, wall_s=time.perf_counter() - t0)
    finally:
        if started:
            import ray

            ray.shutdown()
    print_results(out)
    failed = [r for r in rows if r["status"] == "error"]
    if rows and len(failed) == len(rows):
        raise SweepFailed(
            f"every trial of sweep {spec.name!r} failed; the first: {failed[0]['error']} "
            f"(its log: {Path(failed[0]['run_dir']) / 'launch.log'})"
        )
    return out


class SweepFailed(RuntimeError):
    """Every trial ended in an error: results are written, but nothing was measured."""


class SweepInterrupted(SweepError):
    """Tune stopped before every trial ended (Ctrl-C): its state is saved for sweep.resume."""


def check_not_interrupted(
    grid: Any, state: dict[str, Any], sweep_dir: Path, rows: list[dict[str, Any]]
) -> None:
    """Raise SweepInterrupted when a trial is still running/pending or was never created.

    Tune ends `fit()` normally on Ctrl-C; the ranked results of a cut-short sweep would read as
    final, so they are not written: `sweep.resume=true` finishes the sweep and writes them. A
    trial "stopped" before its first round, or stopped at all without a scheduler, was cut short.
    """
    trials = list(grid._experiment_analysis.trials)
    expected = len(state.get("trials") or []) or int(state["spec"].get("num_samples") or 0)
    ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    no_scheduler = (state["spec"].get("scheduler") or {}).get("name") in (None, "none")
    cut = [
        r for r in rows
        if r["status"] == "stopped" and (no_scheduler or not int(r.get("rounds") or 0))
    ]
    if cut or len(ended) < len(trials) or len(trials) < expected:
        unfinished = max(len(cut), len(trials) - len(ended)) + max(0, expected - len(trials))
        raise SweepInterrupted(
            f"sweep interrupted with {unfinished} of {max(expected, len(trials))} trial(s) "
            "unfinished (never started ones included); "
            f"its state is saved in {sweep_dir}: add sweep.resume=true to finish it"
        )


def plan(spec: SweepSpec, base: dict[str, Any], sweep_dir: Path, want: str) -> dict[str, Any]:
    """Plan the sweep (grid points, resources) and save it as `sweep.json`; returns the state."""
    import ray

    labels: dict[str, np.ndarray] = {}
    points, notes, swept = plan_trials(spec, base, lambda c: train_labels(c, labels))
    for note in notes:
        log.info("sweep %s: %s", spec.name, note)
    options = group_options(spec, base)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if spec.driver_cpus > cluster_cpus:
        raise spec.fail(
            "driver_cpus", f"{spec.driver_cpus} exceeds the cluster's {cluster_cpus:g} CPUs"
        )
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if spec.driver_gpus > cluster_gpus:
        raise spec.fail(
            "driver_gpus", f"{spec.driver_gpus:g} exceeds the cluster's {cluster_gpus:g} GPUs"
        )
    for p in points or [{}]:  # a drawn trial has at least the base's clients
        tcfg, _ = trial_config(base, p, options)
        need = check_fits(tcfg, spec.driver_cpus, cluster_cpus)
        if need > cluster_cpus + 1e-9:
            raise SweepError(
                f"sweep {spec.name!r}: trial {fmt_point(p) or '(base)'} needs {need:g} CPUs, the "
                f"cluster has {cluster_cpus:g}; lower ray.client_cpus or sweep.driver_cpus"
            )
    order = submission_order(spec, len(points), int(base["seed"]))
    state = {
        "name": spec.name,
        "hash": want,
        "spec": {k: v for k, v in asdict(spec).items() if k != "dims"},
        "base": base,
        "options": options,
        "variants": variant_table(spec.dims),
        "trials": [points[i] for i in order],  # grid points in submission order (else empty)
        "max_rounds": max_rounds(spec, base, points),
        "swept": swept,
        "notes": notes,
        "cluster_cpus": cluster_cpus,
        "cwd": os.getcwd(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_STATE).write_text(json.dumps(state, indent=2, default=str))
    log.info(
        "sweep %s: %s (%s search, scheduler %s) over %s -> %s",
        spec.name,
        f"{len(points)} trials" if points else f"{spec.num_samples} trials",
        spec.search,
        spec.scheduler["name"],
        ", ".join(swept) or "-",
        sweep_dir,
    )
    return state


def _trainable(state: dict[str, Any], sweep_dir: Path) -> Any:
    from ray import tune

    spec = state["spec"]
    meta = {
        "name": state["name"],
        "sweep_dir": str(sweep_dir),
        "swept": state["swept"],
        "metric": spec["metric"],  # only rounds that report it are reported (fl.eval_every)
        "faults": spec["faults"],
        "cwd": state["cwd"],
        "variants": state["variants"],
        "check_feasible": spec["search"] != "grid",  # a planned grid is feasible already
        "reuse_processes": bool(spec.get("reuse_processes", True)),
    }
    fn = tune.with_parameters(run_trial, base=state["base"], options=state["options"], meta=meta)
    return tune.with_resources(
        fn,
        partial(
            trial_resources,
            base=state["base"],
            options=state["options"],
            variants=state["variants"],
            driver_cpus=float(spec["driver_cpus"]),
            cluster_cpus=float(state["cluster_cpus"]),
            driver_gpus=float(spec.get("driver_gpus") or 0.0),
        ),
    )


def run_tuner(sweep_dir: Path, state: dict[str, Any], restore: bool) -> Any:
    """Run (or continue) the sweep's Tune experiment; returns Tune's ResultGrid."""
    from ray import tune

    from fedray.sweep.search import build_scheduler, build_search

    spec_d = state["spec"]
    trainable = _trainable(state, sweep_dir)
    if restore:
        tuner = tune.Tuner.restore(
            str(sweep_dir / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True
        )
        return fit(tuner, spec_d)
    spec = load_sweep({k: v for k, v in spec_d.items() if k != "resume"}, state["base"])
    seed = spec.seed if spec.seed is not None else int(state["base"]["seed"])
    search_alg, param_space, num_samples = build_search(spec, state["trials"], seed)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=build_scheduler(spec, int(state["max_rounds"])),
            num_samples=num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            # the next trial runs in a finished trial's process when their resources match: no
            # new worker process and imports per trial (a run keeps no state across runs)
            reuse_actors=bool(spec.reuse_processes),
            trial_name_creator=trial_name_creator,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(sweep_dir),
            failure_config=tune.FailureConfig(max_failures=int(spec.max_failures)),
            # PBT clones another trial's checkpoint of some earlier round: keep them all
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if spec.scheduler["name"] == "pbt" else 1
            ),
            verbose=1,
        ),
    )
    return fit(tuner, spec_d)


def fit(tuner: Any, spec_d: dict[str, Any]) -> Any:
    """`tuner.fit()`; a `metric` the trials do not report is the sweep file's mistake: one line
    naming it and what they report (Tune raises it from the first result, after a round)."""
    import re

    from fedray.fl.pool import quiet_notice

    # on Ctrl-C Tune advises `Tuner.restore(path=..., trainable=...)`: fedray says how to go on
    # (sweep.resume=true) in its own line
    quiet_notice("ray.tune.tune", "Experiment has been interrupted")
    try:
        return tuner.fit()
    except Exception as exc:  # Tune wraps the ValueError in a TuneError holding its traceback
        text = str(exc)
        if "did not include the specified metric" not in text:
            raise
        found = re.findall(r"'([\w./-]+/[\w./-]+)':", text.partition("Result:")[2])
        reported = sorted({k for k in found if not k.startswith("config/")})  # Tune's echo
        raise SweepError(
            f"sweep {spec_d.get('name')!r} ({spec_d.get('file')}): sweep.metric: "
            f"{spec_d.get('metric')!r} is not reported by the trials; they report "
            f"{', '.join(reported) or 'no metric under that name'}"
        ) from None
