"""Scene compositor: pill cut-outs on a texture, with YOLO boxes of what is actually visible.

The work is split in two so the hot path is a kernel:

1. ``plan_scene`` draws every random choice (texture crop, per-pill transform, colour, shadow,
   lighting, blur, noise seed, JPEG quality) into a plain ``ScenePlan`` of arrays and numbers;
2. a renderer turns a plan into pixels. Three render the *same* plan: the NumPy twin here (the
   reference, always available), the Cython kernel ``_compose.pyx`` (bit-identical to the twin:
   the same float32 operations in the same order, ``-ffp-contract=off``), and the batched torch
   path in ``compose_torch.py`` (``grid_sample``; equal within a grey level or two).

The background (a random square crop of the texture, one of 8 orientations, resized to fill the
frame) comes from OpenCV, shared by every renderer. Then per pixel, in order: for each pill, its
cast shadow (a blurred copy of its alpha, offset, darkening what lies beneath) and the pill itself
(premultiplied bilinear sample, per-pill colour matrix, "over" blend); lighting (gain, linear
gradient, vignette, white balance); rounding to uint8. Then blur (OpenCV ``filter2D``, shared),
sensor noise (read + shot noise from a counter-based hash, so no RNG state per pixel) and JPEG
(OpenCV, shared).

Boxes come from a label map written while compositing: a pixel belongs to the last pill whose
alpha there is >= 0.5, so a pill partly covered by a later one gets the box of its visible part.

Size: the planner and the NumPy twin renderer stay in one module: the Cython kernel
must stay bit-identical to this twin, and reading both halves together is how it does.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np

from fedray.kernels import optional_extension

# not built, or FEDRAY_NO_CYTHON=1: the NumPy twin serves
_ckernel = optional_extension("fedray.pill._compose")
BACKEND: str = "cython" if _ckernel is not None else "numpy"

LABEL_ALPHA = np.float32(0.5)  # a pixel belongs to a pill where the pill's alpha reaches this
DEN_EPS = np.float32(1e-6)  # homography denominators at or below this: behind the camera
# Noise: the four bytes of a 32-bit hash summed (Irwin-Hall) are near-Gaussian, mean 510, std
# sqrt(4 * (256**2 - 1) / 12); this scales that to unit variance.
NOISE_INV_STD = np.float32(1.0 / math.sqrt(4 * (256**2 - 1) / 12))


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


# ----------------------------------------------------------------------------------- planning


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = pts @ h[:, :2].T + h[:, 2]
    return q[:, :2] / q[:, 2:3]


def _region(h: np.ndarray, w: int, hgt: int, size: int) -> tuple[int, int, int, int]:
    """Scene px that may sample inside (-1, w) x (-1, hgt) of a source mapped forward by h."""
    corners = np.array([[-1, -1], [w, -1], [w, hgt], [-1, hgt]], np.float64)
    q = _project(h, corners)
    lo, hi = q.min(0), q.max(0)

    def clamp(v: float) -> int:
        return min(max(int(v), 0), size)

    return (clamp(math.floor(lo[0]) - 1), clamp(math.floor(lo[1]) - 1),
            clamp(math.ceil(hi[0]) + 2), clamp(math.ceil(hi[1]) + 2))


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def _normalised_inverse(fwd: np.ndarray, src_hw: tuple[int, int]) -> np.ndarray:
    """Scene -> source homography, float32, scaled so its denominator is +1 at the source's
    centre: positive over the placed pill and well conditioned for float32 arithmetic."""
    h, w = src_hw
    centre = _project(fwd, np.array([[(w - 1) / 2, (h - 1) / 2]]))[0]
    inv = cv2.invert(fwd, flags=cv2.DECOMP_LU)[1]  # OpenCV, not BLAS: no worker threads woken
    return (inv / (inv[2, 0] * centre[0] + inv[2, 1] * centre[1] + inv[2, 2])).astype(np.float32)


_LUMA_ROWS = np.outer(np.ones(3), [0.299, 0.587, 0.114])  # each row: Rec.601 luma weights
# cross-product matrix of the grey axis (1, 1, 1)/sqrt(3), for Rodrigues' rotation formula
_GREY_AXIS_X = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
_GREY_AXIS_X2 = _GREY_AXIS_X @ _GREY_AXIS_X


def _colour_matrix(rng: np.random.Generator, p: ComposeParams) -> np.ndarray:
    """(3, 4) affine colour map: white balance . contrast . hue . saturation, plus brightness."""
    s = _uniform(rng, p.saturation)
    sat = s * np.eye(3) + (1 - s) * _LUMA_ROWS
    t = math.radians(_uniform(rng, p.hue_deg))
    hue = np.eye(3) + math.sin(t) * _GREY_AXIS_X + (1 - math.cos(t)) * _GREY_AXIS_X2
    c = _uniform(rng, p.contrast)
    gains = 1.0 + rng.uniform(-p.pill_white_balance, p.pill_white_balance, 3)
    m = np.diag(gains) @ (c * hue @ sat)
    bias = gains * (128.0 * (1 - c) + _uniform(rng, p.brightness))
    return np.concatenate([m, bias[:, None]], axis=1)


def _background_crop(rng: np.random.Generator, bg: np.ndarray, size: int,
                     p: ComposeParams) -> tuple[tuple[int, int, int], int]:
    """A random square crop of the texture (scaled to fill the frame) and one of 8 orientations."""
    hb, wb = bg.shape[:2]
    side = int(round(min(size / _uniform(rng, p.bg_scale), hb, wb)))
    x0 = int(rng.integers(0, wb - side + 1))
    y0 = int(rng.integers(0, hb - side + 1))
    return (x0, y0, side), int(rng.integers(0, 8))


def _place_pill(rng: np.random.Generator, cut: PreparedCutout, size: int, px_per_mm: float,
                p: ComposeParams, placed: list[tuple[np.ndarray, float]],
                covered: list[float]) -> np.ndarray:
    """Forward homography for one pill, drawn until its hull overlaps earlier pills little."""
    h, w = cut.premult.shape[:2]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    corners32 = corners.astype(np.float32)
    local = corners - [(w - 1) / 2, (h - 1) / 2]
    base = px_per_mm / p.cutout_px_per_mm
    best: tuple[float, np.ndarray, list[float], float, np.ndarray] | None = None
    for _ in range(p.placement_tries):
        s = base * _uniform(rng, p.pill_scale)
        s = min(s, 0.9 * size / max(w, h))  # never larger than the frame
        theta = math.radians(_uniform(rng, p.rotation_deg))
        c, sn = math.cos(theta) * s, math.sin(theta) * s
        extent = max(w, h) * s
        jitter = rng.uniform(-p.perspective, p.perspective, (4, 2)) * extent
        rotated = local @ np.array([[c, sn], [-sn, c]]) + jitter
        lo, hi = rotated.min(0), rotated.max(0)
        centre = rng.uniform(np.maximum(-lo, 0), np.maximum(size - 1 - hi, -lo + 1e-6))
        dst = (rotated + centre).astype(np.float32)
        fwd = cv2.getPerspectiveTransform(corners32, dst).astype(np.float64)
        hull = _project(fwd, cut.hull).astype(np.float32)
        area = max(float(cv2.contourArea(hull)), 1.0)
        inters = [float(cv2.intersectConvexConvex(hull, other)[0]) for other, _ in placed]
        worst = max([x / area for x in inters]
                    + [(cov + x) / other_area
                       for (_, other_area), cov, x in zip(placed, covered, inters, strict=True)],
                    default=0.0)
        if best is None or worst < best[0]:
            best = (worst, fwd, inters, area, hull)
        if worst <= p.max_overlap:
            break
    assert best is not None
    _, fwd, inters, area, hull = best
    for j, x in enumerate(inters):
        covered[j] += x
    placed.append((hull, area))
    covered.append(0.0)
    return fwd


def _tilt(rng: np.random.Generator, size: int, p: ComposeParams) -> np.ndarray | None:
    """Table plane -> photo homography of a camera tilted towards one of the frame's edges.

    The photo's far edge sees a strip of the table up to `tilt` of the frame wider on each
    side; the table square maps inside the photo, so every pill placed on it stays in frame.
    """
    if p.tilt <= 0:
        return None
    t = _uniform(rng, (0.0, p.tilt)) * size
    frame = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    table = frame.copy()
    k = int(rng.integers(4))  # which edge is far: top, right, bottom, left
    a, b = k, (k + 1) % 4
    along = (frame[b] - frame[a]) / size
    table[a] -= along * t
    table[b] += along * t
    return cv2.getPerspectiveTransform(table.astype(np.float32),
                                       frame.astype(np.float32)).astype(np.float64)


def _blur_kernel(rng: np.random.Generator, p: ComposeParams) -> np.ndarray:
    if rng.random() < p.motion_share:
        length = _uniform(rng, p.motion_length)
        k = 2 * int(math.ceil(length / 2)) + 1
        kernel = np.zeros((k, k), np.float32)
        t = rng.uniform(0, math.pi)
        dx, dy = math.cos(t) * (length - 1) / 2, math.sin(t) * (length - 1) / 2
        c = k // 2
        shift = 8  # cv2 sub-pixel line endpoints, 1/256 px
        p0 = (int(round((c - dx) * 256)), int(round((c - dy) * 256)))
        p1 = (int(round((c + dx) * 256)), int(round((c + dy) * 256)))
        cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA, shift)
    else:  # defocus: an anti-aliased disc
        r = _uniform(rng, p.defocus_radius)
        k = 2 * int(math.ceil(r)) + 1
        yy, xx = np.mgrid[0:k, 0:k] - k // 2
        kernel = np.clip(r + 0.5 - np.hypot(xx, yy), 0.0, 1.0).astype(np.float32)
    total = float(kernel.sum())
    if total <= 0:
        kernel[kernel.shape[0] // 2, kernel.shape[1] // 2] = 1.0
        total = 1.0
    return (kernel / total).astype(np.float32)


def plan_scene(background: np.ndarray, cutouts: list[np.ndarray | PreparedCutout],
               rng: np.random.Generator, params: ComposeParams,
               out_size: int = 640) -> ScenePlan:
    """Draw every random choice of one scene (all cut-outs are placed, in order)."""
    if not isinstance(background, np.ndarray) or background.dtype != np.uint8 \
            or background.ndim != 3 or background.shape[2] != 3 or min(background.shape[:2]) < 4:
        got = getattr(background, "shape", type(background).__name__)
        raise ComposeError(f"background: expected RGB uint8 (h, w, 3) of at least 4 px, got {got}")
    if not 1 <= len(cutouts) <= params.max_pills:
        raise ComposeError(f"cutouts: got {len(cutouts)}, need 1..max_pills={params.max_pills}")
    if out_size < 16:
        raise ComposeError(f"out_size={out_size}: need >= 16")
    prepared = [c if isinstance(c, PreparedCutout)
                else prepare_cutout(c, params.shadow_blur, name=f"cut-out {i}")
                for i, c in enumerate(cutouts)]
    for i, cut in enumerate(prepared):
        if cut.shadow_blur != params.shadow_blur:
            raise ComposeError(f"cut-out {i} was prepared with shadow_blur={cut.shadow_blur}, "
                               f"but params.shadow_blur={params.shadow_blur}; prepare it again")
    size = out_size
    bg_crop, bg_orient = _background_crop(rng, background, size, params)
    px_per_mm = size / _uniform(rng, params.fov_mm)
    shadow_on = rng.random() < params.shadow_prob
    shadow_dir = rng.uniform(0, 2 * math.pi)
    shadow_len = _uniform(rng, params.shadow_offset)
    plane = _tilt(rng, size, params)
    lift = plane if plane is not None else np.eye(3)  # pills are placed on the table plane
    placed: list[tuple[np.ndarray, float]] = []
    covered: list[float] = []
    pills = []
    for cut in prepared:
        on_table = _place_pill(rng, cut, size, px_per_mm, params, placed, covered)
        fwd = lift @ on_table
        hinv = _normalised_inverse(fwd, cut.premult.shape[:2])
        h, w = cut.premult.shape[:2]
        colour = _colour_matrix(rng, params)
        strength = _uniform(rng, params.shadow_strength) if shadow_on else 0.0
        # the offset scales with the pill's on-screen size, so small pills cast short shadows
        reach = shadow_len * math.sqrt(max(float(cv2.contourArea(placed[-1][0])), 1.0))
        d = (math.cos(shadow_dir) * reach, math.sin(shadow_dir) * reach)
        sh_fwd = lift @ _translate(*d) @ on_table @ _translate(-cut.pad, -cut.pad)
        sh_hinv = _normalised_inverse(sh_fwd, cut.shadow.shape[:2])
        sh_h, sh_w = cut.shadow.shape
        sh_region = _region(sh_fwd, sh_w, sh_h, size) if strength > 0 else (0, 0, 0, 0)
        pills.append(PillPlan(cut, hinv, _region(fwd, w, h, size), colour.astype(np.float32),
                              np.float32(strength), sh_hinv, sh_region))
    wb = 1.0 + rng.uniform(-params.white_balance, params.white_balance, 3)
    gain = _uniform(rng, params.light_gain)
    slope_x = rng.uniform(-params.light_gradient, params.light_gradient)
    slope_y = rng.uniform(-params.light_gradient, params.light_gradient)
    radial = -_uniform(rng, params.vignette) * 2.0  # corners sit at r^2 = 0.5
    blur = _blur_kernel(rng, params) if rng.random() < params.blur_prob else None
    noise_seed = int(rng.integers(0, 2**32, dtype=np.uint64))
    add_noise = bool(rng.random() < params.noise_prob)
    read, shot = _uniform(rng, params.noise_sigma), _uniform(rng, params.shot_noise)
    light = np.array([gain, slope_x, slope_y, radial, *wb, read * read, shot, NOISE_INV_STD],
                     np.float32)
    jpeg = int(round(_uniform(rng, params.jpeg_quality))) if rng.random() < params.jpeg_prob \
        else None
    return ScenePlan(size, np.ascontiguousarray(background), bg_crop, bg_orient, pills, light, blur,
                     add_noise, noise_seed, jpeg, plane)


# ------------------------------------------------------------------------------ NumPy twin


def _coords(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Source coords of scene px (float32); the operation order matches the kernel exactly."""
    den = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rden = np.float32(1.0) / den
        sx = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) * rden
        sy = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) * rden
    return den, sx, sy


