"""Studio reference images of catalog pills, like the NLM reference photos.

A pill is drawn at its physical size (one px_per_mm for every pill, so relative sizes survive)
on a uniform light-grey background, lit from the top left. The height map is a function of the
inside distance to the silhouette (a rounded bevel, a cylinder for capsules); the distance is
computed analytically per shape (an exact distance transform without pixel steps). Imprints and
score lines are grooves cut into the height map (debossed) or ink on the albedo (printed);
Lambertian shading of the height map gives the bevel, a dark rim, the light/dark pair along
debossed strokes and, for glossy coats, a Blinn-Phong highlight. Only the pill's bounding box is
shaded, at `SUPERSAMPLE`x, then reduced with INTER_AREA, which anti-aliases outline and text.

Size: one concept, drawing a pill side (outline per shape, score, imprint, coating);
the shape outlines are many small functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import cv2
import numpy as np

from fedray.pill.catalog import CAPSULE_SHAPES, MAX_LENGTH_MM, Pill

SUPERSAMPLE = 2
BACKGROUND_RGB = (204, 204, 201)
NOISE_SIGMA = 1.0
MARGIN = 0.06  # of the image side, each edge, left around the longest catalog pill

_LIGHT = np.array([-0.45, -0.55, 1.0], dtype=np.float32)
_LIGHT /= np.linalg.norm(_LIGHT)
_HALF = _LIGHT + np.array([0.0, 0.0, 1.0], dtype=np.float32)
_HALF /= np.linalg.norm(_HALF)
_AMBIENT = 0.3
_FONT = cv2.FONT_HERSHEY_DUPLEX
_INK_DARK = np.array([38, 36, 40], dtype=np.float32)
_INK_LIGHT = np.array([238, 238, 232], dtype=np.float32)


def _gaussian_quantiles(n: int, sigma: float) -> np.ndarray:
    """n equiprobable samples of N(0, sigma^2): uint8 indices into it give cheap Gaussian noise."""
    normal = NormalDist(0.0, sigma)
    return np.array([normal.inv_cdf((k + 0.5) / n) for k in range(n)], dtype=np.float32)


_NOISY_BACKGROUND = np.array(BACKGROUND_RGB) + _gaussian_quantiles(256, NOISE_SIGMA)[:, None]
# (256, 1, 3): cv2.LUT's per-channel table from a random byte to background + noise.
_BACKGROUND_LUT = np.clip(np.round(_NOISY_BACKGROUND), 0, 255).astype(np.uint8)[:, None, :]

# Text box per shape as fractions of (length, width), and its vertical offset (fraction of width)
# so text sits where the face is widest.
_TEXT_BOX = {
    "round": (0.64, 0.60, 0.0),
    "octagon": (0.64, 0.60, 0.0),
    "oval": (0.66, 0.55, 0.0),
    "oblong": (0.72, 0.55, 0.0),
    "capsule": (0.74, 0.55, 0.0),
    "two_tone_capsule": (0.74, 0.55, 0.0),
    "square": (0.68, 0.62, 0.0),
    "hexagon": (0.60, 0.58, 0.0),
    "pentagon": (0.56, 0.50, 0.07),
    "triangle": (0.44, 0.34, 0.17),
    "diamond": (0.46, 0.40, 0.0),
}
_MAX_LINE_HEIGHT = 0.34  # of the width: a lone "5" should not fill a round tablet

# Bevel radius as a fraction of the half-width: rounded for round/oval, a narrow bevel on
# flat-faced polygons, a full cylinder for capsules.
_BEVEL = {"round": 0.6, "oval": 0.6, "oblong": 0.5, "capsule": 1.0, "two_tone_capsule": 1.0}
_POLYGON_BEVEL = 0.32


def default_px_per_mm(size_px: int) -> float:
    """The scale at which the longest catalog pill fits a `size_px` image with the margin."""
    return size_px * (1.0 - 2.0 * MARGIN) / MAX_LENGTH_MM


@dataclass(frozen=True)
class _Geometry:
    """A convex silhouette in mm: an ellipse, a rounded box, or a polygon rounded by `r`.

    Rounded shapes are Minkowski sums (inner shape + disk of radius r), so their bounding box is
    exactly length x width and their inside distance is r minus the distance to the inner shape.
    """

    kind: str  # "ellipse" | "box" | "polygon"
    a: float  # half length (x)
    b: float  # half width (y)
    r: float = 0.0
    inner: tuple[tuple[float, float], ...] = ()


def _regular(n: int, start_deg: float) -> np.ndarray:
    t = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _fit_box(points: np.ndarray, length: float, width: float) -> np.ndarray:
    """Scale/translate `points` so their bounding box is length x width centred on the origin."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    unit = (points - (lo + hi) / 2.0) / (hi - lo)
    return unit * np.array([length, width])


