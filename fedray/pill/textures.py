"""Background textures for synthetic pill scenes: procedural families, bundled photos, user images.

The source recipe composited pills on ~113 VisMod floor/fabric textures. We cannot ship or download
those, so ``make_textures`` draws parameterised procedural families (fabric, wood, tiles,
granite/terrazzo, paper, skin, carpet, marble, plain-with-vignette), adds the few real surfaces that
ship inside installed packages (pavement from ultralytics' ``bus.jpg``, blurred crowd from
``zidane.jpg``, a hill-shaded elevation map from matplotlib's sample data) and every image in an
optional user folder. Every texture is RGB uint8 (size, size, 3).

Size: one concept, the backgrounds; most lines are the procedural families, each a
few lines, kept together so a new family is one function beside its siblings.
"""

from __future__ import annotations

import colorsys
import importlib.util
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class TextureError(ValueError):
    """A texture source that cannot be used; the message names the path."""


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 4,
           persistence: float = 0.5, aspect: float = 1.0) -> np.ndarray:
    """Fractal value noise in [0, 1], (size, size) float32; aspect > 1 stretches it along x."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cy = max(2, min(size, cells * 2**o))
        cx = max(2, min(size, int(round(cy / aspect))))
        grid = rng.random((cy + 1, cx + 1), dtype=np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= persistence
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _rotate(img: np.ndarray, angle_deg: float) -> np.ndarray:
    size = img.shape[0]
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle_deg, 1.0)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Open pixel grids x (1, size) and y (size, 1): broadcasting keeps 1-D terms 1-D."""
    ramp = np.arange(size, dtype=np.float32)
    return ramp[None, :], ramp[:, None]


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    period = rng.uniform(3.0, 10.0)
    warp_c = _hsv(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.3, 0.9))
    weft_c = warp_c * rng.uniform(0.75, 1.15) + rng.normal(0, 12, 3).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # plain weave: over/under alternates every thread
        over = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    elif kind == 1:  # twill: the over/under checker shifts one thread per row, giving diagonals
        over = ((np.floor(x / period) - np.floor(y / period)) % 4 < 2).astype(np.float32)
    else:  # knit: stacked V-shaped loops
        over = ((np.abs((x % (2 * period)) - period) + y) % (2 * period) < period).astype(
            np.float32)
    ripple_x = 0.5 + 0.5 * np.cos(2 * np.pi * x / period)
    ripple_y = 0.5 + 0.5 * np.cos(2 * np.pi * y / period)
    shade = over * ripple_y + (1 - over) * ripple_x
    slub = _noise(rng, size, int(rng.integers(4, 12)), 3, aspect=6.0)
    colour = _lerp(weft_c, warp_c, over) * (0.7 + 0.3 * shade)[..., None]
    colour *= (0.85 + 0.3 * slub)[..., None]
    return _rotate(colour, rng.uniform(-30, 30))


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    cx, cy = rng.uniform(-size, 2 * size, 2)
    stretch = rng.uniform(4.0, 20.0)
    turb = _noise(rng, size, int(rng.integers(2, 6)), 4)
    r = np.sqrt(((x - cx) / stretch) ** 2 + (y - cy) ** 2)
    rings = (r / rng.uniform(8.0, 30.0) + turb * rng.uniform(1.0, 4.0)) % 1.0
    rings = np.abs(rings - 0.5) * 2
    grain = _noise(rng, size, int(rng.integers(16, 48)), 3, aspect=1 / 12.0)
    light = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.6, 0.95))
    dark = light * rng.uniform(0.45, 0.75)
    out = _lerp(dark, light, rings * np.sqrt(rings)) * (0.85 + 0.25 * grain)[..., None]
    if rng.random() < 0.5:  # planks: dark seams between boards of jittered brightness
        width = rng.uniform(size / 6, size / 2)
        board = np.floor(x / width)
        out *= (0.85 + 0.3 * ((board * 0.618) % 1.0))[..., None]
        out *= np.where((x % width) < 2.0, 0.45, 1.0)[..., None]
    return _rotate(out, rng.choice([0.0, 90.0]) + rng.uniform(-10, 10))


