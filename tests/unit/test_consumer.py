"""Consumer photos: size classes, centre crop, pill centring, augmentation, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.pill import consumer
from fedray.pill.catalog import Color, Pill
from fedray.pill.compose import render_plan
from fedray.pill.compose_plan import plan_scene
from fedray.pill.compose_types import ComposeError, ComposeParams, prepare_cutout
from fedray.pill.render import default_px_per_mm, render_reference
from fedray.pill.segment import segment_reference

RED = (200, 40, 40)


def _pill(length: float = 12.0, rgb: tuple[int, int, int] = RED) -> Pill:
    return Pill(id=7, name="Testol 5 mg", shape="round", size_mm=(length, length),
                thickness_mm=4.0, colors=(Color("red", rgb),), imprint_front="", imprint_back="",
                imprint_style="debossed", score_line="none", coating="matte")


@pytest.fixture(scope="module")
def red_cutout():
    img, _ = render_reference(_pill(), "front", 256, seed=0)
    return prepare_cutout(segment_reference(img)[0])


@pytest.fixture(scope="module")
def grey_background() -> np.ndarray:
    return np.full((128, 128, 3), 128, np.uint8)


@pytest.mark.parametrize(("length", "expected"), [
    (5.0, "S"), (7.99, "S"), (8.0, "M"), (13.9, "M"), (14.0, "L"), (23.0, "L"),
])
def test_size_class_thresholds(length, expected):
    assert consumer.size_class(length) == expected


def test_centre_crop_takes_the_exact_middle():
    photo = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    out = consumer.centre_crop(photo, 0.5, 50)
    np.testing.assert_array_equal(out, photo[25:75, 25:75])
    assert consumer.centre_crop(photo, 0.3, 16).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="fraction"):
        consumer.centre_crop(photo, 0.0, 16)


def test_photo_size_never_upsamples_the_smallest_crop():
    assert consumer.photo_size(64) == consumer.PHOTO_MIN_SIZE
    big = consumer.photo_size(224)
    assert big * min(consumer.CROP_FRACTION.values()) >= 224


def test_centre_pill_moves_the_rendered_pill_to_the_target(red_cutout, grey_background):
    params = consumer.consumer_params(default_px_per_mm(256), {
        "perspective": 0.0, "shadow_prob": 0.0, "blur_prob": 0.0, "noise_prob": 0.0,
        "jpeg_prob": 0.0})
    plan = plan_scene(grey_background, [red_cutout], np.random.default_rng(3), params, 200)
    before = render_plan(plan, num_threads=1).boxes[0]
    moved = consumer.centre_pill(plan, (70.0, 120.0))
    after = render_plan(moved, num_threads=1).boxes[0]
    # a round pill without perspective: its box centre is its centre, now on the target
    np.testing.assert_allclose(after[2:], before[2:], atol=1.5 / 200)
    np.testing.assert_allclose(after[:2] * 200, (70.5, 120.5), atol=1.0)


def test_centre_pill_moves_pill_and_shadow_together(red_cutout, grey_background):
    params = consumer.consumer_params(default_px_per_mm(256), {
        "shadow_prob": 1.0, "blur_prob": 0.0, "noise_prob": 0.0, "jpeg_prob": 0.0,
        "light_gradient": 0.0, "vignette": (0.0, 0.0)})
    plan = plan_scene(grey_background, [red_cutout], np.random.default_rng(5), params, 160)
    h, w = red_cutout.premult.shape[:2]
    c = np.linalg.inv(plan.pills[0].hinv.astype(np.float64)) @ ((w - 1) / 2, (h - 1) / 2, 1.0)
    cx, cy = c[:2] / c[2]
    dx, dy = (-9 if cx > 80 else 9), (7 if cy < 80 else -7)
    moved = consumer.centre_pill(plan, (cx + dx, cy + dy))
    before = render_plan(plan, num_threads=1).image.astype(int)
    after = render_plan(moved, num_threads=1).image.astype(int)
    # on a uniform, evenly lit background an integer move is a pure shift of every pixel
    shifted = np.roll(before, (dy, dx), axis=(0, 1))[12:-12, 12:-12]
    assert np.abs(after[12:-12, 12:-12] - shifted).max() <= 1
    assert np.abs(after - before).max() > 50  # the pill did move


def test_centre_pill_needs_a_one_pill_plan(red_cutout, grey_background):
    params = ComposeParams(max_pills=2, cutout_px_per_mm=default_px_per_mm(256))
    plan = plan_scene(grey_background, [red_cutout, red_cutout], np.random.default_rng(0),
                      params, 100)
    with pytest.raises(ValueError, match="one-pill"):
        consumer.centre_pill(plan, (50.0, 50.0))


def test_consumer_crops_are_centred_on_the_pill(red_cutout, grey_background):
    params = consumer.consumer_params(default_px_per_mm(256))
    crops, iou = consumer.consumer_crops(red_cutout, 12.0, grey_background, 8, 64,
                                         np.random.default_rng(0), params,
                                         consumer.consumer_augmenter(0))
    assert np.isnan(iou)  # the size-class recipe cuts no box
    assert crops.shape == (8, 64, 64, 3) and crops.dtype == np.uint8
    f = crops.astype(np.float64)
    centre = f[:, 24:40, 24:40].reshape(8, -1, 3).mean(axis=1)
    border = np.concatenate([f[:, :4].reshape(8, -1, 3), f[:, -4:].reshape(8, -1, 3)], 1).mean(1)
    red_share = centre[:, 0] / centre.sum(axis=1)
    # the pill is 200/280 = 0.71 red; the grey background 1/3, whatever lighting does to both
    assert (red_share > 0.5).all(), red_share
    assert (border[:, 0] / border.sum(axis=1) < 0.45).all()


def test_consumer_crops_are_deterministic(red_cutout, grey_background):
    params = consumer.consumer_params(default_px_per_mm(256))

    def make(seed: int) -> np.ndarray:
        return consumer.consumer_crops(red_cutout, 12.0, grey_background, 3, 32,
                                       np.random.default_rng(seed), params,
                                       consumer.consumer_augmenter(seed))[0]

    np.testing.assert_array_equal(make(1), make(1))
    assert not np.array_equal(make(1), make(2))


def _red_share(crop: np.ndarray) -> float:
    f = crop.astype(np.float64).reshape(-1, 3).mean(0)
    return float(f[0] / f.sum())


def test_photo_box_is_the_pill_and_each_crop_way_cuts_around_it(red_cutout, grey_background):
    params = consumer.consumer_params(default_px_per_mm(256), {"perspective": 0.0})
    photo, box = consumer.simulate_photo_box(red_cutout, grey_background,
                                             np.random.default_rng(3), params, 256)
    cx, cy, w, h = box
    x0, x1 = int((cx - w / 2) * 256) + 2, int((cx + w / 2) * 256) - 2
    y0, y1 = int((cy - h / 2) * 256) + 2, int((cy + h / 2) * 256) - 2
    assert _red_share(photo[y0:y1, x0:x1]) > 0.5  # the true box holds the red pill

    truth, iou = consumer.photo_crop(photo, box, 12.0, 48, "truth")
    assert truth.shape == (48, 48, 3) and iou == 1.0
    # a detector that finds the pill a little off and a weaker box elsewhere: its best box is cut
    px = np.array([(cx - w / 2) * 256 + 3, (cy - h / 2) * 256, (cx + w / 2) * 256 + 3,
                   (cy + h / 2) * 256])
    stray = np.array([0.0, 0.0, 20.0, 20.0])
    found, iou = consumer.photo_crop(photo, box, 12.0, 48, "detector",
                                     lambda rgb: (np.stack([stray, px]), np.array([0.3, 0.9])))
    want = (w * 256 - 3) * h * 256 / ((w * 256 + 3) * h * 256)
    assert iou == pytest.approx(want, rel=1e-3)
    assert _red_share(found) > 0.45 and _red_share(truth) > 0.45
    # found nothing: the size-class centre crop, IoU 0
    none, iou = consumer.photo_crop(photo, box, 12.0, 48, "detector",
                                    lambda rgb: (np.zeros((0, 4)), np.zeros(0)))
    centre = consumer.centre_crop(photo, consumer.CROP_FRACTION["M"], 48)
    assert iou == 0.0 and np.array_equal(none, centre)
    with pytest.raises(ValueError, match="crop_with"):
        consumer.photo_crop(photo, box, 12.0, 48, "middle")
    with pytest.raises(ValueError, match="detect function"):
        consumer.photo_crop(photo, box, 12.0, 48, "detector")


def test_consumer_crops_reject_zero_count(red_cutout, grey_background):
    params = consumer.consumer_params(default_px_per_mm(256))
    with pytest.raises(ValueError, match="count"):
        consumer.consumer_crops(red_cutout, 12.0, grey_background, 0, 32,
                                np.random.default_rng(0), params, None)


def test_consumer_params_apply_overrides_and_reject_unknown_keys():
    params = consumer.consumer_params(9.5, {"blur_prob": 0.0, "fov_mm": [30, 40]})
    assert params.max_pills == 1 and params.cutout_px_per_mm == 9.5
    assert params.blur_prob == 0.0 and params.fov_mm == (30.0, 40.0)
    with pytest.raises(ComposeError, match="no_such_knob"):
        consumer.consumer_params(9.5, {"no_such_knob": 1})


def test_pick_backgrounds_prefers_palms_when_asked():
    families = ["fabric", "skin", "wood", "skin", "user"]
    rng = np.random.default_rng(0)
    assert set(consumer.pick_backgrounds(families, 50, rng, palm_share=1.0)) == {1, 3}
    anywhere = consumer.pick_backgrounds(families, 200, rng, palm_share=0.0)
    assert set(anywhere) == set(range(5))
    # no skin texture at all: any texture serves
    assert set(consumer.pick_backgrounds(["wood", "tiles"], 40, rng, palm_share=1.0)) == {0, 1}
