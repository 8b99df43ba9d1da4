"""Consumer photos: a phone photo of one pill, centre-cropped by its size class, augmented.

The NLM consumer images the source recipe used show one pill roughly in the middle of a phone
photo; the recipe centre-crops each by the pill's size class (small / medium / large) so the crop
is mostly pill, then augments the few crops up to thousands. Here a photo is a one-pill scene from
the compositor with phone-like parameters (close-up field of view, a palm or a table, stronger
perspective, shadow, uneven light, defocus or shake, sensor noise, JPEG), with the pill moved to
the middle of the frame; the rest is the recipe: a size-class centre crop, then albumentations.
`data.crop_with` cuts the crop around the pill's true box or the trained detector's box instead,
the way identify cuts a photo (photo_crop).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import cv2
import numpy as np

from fedray.pill.compose import render_plan
from fedray.pill.compose_plan import plan_scene
from fedray.pill.compose_types import ComposeParams, PreparedCutout, ScenePlan
from fedray.pill.crops import CROP_PAD, crop_boxes, xyxy_to_yolo

# How a consumer photo becomes a classifier crop (data.crop_with; see photo_crop).
CROP_WITH = ("size_class", "truth", "detector")


class DetectFn(Protocol):
    """`detect(rgb) -> (boxes (k, 4) xyxy px, scores (k,))`, like identify's detector."""

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

# Pill length (mm) thresholds between the size classes: S < 8 <= M < 14 <= L.
SIZE_CLASS_LIMITS_MM = (8.0, 14.0)
# Side of the centre crop as a fraction of the photo's side, per size class. With the default
# field of view (~42 mm) that is ~13 / 19 / 27 mm: the pill fills roughly half to most of the crop.
CROP_FRACTION = {"S": 0.30, "M": 0.45, "L": 0.65}
PHOTO_MIN_SIZE = 256  # px; larger when the crop would otherwise be upsampled
CENTRE_JITTER = 0.04  # of the photo's side: the pill is roughly, not exactly, in the middle

# Phone close-ups of a single pill: narrower field of view than the table-top scenes, more
# perspective, nearly always a shadow, uneven light, often defocus or shake, always JPEG.
CONSUMER_COMPOSE: dict[str, Any] = {
    "max_pills": 1,
    "fov_mm": (36.0, 48.0),
    "pill_scale": (0.95, 1.05),
    "perspective": 0.10,
    "brightness": (-14.0, 14.0),
    "contrast": (0.85, 1.15),
    "saturation": (0.85, 1.15),
    "hue_deg": (-4.0, 4.0),
    "shadow_prob": 0.85,
    "shadow_offset": (0.04, 0.12),
    "shadow_strength": (0.25, 0.6),
    "light_gain": (0.7, 1.15),
    "light_gradient": 0.35,
    "vignette": (0.05, 0.4),
    "white_balance": 0.08,
    "blur_prob": 0.5,
    "motion_share": 0.4,
    "motion_length": (3.0, 7.0),
    "defocus_radius": (1.0, 2.0),
    "noise_prob": 1.0,
    "noise_sigma": (1.0, 5.0),
    "shot_noise": (0.01, 0.08),
    "jpeg_prob": 1.0,
    "jpeg_quality": (70.0, 95.0),
}


def size_class(length_mm: float) -> str:
    """The source's consumer-image size class of a pill: 'S', 'M' or 'L' by its length."""
    if length_mm < SIZE_CLASS_LIMITS_MM[0]:
        return "S"
    return "M" if length_mm < SIZE_CLASS_LIMITS_MM[1] else "L"


def consumer_params(cutout_px_per_mm: float, overrides: dict[str, Any] | None = None) -> (
        ComposeParams):
    """ComposeParams for phone photos: CONSUMER_COMPOSE, then `overrides` (unknown keys: error)."""
    merged = {**CONSUMER_COMPOSE, "cutout_px_per_mm": float(cutout_px_per_mm), **(overrides or {})}
    return ComposeParams.from_dict(merged)


def photo_size(image_size: int) -> int:
    """Photo side (px) large enough that even the smallest centre crop is not upsampled."""
    return max(PHOTO_MIN_SIZE, math.ceil(image_size / min(CROP_FRACTION.values())))


