"""The loaded identifier shared by the CLI and the web page: models found, photos decoded."""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fedray.pill.detect import latest_detector  # noqa: F401  (export and bench import it here)
from fedray.pill.identify.classifier import Classifier, find_run_dir, load_classifier
from fedray.pill.identify.detector import Detector
from fedray.pill.identify.pipeline import Answer, DetectFn, identify

MAX_UPLOAD_BYTES = 12 * 1024 * 1024  # the web page's uploads; local photos have no byte cap
# photos over this many pixels are refused from their header, before decoding: a small PNG of
# 16000 x 16000 px would decode to 768 MB and go on to take several GB (a decompression bomb);
# a 48 MP phone photo (8064 x 6048) still passes
MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# PIL's names of the formats decoded (MPO: a camera's JPEG with a second picture); any other file
# is refused from its header, before OpenCV sees it
PHOTO_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})
FORMATS_SAID = "JPEG, PNG, BMP, WebP, TIFF"


class PhotoError(ValueError):
    """A file that is not a readable photo; the message names it, `status` is its HTTP code."""

    def __init__(self, message: str, status: int = 415) -> None:
        super().__init__(message)
        self.status = status


def photo_pixels(data: bytes) -> tuple[str | None, int | None]:
    """(PIL's format name, width x height) from the image's header (nothing decoded); None for
    what PIL cannot tell (the format of one over PIL's own bomb limit, anything of a file PIL
    cannot identify)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the cap is ours
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                kind = im.format
        except Image.DecompressionBombError as exc:  # PIL refuses twice its own limit itself
            said = re.search(r"\((\d+) pixels\)", str(exc))
            return None, int(said.group(1)) if said else MAX_PIXELS + 1
        except Exception:  # noqa: BLE001  (not an image PIL knows: refused below)
            return None, None
    return kind, width * height


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved = 0


@contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's own log silenced (a corrupt file makes it print WARN / ERROR lines to stderr on
    top of the one-line error), the level restored after; nested and threaded uses share it."""
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                cv2.utils.logging.setLogLevel(_quiet_saved)


def decode_photo(data: bytes, name: str = "upload",
                 max_bytes: int | None = MAX_UPLOAD_BYTES) -> np.ndarray:
    """Encoded image bytes -> RGB uint8, or PhotoError (empty, over `max_bytes` or MAX_PIXELS,
    not an image of PHOTO_FORMATS). Only a format whose size PIL reads from its header is ever
    decoded: OpenCV also decodes formats PIL cannot size (Radiance HDR: run-length coded, 16 px a
    byte, decoded to float), which would get past the pixel cap."""
    if not data:
        raise PhotoError(f"{name}: the file is empty", 400)
    if max_bytes is not None and len(data) > max_bytes:
        raise PhotoError(f"{name}: {len(data) / 2**20:.1f} MB is over the "
                         f"{max_bytes // 2**20} MB upload limit", 413)
    kind, pixels = photo_pixels(data)
    if pixels is not None and pixels > MAX_PIXELS:
        raise PhotoError(f"{name}: {pixels / 1e6:.0f} megapixels is over the "
                         f"{MAX_PIXELS / 1e6:.0f} megapixel limit; scale the photo down", 413)
    if kind is None:  # not a file PIL can size: never handed to OpenCV
        raise PhotoError(f"{name}: not an image that can be read ({FORMATS_SAID})")
    if kind not in PHOTO_FORMATS:
        raise PhotoError(f"{name}: a {kind} image; identify reads {FORMATS_SAID}")
    with opencv_quiet():
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise PhotoError(f"{name}: not an image that can be read ({FORMATS_SAID})")
    if bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:  # a header that lied: a second guard
        raise PhotoError(f"{name}: {bgr.shape[0] * bgr.shape[1] / 1e6:.0f} megapixels is over "
                         f"the {MAX_PIXELS / 1e6:.0f} megapixel limit; scale the photo down", 413)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_photo(path: str | Path) -> np.ndarray:
    """A photo file -> RGB uint8, or PhotoError naming the file (no byte cap: MAX_PIXELS)."""
    path = Path(path)
    if path.is_dir():
        raise PhotoError(f"{path}: a directory; identify takes photo files (e.g. {path}/*.jpg)")
    if not path.is_file():
        raise PhotoError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PhotoError(f"{path}: cannot be read ({exc.strerror})") from None
    with stderr_silenced():  # the CLI's error is one line: libpng writes its own past OpenCV
        return decode_photo(data, str(path), max_bytes=None)


@contextmanager
def stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block (libpng prints `libpng error: ...`
    itself for a corrupt PNG, which OpenCV's log level does not reach); for the CLI, which reads
    its photos before anything else runs, not for the server's threads."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
