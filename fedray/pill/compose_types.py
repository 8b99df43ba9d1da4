"""The compositor's data: its parameters, prepared cut-outs, and the plan every renderer reads.

``ComposeParams`` holds the ranges ``plan_scene`` (compose_plan.py) draws from; ``prepare_cutout``
turns an RGBA cut-out into the premultiplied and shadow forms the renderers sample;
``ScenePlan`` / ``PillPlan`` are one scene's every random choice, and ``RenderedScene`` is what a
renderer (compose.py, compose_torch.py) makes of a plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np


class ComposeError(ValueError):
    """Bad compositor input or parameters; the message names the field or cut-out."""


Range = tuple[float, float]


@dataclass
class ComposeParams:
    """Ranges the scene planner draws from; every (lo, hi) pair is sampled uniformly."""

    max_pills: int = 6
    fov_mm: Range = (70.0, 130.0)  # scene width in mm: sets the scene's px per mm
    cutout_px_per_mm: float = 10.0  # resolution the cut-outs were rendered at
    pill_scale: Range = (0.92, 1.08)  # per-pill size jitter on top of the mm-true size
    rotation_deg: Range = (-180.0, 180.0)
    perspective: float = 0.06  # max corner shift as a fraction of the pill's size
    max_overlap: float = 0.12  # of a pill's hull area that later pills may cover
    placement_tries: int = 40
    bg_scale: Range = (0.8, 2.0)  # scene px per texture px (raised if the crop would not fit)
    brightness: Range = (-18.0, 18.0)  # per pill, grey levels
    contrast: Range = (0.85, 1.15)
    saturation: Range = (0.8, 1.2)
    hue_deg: Range = (-6.0, 6.0)
    pill_white_balance: float = 0.06  # per-channel gain jitter, per pill
    shadow_prob: float = 0.7
    shadow_offset: Range = (0.04, 0.14)  # of the pill's size, one direction per scene
    shadow_strength: Range = (0.2, 0.55)
    shadow_blur: float = 0.07  # shadow softness, sigma as a fraction of the cut-out's size
    light_gain: Range = (0.75, 1.15)
    light_gradient: float = 0.25  # max brightness change across the scene, per axis
    vignette: Range = (0.0, 0.35)
    white_balance: float = 0.06  # scene colour-temperature gain jitter, per channel
    blur_prob: float = 0.3
    motion_share: float = 0.5  # of blurred scenes, how many get motion (rest: defocus)
    motion_length: Range = (3.0, 9.0)  # px
    defocus_radius: Range = (1.0, 2.5)  # px
    noise_prob: float = 0.9
    noise_sigma: Range = (0.5, 5.0)  # read noise, grey levels
    shot_noise: Range = (0.0, 0.06)  # variance per grey level (photon noise grows with signal)
    jpeg_prob: float = 0.8
    jpeg_quality: Range = (55.0, 95.0)
    # camera tilt: the far edge of the table spans up to 1 + 2 * tilt frame widths, so the far
    # pills shrink and the table foreshortens (0: looking straight down)
    tilt: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (tuple, list)):
                if len(value) != 2 or not value[0] <= value[1]:
                    raise ComposeError(f"ComposeParams.{f.name}={value!r}: need (lo, hi), lo <= hi")
                setattr(self, f.name, (float(value[0]), float(value[1])))
            elif f.name.endswith("_prob") or f.name in ("motion_share", "max_overlap"):
                if not 0.0 <= value <= 1.0:
                    raise ComposeError(f"ComposeParams.{f.name}={value!r}: need 0 <= p <= 1")
        if self.max_pills < 1 or self.placement_tries < 1:
            raise ComposeError("ComposeParams.max_pills and placement_tries must be >= 1")
        if self.cutout_px_per_mm <= 0 or self.fov_mm[0] <= 0:
            raise ComposeError("ComposeParams.cutout_px_per_mm and fov_mm must be > 0")
        for name in ("perspective", "shadow_blur", "light_gradient", "white_balance",
                     "pill_white_balance", "tilt"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise ComposeError(f"ComposeParams.{name}={value!r}: need 0 <= x < 0.5")
        if self.jpeg_quality[0] < 1 or self.jpeg_quality[1] > 100:
            raise ComposeError(f"ComposeParams.jpeg_quality={self.jpeg_quality}: within 1..100")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ComposeParams:
        """Build from a config dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ComposeError(f"unknown compose parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


@dataclass(eq=False)
class PreparedCutout:
    """A cut-out made ready for sampling once, reused across scenes."""

    premult: np.ndarray  # float32 (h, w, 4): rgb * alpha in 0..255, alpha in 0..1
    shadow: np.ndarray  # float32 (h + 2 pad, w + 2 pad): blurred alpha, 0..1
    pad: int
    hull: np.ndarray  # float64 (m, 2) convex hull of the opaque pixels, source px
    shadow_blur: float  # the ComposeParams.shadow_blur it was prepared for
    device_cache: dict = field(default_factory=dict, repr=False)  # torch copies by device


def prepare_cutout(cutout: np.ndarray, shadow_blur: float = 0.07, name: str = "cut-out") -> (
        PreparedCutout):
    """Validate an RGBA uint8 cut-out and precompute its premultiplied float and shadow forms."""
    if not isinstance(cutout, np.ndarray) or cutout.dtype != np.uint8 or cutout.ndim != 3 \
            or cutout.shape[2] != 4:
        got = getattr(cutout, "shape", type(cutout).__name__), getattr(cutout, "dtype", None)
        raise ComposeError(f"{name}: expected an RGBA uint8 array (h, w, 4), got {got}")
    alpha = cutout[:, :, 3]
    opaque = cv2.findNonZero((alpha >= 128).astype(np.uint8))
    if opaque is None:
        raise ComposeError(f"{name}: no pixel has alpha >= 128, nothing to place")
    a = alpha.astype(np.float32) * np.float32(1.0 / 255.0)
    premult = np.empty(cutout.shape, np.float32)
    premult[:, :, :3] = cutout[:, :, :3].astype(np.float32) * a[:, :, None]
    premult[:, :, 3] = a
    sigma = max(0.5, shadow_blur * max(cutout.shape[:2]))
    pad = int(math.ceil(3 * sigma)) + 1
    shadow = cv2.GaussianBlur(cv2.copyMakeBorder(a, pad, pad, pad, pad, cv2.BORDER_CONSTANT, 0),
                              (0, 0), sigma)
    hull = cv2.convexHull(opaque).reshape(-1, 2).astype(np.float64)
    return PreparedCutout(np.ascontiguousarray(premult), np.ascontiguousarray(shadow), pad, hull,
                          float(shadow_blur))


@dataclass
class PillPlan:
    """One pill's placement: scene->source homographies, colour matrix, regions to touch."""

    cutout: PreparedCutout
    hinv: np.ndarray  # (3, 3) float32 scene px -> cut-out px
    region: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) that the pill can touch
    colour: np.ndarray  # (3, 4) float32: premultiplied rgb' = M rgb + b * alpha
    shadow_strength: np.float32  # 0: no shadow
    shadow_hinv: np.ndarray  # (3, 3) float32 scene px -> shadow-source px
    shadow_region: tuple[int, int, int, int]


