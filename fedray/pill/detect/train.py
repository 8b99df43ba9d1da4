"""`stage=detect`: train an ultralytics YOLOv3 on the synthetic scenes, offline, cached.

The detector is built from its model YAML (`yolov3-tinyu.yaml` on CPU, `yolov3u.yaml` the full
one) and starts from scratch or from a local weights file (`detect.weights`); nothing downloads
(see offline.py). It trains on a view of the dataset's `detection/` folder made at train time
(linked images, copied labels, a data.yaml with the folder's actual location), so a moved or
shared cache still trains. The weights and their figures land in the cache under the hash of the
detector config, the scenes' dataset entry, the seed and the library versions; a second run of
the same config only evaluates. `detect.eval_data=PATH` scores the detector on a YOLO folder of
real photos as well (classes collapsed to `pill`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from fedray.config import ConfigError, command_line_keys
from fedray.data.datasets import DatasetError, cached_build, file_digest
from fedray.logging import RunLogger

log = logging.getLogger("fedray")

VERSION = 1  # bump when the same config would now train different weights
WEIGHTS = "weights.pt"
METRICS = "metrics.json"
FEDRAY_KEY = "fedray"  # fedray's own entry in the ultralytics checkpoint: {"imgsz": served side}
DEFAULTS: dict[str, Any] = {
    "name": "yolov3_tiny",
    "model": "yolov3-tinyu.yaml",
    "weights": None,
    "epochs": 8,
    "imgsz": 320,
    "infer_scale": 1.2,
    "batch": 16,
    "val_every_epoch": False,
    "train_args": {},
    "eval_data": None,
    "eval_split": "val",
    "workers": 2,
    "threads": None,
    "sheet_images": 12,
    "log_every": 0.25,
}
# where, how fast, or what to score afterwards: never what the weights are
_NOT_IN_KEY = ("_target_", "eval_data", "eval_split", "workers", "threads", "sheet_images",
               "log_every")
# ultralytics train arguments fedray sets itself
_OWN_ARGS = ("data", "epochs", "imgsz", "batch", "device", "workers", "project", "name",
             "exist_ok", "seed", "val", "amp", "plots", "pretrained", "resume", "single_cls")


def detect_config(dcfg: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS overlaid with `detect`, checked; a bad value is a ConfigError naming the key."""
    if not dcfg:
        raise ConfigError("stage=detect needs the detect group (+detect=yolov3_tiny, or "
                          "+experiment=pill_detect)")
    unknown = sorted(set(dcfg) - set(DEFAULTS) - {"_target_"})
    if unknown:
        raise ConfigError(f"detect: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **dcfg}
    for key, lo in (("epochs", 1), ("imgsz", 32), ("batch", 1), ("workers", 0),
                    ("sheet_images", 0)):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"detect.{key} must be an integer >= {lo}, got {v!r}")
    if cfg["imgsz"] % 32:  # ultralytics would round it to its stride with a warning
        raise ConfigError(f"detect.imgsz must be a multiple of 32 (the detector's stride), got "
                          f"{cfg['imgsz']}")
    every = cfg["log_every"]
    if not isinstance(every, int | float) or isinstance(every, bool) or not 0 <= every <= 1:
        raise ConfigError(f"detect.log_every must be a fraction of an epoch in [0, 1] (0: per "
                          f"epoch only), got {every!r}")
    scale = cfg["infer_scale"]
    if (not isinstance(scale, (int, float)) or isinstance(scale, bool)
            or not 0.25 <= scale <= 4.0):
        raise ConfigError(f"detect.infer_scale must be a number in [0.25, 4] (the side the "
                          f"detector predicts at, over detect.imgsz), got {scale!r}")
    t = cfg["threads"]
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 1):
        raise ConfigError(f"detect.threads must be null (all cores) or an integer >= 1, got {t!r}")
    if not isinstance(cfg["train_args"] or {}, dict):
        raise ConfigError("detect.train_args must be a mapping of ultralytics train arguments")
    cfg["train_args"] = dict(cfg["train_args"] or {})
    clash = sorted(set(cfg["train_args"]) & set(_OWN_ARGS))
    if clash:
        raise ConfigError(f"detect.train_args: {clash} are set by fedray (use detect.* keys)")
    known = ultralytics_args()
    unknown = sorted(set(cfg["train_args"]) - known) if known else []
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], sorted(known), n=2)
        raise ConfigError(f"detect.train_args.{unknown[0]}: not an ultralytics train argument"
                          + (f" (did you mean {' or '.join(near)}?)" if near else "")
                          + "; see ultralytics/cfg/default.yaml")
    check_train_args(cfg["train_args"])
    if cfg["weights"] is not None:
        path = Path(str(cfg["weights"])).expanduser()
        if not path.is_file():
            raise ConfigError(f"detect.weights={cfg['weights']!r}: no such file (weights come "
                              "only from a local path; null trains from scratch)")
        cfg["weights"] = str(path.resolve())
    if cfg["eval_data"] is not None:
        _check_eval_split(Path(str(cfg["eval_data"])).expanduser(), cfg["eval_split"])
    elif "detect.eval_split" in command_line_keys():  # it would score nothing, silently
        raise ConfigError(f"detect.eval_split={cfg['eval_split']}: set, but detect.eval_data is "
                          "null (the split is one of that folder's: detect.eval_data=PATH)")
    model_yaml(cfg["model"])
    return cfg


