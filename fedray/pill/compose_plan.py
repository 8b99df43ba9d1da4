"""Scene planner: ``plan_scene`` draws every random choice of one scene into a ``ScenePlan``.

Texture crop and orientation, scale, per-pill placement (homographies drawn until pills overlap
little), colour matrices, cast shadows, camera tilt, lighting, blur kernel, noise seed and JPEG
quality: plain arrays and numbers, so every renderer (compose.py, compose_torch.py) turns the same
plan into the same scene.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fedray.pill.compose_types import (
    ComposeError,
    ComposeParams,
    PillPlan,
    PreparedCutout,
    Range,
    ScenePlan,
    prepare_cutout,
)

# Noise: the four bytes of a 32-bit hash summed (Irwin-Hall) are near-Gaussian, mean 510, std
# sqrt(4 * (256**2 - 1) / 12); this scales that to unit variance.
NOISE_INV_STD = np.float32(1.0 / math.sqrt(4 * (256**2 - 1) / 12))


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