def _sample_zero(src: np.ndarray, h: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of a float32 (H, W, C) source, zero outside, float32 (..., C)."""
    hs, ws = src.shape[:2]
    den, sx, sy = _coords(h, x, y)
    valid = (den > DEN_EPS) & (sx > -1.0) & (sx < ws) & (sy > -1.0) & (sy < hs)
    sx = np.where(valid, sx, np.float32(-1.0))
    sy = np.where(valid, sy, np.float32(-1.0))
    fx0, fy0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - fx0, sy - fy0
    ix, iy = fx0.astype(np.int64), fy0.astype(np.int64)
    okx0, okx1 = ix >= 0, ix + 1 <= ws - 1
    oky0, oky1 = iy >= 0, iy + 1 <= hs - 1
    ix0, ix1 = np.clip(ix, 0, ws - 1), np.clip(ix + 1, 0, ws - 1)
    iy0, iy1 = np.clip(iy, 0, hs - 1), np.clip(iy + 1, 0, hs - 1)

    def tap(ok: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return np.where(ok[..., None], src[yy, xx], np.float32(0.0))

    wx0, wy0 = (1.0 - fx)[..., None], (1.0 - fy)[..., None]
    fx, fy = fx[..., None], fy[..., None]
    top = wx0 * tap(okx0 & oky0, iy0, ix0) + fx * tap(okx1 & oky0, iy0, ix1)
    bottom = wx0 * tap(okx0 & oky1, iy1, ix0) + fx * tap(okx1 & oky1, iy1, ix1)
    return np.where(valid[..., None], wy0 * top + fy * bottom, np.float32(0.0))


def _apply_colour(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Colour map on premultiplied samples (..., 4) -> (..., 3), kept within [0, 255 * alpha]."""
    r, g, b, a = v[..., 0], v[..., 1], v[..., 2], v[..., 3]
    cap = 255.0 * a
    out = np.empty(v.shape[:-1] + (3,), np.float32)
    for c in range(3):
        val = m[c, 0] * r + m[c, 1] * g + m[c, 2] * b + m[c, 3] * a
        out[..., c] = np.minimum(np.maximum(val, 0.0), cap)
    return out


def lighting_field(light: np.ndarray, size: int) -> np.ndarray:
    """Spatial light factor (size, size) float32; same formula and order as the kernel."""
    inv = np.float32(1.0 / size)
    ramp = np.arange(size, dtype=np.float32) * inv - np.float32(0.5)
    u, v = ramp[None, :], ramp[:, None]
    return light[0] + light[1] * u + light[2] * v + light[3] * (u * u + v * v)


def _render_numpy(plan: ScenePlan, add_noise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Composite + light (+ noise if no blur follows) -> uint8 image and int16 label map."""
    size = plan.out_size
    xs = np.arange(size, dtype=np.float32)
    canvas = warp_background(plan).astype(np.float32)
    labels = np.full((size, size), -1, np.int16)
    for i, pill in enumerate(plan.pills):
        x0, y0, x1, y1 = pill.shadow_region
        if pill.shadow_strength > 0 and x1 > x0 and y1 > y0:  # same skip as the kernel
            sh_hinv = np.asarray(pill.shadow_hinv, np.float32)
            s = _sample_zero(pill.cutout.shadow[:, :, None], sh_hinv, xs[None, x0:x1],
                             xs[y0:y1, None])[..., 0]
            canvas[y0:y1, x0:x1] *= (1.0 - np.float32(pill.shadow_strength) * s)[..., None]
        x0, y0, x1, y1 = pill.region
        if x1 <= x0 or y1 <= y0:
            continue
        v = _sample_zero(pill.cutout.premult, np.asarray(pill.hinv, np.float32), xs[None, x0:x1],
                         xs[y0:y1, None])
        a = v[..., 3]
        rgb = _apply_colour(v, np.asarray(pill.colour, np.float32))
        canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1.0 - a)[..., None] + rgb
        labels[y0:y1, x0:x1][a >= LABEL_ALPHA] = i
    lit = canvas * lighting_field(plan.light, size)[..., None] * plan.light[4:7]
    out = np.clip(lit + 0.5, 0.0, 255.0).astype(np.uint8)
    if add_noise:
        out = _noise_numpy(out, plan.noise_seed, plan.light)
    return out, labels


_INDEX_CACHE: dict[int, np.ndarray] = {}


def noise_hash(index: np.ndarray, seed: int) -> np.ndarray:
    """lowbias32 (C. Wellons) of index ^ seed, uint32: the sensor-noise stream, counter based."""
    x = index ^ np.uint32(seed)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _noise_numpy(img: np.ndarray, seed: int, light: np.ndarray) -> np.ndarray:
    """Read + shot noise: value u gets N(0, read_var + shot * u), element j hashed from j."""
    n = img.size
    if n not in _INDEX_CACHE:
        _INDEX_CACHE[n] = np.arange(n, dtype=np.uint32)
    h = noise_hash(_INDEX_CACHE[n], seed).reshape(img.shape)
    byte = np.uint32(255)
    total = ((h & byte) + ((h >> np.uint32(8)) & byte) + ((h >> np.uint32(16)) & byte)
             + (h >> np.uint32(24))).astype(np.int32)
    noise = (total - 510).astype(np.float32) * light[9]
    u = img.astype(np.float32)
    sigma = np.sqrt(light[7] + light[8] * u)
    return np.clip(u + noise * sigma + 0.5, 0.0, 255.0).astype(np.uint8)


# ------------------------------------------------------------------ shared OpenCV steps


_ROTATIONS = (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)


def warp_background(plan: ScenePlan) -> np.ndarray:
    """The texture crop, oriented and resized to fill the frame: uint8 (S, S, 3) (OpenCV, shared
    by every renderer)."""
    size = plan.out_size
    x0, y0, side = plan.bg_crop
    img = plan.background[y0:y0 + side, x0:x0 + side]
    turn = _ROTATIONS[plan.bg_orient // 2]
    if turn is not None:
        img = cv2.rotate(img, turn)
    if plan.bg_orient % 2:
        img = cv2.flip(img, 1)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    img = cv2.resize(img, (size, size), interpolation=interp)
    if plan.plane is None:
        return img
    return cv2.warpPerspective(img, plan.plane, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)



def apply_blur(img: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
    """OpenCV filter2D with reflect-101 borders (the same call for every renderer)."""
    if kernel is None:
        return img
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def apply_jpeg(img: np.ndarray, quality: int | None) -> np.ndarray:
    """JPEG round trip at `quality` through OpenCV (RGB in, RGB out)."""
    if quality is None:
        return img
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed to write a JPEG")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def boxes_from_labels(labels: np.ndarray, plan: ScenePlan) -> np.ndarray:
    """YOLO boxes (cx, cy, w, h) normalised, float32 (k, 4); a pill with no visible px gets 0s."""
    size = plan.out_size
    boxes = np.zeros((len(plan.pills), 4), np.float32)
    for i, pill in enumerate(plan.pills):
        x0, y0, x1, y1 = pill.region
        mine = labels[y0:y1, x0:x1] == i
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        if rows.size == 0:
            continue
        bx0, bx1 = x0 + cols[0], x0 + cols[-1] + 1
        by0, by1 = y0 + rows[0], y0 + rows[-1] + 1
        boxes[i] = ((bx0 + bx1) / 2 / size, (by0 + by1) / 2 / size,
                    (bx1 - bx0) / size, (by1 - by0) / size)
    return boxes


def _render_cython(plan: ScenePlan, add_noise: bool, num_threads: int) -> tuple[
        np.ndarray, np.ndarray]:
    assert _ckernel is not None
    size = plan.out_size
    out = np.empty((size, size, 3), np.uint8)
    labels = np.empty((size, size), np.int16)
    ints, flt = plan.pill_arrays()
    _ckernel.render(warp_background(plan), [p.cutout.premult for p in plan.pills],
                    [p.cutout.shadow for p in plan.pills],
                    ints, flt, plan.light, out, labels, plan.noise_seed, add_noise,
                    num_threads)
    return out, labels


def render_plan(plan: ScenePlan, backend: str | None = None, num_threads: int = 0) -> (
        RenderedScene):
    """Render a plan with 'numpy' or 'cython' (default: BACKEND); num_threads 0 = OpenMP default."""
    backend = backend or BACKEND
    if backend not in ("numpy", "cython"):
        raise ComposeError(f"backend={backend!r}: expected 'numpy' or 'cython'")
    if backend == "cython" and _ckernel is None:
        raise ComposeError("backend='cython' but fedray.pill._compose is not built; "
                           "run `python setup.py build_ext --inplace`")
    # noise follows blur (sensor after optics), so it fuses into the kernel pass only without blur
    fused = plan.add_noise and plan.blur_kernel is None
    if backend == "cython":
        img, labels = _render_cython(plan, fused, num_threads)
    else:
        img, labels = _render_numpy(plan, fused)
    img = apply_blur(img, plan.blur_kernel)
    if plan.add_noise and not fused:
        if backend == "cython":
            _ckernel.add_noise(img, plan.light, plan.noise_seed, num_threads)
        else:
            img = _noise_numpy(img, plan.noise_seed, plan.light)
    img = apply_jpeg(img, plan.jpeg_quality)
    return RenderedScene(img, boxes_from_labels(labels, plan), labels)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def render_batch(plans: list[ScenePlan], backend: str | None = None,
                 num_threads: int = 0) -> list[RenderedScene]:
    """Render plans, num_threads scenes at a time (0 = all cores): the kernel and OpenCV release
    the GIL, so whole scenes (warp, composite, blur, noise, JPEG) run in parallel."""
    n = num_threads if num_threads > 0 else (os.cpu_count() or 1)
    if n == 1 or len(plans) <= 1:
        return [render_plan(p, backend, max(num_threads, 0)) for p in plans]
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="fedray-compose")
    return list(_POOLS[n].map(lambda p: render_plan(p, backend, 1), plans))


def compose_scene(background: np.ndarray, cutouts: list[np.ndarray | PreparedCutout],
                  rng: np.random.Generator, params: ComposeParams,
                  out_size: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (RGB uint8 (S, S, 3), YOLO boxes float32 (k, 4), row i = cutouts[i])."""
    rendered = render_plan(plan_scene(background, cutouts, rng, params, out_size))
    return rendered.image, rendered.boxes


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