def _check_eval_split(root: Path, split: Any) -> None:
    """The eval folder and its split exist before the detector trains (its files are read, and
    each checked, only after training)."""
    from fedray.data.datasets import DatasetError
    from fedray.pill.importers import _find_yolo_splits, _load_data_yaml

    if not root.is_dir():
        raise ConfigError(f"detect.eval_data={str(root)!r}: no such directory")
    try:
        data_yaml, data = _load_data_yaml(root)
        splits = _find_yolo_splits(root, data_yaml, data, need_train=False)
    except DatasetError as exc:
        raise ConfigError(f"detect.eval_data: {exc}") from None
    if split not in splits:
        raise ConfigError(f"detect.eval_split: {split!r} is not a split of {root} (it has "
                          f"{', '.join(sorted(splits)) or 'none'})")


def served_imgsz(dcfg: dict[str, Any]) -> int:
    """The side the detector predicts and is scored at: `imgsz * infer_scale`, a multiple of 32.

    Trained at 320 px with ultralytics' scale augmentation (objects at 0.5-1.5x), the detector
    places boxes tighter at a somewhat larger side (docs/detector.md: AP at IoU 0.8 0.900 -> 0.935
    at 384 px on the same weights).
    """
    return max(32, int(round(dcfg["imgsz"] * float(dcfg["infer_scale"]) / 32)) * 32)


def _ultralytics_dir() -> Path | None:
    """Where the ultralytics package lies, located without importing it (see offline.py)."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def ultralytics_args() -> set[str]:
    """The argument names of ultralytics' `cfg/default.yaml` (empty if it cannot be read)."""
    import yaml

    root = _ultralytics_dir()
    try:
        return set(yaml.safe_load((root / "cfg" / "default.yaml").read_text()) or {})
    except (TypeError, OSError, yaml.YAMLError):
        return set()


def check_train_args(args: dict[str, Any]) -> None:
    """ultralytics' own type and range checks (`ultralytics.cfg.check_cfg`) on
    `detect.train_args`, as a ConfigError naming the argument, before the W&B run or any training
    starts. ultralytics is imported (seconds) only when there are arguments to check."""
    if not args or _ultralytics_dir() is None:  # not installed: model_yaml says so
        return
    import re

    from fedray.pill.detect.offline import load_ultralytics

    load_ultralytics()  # offline, its settings in fedray's config directory
    from ultralytics.cfg import check_cfg

    try:
        check_cfg(dict(args))  # a copy: it converts values in place
    except (TypeError, ValueError) as exc:
        name = re.match(r"'(\w+)=", str(exc))
        key = "detect.train_args" + (f".{name.group(1)}" if name else "")
        raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None


def model_yaml(name: str) -> Path:
    """A local model YAML: a path, or one ultralytics ships (`yolov3-tinyu.yaml`, `yolov3u.yaml`).

    The `u` names are ultralytics' anchor-free YOLOv3s; their YAMLs ship without the `u`.
    """
    path = Path(str(name)).expanduser()
    if path.is_file():
        return path.resolve()
    root = _ultralytics_dir()
    if root is None:
        raise ConfigError("detect: the ultralytics package is not installed")
    shipped = root / "cfg" / "models"
    stem = path.stem[:-1] if path.stem.endswith("u") else path.stem
    hits = sorted(shipped.glob(f"*/{stem}.yaml"))
    if path.suffix not in (".yaml", ".yml") or not hits:
        raise ConfigError(f"detect.model={name!r}: not a model YAML file nor one ultralytics "
                          f"ships under {shipped} (e.g. yolov3-tinyu.yaml, yolov3u.yaml)")
    return hits[0]


