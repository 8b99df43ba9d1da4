"""Studio reference renderer: silhouettes, physical scale, imprints, determinism."""

import dataclasses

import numpy as np
import pytest

from fedray.pill.catalog import MAX_LENGTH_MM, SHAPES, Color, Pill, make_catalog
from fedray.pill.render import (
    BACKGROUND_RGB,
    default_px_per_mm,
    outline_mm,
    render_reference,
)

WHITE = Color("white", (246, 246, 242))


def _pill(**kw) -> Pill:
    base = Pill(
        id=7, name="Fenalorin 20 mg", shape="round", size_mm=(9.0, 9.0), thickness_mm=4.0,
        colors=(WHITE,), imprint_front="M 30", imprint_back="", imprint_style="debossed",
        score_line="none", coating="matte",
    )  # fmt: skip
    return dataclasses.replace(base, **kw)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_output_types_and_uniform_background():
    img, mask = render_reference(_pill(), "front", size_px=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert mask.shape == (128, 128) and mask.dtype == bool
    corner = img[:20, :20].reshape(-1, 3).astype(float)
    assert np.allclose(corner.mean(axis=0), BACKGROUND_RGB, atol=0.5)
    assert corner.std(axis=0).max() < 2.0
    assert not mask[:20, :20].any() and mask[64, 64]


def test_deterministic_for_same_seed_and_noise_varies_with_seed():
    pill = _pill(coating="glossy")
    a, ma = render_reference(pill, "front", size_px=128, seed=3)
    b, mb = render_reference(pill, "front", size_px=128, seed=3)
    c, mc = render_reference(pill, "front", size_px=128, seed=4)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c) and np.array_equal(ma, mc)
    assert np.abs(a.astype(int) - c.astype(int)).mean() < 2.0  # only sensor noise differs


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_area_matches_physical_outline(shape):
    length = 16.0 if "capsule" in shape else 10.0
    width = {"round": 10.0, "octagon": 10.0, "square": 10.0}.get(shape, 0.7 * length)
    if "capsule" in shape:
        width = 6.0
    colors = (WHITE, Color("red", (192, 48, 50))) if shape == "two_tone_capsule" else (WHITE,)
    pill = _pill(shape=shape, size_mm=(length, width), colors=colors)
    ppm = 8.0
    _, mask = render_reference(pill, "front", size_px=192, px_per_mm=ppm)
    expected = _polygon_area(outline_mm(pill)) * ppm**2
    assert mask.sum() == pytest.approx(expected, rel=0.02)
    ys, xs = np.nonzero(mask)
    assert xs.max() - xs.min() + 1 == pytest.approx(length * ppm, abs=1.5)
    assert ys.max() - ys.min() + 1 == pytest.approx(width * ppm, abs=1.5)


def test_shapes_differ():
    masks = {
        s: render_reference(_pill(shape=s, size_mm=(10.0, 8.7)), "front", size_px=128)[1]
        for s in ("oval", "hexagon", "triangle", "diamond", "oblong")
    }
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert _iou(masks[a], masks[b]) < 0.93, (a, b)


def test_sizes_scale_with_a_common_px_per_mm():
    small = render_reference(_pill(size_mm=(6.0, 6.0)), "front", size_px=128)[1].sum()
    large = render_reference(_pill(size_mm=(12.0, 12.0)), "front", size_px=128)[1].sum()
    assert large / small == pytest.approx(4.0, rel=0.03)
    ppm = default_px_per_mm(128)
    assert small == pytest.approx(np.pi * (3.0 * ppm) ** 2, rel=0.02)


def test_default_scale_fits_the_longest_pill_with_a_margin():
    pill = _pill(shape="capsule", size_mm=(MAX_LENGTH_MM, 8.0), imprint_style="printed")
    _, mask = render_reference(pill, "front", size_px=256)
    xs = np.nonzero(mask.any(axis=0))[0]
    assert xs.min() >= 10 and xs.max() <= 245