_POLYGONS = {  # unit vertices (clockwise on screen, y down) and corner radius / width
    "triangle": (np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 0.16),
    "diamond": (np.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0]]), 0.10),
    "hexagon": (_regular(6, 180.0), 0.10),
    "pentagon": (_regular(5, -90.0), 0.10),
    "octagon": (_regular(8, 202.5), 0.08),
}


@lru_cache(maxsize=4096)
def _geometry(shape: str, length: float, width: float) -> _Geometry:
    a, b = length / 2.0, width / 2.0
    if shape in ("round", "oval"):
        return _Geometry("ellipse", a, b)
    if shape in CAPSULE_SHAPES:
        return _Geometry("box", a, b, b)
    if shape in ("oblong", "square"):
        return _Geometry("box", a, b, (0.34 if shape == "oblong" else 0.14) * width)
    if shape not in _POLYGONS:
        raise ValueError(f"unknown pill shape {shape!r}")
    verts, radius = _POLYGONS[shape]
    r = radius * width
    inner = _fit_box(verts, length - 2.0 * r, width - 2.0 * r)
    return _Geometry("polygon", a, b, r, tuple(map(tuple, inner.tolist())))


def _arc(centre: np.ndarray, r: float, a0: float, a1: float, n: int) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return centre + r * np.stack([np.cos(t), np.sin(t)], axis=1)


@lru_cache(maxsize=4096)
def _outline(shape: str, length: float, width: float) -> np.ndarray:
    g = _geometry(shape, length, width)
    if g.kind == "ellipse":
        t = np.linspace(0.0, 2.0 * math.pi, 192, endpoint=False)
        return np.stack([g.a * np.cos(t), g.b * np.sin(t)], axis=1)
    if g.kind == "box":
        ia, ib, h = g.a - g.r, g.b - g.r, math.pi / 2.0
        corners = [((ia, ib), 0.0), ((-ia, ib), h), ((-ia, -ib), 2 * h), ((ia, -ib), 3 * h)]
        return np.concatenate([_arc(np.array(c), g.r, a0, a0 + h, 24) for c, a0 in corners])
    inner = np.array(g.inner)
    normals = _edge_normals(inner)
    arcs = []
    for i in range(len(inner)):
        a0 = math.atan2(normals[i - 1][1], normals[i - 1][0])
        a1 = math.atan2(normals[i][1], normals[i][0])
        a1 = a0 + (a1 - a0) % (2.0 * math.pi)
        arcs.append(_arc(inner[i], g.r, a0, a1, 12))
    return np.concatenate(arcs)


def _edge_normals(verts: np.ndarray) -> np.ndarray:
    """Outward unit normals of edges verts[i] -> verts[i + 1] of a convex polygon."""
    edges = np.roll(verts, -1, axis=0) - verts
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    mids = verts + edges / 2.0
    flip = np.sum(normals * (mids - verts.mean(axis=0)), axis=1) < 0
    normals[flip] *= -1.0
    return normals


