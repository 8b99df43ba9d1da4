"""Scene compositor: boxes from placed alpha, determinism, Cython == NumPy, torch ~ NumPy."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fedray.pill import compose as C
from fedray.pill import compose_plan as P
from fedray.pill.compose_types import ComposeError, ComposeParams, ScenePlan
from fedray.pill.crops import crop_boxes

SIZE = 96
HAS_KERNEL = C._ckernel is not None
needs_kernel = pytest.mark.skipif(not HAS_KERNEL, reason="Cython kernel not built")


def _pill(h: int, w: int, colour: tuple[int, int, int], label: str = "") -> np.ndarray:
    """Stand-in cut-out: an anti-aliased, shaded ellipse with an imprint, cropped RGBA."""
    img = np.zeros((h, w, 4), np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, (*colour, 255), -1,
                cv2.LINE_AA)
    if label:
        cv2.putText(img, label, (w // 4, h // 2 + 3), cv2.FONT_HERSHEY_PLAIN, 0.7,
                    (20, 20, 20, 255), 1)
    return img


@pytest.fixture(scope="module")
def cutouts() -> list[np.ndarray]:
    return [_pill(16, 28, (230, 230, 235), "A"), _pill(20, 20, (240, 120, 60), "7"),
            _pill(12, 30, (90, 160, 230)), _pill(18, 24, (200, 60, 160), "X")]


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 1.5)


def _params(**kw) -> ComposeParams:
    # a ~12 mm field of view keeps 2-3 mm stand-in pills 20-30 px wide in a 96 px scene
    base = {"fov_mm": (10.0, 14.0), "cutout_px_per_mm": 10.0, "max_pills": 6}
    return ComposeParams(**{**base, **kw})


def _plan(background, cutouts, seed, k=None, **kw) -> ScenePlan:
    rng = np.random.default_rng(seed)
    chosen = cutouts[: k or 1 + seed % len(cutouts)]
    return P.plan_scene(background, chosen, rng, _params(**kw), SIZE)


def _pixel_box(box: np.ndarray) -> tuple[int, int, int, int]:
    cx, cy, w, h = (float(v) * SIZE for v in box)
    return (int(round(cx - w / 2)), int(round(cy - h / 2)), int(round(cx + w / 2)),
            int(round(cy + h / 2)))


def _placed_alpha(plan: ScenePlan, i: int) -> np.ndarray:
    """The pill's alpha as placed, recomputed independently with OpenCV: (S, S) float in 0..1."""
    alpha = plan.pills[i].cutout.premult[:, :, 3]
    return cv2.warpPerspective(alpha, plan.pills[i].hinv.astype(np.float64), (SIZE, SIZE),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ------------------------------------------------------------------------------- boxes


def test_box_is_exact_for_an_upright_rectangle(background):
    # scale 1, no rotation/perspective: a 10 x 20 opaque block stays 10 x 20 px at alpha >= 0.5
    block = np.zeros((10, 20, 4), np.uint8)
    block[:, :] = (200, 100, 50, 255)
    params = _params(fov_mm=(12.0, 12.0), cutout_px_per_mm=8.0, rotation_deg=(0.0, 0.0),
                     perspective=0.0, pill_scale=(1.0, 1.0))
    for seed in range(5):
        plan = P.plan_scene(background, [block], np.random.default_rng(seed), params, SIZE)
        boxes = C.render_plan(plan, backend="numpy").boxes
        assert boxes.shape == (1, 4) and boxes.dtype == np.float32
        assert boxes[0, 2] * SIZE == pytest.approx(20.0)
        assert boxes[0, 3] * SIZE == pytest.approx(10.0)


def test_identity_plan_keeps_colours_exactly(background):
    block = np.zeros((10, 20, 4), np.uint8)
    block[:, :] = (200, 100, 50, 255)
    neutral = {"rotation_deg": (0.0, 0.0), "perspective": 0.0, "pill_scale": (1.0, 1.0),
               "brightness": (0.0, 0.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0),
               "hue_deg": (0.0, 0.0), "pill_white_balance": 0.0, "shadow_prob": 0.0,
               "light_gain": (1.0, 1.0), "light_gradient": 0.0, "vignette": (0.0, 0.0),
               "white_balance": 0.0, "blur_prob": 0.0, "noise_prob": 0.0, "jpeg_prob": 0.0}
    params = _params(fov_mm=(12.0, 12.0), cutout_px_per_mm=8.0, **neutral)
    plan = P.plan_scene(background, [block], np.random.default_rng(1), params, SIZE)
    r = C.render_plan(plan, backend="numpy")
    x0, y0, x1, y1 = _pixel_box(r.boxes[0])
    assert np.array_equal(r.image[y0 + 1:y1 - 1, x0 + 1:x1 - 1],
                          np.broadcast_to(np.array([200, 100, 50], np.uint8),
                                          (y1 - y0 - 2, x1 - x0 - 2, 3)))
    untouched = np.ones((SIZE, SIZE), bool)
    untouched[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = False
    assert np.array_equal(r.image[untouched], C.warp_background(plan)[untouched])


def test_boxes_hold_the_visible_placed_alpha(background, cutouts):
    for seed in range(12):
        plan = _plan(background, cutouts, seed, k=4, max_overlap=0.3)
        r = C.render_plan(plan, backend="numpy")
        alphas = [_placed_alpha(plan, i) for i in range(len(plan.pills))]
        for i, box in enumerate(r.boxes):
            visible = alphas[i] >= 0.5
            for later in alphas[i + 1:]:
                visible &= later < 0.5
            ys, xs = np.nonzero(visible)
            assert len(xs) > 0, f"seed {seed}: pill {i} is not visible"
            x0, y0, x1, y1 = _pixel_box(box)
            # OpenCV's 1/32-px fixed point may move a pixel sitting at alpha ~ 0.5: allow 1 px
            assert x0 - 1 <= xs.min() and xs.max() < x1 + 1, (seed, i)
            assert y0 - 1 <= ys.min() and ys.max() < y1 + 1, (seed, i)
            assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1, (seed, i)
            assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1, (seed, i)


def test_boxes_are_the_tight_extent_of_the_label_map(background, cutouts):
    for seed in range(6):
        r = C.render_plan(_plan(background, cutouts, seed, k=4), backend="numpy")
        for i, box in enumerate(r.boxes):
            ys, xs = np.nonzero(r.labels == i)
            assert _pixel_box(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert np.all((r.boxes >= 0) & (r.boxes <= 1))


def test_occluded_pill_gets_the_box_of_its_visible_part(background):
    block = np.zeros((10, 20, 4), np.uint8)
    block[:, :] = (200, 100, 50, 255)
    params = _params(fov_mm=(12.0, 12.0), cutout_px_per_mm=8.0, rotation_deg=(0.0, 0.0),
                     perspective=0.0, pill_scale=(1.0, 1.0), shadow_prob=0.0)
    plan = P.plan_scene(background, [block, block], np.random.default_rng(5), params, SIZE)
    first, second = plan.pills
    # put the second copy 10 px right of the first: it hides the first one's right half
    shift = np.array([[1, 0, -10], [0, 1, 0], [0, 0, 1]], np.float32)
    second.hinv = (first.hinv @ shift).astype(np.float32)
    x0, y0, x1, y1 = first.region
    second.region = (min(x0 + 10, SIZE), y0, min(x1 + 10, SIZE), y1)
    r = C.render_plan(plan, backend="numpy")
    # only the uncovered half is left; +1 px where a partly covered edge row dims the second
    # copy's left column below alpha 0.5 but not the first's
    assert 10.0 <= r.boxes[0, 2] * SIZE <= 11.0
    assert r.boxes[0, 3] * SIZE == pytest.approx(10.0)
    if x1 + 10 <= SIZE:
        assert r.boxes[1, 2] * SIZE == pytest.approx(20.0)
    a0, a1 = _placed_alpha(plan, 0), _placed_alpha(plan, 1)
    ys, xs = np.nonzero((a0 >= 0.5) & (a1 < 0.5))
    bx0, by0, bx1, by1 = _pixel_box(r.boxes[0])
    assert abs(bx0 - xs.min()) <= 1 and abs(bx1 - (xs.max() + 1)) <= 1


def test_every_pill_is_placed_and_visible(background, cutouts):
    for seed in range(20):
        r = C.render_plan(_plan(background, cutouts, seed, k=4, perspective=0.15),
                          backend="numpy")
        assert np.all(r.boxes[:, 2:] * SIZE >= 4), f"seed {seed}: {r.boxes}"


def test_a_tilted_table_keeps_pills_in_frame_and_shrinks_the_far_ones(background):
    one = [_pill(20, 20, (240, 120, 60))]
    flat_plan = _plan(background, one, 0, k=1)
    assert flat_plan.plane is None and _params().tilt == 0.0
    far, near = [], []
    for seed in range(30):
        plan = _plan(background, one, seed, k=1, tilt=0.4, perspective=0.0,
                     pill_scale=(1.0, 1.0), fov_mm=(12.0, 12.0))
        r = C.render_plan(plan, backend="numpy")
        (cx, cy, w, h), = r.boxes
        assert plan.plane is not None
        assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1
        # the boxes stay the tight extent of what is drawn
        ys, xs = np.nonzero(r.labels == 0)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == _pixel_box(r.boxes[0])
        # which edge is far: the one the table's corners were pulled in from
        table = np.array([[0, 0], [SIZE, 0], [SIZE, SIZE], [0, SIZE]], np.float64)
        shown = P._project(plan.plane, table)
        inset = np.abs(shown - table).sum(1)
        far_edge = np.argsort(-inset)[:2]
        centre = np.array([cx, cy]) * SIZE
        d_far = np.linalg.norm(shown[far_edge].mean(0) - centre)
        d_near = np.linalg.norm(shown[np.argsort(inset)[:2]].mean(0) - centre)
        (far if d_far < d_near else near).append(w * h)
    # the same pill at the same field of view looks smaller on the far half of the table
    assert far and near and np.mean(far) < np.mean(near)
    with pytest.raises(ComposeError, match="tilt"):
        _params(tilt=0.6)


# ------------------------------------------------------------------------ determinism


def test_same_seed_same_scene(background, cutouts):
    params = _params()
    a = C.compose_scene(background, cutouts[:3], np.random.default_rng(7), params, SIZE)
    b = C.compose_scene(background, cutouts[:3], np.random.default_rng(7), params, SIZE)
    c = C.compose_scene(background, cutouts[:3], np.random.default_rng(8), params, SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (SIZE, SIZE, 3) and a[0].dtype == np.uint8 and a[1].shape == (3, 4)


# ------------------------------------------------------------------- renderers agree


@needs_kernel
@pytest.mark.parametrize("extras", [
    {"blur_prob": 0.0, "noise_prob": 1.0, "jpeg_prob": 0.0},  # noise fused into the kernel
    {"blur_prob": 1.0, "noise_prob": 1.0, "jpeg_prob": 1.0},  # blur, then the separate pass
    {"perspective": 0.25, "shadow_prob": 1.0, "max_overlap": 0.6, "noise_prob": 0.0},
    {"tilt": 0.3, "shadow_prob": 1.0, "noise_prob": 0.0},  # a tilted table
])
def test_cython_equals_numpy_bit_for_bit(background, cutouts, extras):
    for seed in range(6):
        plan = _plan(background, cutouts * 2, seed, k=1 + seed, **extras)
        ref = C.render_plan(plan, backend="numpy")
        for threads in (1, 2):
            got = C.render_plan(plan, backend="cython", num_threads=threads)
            assert np.array_equal(got.image, ref.image), (seed, threads)
            assert np.array_equal(got.labels, ref.labels)
            assert np.array_equal(got.boxes, ref.boxes)


@needs_kernel
def test_render_batch_matches_one_by_one(background, cutouts):
    plans = [_plan(background, cutouts, s) for s in range(4)]
    batch = C.render_batch(plans, backend="cython", num_threads=2)
    for plan, got in zip(plans, batch, strict=True):
        assert np.array_equal(got.image, C.render_plan(plan, backend="cython").image)


def assert_torch_close_to_numpy(background, cutouts, device: str) -> None:
    """The torch renderer on `device` against the NumPy one, on six plans (blur, JPEG or not)."""
    from fedray.pill.compose_torch import render_plans

    plans = [_plan(background, cutouts, s, blur_prob=0.5, jpeg_prob=float(s % 2))
             for s in range(6)]
    for plan, got in zip(plans, render_plans(plans, device=device), strict=True):
        ref = C.render_plan(plan, backend="numpy")
        diff = np.abs(got.image.astype(int) - ref.image.astype(int))
        # grid_sample rounds differently: a grey level at most; JPEG may spread that a little
        tol_max, tol_mean = (12, 0.3) if plan.jpeg_quality else (1, 0.02)
        assert diff.max() <= tol_max and diff.mean() <= tol_mean, (plan.jpeg_quality, diff.max())
        assert np.array_equal(got.labels, ref.labels)
        assert np.array_equal(got.boxes, ref.boxes)


def test_torch_cpu_is_close_to_numpy(background, cutouts):
    pytest.importorskip("torch")
    assert_torch_close_to_numpy(background, cutouts, "cpu")


def test_noise_hash_matches_reference_and_torch():
    def lowbias32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    index = np.array([0, 1, 2, 12345, 2**31, 2**32 - 1], np.uint32)
    expected = [lowbias32(int(i) ^ 99) for i in index]
    assert C.noise_hash(index, 99).tolist() == expected
    torch = pytest.importorskip("torch")
    from fedray.pill.compose_torch import noise_hash_torch

    assert noise_hash_torch(torch.from_numpy(index.astype(np.int64)), 99).tolist() == expected


def test_noise_has_the_planned_sigma_and_no_pattern():
    light = np.array([1, 0, 0, 0, 1, 1, 1, 16.0, 0.0, P.NOISE_INV_STD], np.float32)  # sigma 4
    noisy = C._noise_numpy(np.full((96, 96, 3), 128, np.uint8), 1234, light).astype(float) - 128
    assert abs(noisy.mean()) < 0.1
    assert noisy.std() == pytest.approx(4.0, rel=0.05)
    right = np.corrcoef(noisy[:, :-1].ravel(), noisy[:, 1:].ravel())[0, 1]
    channel = np.corrcoef(noisy[..., 0].ravel(), noisy[..., 1].ravel())[0, 1]
    assert abs(right) < 0.05 and abs(channel) < 0.05


# ------------------------------------------------------------------------ crops, errors


def test_crop_boxes_centres_and_pads():
    scene = np.zeros((100, 100, 3), np.uint8)
    scene[40:60, 20:40] = (255, 0, 0)
    boxes = np.array([[0.30, 0.50, 0.20, 0.20], [0.02, 0.02, 0.1, 0.1], [0.5, 0.5, 0.0, 0.0]],
                     np.float32)
    crops = crop_boxes(scene, boxes, crop_size=24, pad=0.1)
    assert crops.shape == (3, 24, 24, 3) and crops.dtype == np.uint8
    assert np.array_equal(crops[0, 4:20, 4:20], np.full((16, 16, 3), (255, 0, 0), np.uint8))
    assert crops[0, 0, 0].tolist() == [0, 0, 0]  # the 10% pad shows the surroundings
    assert not crops[2].any()  # an empty box gives an empty crop


def test_bad_inputs_name_the_culprit(background, cutouts):
    rng = np.random.default_rng(0)
    with pytest.raises(ComposeError, match="cut-out 1"):
        P.plan_scene(background, [cutouts[0], cutouts[1][:, :, :3]], rng, _params(), SIZE)
    with pytest.raises(ComposeError, match="cut-out 0: no pixel"):
        P.plan_scene(background, [np.zeros((8, 8, 4), np.uint8)], rng, _params(), SIZE)
    with pytest.raises(ComposeError, match="max_pills=2"):
        P.plan_scene(background, cutouts[:3], rng, _params(max_pills=2), SIZE)
    with pytest.raises(ComposeError, match="background"):
        P.plan_scene(background[:, :, 0], cutouts[:1], rng, _params(), SIZE)
    with pytest.raises(ComposeError, match="rotation_deg"):
        ComposeParams(rotation_deg=(10.0, -10.0))
    with pytest.raises(ComposeError, match="jpeg_prob"):
        ComposeParams(jpeg_prob=1.5)
    with pytest.raises(ComposeError, match="sparkle"):
        ComposeParams.from_dict({"sparkle": 1})
    assert ComposeParams.from_dict({"rotation_deg": [-5, 5]}).rotation_deg == (-5.0, 5.0)
    with pytest.raises(ComposeError, match="backend"):
        C.render_plan(_plan(background, cutouts, 0), backend="fortran")


def _backend_in_subprocess(no_cython: str, block_kernel: bool = False) -> (
        subprocess.CompletedProcess):
    env = {**os.environ, "FEDRAY_NO_CYTHON": no_cython}
    block = "import sys; sys.modules['fedray.pill._compose'] = None; " if block_kernel else ""
    code = block + "from fedray.pill import compose; print(compose.BACKEND)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_one_switch_forces_numpy():
    forced = _backend_in_subprocess("1")
    assert forced.returncode == 0 and forced.stdout.strip() == "numpy"
    if not os.environ.get("FEDRAY_NO_CYTHON"):
        assert C.BACKEND == ("cython" if HAS_KERNEL else "numpy")


def test_missing_kernel_falls_back_to_numpy():
    fallback = _backend_in_subprocess("", block_kernel=True)
    assert fallback.returncode == 0 and fallback.stdout.strip() == "numpy"
