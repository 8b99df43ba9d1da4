"""The pill classifier of a finished run: its model, class names and calibrated threshold.

A run directory holds `config.yaml` (the resolved config: the pretrained backbone's path
included) and `checkpoint.pkl` (the final trainable parameters); the model is rebuilt from both.
The confidence threshold below which a crop reads "unknown" is calibrated once on the run's val
split (temperature scaling, then the lowest threshold whose accepted predictions are right at
least `precision` of the time) and kept beside the run as `identify_calibration.json`, with the
energy floor: the free energy logsumexp(logits / T) that all but `FLOOR_QUANTILE` of the val pill
crops reach. A crop below it looks to the classifier like none of the pills it knows (background,
most often); the pipeline drops such a box when the detector was unsure of it too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fedray.config import ConfigError
from fedray.data.datasets import DatasetInfo, load_images, load_labels, to_tensor_batch
from fedray.data.sources import build_dataset
from fedray.extras import missing
from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint
from fedray.fl.train import set_params
from fedray.models import build_model
from fedray.models.fold import fold_batchnorm
from fedray.pill.identify.sizes import SizePrior, catalog_sizes
from fedray.progress import progress

log = logging.getLogger("fedray")
CALIBRATION = "identify_calibration.json"
FLOOR_QUANTILE = 0.05  # share of the val pill crops whose energy may fall below the floor
TRAIN_HINT = "python launch.py +experiment=pill_noniid"


@dataclass
class Classifier:
    """A trained pill classifier and what it needs to name a crop."""

    model: torch.nn.Module
    class_names: list[str]
    image_size: int
    data_root: str
    temperature: float = 1.0
    threshold: float = 0.0
    energy_floor: float = float("-inf")  # below it a crop is unlike every known pill
    session: Any = None  # an onnxruntime session of the exported model: used instead of torch
    sizes: SizePrior | None = None  # the classes' catalog outlines: box sizes as evidence
    # `model` with BatchNorm folded into its convs (fedray.models.fold), built at the first
    # torch inference: the same logits for less time; `model` itself is what is exported
    folded: torch.nn.Module | None = field(default=None, repr=False)

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (N, S, S, 3) -> logits (N, K), by onnxruntime when exported, else torch."""
        x = to_tensor_batch(np.asarray(crops))
        if self.session is not None:
            return self.session.run(None, {"images": x.contiguous().numpy()})[0]
        if self.folded is None:
            self.folded = fold_batchnorm(self.model)
        with torch.inference_mode():
            return self.folded(x).float().numpy()

    def probabilities(self, crops: np.ndarray, batch: int = 64) -> np.ndarray:
        """uint8 crops (N, S, S, 3) at `image_size` -> calibrated class probabilities (N, K)."""
        return self.scores(crops, batch)[0]

    def scores(self, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops (N, S, S, 3) -> (calibrated class probabilities (N, K), energies (N,))."""
        if len(crops) == 0:
            return np.zeros((0, len(self.class_names)), np.float32), np.zeros(0, np.float32)
        logits = np.concatenate(
            [self.logits(crops[i : i + batch]) for i in range(0, len(crops), batch)]
        )
        return softmax_energy(logits, self.temperature)


def softmax_energy(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """softmax(logits / T) and the free energy logsumexp(logits / T) of each row."""
    scaled = torch.from_numpy(np.asarray(logits, np.float32)) / temperature
    return torch.softmax(scaled, dim=1).numpy(), torch.logsumexp(scaled, dim=1).numpy()


def find_run_dir(run: str | Path | None, outputs: str | Path = "outputs") -> Path:
    """`run` itself, or the latest finished pill run under `outputs/` (one with a checkpoint)."""
    if run is not None:
        path = Path(run).expanduser()
        if not (path / CHECKPOINT).exists() or not (path / "config.yaml").exists():
            raise ConfigError(
                f"{path}: not a finished run directory (no {CHECKPOINT} / config.yaml); "
                f"train one with `{TRAIN_HINT}`"
            )
        try:
            cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: its config.yaml does not read ({exc})") from None
        task = str((cfg.get("task") or {}).get("_target_", "classification")).lower()
        if cfg.get("stage") not in ("federated", "centralized") or "classification" not in task:
            raise ConfigError(
                f"{path}: a stage={cfg.get('stage')} run of task {task.rpartition('.')[2]}, "
                f"not a classifier; identify names pills with a classification run, e.g. "
                f"`{TRAIN_HINT}`"
            )
        data = str((cfg.get("data") or {}).get("_target_", ""))
        if not _pill_data(data):
            raise ConfigError(
                f"{path}: trained on {data.rpartition('.')[2]} ({data}), not on pill photos; "
                f"identify names pills with a run on pill crops, e.g. `{TRAIN_HINT}` (or your own "
                f"pill photos: data=image_folder, yolo_import, epillid or your data._target_)"
            )
        return path
    runs = sorted(
        (p.parent for p in Path(outputs).glob(f"*/*/{CHECKPOINT}") if _is_pill_run(p.parent)),
        key=lambda d: (d / CHECKPOINT).stat().st_mtime,
    )
    if not runs:
        raise ConfigError(
            f"no trained pill classifier under {Path(outputs).resolve()}: train one with "
            f"`{TRAIN_HINT}` (or pass --run RUN_DIR)"
        )
    return runs[-1]


def _pill_data(target: str) -> bool:
    """A run's `data._target_` may hold pill photos: any but fedray's own other datasets (toy
    shapes, CIFAR, torchvision's); an image folder or the user's own callable may."""
    return not target.startswith("fedray.") or target.startswith(
        ("fedray.pill.", "fedray.data.image_folder."))


def _is_pill_run(run_dir: Path) -> bool:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return (
        cfg.get("stage") in ("federated", "centralized")
        and "fedray.pill" in str((cfg.get("data") or {}).get("_target_", ""))
    )


def load_classifier(run_dir: str | Path, calibrate: bool = True, onnx: bool = True) -> Classifier:
    """Rebuild the final model of `run_dir` (config.yaml + checkpoint.pkl), calibrated; with
    `onnx`, inference goes through `fedray export`'s ONNX file when there is one."""
    run_dir = Path(run_dir)
    cfg: dict[str, Any] = yaml.safe_load((run_dir / "config.yaml").read_text())
    info: DatasetInfo = build_dataset(cfg["data"], int(cfg["seed"]))  # cached: a lookup
    model = build_model(cfg["model"], info.num_classes)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    set_params(model, ckpt["params"])
    model.eval()
    clf = Classifier(model, list(info.class_names), int(info.image_size), str(info.root))
    clf.sizes = catalog_sizes(info.root, clf.class_names)
    exported = run_dir / "export" / "classifier.onnx"
    if onnx and exported.exists() and not missing("onnxruntime"):
        from fedray.pill.identify.export import onnx_session

        clf.session = onnx_session(exported)
        log.info("identify: classifier from %s (onnxruntime)", exported)
    if calibrate:
        calibration(clf, run_dir)
    return clf


def calibration(clf: Classifier, run_dir: Path) -> None:
    """Set `clf`'s temperature, threshold and energy floor from `run_dir`'s CALIBRATION file,
    calibrating on the val crops first when there is none (or one from before the floor); a
    corrupt or unreadable file is a ConfigError naming it, a run directory that cannot be
    written to a warning (the calibration is used, not kept)."""
    path = run_dir / CALIBRATION
    redo = "delete it and the next `fedray identify` recalibrates on the run's val crops"
    try:
        cal = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split("\n")[0]
        raise ConfigError(f"{path}: cannot be read as identify's calibration ({why}); "
                          f"{redo}") from None
    if not isinstance(cal, dict):
        raise ConfigError(f"{path}: not identify's calibration (a JSON object); {redo}")
    if "energy_floor" not in cal:  # none yet, or one written before the floor existed
        log.info("identify: calibrating the 'unknown' threshold of %s on its val crops "
                 "(once per run, a minute or two; kept in %s)", run_dir, path)
        cal = calibrate_on_val(clf)
        part = path.with_name(f".{path.name}.part")  # renamed: never half a file
        try:
            part.write_text(json.dumps(cal, indent=2))
            os.replace(part, path)
        except OSError as exc:
            part.unlink(missing_ok=True)
            log.warning("identify: cannot keep the calibration in %s (%s); it is redone on the "
                        "next run", path, exc.strerror or exc)
    try:
        clf.temperature, clf.threshold = float(cal["temperature"]), float(cal["threshold"])
        clf.energy_floor = float(cal["energy_floor"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not identify's calibration ({type(exc).__name__}: {exc}); "
                          f"{redo}") from None


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the val negative log-likelihood (a 1-D grid search, robust)."""
    t = torch.from_numpy(logits.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    nll = [float(torch.nn.functional.cross_entropy(t / float(g), y)) for g in grid]
    return float(grid[int(np.argmin(nll))])


def pick_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float = 0.98) -> float:
    """Lowest confidence threshold whose accepted predictions are right >= `precision` of the time.

    Sorted by confidence, the accepted set is a prefix; the threshold is the confidence of the
    longest prefix that still meets the precision (0.0 when every prediction does). A prefix
    ends only where the confidence drops: `>= threshold` accepts every tie of its last one
    (softmax saturates at exactly 1.0 in float32), so a cut inside ties would accept more.
    """
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    conf = confidence[order]
    ends = np.r_[conf[:-1] > conf[1:], True]
    ok = np.nonzero((hits >= precision) & ends)[0]
    if len(ok) == 0:
        return float(confidence.max()) + 1e-6 if len(confidence) else 1.0
    k = int(ok[-1])
    return 0.0 if k == len(order) - 1 else float(confidence[order[k]])


def calibrate_on_val(clf: Classifier, precision: float = 0.98, limit: int = 2000) -> dict:
    """Temperature and threshold on (up to `limit` of) the run's val crops."""
    images = np.asarray(load_images(clf.data_root, "val"))
    labels = load_labels(clf.data_root, "val")
    idx = np.random.default_rng(0).permutation(len(labels))[:limit]
    images, labels = images[idx], labels[idx]
    start = time.perf_counter()
    logits = np.concatenate([clf.logits(images[i : i + 64]) for i in
                             progress(range(0, len(images), 64), "identify: calibration",
                                      unit="batch of 64 crops")])
    temperature = fit_temperature(logits, labels)
    probs, energy = softmax_energy(logits, temperature)
    conf, pred = probs.max(1), probs.argmax(1)
    threshold = pick_threshold(conf, pred == labels, precision)
    accepted = conf >= threshold
    report = {
        "temperature": temperature,
        "threshold": threshold,
        "precision_target": precision,
        "val_crops": int(len(labels)),
        "val_acc": float((pred == labels).mean()),
        "accepted_fraction": float(accepted.mean()),
        "accepted_acc": float((pred == labels)[accepted].mean()) if accepted.any() else None,
        "energy_floor": float(np.quantile(energy, FLOOR_QUANTILE)),
        "energy_floor_quantile": FLOOR_QUANTILE,
    }
    log.info("identify: calibrated on %d val crops in %.0fs: T=%.2f, 'unknown' below %.3f "
             "(%.1f%% of val crops named)", len(labels), time.perf_counter() - start, temperature,
             threshold, 100 * report["accepted_fraction"])
    return report
