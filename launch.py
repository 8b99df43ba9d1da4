"""fedray entry point: compose the Hydra config, resolve it to a plain dict, seed, dispatch.

python launch.py +experiment=pill_noniid            # the default federated job
python launch.py +experiment=smoke fl.rounds=3      # any key can be overridden
python launch.py +experiment=pill_noniid sweep=noniid sweep.num_samples=2   # a Ray Tune sweep
"""

from __future__ import annotations

import gc
import logging
import os
import random
import re
import sys

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import fedray.config  # noqa: F401  (registers the typed schema before Hydra composes)
import fedray.sweep  # noqa: F401  (registers sweeps/*.yaml as the Hydra group `sweep`)
from fedray.logging import log_to_files_of, print_and_log


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch in the driver (clients derive their own seeds)."""
    import torch

    from fedray.config import ConfigError

    if not 0 <= seed < 2**32:  # NumPy's range
        raise ConfigError(f"seed: {seed} is not an integer in [0, 2**32)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PER_CLIENT = re.compile(r"^client/\d+/")
MAX_CLIENT_ROWS = 10  # more clients than this: their rows stay in summary.json


def print_summary(metrics: dict, run_dir: str = "") -> None:
    """A short table of the final scalar metrics (per-client ones only for a few clients)."""
    rows = [
        (k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    clients = {k.split("/")[1] for k, _ in rows if PER_CLIENT.match(k)}
    hidden = len(clients) > MAX_CLIENT_ROWS
    if hidden:
        rows = [(k, v) for k, v in rows if not PER_CLIENT.match(k)]
    width = max((len(k) for k, _ in rows), default=10)
    lines = ["", "-" * (width + 16)]
    for k, v in rows:
        small = isinstance(v, float) and 0 < abs(v) < 1e-3  # dp.delta 1e-05 is not 0.0000
        lines.append(f"{k:<{width}}  {v:>12.4g}" if small else f"{k:<{width}}  {v:>12.4f}"
                     if isinstance(v, float) else f"{k:<{width}}  {v:>12}")
    lines += [f"confused: {line}" for line in metrics.get("most_confused", [])]
    if hidden:
        lines.append(f"client/<id>/...: {len(clients)} clients' values in "
                     f"{os.path.join(run_dir, 'summary.json')}")
    lines.append("-" * (width + 16))
    print_and_log(lines)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from fedray.run import run

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"fedray: error: {exc.full_key} is required ({exc.full_key}=...)", file=sys.stderr)
        sys.exit(2)
    plain["run_dir"] = HydraConfig.get().runtime.output_dir
    log_to_files_of(logging.getLogger())  # the run dir's launch.log gets the run's lines
    logging.getLogger("torch").setLevel(logging.WARNING)  # not its INFO stats at exit
    try:
        seed_everything(int(plain["seed"]))
        if plain.get("sweep"):
            from fedray.sweep import sweep

            sweep(plain)  # prints the ranked table and every output path
            return
        metrics = run(plain)
    except Exception as exc:
        fail_if_user_error(exc)
        raise
    print_summary(metrics, plain["run_dir"])


def user_error(exc: BaseException) -> str | None:
    """One line for a user's mistake (a bad override, value, path or target), else None (a bug).

    Mistakes are fedray's ConfigError/DatasetError/PartitionError (also raised inside a Ray task),
    Hydra's composition, override and instantiation errors, and OmegaConf's type and key errors.
    """
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from fedray.config import ConfigError
    from fedray.data.datasets import DatasetError
    from fedray.data.partition import PartitionError

    cause = getattr(exc, "cause", None)  # a RayTaskError carries the remote exception
    if isinstance(cause, BaseException) and cause is not exc:
        return user_error(cause)
    if isinstance(exc, ConfigError | DatasetError | PartitionError):
        text = str(exc)
    elif isinstance(exc, OmegaConfBaseException):
        key, msg = getattr(exc, "full_key", None), getattr(exc, "msg", None) or str(exc)
        msg = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
        text = f"{key}: {msg}" if key else msg  # (the lines after the first repeat the key)
    elif isinstance(exc, OverrideParseException) and "=" in exc.override:
        key, _, value = exc.override.partition("=")
        quote = "'" if '"' in value else '"'
        text = (  # a regex (^ | \\ ( ) [ ]) or a path with spaces: Hydra's grammar needs quotes
            f"{key.lstrip('+~')}: Hydra cannot read the value {value} unquoted; quote it for "
            f"Hydra inside the shell's quotes: '{key}={quote}{value}{quote}'"
        )
    elif isinstance(exc, MissingConfigException) and exc.options is not None:
        group, _, name = str(exc.missing_cfg_file).rpartition("/")
        text = f"{group or 'config'}: {name!r} is not one of {', '.join(exc.options)}"
    elif isinstance(exc, HydraException):
        inner = exc.__cause__
        text = (user_error(inner) if inner is not None else None) or str(exc)
        add = str(exc).partition("To append to your config use ")[2].strip()
        key = str(exc).partition("Could not override '")[2].partition("'")[0]
        if add and key:  # an override of a key the config does not have
            text = f"{key}: no such key here; {_known_keys(inner, key, add)}"
        twice = re.search(r"Multiple values for ([\w.]+)\. To override a value use "
                          r"'override [\w./]+: ([^']+)'", text)
        if twice:  # `+group=name` for a group the defaults already choose: Hydra's advice is YAML
            group, name = twice.groups()
            text = f"{group}: the defaults already choose one; pick with {group}={name} (no +)"
    else:
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _known_keys(exc: BaseException, key: str, add: str) -> str:
    """What an override of a missing key may have meant: the closest keys beside it, or how to
    add a new one (`add`: Hydra's `+key=value`)."""
    import difflib

    parent = getattr(exc, "parent_node", None) if getattr(exc, "full_key", None) == key else None
    try:
        keys = [str(k) for k in parent.keys()] if parent is not None else []
    except Exception:  # noqa: BLE001 - a node without keys: no suggestion
        keys = []
    head, _, leaf = key.rpartition(".")
    near = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.6)
    if near:
        return "did you mean " + " or ".join(f"{head + '.' if head else ''}{k}" for k in near) + "?"
    from fedray.config import SCHEMA

    if head in SCHEMA and keys:  # a typed group: no key can be added to it
        return f"{head or 'the top level'} has {', '.join(sorted(keys))}"
    if head == "sweep":  # a sweep's fields are fixed; without sweep=NAME there is no sweep
        from fedray.sweep.spec import SPEC_FIELDS, sweep_files

        if keys:
            return f"a sweep has {', '.join(sorted(SPEC_FIELDS - {'error', 'file'}))}"
        return f"no sweep is chosen: pick one with sweep=NAME ({', '.join(sorted(sweep_files()))})"
    return f"a new key is added with {add}"