@dataclass
class ScenePlan:
    """Every random choice of one scene; renderers are pure functions of it."""

    out_size: int
    background: np.ndarray  # uint8 (Hb, Wb, 3), C-contiguous
    bg_crop: tuple[int, int, int]  # x0, y0, side: the square of the texture that fills the frame
    bg_orient: int  # 0..7: quarter turns (orient // 2) then a mirror (orient % 2)
    pills: list[PillPlan]
    # (10,) float32: gain, x slope, y slope, radial, r/g/b white balance, then the noise's read
    # variance, shot gain (variance per grey level) and NOISE_INV_STD
    light: np.ndarray
    blur_kernel: np.ndarray | None  # float32 (k, k), sums to 1
    add_noise: bool
    noise_seed: int  # uint32
    jpeg_quality: int | None
    plane: np.ndarray | None = None  # (3, 3) table plane -> photo px (camera tilt); None: flat

    def pill_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Pill table for kernels: int64 (k, 12) sizes/regions, float32 (k, 31) transforms."""
        k = len(self.pills)
        ints = np.zeros((k, 12), np.int64)
        flt = np.zeros((k, 31), np.float32)
        for i, p in enumerate(self.pills):
            h, w = p.cutout.premult.shape[:2]
            sh, sw = p.cutout.shadow.shape
            ints[i] = (h, w, sh, sw, *p.region, *p.shadow_region)
            flt[i, :9] = p.hinv.ravel()
            flt[i, 9:18] = p.shadow_hinv.ravel()
            flt[i, 18:30] = p.colour.ravel()
            flt[i, 30] = p.shadow_strength
        return ints, flt


@dataclass
class RenderedScene:
    """A rendered scene: RGB uint8 image, YOLO boxes (k, 4) float32, int16 label map (-1 none)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