def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    tile = rng.uniform(size / 8, size / 2.5)
    grout = rng.uniform(2.0, 7.0)
    row = np.floor(y / tile)
    shift = (row % 2) * tile * 0.5 if rng.random() < 0.4 else 0.0  # running bond
    col = np.floor((x + shift) / tile)
    base = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.45, 0.95))
    tint = np.sin(row * 12.9898 + col * 78.233 + rng.uniform(0, 100)) * 43758.5453 % 1.0
    surface = base * (0.88 + 0.2 * tint)[..., None]
    surface *= (0.92 + 0.12 * _noise(rng, size, 16, 3))[..., None]
    in_grout = ((y % tile) < grout) | (((x + shift) % tile) < grout)
    grout_c = _hsv(0, 0, rng.uniform(0.25, 0.8))
    return np.where(in_grout[..., None], grout_c, surface)


def _granite(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.9))
    out = np.empty((size, size, 3), np.float32)
    out[:] = base
    out *= (0.85 + 0.3 * _noise(rng, size, 8, 4))[..., None]
    terrazzo = rng.random() < 0.5
    n_chips = int(rng.integers(150, 500) if terrazzo else rng.integers(1500, 5000))
    pts = rng.integers(0, size, (n_chips, 2))
    radii = rng.integers(3, 12, n_chips) if terrazzo else rng.integers(1, 3, n_chips)
    palette = [_hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.05, 1.0)) for _ in range(4)]
    choice = rng.integers(0, 4, n_chips)
    for (px, py), rad, c in zip(pts, radii, choice, strict=True):
        colour = tuple(float(v) for v in palette[c])
        if terrazzo:
            n = 5
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            poly = np.stack([px + rad * np.cos(ang), py + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(out, [poly], colour, lineType=cv2.LINE_AA)
        else:
            cv2.circle(out, (int(px), int(py)), int(rad), colour, -1, lineType=cv2.LINE_AA)
    return out


def _paper(rng: np.random.Generator, size: int) -> np.ndarray:
    # white, cream, grey recycled or brown kraft
    base = _hsv(rng.uniform(0.06, 0.17), rng.uniform(0.0, 0.45), rng.uniform(0.55, 1.0))
    out = np.empty((size, size, 3), np.float32)
    out[:] = base
    out *= (0.93 + 0.1 * _noise(rng, size, 4, 5, 0.6))[..., None]
    fibres = np.zeros((size, size), np.float32)
    n = int(rng.integers(300, 1200))
    starts = rng.uniform(0, size, (n, 2))
    ang = rng.uniform(0, np.pi, n)
    length = rng.uniform(4, 25, n)
    for (sx, sy), a, ln in zip(starts, ang, length, strict=True):
        end = (int(sx + ln * math.cos(a)), int(sy + ln * math.sin(a)))
        cv2.line(fibres, (int(sx), int(sy)), end, float(rng.uniform(-1, 1)), 1, cv2.LINE_AA)
    out += (fibres * rng.uniform(6, 18))[..., None]
    out += rng.normal(0, 2.0, (size, size, 1)).astype(np.float32)
    return out


def _skin(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _hsv(rng.uniform(0.0, 0.1), rng.uniform(0.15, 0.7), rng.uniform(0.2, 1.0))
    blotch = _noise(rng, size, int(rng.integers(1, 4)), 3, 0.5)
    pores = _noise(rng, size, 96, 2, 0.5)
    redness = np.array([1.0, 0.92, 0.9], np.float32)
    out = base * (1.0 - rng.uniform(0.1, 0.35) + rng.uniform(0.2, 0.7) * blotch)[..., None]
    out = _lerp(out, out * redness, blotch)
    return out * (0.96 + 0.06 * pores)[..., None]


def _carpet(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8))
    loops = rng.random((size, size), dtype=np.float32)
    loops = cv2.GaussianBlur(loops, (0, 0), rng.uniform(0.8, 1.8))
    loops = (loops - loops.min()) / max(float(np.ptp(loops)), 1e-6)
    out = base * (0.6 + 0.7 * loops)[..., None]
    if rng.random() < 0.5:  # pattern woven into the pile
        x, y = _grid(size)
        period = rng.uniform(size / 10, size / 3)
        motif = (np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period)) > 0.3
        alt = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8))
        out = np.where(motif[..., None], alt * (0.6 + 0.7 * loops)[..., None], out)
    return out * (0.9 + 0.2 * _noise(rng, size, 6, 3))[..., None]


