"""Reference segmentation: the gradient recipe recovers the renderer's ground truth."""

import cv2
import numpy as np
import pytest

from fedray.pill.catalog import COLOR_NAMES, SHAPES, make_catalog
from fedray.pill.render import BACKGROUND_RGB, render_reference
from fedray.pill.segment import SegmentationError, segment_reference


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def varied_pills():
    """~30 pills: the first of every shape, of every colour, white of every shape, the smallest."""
    pool = make_catalog(800, seed=11)
    chosen = {}
    for shape in SHAPES:
        chosen.setdefault(next(p.id for p in pool if p.shape == shape), None)
        white = (p.id for p in pool if p.shape == shape and p.colors[0].name == "white")
        chosen.setdefault(next(white), None)
    for colour in COLOR_NAMES:
        chosen.setdefault(next(p.id for p in pool if p.colors[0].name == colour), None)
    chosen.setdefault(min(pool, key=lambda p: p.size_mm[0] * p.size_mm[1]).id, None)
    by_id = {p.id: p for p in pool}
    return [by_id[i] for i in chosen]


def test_mask_matches_ground_truth_for_every_shape_and_colour(varied_pills):
    assert {p.shape for p in varied_pills} == set(SHAPES)
    assert {"white", "off-white", "gray", "light-blue"} <= {p.colors[0].name for p in varied_pills}
    ious = []
    for pill in varied_pills:
        for side in ("front", "back"):
            img, truth = render_reference(pill, side, size_px=256)
            _, mask = segment_reference(img)
            ious.append(_iou(mask, truth))
            assert ious[-1] >= 0.95, (pill.id, pill.shape, pill.colors[0].name, side, ious[-1])
    assert np.mean(ious) >= 0.98


def test_white_pills_on_grey_background():
    pool = make_catalog(400, seed=4)
    whites = [p for p in pool if p.colors[0].name == "white"][:8]
    for pill in whites:
        img, truth = render_reference(pill, "front", size_px=160)
        assert _iou(segment_reference(img)[1], truth) >= 0.95, pill


def test_independent_of_the_renderer_on_a_drawn_disc():
    # A 4x supersampled disc drawn with plain OpenCV on a different background.
    big = np.full((512, 512, 3), 150, np.uint8)
    cv2.circle(big, (260, 240), 120, (235, 235, 230), -1)
    cov = np.zeros((512, 512), np.float32)
    cv2.circle(cov, (260, 240), 120, 1.0, -1)
    img = cv2.resize(big, (128, 128), interpolation=cv2.INTER_AREA)
    truth = cv2.resize(cov, (128, 128), interpolation=cv2.INTER_AREA) >= 0.5
    _, mask = segment_reference(img)
    assert _iou(mask, truth) >= 0.97


def test_cutout_is_the_bounding_box_with_alpha_from_the_mask():
    pill = make_catalog(5, seed=2)[3]
    img, _ = render_reference(pill, "front", size_px=128)
    rgba, mask = segment_reference(img)
    ys, xs = np.nonzero(mask)
    assert rgba.shape == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, 4)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert np.array_equal(rgba[..., :3], img[crop])
    assert np.array_equal(rgba[..., 3], np.where(mask[crop], 255, 0))
    soft, soft_mask = segment_reference(img, feather_px=1.0)
    assert np.array_equal(soft_mask, mask)
    assert (soft[..., 3] <= rgba[..., 3]).all() and (soft[..., 3] < rgba[..., 3]).any()


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_blank_image_is_a_clear_error(noise):
    rng = np.random.default_rng(0)
    img = np.array(BACKGROUND_RGB, float) + noise * rng.standard_normal((96, 96, 3))
    with pytest.raises(SegmentationError, match="no foreground"):
        segment_reference(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def test_bad_input_is_a_clear_error():
    with pytest.raises(SegmentationError, match="uint8"):
        segment_reference(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(SegmentationError, match="shape"):
        segment_reference(np.zeros((64, 64), np.uint8))
