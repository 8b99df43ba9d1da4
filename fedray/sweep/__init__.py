"""Ray Tune sweeps: one federated run per trial, each in a placement group of its own.

A sweep is a YAML file in `sweeps/` (metric, mode, search, scheduler, num_samples and a space of
dotted config keys). Importing this package registers every such file as an option of the Hydra
group `sweep`, so `python launch.py +experiment=smoke sweep=lr sweep.num_samples=1` composes it
like any other group; `sweep(cfg)` runs it. Ray is imported only when a sweep runs.

    spec       sweep files: read, validate (errors name the file and key), the Hydra group
    groups     config-group options a trial switches to; dotted-key access
    keys       the space's keys checked against the config and the options variants name
    space      the YAML space as Tune's param space (grid_search/choice/uniform/loguniform/randint)
    plan       trial configs, feasibility, the grid's spread and submission order
    search     Tune's searchers (random, Optuna, HyperOpt) and schedulers (ASHA, PBT)
    resources  a trial's placement group: its driver and its client actors
    trainable  the Tune function: fedray.run.run reporting every round with a checkpoint
    results    CSV, ranked markdown, summary JSON, plots
    tuner      sweep(cfg): plan, run Tune, write the results; sweep.resume
See docs/sweeps.md for the file format.
"""

from __future__ import annotations

from typing import Any

from fedray.sweep.spec import SweepError, SweepSpec, load_sweep, register_sweeps, sweep_files

__all__ = ["SweepError", "SweepSpec", "load_sweep", "register_sweeps", "sweep", "sweep_files"]


def sweep(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the sweep `cfg["sweep"]` over the experiment `cfg` (see fedray.sweep.tuner.sweep)."""
    from fedray.sweep.tuner import sweep as run_sweep

    return run_sweep(cfg)


register_sweeps()  # at import, so that `launch.py ... sweep=NAME` composes