def _marble(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    base = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.95))
    vein_c = _hsv(rng.random(), rng.uniform(0.0, 0.4), 1.0 - rng.uniform(0.0, 0.9))
    turb = _noise(rng, size, int(rng.integers(2, 5)), 5, 0.55)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(2.0, 8.0) * 2 * np.pi / size
    phase = (x * math.cos(angle) + y * math.sin(angle)) * freq + turb * rng.uniform(4, 10)
    veins = (1.0 - np.abs(np.sin(phase))) ** rng.uniform(4, 14)
    cloud = _noise(rng, size, 3, 4)
    out = base * (0.9 + 0.15 * cloud)[..., None]
    return _lerp(out, vein_c, veins)


def _plain(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    base = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.15, 1.0))
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (size * size * 0.5)
    vignette = 1.0 - rng.uniform(0.1, 0.6) * r2
    gx, gy = rng.normal(0, 0.15, 2)
    ramp = 1.0 + gx * (x / size - 0.5) + gy * (y / size - 0.5)
    out = base * (vignette * ramp)[..., None]
    return out + rng.normal(0, 1.5, (size, size, 1)).astype(np.float32)


FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "fabric": _fabric,
    "wood": _wood,
    "tiles": _tiles,
    "granite": _granite,
    "paper": _paper,
    "skin": _skin,
    "carpet": _carpet,
    "marble": _marble,
    "plain": _plain,
}


def _lined_paper(rng: np.random.Generator, size: int) -> np.ndarray:
    """A notebook page: paper with ruled (or squared) lines and sometimes a red margin."""
    out = _paper(rng, size)
    x, y = _grid(size)
    period = rng.uniform(size / 24, size / 12)
    ink = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.8))
    width = rng.uniform(0.6, 1.6)
    lines = np.clip(width - np.abs((y + rng.uniform(0, period)) % period - period / 2), 0, 1)
    if rng.random() < 0.3:  # squared paper
        lines = np.maximum(lines, np.clip(width - np.abs(x % period - period / 2), 0, 1))
    lines = lines * np.ones((size, size), np.float32)
    out = _lerp(out, ink, lines * rng.uniform(0.35, 0.8))
    if rng.random() < 0.5:  # the red margin
        mx = rng.uniform(0.05, 0.4) * size
        margin = np.clip(1.2 - np.abs(x - mx), 0, 1) * np.ones((size, size), np.float32)
        out = _lerp(out, np.array([200.0, 60.0, 60.0], np.float32), margin * 0.7)
    return _rotate(out, rng.uniform(-8, 8))


def _palm(rng: np.random.Generator, size: int) -> np.ndarray:
    """An open hand, close up: skin with a few dark creases and soft light falling off."""
    out = _skin(rng, size)
    creases = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        drift = rng.normal(0, size / 18, 2)  # a crease runs one way, bending gently
        steps = drift + rng.normal(0, size / 60, (14, 2))
        pts = np.cumsum(steps, axis=0) + rng.uniform(0, size, 2)
        cv2.polylines(creases, [pts.astype(np.int32)], False, 1.0, int(rng.integers(1, 4)),
                      cv2.LINE_AA)
    creases = cv2.GaussianBlur(creases, (0, 0), rng.uniform(0.8, 2.0))
    out = out * (1.0 - rng.uniform(0.2, 0.45) * creases)[..., None]
    x, y = _grid(size)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    falloff = 1.0 - rng.uniform(0.1, 0.4) * ((x - cx) ** 2 + (y - cy) ** 2) / (size * size)
    return out * falloff[..., None]


