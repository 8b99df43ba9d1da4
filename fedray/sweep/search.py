"""Tune's search algorithms and schedulers, built from a sweep spec (imports Ray: load lazily).

search: grid      tune.grid_search over the planned grid points, in order (BasicVariantGenerator)
        random    Tune's own random sampling of the space (BasicVariantGenerator, seeded)
        optuna    ray.tune.search.optuna.OptunaSearch (TPE), `pip install fedray[sweep]`
        hyperopt  ray.tune.search.hyperopt.HyperOptSearch, `pip install fedray[sweep]`
scheduler: none | asha (ASHAScheduler) | pbt (PopulationBasedTraining), all on time_attr round
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from fedray.extras import hint, missing
from fedray.sweep.space import (
    INDEX_KEY,
    grid_space,
    pbt_mutations,
    split_constants,
    tune_space,
)
from fedray.sweep.spec import SweepError, SweepSpec


class NumberedSearcher(Searcher):
    """A Tune searcher that numbers its suggestions (trial_000, ...) and fills in fixed keys.

    Tune's searcher trial ids carry no counter, and a searcher's space holds only the keys it
    samples (built with it); the number travels in the config under `_index` and is saved
    with the searcher's state, so `sweep.resume` continues the count.
    """

    def __init__(self, searcher: Any, fixed: dict[str, Any]) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.fixed, self.count = searcher, fixed, 0

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        """The inner searcher has its space already (Tune's param space holds no domains)."""
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The inner searcher's suggestion with the fixed keys and the trial's number."""
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):
            return config
        self.count += 1
        return {**self.fixed, **config, INDEX_KEY: self.count - 1}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Forward intermediate results (a searcher may prune on them)."""
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """Forward the final result."""
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        """This wrapper's own state (Tune saves the inner searcher's separately)."""
        return {"count": self.count}

    def set_state(self, state: dict[str, Any]) -> None:
        """Undo get_state."""
        self.count = int(state["count"])

    def save(self, checkpoint_path: str) -> None:
        """The inner searcher's state."""
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """The inner searcher's state."""
        self.searcher.restore(checkpoint_path)


def _require(spec: SweepSpec, pkg: str) -> None:
    if missing(pkg):
        raise spec.fail("search", f"search: {spec.search} needs {pkg}: {hint(pkg)}")


def check_search_available(spec: SweepSpec) -> None:
    """A one-line SweepError when the searcher's optional package is not installed."""
    if spec.search in ("optuna", "hyperopt"):
        _require(spec, spec.search)


def build_search(
    spec: SweepSpec, points: list[dict[str, Any]], seed: int
) -> tuple[Any, dict[str, Any], int]:
    """(search_alg, Tuner param_space, num_samples) for this sweep."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search == "grid":
        # one trial per planned point, in order (the grid key expands; num_samples stays 1)
        return BasicVariantGenerator(), grid_space(points), 1
    space = tune_space(spec)
    n = int(spec.num_samples or 1)
    if spec.search == "random":
        return BasicVariantGenerator(random_state=seed), space, n
    check_search_available(spec)
    fixed, domains = split_constants(space)
    if not domains:
        raise spec.fail("space", f"search: {spec.search} needs a range or a list to search")
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        inner = OptunaSearch(space=domains, metric=spec.metric, mode=spec.mode, seed=seed)
    elif spec.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        inner = HyperOptSearch(
            space=domains,
            metric=spec.metric,
            mode=spec.mode,
            random_state_seed=seed,
            n_initial_points=max(1, min(20, n // 2)),  # TPE after the random start
        )
    else:  # pragma: no cover - load_sweep validated the name
        raise SweepError(f"unknown search {spec.search!r}")
    return NumberedSearcher(inner, fixed), {}, n


def build_scheduler(spec: SweepSpec, max_t: int) -> Any:
    """ASHA or PBT on the `round` each trial reports; None for `scheduler: none`."""
    sched = spec.scheduler
    if sched["name"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        top, grace = int(sched.get("max_t") or max_t), int(sched["grace_period"])
        if grace > top:  # ASHA's own check is a bare AssertionError
            raise spec.fail("scheduler.grace_period",
                            f"{grace} rounds before the first cut, but the trials run {top} "
                            f"(fl.rounds or scheduler.max_t): set it to {top} or less")
        return ASHAScheduler(
            time_attr="round",
            max_t=top,
            grace_period=grace,
            reduction_factor=float(sched["reduction_factor"]),
            stop_last_trials=False,  # a trial at max_t finishes its run (summary, plots, W&B)
        )
    if sched["name"] == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        return PopulationBasedTraining(
            time_attr="round",
            perturbation_interval=int(sched["perturbation_interval"]),
            hyperparam_mutations=pbt_mutations(spec),
            quantile_fraction=float(sched["quantile_fraction"]),
            resample_probability=float(sched["resample_probability"]),
            synch=bool(sched.get("synch", False)),  # true: exploit once all reach the interval
            log_config=True,  # pbt_global.txt / pbt_policy_*.txt in the Tune directory
        )
    return None
