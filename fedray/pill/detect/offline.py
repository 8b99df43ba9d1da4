"""Ultralytics, offline: no font, weight, version, telemetry or dataset downloads, ever.

`load_ultralytics()` is the only way fedray imports ultralytics. Before the first import it sets
the environment ultralytics reads at import time (`YOLO_OFFLINE`, no auto-install, a config
directory of fedray's own), puts a locally shipped TTF where ultralytics looks for `Arial.ttf`,
and switches every online integration off in its settings file.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from fedray.config import ConfigError
from fedray.data.datasets import default_cache_dir

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names ultralytics' check_font asks for
# settings that would talk to a server (sync: telemetry; hub; the tracker integrations)
OFFLINE_SETTINGS = {
    "sync": False,
    "raytune": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "tensorboard": False,
    "wandb": False,  # fedray logs to W&B itself (RunLogger)
    "vscode_msg": False,
    "openvino_msg": False,
}
OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",  # ultralytics.utils.ONLINE = False without a DNS lookup
    "YOLO_AUTOINSTALL": "false",  # never pip-install a missing requirement
    "YOLO_VERBOSE": "true",  # per-epoch lines in the log
}


def local_font() -> Path:
    """A TTF that an installed package ships (matplotlib's DejaVuSans), to stand in for Arial."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise ConfigError(f"{path}: matplotlib's DejaVuSans.ttf is missing; ultralytics would "
                          "download Arial.ttf (reinstall matplotlib)")
    return path


def config_dir() -> Path:
    """Where ultralytics keeps its settings and fonts: $YOLO_CONFIG_DIR, else the fedray cache."""
    return Path(os.environ.get("YOLO_CONFIG_DIR") or default_cache_dir() / "ultralytics-config")


def prepare_config_dir(root: Path) -> Path:
    """Create `root/Ultralytics` holding the fonts ultralytics asks for; returns that folder."""
    folder = root / "Ultralytics"
    folder.mkdir(parents=True, exist_ok=True)
    font = local_font()
    for name in FONTS:
        if not (folder / name).is_file():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(font, tmp)
            os.replace(tmp, folder / name)  # atomic: concurrent callers never see half a font
    return folder


def _not_a_terminal() -> bool:
    return "GITHUB_ACTIONS" in os.environ or not sys.stdout.isatty()


_THREADS: int | None = None  # torch's thread count before ultralytics first touched it


def use_threads(threads: int | None) -> int:
    """Let ultralytics train and predict on `threads` CPU threads (None: torch's current count).

    Ultralytics resets torch to min(8, cores - 1) threads whenever it picks a CPU device: one
    thread on a 2-core machine, which made training 1.8x slower than on both cores.
    """
    import torch
    from ultralytics.utils import torch_utils

    n = max(1, int(threads or _THREADS or torch.get_num_threads()))
    torch_utils.NUM_THREADS = n
    torch.set_num_threads(n)
    return n


def _refused(url: object = "", *args: object, **kwargs: object) -> None:
    raise ConnectionError(
        f"fedray runs ultralytics offline and refused to download {kwargs.get('url', url)}: give "
        "local files (e.g. detect.weights=PATH) instead"
    )


def refuse_downloads() -> None:
    """Make every ultralytics download fail at once, before any socket opens.

    `YOLO_OFFLINE` only makes ultralytics give up *after* a failed attempt: its `safe_download`
    tries curl or urllib first. On a GPU its AMP check fetches yolo26n.pt that way; refused, the
    check is skipped and AMP stays on (ultralytics' own offline branch, GPUs it knows to fail AMP
    still excluded). Modules that imported `safe_download` by name are patched too.
    """
    from ultralytics.data import utils as data_utils
    from ultralytics.utils import downloads

    downloads.safe_download = _refused
    downloads.get_github_assets = _refused
    data_utils.safe_download = _refused


def load_ultralytics() -> ModuleType:
    """Import ultralytics set up to run offline; returns the module."""
    global _THREADS
    first = _THREADS is None
    if first:
        import torch  # before ultralytics, whose import sets OMP_NUM_THREADS=1

        _THREADS = torch.get_num_threads()
    if "ultralytics" not in sys.modules:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        os.environ["YOLO_OFFLINE"] = "1"
        root = config_dir()
        os.environ["YOLO_CONFIG_DIR"] = str(root)
        prepare_config_dir(root)
    import ultralytics
    from ultralytics import utils

    # imported earlier by someone else: make it offline and point its font lookups at ours
    utils.ONLINE = False
    folder = Path(utils.USER_CONFIG_DIR)
    prepare_config_dir(folder.parent)
    from ultralytics.utils import checks, events

    checks.ONLINE = False
    events.ONLINE = False
    from ultralytics.utils import tqdm

    # ultralytics redraws its bar with \r in a log file too (one line of megabytes): a bar on a
    # terminal only; in a log the epoch's final bar line and fedray's periodic lines remain
    tqdm.is_noninteractive_console = _not_a_terminal
    refuse_downloads()
    if first:
        use_threads(None)
    wanted = {k: v for k, v in OFFLINE_SETTINGS.items() if k in utils.SETTINGS}
    if any(utils.SETTINGS.get(k) != v for k, v in wanted.items()):
        utils.SETTINGS.update(wanted)
    return ultralytics