def _tray(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plastic pill tray or organiser: smooth colour, moulded wells, glossy streaks."""
    x, y = _grid(size)
    base = _hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.5, 1.0))
    out = np.empty((size, size, 3), np.float32)
    out[:] = base
    out *= (1.0 + rng.normal(0, 0.1) * (x / size - 0.5) + rng.normal(0, 0.1) * (y / size - 0.5)
            )[..., None]
    rim = np.zeros((size, size), np.float32)
    pitch = rng.uniform(size / 4, size / 1.5)
    radius = pitch * rng.uniform(0.3, 0.45)
    ox, oy = rng.uniform(0, pitch, 2)
    for cx in np.arange(ox - pitch, size + pitch, pitch):
        for cy in np.arange(oy - pitch, size + pitch, pitch):
            cv2.circle(rim, (int(cx), int(cy)), int(radius), 1.0, int(rng.integers(2, 6)),
                       cv2.LINE_AA)
    rim = cv2.GaussianBlur(rim, (0, 0), 2.0)
    out *= (1.0 - 0.25 * rim)[..., None]
    gloss = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        p0, p1 = rng.uniform(0, size, (2, 2)).astype(np.int32)
        cv2.line(gloss, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1.0,
                 int(rng.integers(4, 20)), cv2.LINE_AA)
    gloss = cv2.GaussianBlur(gloss, (0, 0), rng.uniform(4, 12))
    return out + (gloss * rng.uniform(30, 90))[..., None]


def _printed(rng: np.random.Generator, size: int) -> np.ndarray:
    """A printed tablecloth or placemat: flat pill-sized motifs (dots, rounded squares, ovals,
    diamonds) in a lattice or scattered, printed into the cloth's weave. No relief and no
    shadow: the hard negatives a pill detector must learn to leave alone."""
    out = _fabric(rng, size) if rng.random() < 0.5 else _plain(rng, size)
    weave = _noise(rng, size, int(rng.integers(20, 60)), 2)
    ink = np.zeros((size, size), np.float32)
    pitch = rng.uniform(size / 10, size / 4)
    r = pitch * rng.uniform(0.18, 0.38)
    kind = int(rng.integers(4))  # 0 dot, 1 rounded square, 2 oval, 3 diamond
    if rng.random() < 0.6:  # a lattice, every other row shifted half a pitch or not
        shift = pitch / 2 if rng.random() < 0.5 else 0.0
        ox, oy = rng.uniform(0, pitch, 2)
        centres = [(cx + shift * (j % 2), cy)
                   for j, cy in enumerate(np.arange(oy - pitch, size + pitch, pitch))
                   for cx in np.arange(ox - pitch, size + pitch, pitch)]
    else:  # scattered
        n = int((size / pitch) ** 2)
        centres = list(map(tuple, rng.uniform(0, size, (n, 2))))
    angle = rng.uniform(0, 180)
    for cx, cy in centres:
        c = (int(cx), int(cy))
        if kind == 0:
            cv2.circle(ink, c, int(r), 1.0, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(ink, c, (int(r), int(r * 0.55)), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
        else:
            corner = r * (0.35 if kind == 1 else 0.05)
            half = r - corner
            rot = math.radians(angle + (45 if kind == 3 else 0))
            u = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
            m = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
            pts = (u @ m.T + np.array([cx, cy])).astype(np.int32)
            cv2.fillConvexPoly(ink, pts, 1.0, cv2.LINE_AA)
            cv2.polylines(ink, [pts], True, 1.0, max(1, int(2 * corner)), cv2.LINE_AA)
    ink = cv2.GaussianBlur(ink, (0, 0), rng.uniform(0.5, 1.5)) * rng.uniform(0.6, 1.0)
    colour = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.2, 1.0))
    return _lerp(out, colour * (0.85 + 0.3 * weave)[..., None], ink)


# Surfaces only the detection scenes draw on (data.detection_surfaces): kept out of FAMILIES so
# the classifier crops' textures, and their seeds, stay as they were.
SCENE_FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "lined_paper": _lined_paper,
    "palm": _palm,
    "tray": _tray,
    "wood": _wood,
    "granite": _granite,
    "fabric": _fabric,
    "marble": _marble,
    "printed": _printed,
}


def procedural_texture(family: str, seed: int, size: int = 512) -> np.ndarray:
    """One procedural texture of a named family, RGB uint8 (size, size, 3)."""
    make = FAMILIES.get(family) or SCENE_FAMILIES.get(family)
    if make is None:
        raise TextureError(f"unknown texture family {family!r}; known: "
                           f"{sorted(set(FAMILIES) | set(SCENE_FAMILIES))}")
    rng = np.random.default_rng(seed)
    img = make(rng, size)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def scene_textures(count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` textures of the scene-only families in turn (lined paper, palm, tray, ...)."""
    names = list(SCENE_FAMILIES)
    seeds = np.random.SeedSequence(seed).generate_state(max(count, 1), dtype=np.uint64)
    return [procedural_texture(names[i % len(names)], int(seeds[i]), size) for i in range(count)]


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def _square(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Crop a fractional (x0, y0, x1, y1) box, centre-cropped to a square, resized to size."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    side = min(x1 - x0, y1 - y0)
    x0 += (x1 - x0 - side) // 2
    y0 += (y1 - y0 - side) // 2
    crop = img[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)


def _hillshade(elevation: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(elevation.astype(np.float64))
    slope = np.pi / 2 - np.arctan(np.hypot(gx, gy) / max(float(np.std(elevation)), 1e-6) * 8)
    aspect = np.arctan2(-gx, gy)
    az, alt = np.radians(315.0), np.radians(45.0)
    shade = np.sin(alt) * np.sin(slope) + np.cos(alt) * np.cos(slope) * np.cos(az - aspect)
    grey = np.clip(shade, 0, 1) * 170 + 50
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def bundled_textures(size: int = 512) -> list[np.ndarray]:
    """Real surfaces shipped inside installed packages (no downloads); only those that exist."""
    out: list[np.ndarray] = []
    # (package, path inside it, fractional crop box): crops chosen to be surface, not subject
    photos = [
        ("ultralytics", ("assets", "bus.jpg"), (0.0, 0.8, 1.0, 1.0)),  # paving stones
        ("ultralytics", ("assets", "bus.jpg"), (0.0, 0.0, 1.0, 0.16)),  # building facade
        ("ultralytics", ("assets", "zidane.jpg"), (0.0, 0.0, 0.3, 0.28)),  # blurred crowd
    ]
    for package, parts, box in photos:
        path = _package_file(package, *parts)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path else None
        if img is not None:
            out.append(cv2.cvtColor(_square(img, box, size), cv2.COLOR_BGR2RGB))
    dem = _package_file("matplotlib", "mpl-data", "sample_data", "jacksboro_fault_dem.npz")
    if dem is not None:
        with np.load(dem) as data:
            shade = _hillshade(data["elevation"])
        out.append(_square(shade, (0.0, 0.0, 1.0, 1.0), size))
    return out


def load_user_textures(user_dir: str, size: int = 512) -> list[np.ndarray]:
    """Every readable image in user_dir (sorted by name), centre-cropped and resized to size."""
    root = Path(user_dir)
    if not root.is_dir():
        raise TextureError(f"texture folder {user_dir!r} does not exist or is not a directory")
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    out, bad = [], []
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None or min(img.shape[:2]) < 2:
            bad.append(path.name)
            continue
        out.append(cv2.cvtColor(_square(img, (0, 0, 1, 1), size), cv2.COLOR_BGR2RGB))
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {user_dir!r}: "
                      f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", stacklevel=2)
    return out


def make_textures(count: int = 128, size: int = 512, seed: int = 0,
                  user_dir: str | None = None, bundled: bool = True) -> list[np.ndarray]:
    """`count` procedural textures (families in turn), then bundled real ones, then user_dir's."""
    if count < 0 or size < 8:
        raise TextureError(f"need count >= 0 and size >= 8, got count={count}, size={size}")
    names = list(FAMILIES)
    seeds = np.random.SeedSequence(seed).generate_state(max(count, 1), dtype=np.uint64)
    out = [procedural_texture(names[i % len(names)], int(seeds[i]), size) for i in range(count)]
    if bundled:
        out.extend(bundled_textures(size))
    if user_dir is not None:
        out.extend(load_user_textures(user_dir, size))
    return out