def _bounds(fwd: np.ndarray, w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """Scene px a (w, h) source mapped by `fwd` can touch, clipped; generous bounds are safe."""
    corners = np.array([[-1, -1, 1], [w, -1, 1], [w, h, 1], [-1, h, 1]], np.float64)
    q = corners @ fwd.T
    q = q[:, :2] / q[:, 2:3]
    x0, y0 = np.floor(q.min(0)).astype(int) - 1
    x1, y1 = np.ceil(q.max(0)).astype(int) + 2
    return (int(np.clip(x0, 0, size)), int(np.clip(y0, 0, size)),
            int(np.clip(x1, 0, size)), int(np.clip(y1, 0, size)))


def centre_pill(plan: ScenePlan, target: tuple[float, float]) -> ScenePlan:
    """The plan with its one pill (and shadow) moved so the pill's centre lands on `target`."""
    if len(plan.pills) != 1:
        raise ValueError(f"centre_pill needs a one-pill plan, got {len(plan.pills)} pills")
    pill = plan.pills[0]
    h, w = pill.cutout.premult.shape[:2]
    hinv = pill.hinv.astype(np.float64)
    fwd = np.linalg.inv(hinv)
    c = fwd @ np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    dx, dy = target[0] - c[0] / c[2], target[1] - c[1] / c[2]
    # scene x' = x + d: a source lookup at x' is the old lookup at x' - d
    back = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])
    new_hinv = hinv @ back
    new_shadow = pill.shadow_hinv.astype(np.float64) @ back
    size = plan.out_size
    shadow_region = pill.shadow_region
    if pill.shadow_strength > 0:
        sh, sw = pill.cutout.shadow.shape
        shadow_region = _bounds(np.linalg.inv(new_shadow), sw, sh, size)
    moved = replace(
        pill,
        hinv=new_hinv.astype(np.float32),
        region=_bounds(np.linalg.inv(new_hinv), w, h, size),
        shadow_hinv=new_shadow.astype(np.float32),
        shadow_region=shadow_region,
    )
    return replace(plan, pills=[moved])


def simulate_photo(cutout: PreparedCutout, background: np.ndarray, rng: np.random.Generator,
                   params: ComposeParams, size: int = PHOTO_MIN_SIZE) -> np.ndarray:
    """A phone-like photo (RGB uint8 (size, size, 3)) of one pill, roughly in the middle."""
    return simulate_photo_box(cutout, background, rng, params, size)[0]


def simulate_photo_box(cutout: PreparedCutout, background: np.ndarray, rng: np.random.Generator,
                       params: ComposeParams, size: int = PHOTO_MIN_SIZE) -> (
        tuple[np.ndarray, np.ndarray]):
    """simulate_photo and the pill's true box: (photo, YOLO (cx, cy, w, h) normalised)."""
    plan = plan_scene(background, [cutout], rng, params, out_size=size)
    jitter = rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2) * size
    plan = centre_pill(plan, ((size - 1) / 2 + jitter[0], (size - 1) / 2 + jitter[1]))
    shown = render_plan(plan, num_threads=1)
    return shown.image, np.asarray(shown.boxes, np.float64).reshape(-1, 4)[0]


def yolo_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two normalised YOLO (cx, cy, w, h) boxes."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = np.asarray(a, float), np.asarray(b, float)
    iw = max(0.0, min(ax + aw / 2, bx + bw / 2) - max(ax - aw / 2, bx - bw / 2))
    ih = max(0.0, min(ay + ah / 2, by + bh / 2) - max(ay - ah / 2, by - bh / 2))
    inter = iw * ih
    return float(inter / max(aw * ah + bw * bh - inter, 1e-12))


