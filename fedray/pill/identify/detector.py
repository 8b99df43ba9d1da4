"""The pill detector behind identify: ultralytics YOLO weights (torch) or their ONNX export.

Both return pixel boxes (x1, y1, x2, y2) and confidences for one RGB photo. Nothing is
downloaded: ultralytics runs offline (fedray.pill.detect.offline.load_ultralytics) and weights
come from a local path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray.config import ConfigError
from fedray.pill.crops import xyxy_to_yolo  # noqa: F401  (identify's callers import it here)
from fedray.pill.detect import DETECT_HINT

WEIGHT_SUFFIXES = (".pt", ".onnx")  # stage=detect's weights.pt and `fedray export`'s ONNX


def check_detector_path(weights: str | Path) -> Path:
    """`weights` as the path of an existing .pt / .onnx file, or a one-line ConfigError naming it
    (checked before ultralytics sees it: it would try to download a missing name)."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise ConfigError(f"detector weights {path} do not exist; train them with "
                          f"`{DETECT_HINT}` (or pass --detector PATH)")
    if path.is_dir():
        raise ConfigError(f"detector weights {path}: a directory, not a weights file; pass "
                          "--detector PATH/weights.pt (or a detector.onnx from `fedray export`)")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(f"detector weights {path}: not a YOLO weights file (.pt from "
                          f"`{DETECT_HINT}`, or detector.onnx from `fedray export`)")
    return path


def load_detector_weights(weights: str | Path):
    """The ultralytics YOLO of `weights` (checked by check_detector_path), loaded now, or a
    one-line ConfigError naming the file when it does not load as YOLO detector weights."""
    path = check_detector_path(weights)
    from fedray.pill.detect.offline import load_ultralytics

    try:
        if path.suffix.lower() == ".onnx":  # ultralytics opens an ONNX file at the first predict
            from fedray.pill.identify.export import onnx_session

            onnx_session(path, threads=1)
        yolo = load_ultralytics().YOLO(str(path), task="detect")
    except Exception as exc:  # noqa: BLE001 (pickle, torch, onnx and ultralytics errors alike)
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ConfigError(f"detector weights {path}: do not load as YOLO detector weights "
                          f"({reason}); pass --detector PATH of a `{DETECT_HINT}` weights.pt "
                          "or a `fedray export` detector.onnx") from None
    return yolo


class Detector:
    """`detector(rgb) -> (boxes (k, 4) float32 xyxy px, scores (k,))` over one photo."""

    def __init__(self, weights: str | Path, imgsz: int | None = None, conf: float = 0.25,
                 iou: float = 0.5) -> None:
        path = check_detector_path(weights)
        self.path, self.conf, self.iou = path, float(conf), float(iou)
        self.model = load_detector_weights(path)
        # the side stage=detect serves it at (an ONNX export carries its own in its metadata)
        self.imgsz = int(imgsz or weights_imgsz(self.model))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # ultralytics reads arrays as OpenCV BGR
        res = self.model.predict(bgr, imgsz=self.imgsz, conf=self.conf, iou=self.iou,
                                 device="cpu", verbose=False)[0]
        boxes = res.boxes
        return (boxes.xyxy.cpu().numpy().astype(np.float32),
                boxes.conf.cpu().numpy().astype(np.float32))


def weights_imgsz(yolo, default: int = 640) -> int:
    """The side a loaded ultralytics YOLO is meant to predict at.

    The side `stage=detect` recorded in the checkpoint (fedray.pill.detect.train.FEDRAY_KEY),
    else the side it was trained at (or an ONNX export's own), else `default`.
    """
    own = (getattr(yolo, "ckpt", None) or {}).get("fedray") or {}
    size = own.get("imgsz") or (getattr(yolo, "overrides", None) or {}).get("imgsz") or default
    return int(max(size) if isinstance(size, (list, tuple)) else size)
