"""A synthetic pill catalog: the classes every later stage renders, composes and learns.

Each `Pill` carries what identifies a real prescription pill (shape, size, colours, imprints,
score line) plus what only changes its look (coating, imprint style). Marginals follow real
formularies loosely: white/off-white and round dominate, so many pills differ only by imprint
or size, which is what makes pill identification hard. No two pills share the identifying key
(`Pill.key`), so every class is distinguishable in principle.

Size: one concept (the Pill record, its seeded generation and its JSON form); the
look-alike rules need the generator and the record side by side.
"""

from __future__ import annotations

import json
import random
from bisect import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

CATALOG_FORMAT = "fedray-catalog-v1"

SHAPES = (
    "round",
    "oval",
    "oblong",
    "capsule",
    "two_tone_capsule",
    "triangle",
    "diamond",
    "hexagon",
    "pentagon",
    "octagon",
    "square",
)
CAPSULE_SHAPES = frozenset({"capsule", "two_tone_capsule"})
IMPRINT_STYLES = ("debossed", "printed")
SCORE_LINES = ("none", "half", "cross")
COATINGS = ("matte", "glossy")

# The longest pill the catalog can draw; the renderer's default scale fits it with a margin.
MAX_LENGTH_MM = 23.0

_SHAPE_WEIGHTS = {
    "round": 0.40,
    "oval": 0.12,
    "oblong": 0.13,
    "capsule": 0.09,
    "two_tone_capsule": 0.07,
    "triangle": 0.03,
    "diamond": 0.03,
    "hexagon": 0.03,
    "pentagon": 0.03,
    "octagon": 0.02,
    "square": 0.05,
}

# shape -> (length range mm, width/length ratio range, thickness range mm or None = width)
_SIZES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float] | None]] = {
    "round": ((5.0, 13.0), (1.0, 1.0), (2.5, 5.5)),
    "oval": ((8.0, 17.0), (0.55, 0.75), (3.0, 6.0)),
    "oblong": ((10.0, 22.0), (0.38, 0.50), (3.5, 7.0)),
    "capsule": ((14.0, MAX_LENGTH_MM), (0.33, 0.40), None),
    "two_tone_capsule": ((14.0, MAX_LENGTH_MM), (0.33, 0.40), None),
    "triangle": ((7.0, 12.0), (0.87, 0.87), (3.0, 5.0)),
    "diamond": ((8.0, 14.0), (0.60, 0.80), (3.0, 5.5)),
    "hexagon": ((6.0, 12.0), (0.87, 0.87), (3.0, 5.5)),
    "pentagon": ((6.0, 12.0), (0.95, 0.95), (3.0, 5.5)),
    "octagon": ((6.0, 12.0), (1.0, 1.0), (3.0, 5.5)),
    "square": ((6.0, 11.0), (1.0, 1.0), (3.0, 5.5)),
}

# name, sRGB, weight: white + off-white ~45% as in real formularies.
_PALETTE: tuple[tuple[str, tuple[int, int, int], float], ...] = (
    ("white", (246, 246, 242), 0.32),
    ("off-white", (236, 229, 210), 0.13),
    ("yellow", (240, 212, 92), 0.06),
    ("light-yellow", (245, 236, 170), 0.04),
    ("orange", (236, 136, 56), 0.05),
    ("peach", (244, 194, 158), 0.04),
    ("pink", (240, 168, 190), 0.06),
    ("red", (192, 48, 50), 0.03),
    ("purple", (128, 78, 158), 0.03),
    ("lavender", (198, 180, 224), 0.02),
    ("blue", (66, 108, 190), 0.06),
    ("light-blue", (168, 200, 236), 0.04),
    ("green", (78, 158, 88), 0.03),
    ("light-green", (180, 220, 168), 0.02),
    ("brown", (138, 92, 58), 0.03),
    ("tan", (206, 174, 128), 0.02),
    ("gray", (150, 150, 152), 0.01),
    ("black", (44, 44, 46), 0.01),
)
COLOR_NAMES = tuple(name for name, _, _ in _PALETTE)
_PALETTE_RGB = {name: rgb for name, rgb, _ in _PALETTE}