def _inside_distance(g: _Geometry, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point to the outline, positive inside; x (1, W), y (H, 1) in mm."""
    if g.kind == "ellipse":
        u, v = x / g.a, y / g.b
        rho = np.sqrt(u * u + v * v)
        grad = np.sqrt((u / g.a) ** 2 + (v / g.b) ** 2)
        # First-order distance (1 - rho) / |grad rho|: exact for circles, smooth for ellipses.
        return (1.0 - rho) * np.where(grad > 1e-9, rho / np.maximum(grad, 1e-9), g.b)
    if g.kind == "box":
        qx = np.abs(x) - (g.a - g.r)
        qy = np.abs(y) - (g.b - g.r)
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        return g.r - outside - np.minimum(np.maximum(qx, qy), 0.0)
    inner = np.array(g.inner)
    normals = _edge_normals(inner)
    x, y = np.broadcast_arrays(x, y)
    line = np.full(x.shape, -np.inf, dtype=np.float32)
    seg = np.full(x.shape, np.inf, dtype=np.float32)
    for i in range(len(inner)):
        (vx, vy), (wx, wy) = inner[i], inner[(i + 1) % len(inner)]
        ex, ey = wx - vx, wy - vy
        px, py = x - vx, y - vy
        line = np.maximum(line, px * normals[i, 0] + py * normals[i, 1])
        t = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        seg = np.minimum(seg, np.hypot(px - t * ex, py - t * ey))
    return g.r - np.where(line <= 0.0, line, seg)


def outline_mm(pill: Pill) -> np.ndarray:
    """The pill's silhouette as (N, 2) points in mm, x along the length, centred on 0, y down."""
    return _outline(pill.shape, *pill.size_mm).copy()


def _words(text: str) -> list[str]:
    """Split an imprint into at most two parts: at the space, else where letters meet digits."""
    if " " in text:
        return text.split(" ", 1)
    for i in range(1, len(text)):
        if text[i - 1].isalpha() != text[i].isalpha():
            return [text[:i], text[i:]]
    return [text]


def _text_layouts(text: str, allow_two_lines: bool) -> list[list[str]]:
    layouts = [[text]]
    words = _words(text)
    if allow_two_lines and len(words) == 2:
        layouts.append(words)
    return layouts


def _draw_text(
    canvas: np.ndarray, text: str, centre: tuple[float, float], box_w: float, box_h: float,
    line_h_max: float, allow_two_lines: bool,
) -> None:  # fmt: skip
    """Draw `text` as large as fits in box_w x box_h (px) centred at `centre`, into `canvas`."""
    best: tuple[float, list[str]] | None = None
    for lines in _text_layouts(text, allow_two_lines):
        sizes = [cv2.getTextSize(line, _FONT, 1.0, 2)[0] for line in lines]
        w1 = max(s[0] for s in sizes)
        h1 = max(s[1] for s in sizes)
        if w1 <= 0 or h1 <= 0:
            continue
        gap = 0.45 * h1
        total_h = len(lines) * h1 + (len(lines) - 1) * gap
        scale = min(box_w / w1, box_h / total_h, line_h_max / h1)
        if best is None or scale > best[0] * 1.05:
            best = (scale, lines)
    if best is None:
        return
    scale, lines = best
    thickness = max(1, int(round(scale * 2.4)))
    h1 = max(cv2.getTextSize(line, _FONT, scale, thickness)[0][1] for line in lines)
    gap = 0.45 * h1
    total_h = len(lines) * h1 + (len(lines) - 1) * gap
    y_top = centre[1] - total_h / 2.0
    for i, line in enumerate(lines):
        (w, h), _ = cv2.getTextSize(line, _FONT, scale, thickness)
        x = int(round(centre[0] - w / 2.0))
        y = int(round(y_top + i * (h1 + gap) + h1))
        cv2.putText(canvas, line, (x, y), _FONT, scale, 255, thickness, cv2.LINE_AA)


def _split_halves(text: str, keep_whole: bool) -> tuple[str, str]:
    """Text for the left and right halves; an unsplittable code stays whole on the left."""
    words = _words(text)
    if len(words) == 2:
        return words[0], words[1]
    if keep_whole:
        return text, ""
    mid = (len(text) + 1) // 2
    return text[:mid], text[mid:]


def _imprint_mask(
    pill: Pill, side: str, shape_hw: tuple[int, int], centre: tuple[float, float], px: float
) -> np.ndarray:
    """uint8 mask of the side's imprint, drawn at the working resolution (`px` per mm)."""
    canvas = np.zeros(shape_hw, np.uint8)
    text = (pill.imprint_front if side == "front" else pill.imprint_back).strip()
    if not text:
        return canvas
    length, width = pill.size_mm
    fw, fh, dy = _TEXT_BOX[pill.shape]
    cx, cy = centre[0], centre[1] + dy * width * px
    aspect_square = length < 1.3 * width
    capsule = pill.shape in CAPSULE_SHAPES
    halves = capsule or (side == "back" and pill.score_line == "half")
    if halves and len(text) > 1:
        parts = _split_halves(text, keep_whole=capsule)
        for part, sign in zip(parts, (-1.0, 1.0), strict=True):
            if part:
                _draw_text(
                    canvas, part, (cx + sign * length * px / 4.0, cy), 0.36 * fw * length * px,
                    fh * width * px, _MAX_LINE_HEIGHT * width * px, aspect_square,
                )  # fmt: skip
    else:
        _draw_text(
            canvas, text, (cx, cy), fw * length * px, fh * width * px,
            _MAX_LINE_HEIGHT * width * px, aspect_square,
        )  # fmt: skip
    return canvas


def _groove_mask(
    pill: Pill, side: str, shape_hw: tuple[int, int], centre: tuple[float, float], px: float
) -> np.ndarray:
    """uint8 mask of score lines (back face) and the capsule seam."""
    canvas = np.zeros(shape_hw, np.uint8)
    cx, cy = centre
    length, width = pill.size_mm
    sub = 16  # cv2 fixed-point: 4 fractional bits
    if pill.shape in CAPSULE_SHAPES:
        t = max(1, int(round(0.12 * px)))
        x = int(round(cx * sub))
        cv2.line(canvas, (x, 0), (x, shape_hw[0] * sub), 255, t, cv2.LINE_AA, shift=4)
    if side == "back" and pill.score_line in ("half", "cross"):
        t = max(1, int(round(0.28 * px)))
        x, y = int(round(cx * sub)), int(round(cy * sub))
        cv2.line(canvas, (x, 0), (x, shape_hw[0] * sub), 255, t, cv2.LINE_AA, shift=4)
        if pill.score_line == "cross":
            cv2.line(canvas, (0, y), (shape_hw[1] * sub, y), 255, t, cv2.LINE_AA, shift=4)
    return canvas


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def render_reference(
    pill: Pill, side: str, size_px: int = 256, seed: int = 0, px_per_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Studio image (RGB uint8 (H, W, 3)) of one side of `pill` and its ground-truth bool mask."""
    if side not in ("front", "back"):
        raise ValueError(f"side must be 'front' or 'back', got {side!r}")
    if size_px < 16:
        raise ValueError(f"size_px must be >= 16, got {size_px}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    ppm = default_px_per_mm(size_px) if px_per_mm is None else float(px_per_mm)
    if ppm <= 0:
        raise ValueError(f"px_per_mm must be > 0, got {px_per_mm}")
    length, width = pill.size_mm
    if length * ppm + 4 > size_px:
        raise ValueError(
            f"pill {pill.id} ({length} mm) at {ppm:.2f} px/mm needs {length * ppm + 4:.0f} px, "
            f"more than size_px={size_px}"
        )
    rng = np.random.default_rng([seed, pill.id, 0 if side == "front" else 1])
    ss = SUPERSAMPLE
    px = ppm * ss  # working px per mm

    # Crop box in output pixels, aligned so each output pixel is exactly ss x ss working pixels.
    c = size_px / 2.0
    pad = 3
    x0 = max(0, int(math.floor(c - length * ppm / 2.0)) - pad)
    x1 = min(size_px, int(math.ceil(c + length * ppm / 2.0)) + pad)
    y0 = max(0, int(math.floor(c - width * ppm / 2.0)) - pad)
    y1 = min(size_px, int(math.ceil(c + width * ppm / 2.0)) + pad)
    hw = ((y1 - y0) * ss, (x1 - x0) * ss)
    # Output coordinate u maps to working-pixel centre u * ss - 0.5 (cv2 puts pixel m at m).
    centre = (c * ss - 0.5 - x0 * ss, c * ss - 0.5 - y0 * ss)

    # Analytic inside distance at output resolution, linearly upsampled: it gives both the
    # working-resolution coverage (exact area, no rasteriser bias) and a smooth height map,
    # where a distance transform of a pixel-stepped mask would streak the shading.
    xs = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - c) / ppm)[None, :]
    ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - c) / ppm)[:, None]
    dist_mm = _inside_distance(_geometry(pill.shape, length, width), xs, ys)
    dist_mm = np.ascontiguousarray(dist_mm, dtype=np.float32)
    dist = cv2.resize(dist_mm * px, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    cov = np.clip(dist + 0.5, 0.0, 1.0)
    np.maximum(dist, 0.0, out=dist)

    # Height map (working px): quarter-circle bevel of radius r_b, flat face inside it.
    r_b = max(1.0, _BEVEL.get(pill.shape, _POLYGON_BEVEL) * width / 2.0 * px)
    t = np.minimum(dist / r_b, 1.0)
    height = r_b * np.sqrt(np.clip(1.0 - (1.0 - t) ** 2, 0.0, 1.0))

    imprint = _imprint_mask(pill, side, hw, centre, px).astype(np.float32) / 255.0
    grooves = _groove_mask(pill, side, hw, centre, px).astype(np.float32) / 255.0
    face = (dist > 0.6 * ss).astype(np.float32)
    stroke_px = max(1.0, 0.08 * px)
    debossed = pill.imprint_style == "debossed"
    cut = grooves + imprint if debossed else grooves
    cut = cv2.GaussianBlur(np.minimum(cut, 1.0) * face, (0, 0), 0.5 * stroke_px)
    height -= 1.2 * stroke_px * cut

    hx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    hy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    inv = 1.0 / np.sqrt(hx * hx + hy * hy + 1.0)
    n_dot_l = (-hx * _LIGHT[0] - hy * _LIGHT[1] + _LIGHT[2]) * inv
    shade = _AMBIENT + (1.0 - _AMBIENT) * np.maximum(n_dot_l, 0.0) / _LIGHT[2]
    # Side walls and groove floors get less light than the open face.
    rim = dist / (1.5 * ss)
    shade *= 1.0 - 0.4 * np.exp(-rim * rim) - 0.25 * cut

    lit = shade * cov
    out_w, out_h = x1 - x0, y1 - y0

    def down(plane: np.ndarray) -> np.ndarray:
        return cv2.resize(plane, (out_w, out_h), interpolation=cv2.INTER_AREA)

    # Albedo is constant across an output pixel except along ink strokes, so colour is formed
    # at output resolution from reduced single-channel light: body * lit + ink * lit-under-ink.
    cov_small = down(cov)
    body = np.empty((out_h, out_w, 3), np.float32)
    body[:] = np.array(pill.colors[0].rgb, np.float32)
    if pill.shape == "two_tone_capsule":
        body[:, int(round(c - x0)) :] = np.array(pill.colors[1].rgb, np.float32)
    if pill.coating == "matte":
        mottle = rng.standard_normal((out_h // 4 + 2, out_w // 4 + 2), dtype=np.float32)
        mottle = cv2.resize(mottle, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        body *= (1.0 + 0.015 * mottle)[..., None]
    lit_small = down(lit)
    if debossed:
        premult = body * lit_small[..., None]
    else:
        ink_lit = down(lit * (imprint * face))
        dark_body = (_luminance(body) < 100.0)[..., None]
        ink = np.where(dark_body, _INK_LIGHT, _INK_DARK)
        premult = body * (lit_small - ink_lit)[..., None] + ink * ink_lit[..., None]
    if pill.coating == "glossy":
        n_dot_h = (-hx * _HALF[0] - hy * _HALF[1] + _HALF[2]) * inv
        premult += down(150.0 * cv2.pow(np.maximum(n_dot_h, 0.0), 60) * cov)[..., None]
    premult = np.minimum(premult, 255.0 * cov_small[..., None])

    # Background + sensor noise straight to uint8: random bytes through a per-channel LUT.
    n_words = (size_px * size_px * 3 + 7) // 8
    raw = rng.bit_generator.random_raw(n_words).view(np.uint8)[: size_px * size_px * 3]
    raw = raw.reshape(size_px, size_px, 3)
    rgb = cv2.LUT(raw, _BACKGROUND_LUT)
    region = rgb[y0:y1, x0:x1]
    composite = region.astype(np.float32)
    composite -= cov_small[..., None] * np.array(BACKGROUND_RGB, np.float32)
    composite += premult
    region[:] = np.clip(composite + 0.5, 0.0, 255.0).astype(np.uint8)

    gt = np.zeros((size_px, size_px), bool)
    gt[y0:y1, x0:x1] = cov_small >= 0.5
    return rgb, gt
