"""Scene compositor: pill cut-outs on a texture, with YOLO boxes of what is actually visible.

The work is split in two so the hot path is a kernel:

1. ``plan_scene`` (compose_plan.py) draws every random choice (texture crop, per-pill transform,
   colour, shadow, lighting, blur, noise seed, JPEG quality) into a plain ``ScenePlan`` of arrays
   and numbers (compose_types.py);
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

This module holds the renderers a plan goes through: the NumPy twin (kept beside the OpenCV steps
and the kernel's dispatch, so the twin and ``_compose.pyx`` are read together), ``render_plan``
and ``render_batch``. Crops around the boxes: crops.py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from fedray.kernels import optional_extension
from fedray.pill.compose_plan import plan_scene
from fedray.pill.compose_types import (
    ComposeError,
    ComposeParams,
    PreparedCutout,
    RenderedScene,
    ScenePlan,
)

# not built, or FEDRAY_NO_CYTHON=1: the NumPy twin serves
_ckernel = optional_extension("fedray.pill._compose")
BACKEND: str = "cython" if _ckernel is not None else "numpy"

LABEL_ALPHA = np.float32(0.5)  # a pixel belongs to a pill where the pill's alpha reaches this
DEN_EPS = np.float32(1e-6)  # homography denominators at or below this: behind the camera


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
