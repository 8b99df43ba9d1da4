"""The loaded identifier shared by the CLI and the web page: models found, photos decoded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fedray.pill.detect import latest_detector  # noqa: F401  (export and bench import it here)
from fedray.pill.identify.classifier import Classifier, find_run_dir, load_classifier
from fedray.pill.identify.detector import Detector
from fedray.pill.identify.pipeline import Answer, DetectFn, identify

MAX_UPLOAD_BYTES = 12 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class PhotoError(ValueError):
    """A file that is not a readable photo; the message names it."""


def decode_photo(data: bytes, name: str = "upload") -> np.ndarray:
    """Encoded image bytes -> RGB uint8, or PhotoError (empty, too large, not an image)."""
    if not data:
        raise PhotoError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise PhotoError(f"{name}: {len(data) / 2**20:.1f} MB is over the "
                         f"{MAX_UPLOAD_BYTES // 2**20} MB limit")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise PhotoError(f"{name}: not an image that can be read (JPEG, PNG, BMP, WebP, TIFF)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_photo(path: str | Path) -> np.ndarray:
    """A photo file -> RGB uint8, or PhotoError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"{path}: no such file")
    return decode_photo(path.read_bytes(), str(path))


@dataclass
class Identifier:
    """A detector and a classifier, ready to answer photos."""

    detect: DetectFn
    classifier: Classifier
    run_dir: Path | None = None

    def __call__(self, rgb: np.ndarray, top_k: int = 5) -> Answer:
        return identify(rgb, self.detect, self.classifier, top_k)

    def reference(self, class_index: int, side: str = "front") -> Path | None:
        """The catalog's studio picture of a class (None when the dataset has none)."""
        name = self.classifier.class_names[class_index]
        pill_id = name.split(" ", 1)[0]
        path = Path(self.classifier.data_root) / "references" / f"{pill_id}_{side}.png"
        return path if path.exists() else None


def load_identifier(run: str | Path | None = None, detector: str | Path | None = None,
                    outputs: str | Path = "outputs", conf: float = 0.25) -> Identifier:
    """The classifier of `run` (or the latest pill run) and the detector at `detector` (or the
    latest cached one); missing models say which command produces them."""
    run_dir = find_run_dir(run, outputs)
    exported = run_dir / "export" / "detector.onnx"  # `fedray export` leaves it beside the run
    det_path = Path(detector) if detector else exported if exported.exists() else latest_detector()
    det = Detector(det_path, conf=conf)
    return Identifier(det, load_classifier(run_dir), run_dir)