def fail_if_user_error(exc: BaseException) -> None:
    """Print a user's mistake as `fedray: error: <key>: <what>` and exit 2; a round that too few
    clients survived (a diverging lr, failing clients: the message says which and why), a
    secure-aggregation round too few clients answered to unmask, or a sweep whose every trial
    failed as one line too, exit 1; return for a bug."""
    if type(exc).__name__ == "SweepInterrupted":  # Ctrl-C during a sweep: stopped, not wrong
        print(f"fedray: {exc}", file=sys.stderr)
        sys.exit(130)
    message = user_error(exc)
    if message is not None:
        print(f"fedray: error: {message}", file=sys.stderr)
        sys.exit(2)
    # fedray.fl.server's, fedray.privacy.secagg's, the sweep's
    if type(exc).__name__ in ("QuorumError", "SecAggError", "SweepFailed"):
        print(f"fedray: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Hydra re-raises what fails (composing, overriding, the run) instead of printing a trimmed
    # traceback itself, so a user's mistake is one line here and a bug keeps its whole traceback
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        from fedray.sweep.spec import sweep_file_args

        sys.argv[1:] = sweep_file_args(sys.argv[1:])  # sweep=path/to/file.yaml
        main()
    except KeyboardInterrupt:  # Ctrl-C: the user's own stop, not a bug to show a traceback of
        how = ("a sweep continues with the same command and sweep.resume=true"
               if any(a.lstrip("+").startswith("sweep=") for a in sys.argv[1:])
               else "a federated run continues from its last checkpoint with the same command "
                    "and resume=true")
        print(f"\nfedray: interrupted; {how}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        fail_if_user_error(exc)
        raise
    finally:
        # The interpreter's last garbage collection walks every object torch, its compiler
        # stack and matplotlib left behind (0.6-1.0 s on 2 cores) only to free memory the OS
        # frees anyway; frozen objects are skipped. Exit handlers, thread joins and file
        # flushes still run.
        gc.freeze()