def resolve_device(device: str) -> str:
    """fedray's `device` (auto | cpu | cuda) as ultralytics spells it."""
    from fedray.fl.train import torch_device

    device = torch_device(device)
    return "0" if device == "cuda" else device.removeprefix("cuda:")


def scenes_folder(root: str | Path) -> Path:
    """The `detection/` folder a built synthetic dataset holds (DatasetError if it has none)."""
    root = Path(root)
    meta = json.loads((root / "meta.json").read_text())
    det = meta.get("detection") or {}
    if not det.get("train"):
        raise DatasetError(f"{root}: this dataset has no detection scenes (set "
                           "data.detection_scenes > 0, data=synthetic)")
    if not det.get("val"):  # its data.yaml's val is then the training scenes
        raise DatasetError(f"{root}: this dataset has no val detection scenes, and the "
                           "detector's val/AP would be scored on its training scenes (raise "
                           "data.val_fraction or data.detection_scenes)")
    return (root / det["data_yaml"]).parent


def scenes_view(folder: Path, out: Path) -> Path:
    """Linked images + copied labels of `folder` in `out`, and a data.yaml that points there.

    Ultralytics writes its label cache beside the labels: here, never into the dataset's cache.
    """
    splits = {}
    for split in ("train", "val"):
        images = folder / "images" / split
        if not images.is_dir() or not any(images.iterdir()):
            continue
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for image in sorted(images.iterdir()):
            os.symlink(image.resolve(), out / "images" / split / image.name)
            label = folder / "labels" / split / f"{image.stem}.txt"
            if label.is_file():
                shutil.copyfile(label, out / "labels" / split / label.name)
        splits[split] = f"images/{split}"
    if "train" not in splits:
        raise DatasetError(f"{folder}: no training scenes under images/train")
    doc = {"path": str(out), "train": splits["train"], "val": splits.get("val", splits["train"]),
           "nc": 1, "names": ["pill"]}
    (out / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out / "data.yaml"


def scenes_digest(folder: Path) -> str:
    """Digest of the scenes' bytes (images and labels of every split): the detector depends on
    these, not on which dataset entry holds them (a synth code change elsewhere that leaves the
    scenes byte-identical keeps the trained detector)."""
    files = sorted(p for sub in ("images", "labels") for p in (folder / sub).rglob("*")
                   if p.is_file())
    return file_digest(*files)


def cache_key(dcfg: dict[str, Any], scenes: Path, seed: int) -> dict[str, Any]:
    """Everything that decides the trained weights."""
    key = {k: v for k, v in dcfg.items() if k not in _NOT_IN_KEY}
    key.update(scenes=scenes_digest(scenes), seed=seed, version=VERSION,
               ultralytics=version("ultralytics"), torch=version("torch"))
    if dcfg["weights"]:
        key["weights"] = file_digest(dcfg["weights"])
    return key


class _Progress:
    """Ultralytics callbacks: a fedray log line every `log_every` of an epoch and per epoch."""

    def __init__(self, logger: RunLogger | None, log_every: float) -> None:
        self.logger = logger
        self.log_every = log_every
        self.batches = 0
        self.images = 0  # seen in training (a time-capped last epoch stops part way)
        self.t_epoch = time.perf_counter()
        self.epoch_seconds: list[float] = []
        self.logged: set[int] = set()

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.batches = 0
        self.t_epoch = time.perf_counter()

    def on_train_batch_end(self, trainer: Any) -> None:
        self.batches += 1
        self.images += int(trainer.batch_size)
        total = len(trainer.train_loader)
        step = max(1, round(total * self.log_every)) if self.log_every > 0 else 0
        if step and self.batches % step == 0 and self.batches < total:
            losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss else {}
            log.info("detect: epoch %d/%d  batch %d/%d  %s  (%.0fs)", trainer.epoch + 1,
                     trainer.epochs, self.batches, total,
                     "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in losses.items()),
                     time.perf_counter() - self.t_epoch)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        # ultralytics calls it again after its final validation, one past the last epoch
        if trainer.epoch in self.logged or trainer.epoch >= trainer.epochs:
            return
        self.logged.add(trainer.epoch)
        seconds = time.perf_counter() - self.t_epoch
        self.epoch_seconds.append(seconds)
        losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss else {}
        row: dict[str, Any] = {"round": trainer.epoch + 1, **losses, "time/epoch_s": seconds}
        shown = ""
        metrics = trainer.metrics or {}
        if metrics.get("metrics/mAP50(B)"):  # validated this epoch
            row.update({"val/AP50": metrics["metrics/mAP50(B)"],
                        "val/mAP50-95": metrics["metrics/mAP50-95(B)"]})
            shown = f"  val AP50 {row['val/AP50']:.3f}  mAP50-95 {row['val/mAP50-95']:.3f}"
        log.info("detect: epoch %d/%d  %s%s  (%.0fs)", trainer.epoch + 1, trainer.epochs,
                 "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in losses.items()), shown,
                 seconds)
        if self.logger is not None:
            self.logger.log(row)


def train_detector(tmp: Path, dcfg: dict[str, Any], scenes: Path, seed: int, device: str,
                   logger: RunLogger | None) -> None:
    """Train into `tmp` (a cache entry being built): weights.pt, metrics.json, eval plots."""
    from fedray.pill.detect.evaluate import evaluate
    from fedray.pill.detect.offline import load_ultralytics, use_threads

    load_ultralytics()
    use_threads(dcfg["threads"])
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer

    side = served_imgsz(dcfg)
    view = Path(tempfile.mkdtemp(prefix="fedray-scenes-"))
    try:
        data_yaml = scenes_view(scenes, view)
        n_train = len(list((view / "images" / "train").iterdir()))
        model = YOLO(str(model_yaml(dcfg["model"])), task="detect")
        if dcfg["weights"]:
            model.load(dcfg["weights"])  # matching layers only; never a download
        progress = _Progress(logger, float(dcfg["log_every"]))
        for event in ("on_train_epoch_start", "on_train_batch_end", "on_fit_epoch_end"):
            model.add_callback(event, getattr(progress, event))
        log.info("detect: %s from %s on %d scenes of %s, %d epochs at %d px on %s "
                 "(served and scored at %d px)", Path(dcfg["model"]).name,
                 dcfg["weights"] or "scratch", n_train, scenes, dcfg["epochs"], dcfg["imgsz"],
                 device, side)
        t0 = time.perf_counter()
        model.train(data=str(data_yaml), epochs=dcfg["epochs"], imgsz=dcfg["imgsz"],
                    batch=dcfg["batch"], device=device, workers=dcfg["workers"],
                    project=str(tmp), name="train", exist_ok=True, seed=seed,
                    val=bool(dcfg["val_every_epoch"]), amp=device != "cpu", plots=False,
                    pretrained=False, single_cls=True, verbose=True, **dcfg["train_args"])
        train_s = time.perf_counter() - t0
        run = tmp / "train"
        best = run / "weights" / "best.pt"
        # the weights say which side they are served at (identify and export read it back)
        strip_optimizer(best if best.is_file() else run / "weights" / "last.pt", str(tmp / WEIGHTS),
                        updates={FEDRAY_KEY: {"imgsz": side, "trained_imgsz": dcfg["imgsz"]}})
        shutil.rmtree(run / "weights")  # last.pt carries the optimizer: not worth caching
        figures = evaluate(tmp / WEIGHTS, data_yaml, tmp / "eval", side,
                           dcfg["batch"], device, dcfg["sheet_images"])
        for name in ("pr_curve", "predictions"):  # paths relative to the entry: relocatable
            figures[name] = str(Path(figures[name]).relative_to(tmp))
        shutil.rmtree(tmp / "eval" / "val", ignore_errors=True)
        epochs = progress.epoch_seconds
        figures.update({
            "train_s": train_s,
            "epochs": len(epochs),
            "epoch_s": sum(epochs) / max(len(epochs), 1),
            "train_images_per_s": progress.images / max(sum(epochs), 1e-9),
            "train_scenes": n_train,
            "device": device,
            "imgsz": side,
        })
        (tmp / METRICS).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(view, ignore_errors=True)


def run_detect(cfg: dict[str, Any]) -> dict[str, Any]:
    """The `detect` group's `_target_`: train (or find) the detector, score it, log the run."""
    from fedray.data.sources import build_dataset, cache_dir_for
    from fedray.pill.detect.evaluate import evaluate, prepare_eval_folder

    dcfg = detect_config(cfg.get("detect"))
    seed = int(cfg["seed"])
    run_dir = Path(cfg["run_dir"])
    info = build_dataset(cfg["data"], seed)
    scenes = scenes_folder(info.root)
    device = resolve_device(str(cfg.get("device", "auto")))
    key = cache_key(dcfg, scenes, seed)
    logger = RunLogger(run_dir, cfg)
    try:
        t0 = time.perf_counter()
        root = cached_build(cache_dir_for(cfg["data"]), "detector", key,
                            lambda tmp: train_detector(tmp, dcfg, scenes, seed, device, logger))
        synthetic = json.loads((root / METRICS).read_text())
        summary: dict[str, Any] = {"stage": "detect", "weights": str(root / WEIGHTS),
                                   "imgsz": synthetic.get("imgsz", dcfg["imgsz"]),
                                   "time/stage_s": time.perf_counter() - t0}
        for k in ("AP50", "AP80", "mAP50-95", "precision", "recall"):
            summary[f"val/{k}"] = synthetic[k]
        for k in ("train_s", "epoch_s", "train_images_per_s", "epochs"):
            summary[f"train/{k}"] = synthetic[k]
        plots = {"plots/pr_curve": root / synthetic["pr_curve"],
                 "plots/predictions": root / synthetic["predictions"]}
        if dcfg["eval_data"] is not None:
            with tempfile.TemporaryDirectory(prefix="fedray-eval-") as tmp:
                data_yaml, n_img, n_box = prepare_eval_folder(dcfg["eval_data"],
                                                              dcfg["eval_split"], Path(tmp))
                real = evaluate(root / WEIGHTS, data_yaml, run_dir / "eval", served_imgsz(dcfg),
                                dcfg["batch"], device, dcfg["sheet_images"])
            shutil.rmtree(run_dir / "eval" / "val", ignore_errors=True)
            summary.update({f"eval/{k}": real[k]
                            for k in ("AP50", "AP80", "mAP50-95", "precision", "recall")})
            summary.update({"eval/images": n_img, "eval/boxes": n_box,
                            "eval/data": str(dcfg["eval_data"])})
            plots.update({"plots/eval_pr_curve": Path(real["pr_curve"]),
                          "plots/eval_predictions": Path(real["predictions"])})
            log.info("detect: on %s (%d photos, %d pills): AP50 %.3f  AP80 %.3f  "
                     "mAP50-95 %.3f", dcfg["eval_data"], n_img, n_box, real["AP50"],
                     real["AP80"], real["mAP50-95"])
        for name, path in plots.items():
            if path.parent != run_dir:
                shutil.copyfile(path, run_dir / f"{name.split('/')[-1]}.png")
            logger.log_image(name, run_dir / f"{name.split('/')[-1]}.png")
        log.info("detect: synthetic val AP50 %.3f  AP80 %.3f  mAP50-95 %.3f  P %.3f  R %.3f "
                 "-> %s", summary["val/AP50"], summary["val/AP80"], summary["val/mAP50-95"],
                 summary["val/precision"], summary["val/recall"], root)
        logger.summary(summary)
        return summary
    finally:
        logger.close()


def _fedray_check(cfg: dict[str, Any]) -> None:
    """What `fedray.validate` runs before the run starts (in a sweep, as each trial starts)."""
    detect_config(cfg.get("detect"))
    data = cfg.get("data") or {}
    if "detection_scenes" in data:  # the synthetic scenes: a held-out split to score on
        n, vf = data["detection_scenes"], data.get("val_fraction", 0.2)
        if isinstance(n, int) and isinstance(vf, int | float) and n > 0 and round(n * vf) == 0:
            raise ConfigError(
                f"data.val_fraction={vf:g}: {n} detection scenes x {vf:g} leaves no val scene, "
                "and the detector's val/AP would be scored on its training scenes; raise "
                "data.val_fraction or data.detection_scenes"
            )


run_detect.fedray_check = _fedray_check  # type: ignore[attr-defined]