def test_front_and_back_differ_only_when_their_faces_differ():
    pill = _pill(imprint_front="M 30", imprint_back="")
    front, mask = render_reference(pill, "front", size_px=128)
    back, _ = render_reference(pill, "back", size_px=128)
    diff = np.abs(front.astype(int) - back.astype(int)).max(axis=2)
    assert (diff[mask] > 25).sum() > 30  # the imprint strokes

    # Glossy: no matte speckle, so identical faces differ by sensor noise alone.
    same = _pill(imprint_front="10", imprint_back="10", coating="glossy")
    f2, m2 = render_reference(same, "front", size_px=128)
    b2, _ = render_reference(same, "back", size_px=128)
    assert np.abs(f2.astype(int) - b2.astype(int)).max(axis=2)[m2].max() <= 10


def test_score_line_is_a_dark_groove_on_the_back():
    pill = _pill(imprint_front="", imprint_back="", score_line="half")
    front, mask = render_reference(pill, "front", size_px=128)
    back, _ = render_reference(pill, "back", size_px=128)
    centre_col = back[50:78, 64].astype(float).mean()
    assert centre_col < front[50:78, 64].astype(float).mean() - 15


@pytest.mark.parametrize("style", ["debossed", "printed"])
def test_imprint_is_visible_for_both_styles(style):
    blank, mask = render_reference(_pill(imprint_front="", imprint_style=style), "front", 128)
    text, _ = render_reference(_pill(imprint_front="88", imprint_style=style), "front", 128)
    diff = np.abs(blank.astype(int) - text.astype(int)).max(axis=2)
    assert (diff[mask] > 30).sum() > 20


def test_printed_ink_contrasts_with_dark_and_light_bodies():
    for rgb, darker in (((246, 246, 242), True), ((40, 40, 46), False)):
        pill = _pill(colors=(Color("c", rgb),), imprint_front="88", imprint_style="printed")
        img, mask = render_reference(pill, "front", 128)
        blank, _ = render_reference(dataclasses.replace(pill, imprint_front=""), "front", 128)
        delta = img.astype(int).sum(axis=2) - blank.astype(int).sum(axis=2)
        strongest = delta[mask][np.argmax(np.abs(delta[mask]))]
        assert (strongest < -150) if darker else (strongest > 150)


def test_two_tone_capsule_splits_colours_at_the_middle():
    red, blue = Color("red", (200, 40, 40)), Color("blue", (40, 60, 200))
    pill = _pill(shape="two_tone_capsule", size_mm=(18.0, 6.5), colors=(red, blue),
                 imprint_front="", imprint_style="printed")  # fmt: skip
    img, mask = render_reference(pill, "front", 128)
    left = img[:, :60][mask[:, :60]].astype(float).mean(axis=0)
    right = img[:, 68:][mask[:, 68:]].astype(float).mean(axis=0)
    assert left[0] > left[2] + 60 and right[2] > right[0] + 60


def test_glossy_coat_has_a_specular_highlight():
    blue = (Color("blue", (66, 108, 190)),)
    matte, mask = render_reference(_pill(colors=blue, imprint_front=""), "front", 128)
    shiny = _pill(colors=blue, imprint_front="", coating="glossy")
    glossy, _ = render_reference(shiny, "front", 128)
    # A near-white spot appears on the glossy coat only.
    assert int(glossy[mask].min(axis=1).max()) > int(matte[mask].min(axis=1).max()) + 60


def test_catalog_pills_render_with_plausible_masks():
    ppm = default_px_per_mm(96)
    for pill in make_catalog(40, seed=2):
        img, mask = render_reference(pill, "back", size_px=96)
        ratio = mask.sum() / (pill.size_mm[0] * pill.size_mm[1] * ppm**2)
        assert 0.45 < ratio < 1.05, (pill.shape, ratio)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="side"):
        render_reference(_pill(), "top")
    with pytest.raises(ValueError, match="size_px"):
        render_reference(_pill(), "front", size_px=64, px_per_mm=20.0)
    with pytest.raises(ValueError, match="seed"):
        render_reference(_pill(), "front", seed=-1)