def photo_crop(photo: np.ndarray, box: np.ndarray, length_mm: float, image_size: int,
               crop_with: str = "size_class", detect: DetectFn | None = None) -> (
        tuple[np.ndarray, float]):
    """The classifier's crop of a one-pill photo, cut the `crop_with` way, and the IoU of the box
    it was cut around with the pill's true `box` (YOLO, normalised).

    * `size_class`: the source recipe's centre crop by the pill's size class (IoU: nan, no box);
    * `truth`: a square around the true box, padded like identify pads (CROP_PAD; IoU 1);
    * `detector`: the same square around `detect`'s most confident box, the way identify cuts
      a photo; the size-class crop when it finds nothing (IoU 0).
    """
    if crop_with not in CROP_WITH:
        raise ValueError(f"crop_with must be one of {CROP_WITH}, got {crop_with!r}")
    if crop_with == "truth":
        return crop_boxes(photo, np.asarray(box)[None], image_size, CROP_PAD)[0], 1.0
    if crop_with == "detector":
        if detect is None:
            raise ValueError("crop_with='detector' needs a detect function")
        found, scores = detect(photo)
        if len(found):
            best = xyxy_to_yolo(np.asarray(found)[int(np.argmax(scores))], photo.shape[1],
                                photo.shape[0])[0]
            return crop_boxes(photo, best[None], image_size, CROP_PAD)[0], yolo_iou(best, box)
        return centre_crop(photo, CROP_FRACTION[size_class(length_mm)], image_size), 0.0
    return centre_crop(photo, CROP_FRACTION[size_class(length_mm)], image_size), float("nan")


def centre_crop(photo: np.ndarray, fraction: float, out_size: int) -> np.ndarray:
    """The central square `fraction` of the photo's side, resized to out_size x out_size."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    hgt, wid = photo.shape[:2]
    side = max(1, int(round(min(hgt, wid) * fraction)))
    y0, x0 = (hgt - side) // 2, (wid - side) // 2
    crop = photo[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > out_size else cv2.INTER_LINEAR
    return cv2.resize(crop, (out_size, out_size), interpolation=interp)


def consumer_augmenter(seed: int) -> Any:
    """Seeded albumentations pipeline for consumer crops; hue shifts keep the pill's colour."""
    # offline by design: albumentations otherwise asks PyPI for a newer version on import
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A  # heavy (imports torch): only where consumer crops are made

    return A.Compose(
        [
            A.Affine(scale=(0.92, 1.08), translate_percent=(-0.04, 0.04), rotate=(-180, 180),
                     border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.7),
            # OpenCV hue units are 2 degrees: +-3 keeps a red pill red, a yellow one yellow
            A.HueSaturationValue(hue_shift_limit=3, sat_shift_limit=12, val_shift_limit=0, p=0.5),
            A.ISONoise(color_shift=(0.01, 0.03), intensity=(0.05, 0.3), p=0.3),
            A.MotionBlur(blur_limit=(3, 5), p=0.2),
            A.ImageCompression(quality_range=(60, 95), p=0.5),
        ],
        seed=int(seed),
    )


def consumer_crops(cutout: PreparedCutout, length_mm: float, background: np.ndarray, count: int,
                   image_size: int, rng: np.random.Generator, params: ComposeParams,
                   augment: Any, crop_with: str = "size_class",
                   detect: DetectFn | None = None) -> tuple[np.ndarray, float]:
    """One simulated photo of a pill, cropped the `crop_with` way (photo_crop), augmented
    `count` times.

    Returns uint8 (count, image_size, image_size, 3) and the crop box's IoU with the true box.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    photo, box = simulate_photo_box(cutout, background, rng, params, photo_size(image_size))
    crop, iou = photo_crop(photo, box, length_mm, image_size, crop_with, detect)
    return np.stack([augment(image=crop)["image"] for _ in range(count)]), iou


def pick_backgrounds(families: Sequence[str], count: int, rng: np.random.Generator,
                     palm_share: float = 0.5) -> np.ndarray:
    """Indices into a texture list for `count` photos: a palm (skin) `palm_share` of the time."""
    skin = np.flatnonzero(np.asarray(families) == "skin")
    anything = np.arange(len(families))
    if len(anything) == 0:
        raise ValueError("no textures to photograph pills on")
    on_palm = rng.random(count) < palm_share if len(skin) else np.zeros(count, bool)
    return np.where(on_palm, rng.choice(skin if len(skin) else anything, count),
                    rng.choice(anything, count))