_PREFIXES = (
    "M", "G", "L", "A", "E", "S", "T", "D", "R", "b", "IP", "AN", "FX", "NV", "QR", "KT", "HK",
    "ZC", "TV", "WX", "ZEN", "ORA", "PRX", "VYL", "LUX", "SOL", "KADE", "NOVA", "RIVA", "TEVO",
)  # fmt: skip
_NAME_HEADS = (
    "Fen", "Ala", "Cor", "Dex", "Lor", "Mir", "Pro", "Tri", "Val", "Zen", "Bex", "Cal", "Dor",
    "Ema", "Flu", "Gal", "Hyd", "Ima", "Ket", "Lev", "Mon", "Nor", "Oxa", "Pax", "Qui", "Ris",
    "Sul", "Tor", "Ulo", "Ven", "Xal", "Zol",
)  # fmt: skip
_NAME_MIDS = ("a", "e", "i", "o", "u", "ar", "en", "il", "or", "ux")
_NAME_TAILS = (
    "lorin", "zepam", "pril", "statin", "olol", "oxetine", "azole", "idine", "afil", "asartan",
    "profen", "cillin", "mycin", "tadine", "zolam", "dronate", "gliptin", "semide", "triptan",
    "vir", "xaban", "fenac",
)  # fmt: skip
_STRENGTHS_MG = (
    1, 2, 2.5, 4, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50, 60, 75, 80, 100, 125, 150, 200, 250,
    300, 325, 400, 500, 600, 750, 800, 1000,
)  # fmt: skip


class CatalogError(ValueError):
    """A catalog file or request that cannot be honoured; the message names the file/field."""


