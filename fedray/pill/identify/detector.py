"""The pill detector behind identify: ultralytics YOLO weights (torch) or their ONNX export.

Both return pixel boxes (x1, y1, x2, y2) and confidences for one RGB photo. Nothing is
downloaded: ultralytics runs offline (fedray.pill.detect.offline.load_ultralytics) and weights
come from a local path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray.config import ConfigError

DETECT_HINT = "python launch.py +experiment=pill_detect stage=detect"


class Detector:
    """`detector(rgb) -> (boxes (k, 4) float32 xyxy px, scores (k,))` over one photo."""

    def __init__(self, weights: str | Path, imgsz: int | None = None, conf: float = 0.25,
                 iou: float = 0.5) -> None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise ConfigError(f"detector weights {path} do not exist; train them with "
                              f"`{DETECT_HINT}` (or pass --detector PATH)")
        self.path, self.conf, self.iou = path, float(conf), float(iou)
        from fedray.pill.detect.offline import load_ultralytics

        self.model = load_ultralytics().YOLO(str(path), task="detect")
        # the side it was trained at (an ONNX export carries its own in its metadata)
        self.imgsz = int(imgsz or trained_imgsz(self.model))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # ultralytics reads arrays as OpenCV BGR
        res = self.model.predict(bgr, imgsz=self.imgsz, conf=self.conf, iou=self.iou,
                                 device="cpu", verbose=False)[0]
        boxes = res.boxes
        return (boxes.xyxy.cpu().numpy().astype(np.float32),
                boxes.conf.cpu().numpy().astype(np.float32))


def trained_imgsz(yolo, default: int = 640) -> int:
    """The image side a loaded ultralytics YOLO was trained at (`default` when it doesn't say)."""
    size = (getattr(yolo, "overrides", None) or {}).get("imgsz") or default
    return int(max(size) if isinstance(size, (list, tuple)) else size)


def xyxy_to_yolo(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> normalised YOLO (cx, cy, w, h)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack(
        [(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
         (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height], 1
    ).astype(np.float32)
