"""Square classifier crops around YOLO boxes (scenes, photos), and pixel -> YOLO box conversion."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fedray.pill.compose_types import ComposeError

CROP_PAD = 0.1  # context around a box, per side, as a fraction of its longer side


def xyxy_to_yolo(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> normalised YOLO (cx, cy, w, h)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack(
        [(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
         (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height], 1
    ).astype(np.float32)


def crop_boxes(scene: np.ndarray, boxes: np.ndarray, crop_size: int, pad: float = CROP_PAD) -> (
        np.ndarray):
    """Square crops around YOLO boxes, padded by `pad` of the box side, resized: (k, S, S, 3)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if crop_size < 1 or pad < 0:
        raise ComposeError(f"crop_size={crop_size}, pad={pad}: need crop_size >= 1, pad >= 0")
    hs, ws = scene.shape[:2]
    out = np.zeros((len(boxes), crop_size, crop_size, scene.shape[2]), np.uint8)
    for i, (cx, cy, bw, bh) in enumerate(boxes):
        if bw <= 0 or bh <= 0:
            continue
        side = max(bw * ws, bh * hs) * (1 + 2 * pad)
        x0 = int(math.floor(cx * ws - side / 2))
        y0 = int(math.floor(cy * hs - side / 2))
        n = max(1, int(round(side)))
        # pad by reflection where the square runs off the frame, then crop inside that
        px0, py0 = max(0, -x0), max(0, -y0)
        px1, py1 = max(0, x0 + n - ws), max(0, y0 + n - hs)
        patch = scene[max(0, y0):min(hs, y0 + n), max(0, x0):min(ws, x0 + n)]
        if px0 or py0 or px1 or py1:
            patch = cv2.copyMakeBorder(patch, py0, py1, px0, px1, cv2.BORDER_REFLECT_101)
        interp = cv2.INTER_AREA if n > crop_size else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (crop_size, crop_size), interpolation=interp).reshape(
            crop_size, crop_size, -1)
    return out