class Color(NamedTuple):
    """One named pill colour with its sRGB value."""

    name: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Pill:
    """One pill class: identity (shape, size, colours, imprints, score) and look (style, coat).

    The score line, when there is one, is cut into the back face.
    """

    id: int
    name: str
    shape: str
    size_mm: tuple[float, float]  # (length, width); length is the long axis
    thickness_mm: float
    colors: tuple[Color, ...]
    imprint_front: str
    imprint_back: str
    imprint_style: str
    score_line: str
    coating: str

    @property
    def size_class(self) -> int:
        """Length to the nearest millimetre: two pills this far apart look different at scale."""
        return int(round(self.size_mm[0]))

    def key(self) -> tuple:
        """The identifying features; no two pills in a catalog share them."""
        return (
            self.shape,
            self.size_class,
            tuple(c.name for c in self.colors),
            self.imprint_front,
            self.imprint_back,
            self.score_line,
        )

    def side_keys(self) -> tuple[tuple, tuple]:
        """What one photo of each face shows, size aside (a crop's scale says little about mm)."""
        colors = tuple(c.name for c in self.colors)
        return (
            (self.shape, colors, self.imprint_front, "none"),
            (self.shape, colors, self.imprint_back, self.score_line),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (colours as {name, rgb})."""
        return {
            "id": self.id,
            "name": self.name,
            "shape": self.shape,
            "size_mm": list(self.size_mm),
            "thickness_mm": self.thickness_mm,
            "colors": [{"name": c.name, "rgb": list(c.rgb)} for c in self.colors],
            "imprint_front": self.imprint_front,
            "imprint_back": self.imprint_back,
            "imprint_style": self.imprint_style,
            "score_line": self.score_line,
            "coating": self.coating,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "pill") -> Pill:
        """Build a Pill from `to_dict` output; `where` names the entry in error messages."""
        try:
            pill = cls(
                id=int(d["id"]),
                name=str(d["name"]),
                shape=str(d["shape"]),
                size_mm=(float(d["size_mm"][0]), float(d["size_mm"][1])),
                thickness_mm=float(d["thickness_mm"]),
                colors=tuple(
                    Color(str(c["name"]), tuple(int(v) for v in c["rgb"]))  # type: ignore[arg-type]
                    for c in d["colors"]
                ),
                imprint_front=str(d["imprint_front"]),
                imprint_back=str(d["imprint_back"]),
                imprint_style=str(d["imprint_style"]),
                score_line=str(d["score_line"]),
                coating=str(d["coating"]),
            )
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise CatalogError(f"{where}: malformed entry ({type(e).__name__}: {e})") from e
        pill.validate(where)
        return pill

    def validate(self, where: str = "pill") -> None:
        """Raise CatalogError naming `where` and the field if any value is out of range."""

        def bad(field: str, value: Any, allowed: Any) -> CatalogError:
            return CatalogError(f"{where}: {field}={value!r} is invalid (expected {allowed})")

        if self.id < 0:
            raise bad("id", self.id, ">= 0")
        if self.shape not in SHAPES:
            raise bad("shape", self.shape, SHAPES)
        if self.imprint_style not in IMPRINT_STYLES:
            raise bad("imprint_style", self.imprint_style, IMPRINT_STYLES)
        if self.score_line not in SCORE_LINES:
            raise bad("score_line", self.score_line, SCORE_LINES)
        if self.coating not in COATINGS:
            raise bad("coating", self.coating, COATINGS)
        length, width = self.size_mm
        if not (0 < width <= length <= MAX_LENGTH_MM):
            raise bad("size_mm", self.size_mm, f"0 < width <= length <= {MAX_LENGTH_MM}")
        if self.thickness_mm <= 0:
            raise bad("thickness_mm", self.thickness_mm, "> 0")
        n_colors = 2 if self.shape == "two_tone_capsule" else 1
        if len(self.colors) != n_colors:
            raise bad("colors", self.colors, f"{n_colors} colour(s) for shape {self.shape}")
        for c in self.colors:
            if len(c.rgb) != 3 or not all(0 <= v <= 255 for v in c.rgb):
                raise bad("colors", c, "RGB values in 0..255")


def _weighted(rng: random.Random, items: tuple, cum_weights: list[float]):
    return items[bisect(cum_weights, rng.random() * cum_weights[-1])]


_SHAPE_CUM = list(accumulate(_SHAPE_WEIGHTS[s] for s in SHAPES))
_COLOR_CUM = list(accumulate(w for _, _, w in _PALETTE))


def _color(rng: random.Random, name: str) -> Color:
    # Manufacturers' "white" differ slightly; the jitter is stored so renders stay exact.
    rgb = tuple(min(255, max(0, v + rng.randint(-6, 6))) for v in _PALETTE_RGB[name])
    return Color(name, rgb)  # type: ignore[arg-type]


def _number(rng: random.Random) -> str:
    digits = _weighted(rng, (1, 2, 3, 4), [0.2, 0.5, 0.8, 1.0])
    return str(rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1))


def _code(rng: random.Random, kind: str) -> str:
    if kind == "prefix_number":
        return f"{rng.choice(_PREFIXES)} {_number(rng)}"
    if kind == "prefix_glued":
        return f"{rng.choice(_PREFIXES)}{_number(rng)}"
    if kind == "number":
        return _number(rng)
    if kind == "prefix":
        return rng.choice(_PREFIXES)
    if kind == "two_numbers":
        return f"{rng.randint(1, 99)} {rng.randint(1, 999)}"
    if kind == "scored_pair":
        # One short token each side of a score line, e.g. "5 0", "M 12".
        left = rng.choice(_PREFIXES[:10]) if rng.random() < 0.3 else str(rng.randint(1, 99))
        return f"{left} {rng.randint(1, 99)}"
    return ""


_FRONT_KINDS = ("prefix_number", "prefix_glued", "number", "prefix", "two_numbers", "blank")
_FRONT_CUM = list(accumulate((0.36, 0.18, 0.16, 0.10, 0.15, 0.05)))
_BACK_KINDS = ("blank", "number", "prefix", "prefix_number")
_BACK_CUM = list(accumulate((0.50, 0.25, 0.12, 0.13)))


def _draw_pill(rng: random.Random, pill_id: int) -> Pill:
    shape = _weighted(rng, SHAPES, _SHAPE_CUM)
    (lo, hi), (rlo, rhi), thick = _SIZES[shape]
    length = round(rng.uniform(lo, hi), 1)
    width = round(length * rng.uniform(rlo, rhi), 1)
    thickness = width if thick is None else round(rng.uniform(*thick), 1)

    first = _weighted(rng, COLOR_NAMES, _COLOR_CUM)
    colors = [_color(rng, first)]
    if shape == "two_tone_capsule":
        second = first
        while second == first:
            second = _weighted(rng, COLOR_NAMES, _COLOR_CUM)
        colors.append(_color(rng, second))

    score = "none"
    if shape in ("round", "oval", "oblong", "square"):
        score = _weighted(rng, SCORE_LINES, [0.65, 0.93, 1.0])
        if score == "cross" and shape not in ("round", "square"):
            score = "half"

    front = _code(rng, _weighted(rng, _FRONT_KINDS, _FRONT_CUM))
    # Scores are cut into the back face: a cross leaves no room for text, a half score only
    # for a short token on each side of it.
    if score == "cross":
        back = ""
    elif score == "half":
        back = _code(rng, "scored_pair" if rng.random() < 0.5 else "blank")
    else:
        back = _code(rng, _weighted(rng, _BACK_KINDS, _BACK_CUM))

    capsule = shape in CAPSULE_SHAPES
    style = "printed" if capsule or rng.random() < 0.25 else "debossed"
    coating = "glossy" if capsule or rng.random() < 0.35 else "matte"
    name = rng.choice(_NAME_HEADS) + rng.choice(_NAME_MIDS) + rng.choice(_NAME_TAILS)
    strength = rng.choice(_STRENGTHS_MG)
    return Pill(
        id=pill_id,
        name=f"{name} {strength:g} mg",
        shape=shape,
        size_mm=(length, width),
        thickness_mm=thickness,
        colors=tuple(colors),
        imprint_front=front,
        imprint_back=back,
        imprint_style=style,
        score_line=score,
        coating=coating,
    )


def make_catalog(
    num_pills: int,
    seed: int,
    id_offset: int = 0,
    exclude: Iterable[Pill] = (),
    distinct_sides: bool = False,
    exclude_faces: bool = False,
) -> list[Pill]:
    """Draw `num_pills` distinguishable pills with ids `id_offset + i`; same seed, same catalog.

    Pills whose key matches one in `exclude` are redrawn, so a public catalog can be made
    disjoint from the private one in whole-pill appearance as well as in ids; a face of one may
    still look like a face of an excluded pill, unless `exclude_faces`, which redraws those too.
    With `distinct_sides`, no face of one pill looks like a face of another (size aside): two
    white round pills may still differ only by imprint, but not both show a blank back, which no
    photo of that side could tell apart.
    """
    if num_pills < 0:
        raise CatalogError(f"num_pills must be >= 0, got {num_pills}")
    if id_offset < 0:
        raise CatalogError(f"id_offset must be >= 0, got {id_offset}")
    # Seeding with the offset too keeps a "public" catalog from copying the private one's pills.
    rng = random.Random(f"fedray-catalog:{seed}:{id_offset}")
    pills: list[Pill] = []
    exclude = list(exclude)
    seen: set[tuple] = {p.key() for p in exclude}
    faces: set[tuple] = set()
    banned = {k for p in exclude for k in p.side_keys()} if exclude_faces else set()
    max_redraws = 1000 + 100 * num_pills
    redraws = 0
    while len(pills) < num_pills:
        pill = _draw_pill(rng, id_offset + len(pills))
        key = pill.key()
        sides = set(pill.side_keys()) if distinct_sides else set()
        if (key in seen or (sides & faces) or len(sides) < (2 if distinct_sides else 0)
                or (banned and banned.intersection(pill.side_keys()))):
            redraws += 1
            if redraws > max_redraws:
                raise CatalogError(f"could not draw {num_pills} distinct pills (seed {seed})")
            continue
        seen.add(key)
        faces |= sides
        pills.append(pill)
    return pills


def save_catalog(pills: list[Pill], path: str | Path) -> None:
    """Write the pills to `path` (catalog.json), one entry per pill."""
    doc = {"format": CATALOG_FORMAT, "pills": [p.to_dict() for p in pills]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def load_catalog(path: str | Path) -> list[Pill]:
    """Read a catalog written by `save_catalog`; malformed files raise CatalogError naming them."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CatalogError(f"{path}: catalog file not found") from e
    except json.JSONDecodeError as e:
        raise CatalogError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        raise CatalogError(f"{path}: expected a dict with format={CATALOG_FORMAT!r}")
    entries = doc.get("pills")
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: 'pills' must be a list")
    pills = [Pill.from_dict(d, where=f"{path}: pills[{i}]") for i, d in enumerate(entries)]
    ids = [p.id for p in pills]
    if len(set(ids)) != len(ids):
        raise CatalogError(f"{path}: pill ids are not unique")
    return pills
