"""fedray entry point: compose the Hydra config, resolve it to a plain dict, seed, dispatch.

python launch.py +experiment=pill_noniid            # the default federated job
python launch.py +experiment=smoke fl.rounds=3      # any key can be overridden
python launch.py +experiment=pill_noniid sweep=noniid sweep.num_samples=2   # a Ray Tune sweep
"""

from __future__ import annotations

import random
import sys

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import fedray.config  # noqa: F401  (registers the typed schema before Hydra composes)
import fedray.tune  # noqa: F401  (registers sweeps/*.yaml as the Hydra group `sweep`)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch in the driver (clients derive their own seeds)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def print_summary(metrics: dict) -> None:
    """A short table of the final scalar metrics."""
    rows = [
        (k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    width = max((len(k) for k, _ in rows), default=10)
    print("\n" + "-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>12.4f}" if isinstance(v, float) else f"{k:<{width}}  {v:>12}")
    for line in metrics.get("most_confused", []):
        print(f"confused: {line}")
    print("-" * (width + 16))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from fedray.config import ConfigError
    from fedray.data.datasets import DatasetError
    from fedray.run import run

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"fedray: error: {exc.full_key} is required ({exc.full_key}=...)", file=sys.stderr)
        sys.exit(2)
    plain["run_dir"] = HydraConfig.get().runtime.output_dir
    seed_everything(int(plain["seed"]))
    try:
        if plain.get("sweep"):
            from fedray.tune import sweep

            sweep(plain)  # prints the ranked table and every output path
            return
        metrics = run(plain)
    except (ConfigError, DatasetError) as exc:
        print(f"fedray: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print_summary(metrics)


if __name__ == "__main__":
    main()
