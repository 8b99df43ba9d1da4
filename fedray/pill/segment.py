"""Cut a pill out of a studio reference image (MobileDeepPill's gradient-detection recipe).

The studio background is uniform, so the pill is where the image gradient is strong:
gradient magnitude of a lightly blurred image -> threshold well above the background's own
gradient noise -> morphological close and hole filling -> the largest connected component.
That region is a few pixels too large (blur and Sobel spread every edge outwards), so its
boundary band is then refined per pixel: a band pixel belongs to the pill when its colour is at
least half-way from the background colour to the most pill-like colour in its neighbourhood,
which places the outline where an anti-aliased edge pixel is half covered.
"""

from __future__ import annotations

import cv2
import numpy as np


class SegmentationError(ValueError):
    """The image has no pill-like foreground, or is not an RGB uint8 image."""


def _ellipse_kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every background region not connected to the image border."""
    padded = np.zeros((mask.shape[0] + 4, mask.shape[1] + 4), np.uint8)
    padded[2:-2, 2:-2] = mask
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (padded | (1 - flood))[2:-2, 2:-2]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) sum over channels; cv2.transform is far faster than sum(axis=2)."""
    return cv2.transform(a, np.ones((1, 3), np.float32))


def _border(a: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the image border, flattened over the leading two axes."""
    parts = [a[:width], a[-width:], a[width:-width, :width], a[width:-width, -width:]]
    return np.concatenate([p.reshape(-1, *a.shape[2:]) for p in parts])


def segment_reference(img: np.ndarray, feather_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pill cut-out (RGBA uint8 cropped to its bounding box, alpha = mask) and full bool mask."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        raise SegmentationError(
            f"expected an RGB uint8 image of shape (H, W, 3), got "
            f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
        )
    h, w, c = img.shape
    if c != 3 or min(h, w) < 16:
        raise SegmentationError(f"expected an RGB image at least 16x16, got shape {img.shape}")

    f = img.astype(np.float32)
    blurred = cv2.GaussianBlur(f, (0, 0), 1.0)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    # Summed over channels: colour edges count, not just grey ones.
    grad = np.sqrt(_channel_sum(gx * gx + gy * gy))

    # The studio border is background: its colour and gradient noise set the scale.
    bw = max(2, min(h, w) // 32)
    background = np.median(_border(f, bw), axis=0)
    # Medians, not high percentiles: a large pill may reach into the border strip.
    noise = float(np.median(_border(grad, bw)))
    threshold = max(4.0 * noise, 12.0)

    edges = (grad > threshold).astype(np.uint8)
    close_r = max(2, min(h, w) // 64)
    edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, _ellipse_kernel(close_r))
    coarse = _largest_component(_fill_holes(edges))
    if coarse.sum() < 16:
        raise SegmentationError(
            f"no foreground found: no gradient above {threshold:.1f} encloses a region "
            "(blank or featureless image?)"
        )

    # Boundary refinement: half-way test between background and the local pill colour.
    diff = f - background.astype(np.float32)
    dist = np.sqrt(_channel_sum(diff * diff))
    local = cv2.dilate(dist, np.ones((3, 3), np.uint8))
    dist_noise = float(np.median(_border(dist, bw)))
    solid = (dist >= 0.55 * local) & (local > max(6.0 * dist_noise, 10.0))
    band = cv2.dilate(coarse, _ellipse_kernel(1)) & ~cv2.erode(coarse, _ellipse_kernel(4)) & 1
    core = cv2.erode(coarse, _ellipse_kernel(4))
    refined = core | (band & solid.astype(np.uint8))
    mask = _largest_component(_fill_holes(refined)).astype(bool)
    if not mask.any():
        raise SegmentationError("no foreground found after boundary refinement")

    alpha = mask.astype(np.float32)
    if feather_px > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather_px) * alpha
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
    rgba[..., :3] = img[y0:y1, x0:x1]
    rgba[..., 3] = np.clip(alpha[y0:y1, x0:x1] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgba, mask
