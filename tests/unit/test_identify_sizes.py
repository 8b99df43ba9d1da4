"""Pill sizes as evidence in one photo (fedray/pill/identify/sizes.py)."""

import numpy as np

from fedray.pill.catalog import Pill
from fedray.pill.identify.sizes import SizePrior
from fedray.pill.render import outline_mm


def _pill(shape, length, width):
    return Pill(id=0, name="p", shape=shape, size_mm=(length, width), thickness_mm=4.0,
                colors=(), imprint_front="", imprint_back="", imprint_style="debossed",
                score_line="none", coating="matte")



def _prior():
    outlines = [outline_mm(_pill("round", 6.5, 6.5)), outline_mm(_pill("round", 11.2, 11.2)),
                outline_mm(_pill("oblong", 16.5, 7.9))]
    return SizePrior.from_outlines(outlines), outlines


def _box(outline, scale, deg, at=(0.0, 0.0)):
    t = np.deg2rad(deg)
    x = outline[:, 0] * np.cos(t) - outline[:, 1] * np.sin(t)
    y = outline[:, 0] * np.sin(t) + outline[:, 1] * np.cos(t)
    return [at[0] + scale * x.min(), at[1] + scale * y.min(),
            at[0] + scale * x.max(), at[1] + scale * y.max()]


def test_the_scale_of_a_rotated_pill_is_read_back_from_its_box():
    prior, outlines = _prior()
    boxes = np.array([_box(outlines[2], 9.0, deg) for deg in (0, 20, 45, 70, 90)])
    log_box = np.log(boxes[:, 2:] - boxes[:, :2])
    np.testing.assert_allclose(np.exp(prior.scales(log_box, np.full(5, 2))), 9.0, rtol=0.03)
    # at that scale the oblong fits its boxes, the round pills do not
    d = prior.misfit(log_box, np.full(5, np.log(9.0)))
    assert (d[:, 2] < 0.03).all() and (d[:, :2] > 0.3).all()


def test_sure_pills_set_the_scale_that_names_an_ambiguous_one():
    prior, outlines = _prior()
    sure = [_box(outlines[2], 10.0, 30), _box(outlines[2], 10.0, 80, (300, 0)),
            _box(outlines[1], 10.0, 0, (300, 300))]
    small = _box(outlines[0], 10.0, 0, (0, 300))
    probs = np.array([[0.01, 0.01, 0.98], [0.01, 0.02, 0.97], [0.02, 0.96, 0.02],
                      [0.40, 0.55, 0.05]], np.float32)
    out, scale = prior.reweigh(np.array(sure + [small]), probs, threshold=0.9)
    assert abs(scale - 10.0) < 0.3
    assert out[3].argmax() == 0 and out[3, 0] > 0.95  # 65 px at 10 px/mm: the 6.5 mm pill
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)
    # the sure ones keep their reading (each has 2 other sure boxes: under the minimum of
    # references, so not weighed at all)
    np.testing.assert_allclose(out[:3], probs[:3])
    # at a scale where 65 px is an 11.2 mm pill, the same box reads as the larger one
    big = [_box(outlines[2], 5.8, 30), _box(outlines[2], 5.8, 80, (300, 0)),
           _box(outlines[1], 5.8, 0, (300, 300))]
    out, _ = prior.reweigh(np.array(big + [small]), probs, threshold=0.9)
    assert out[3].argmax() == 1


def test_too_few_sure_pills_weigh_nothing():
    prior, outlines = _prior()
    boxes = np.array([_box(outlines[2], 10.0, 0), _box(outlines[2], 10.0, 90, (300, 0)),
                      _box(outlines[0], 10.0, 0, (0, 300))])
    probs = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.4, 0.6, 0.0]], np.float32)
    out, scale = prior.reweigh(boxes, probs, threshold=0.9)
    assert scale is None and out is probs
    out, scale = prior.reweigh(np.zeros((0, 4)), np.zeros((0, 3), np.float32), threshold=0.9)
    assert scale is None and out.shape == (0, 3)


def test_identify_names_a_box_by_its_size_among_sure_pills():
    import dataclasses

    from fedray.pill.identify.classifier import Classifier
    from fedray.pill.identify.pipeline import identify

    small, large = (outline_mm(_pill("round", d, d)) for d in (6.5, 11.2))
    probs = np.array([[0.02, 0.98]] * 3 + [[0.6, 0.4]], np.float32)

    class Fixed(Classifier):  # the crops' reading, fixed: three sure "large", one unsure box
        def scores(self, crops, batch=64):
            return probs[:len(crops)], np.full(len(crops), 10.0, np.float32)

    boxes = np.array([_box(large, 10.0, 0, (60 + 130 * i, 60)) for i in range(4)], np.float32)
    clf = Fixed(None, ["small", "large"], 16, "", threshold=0.5,
                sizes=SizePrior.from_outlines([small, large]))
    rgb = np.zeros((240, 640, 3), np.uint8)
    answer = identify(rgb, lambda _: (boxes, np.ones(4, np.float32)), clf)
    assert [f.name for f in answer.found] == ["large"] * 4  # 112 px at 10 px/mm: 11.2 mm
    assert abs(answer.px_per_mm - 10.0) < 0.3
    plain = identify(rgb, lambda _: (boxes, np.ones(4, np.float32)),
                     dataclasses.replace(clf, sizes=None))
    assert [f.name for f in plain.found] == ["large"] * 3 + ["small"] and plain.px_per_mm is None


def _five():
    outlines = [outline_mm(_pill("round", 6.5, 6.5)), outline_mm(_pill("round", 11.2, 11.2)),
                outline_mm(_pill("oblong", 16.5, 7.9)), outline_mm(_pill("oblong", 13.9, 5.9)),
                outline_mm(_pill("round", 8.5, 8.5))]
    return SizePrior.from_outlines(outlines), outlines


def _sure(classes, k=5, p=0.99):
    probs = np.full((len(classes), k), (1 - p) / (k - 1), np.float32)
    probs[np.arange(len(classes)), classes] = p
    return probs


def test_a_pill_like_motif_casts_one_vote_and_is_found():
    prior, outlines = _five()
    pills = [_box(outlines[c], 10.0, 30 * c, (150 * c, 0)) for c in (0, 2, 3, 4)]
    # a carpet's lattice of 6 rounded squares, 60 px, read as the 11.2 mm pill (112 px here)
    motif = [[150 * i, 300, 150 * i + 60, 360] for i in range(6)]
    boxes = np.array(pills + motif, np.float64)
    probs = _sure([0, 2, 3, 4] + [1] * 6)
    out, scale = prior.reweigh(boxes, probs, threshold=0.9)
    assert abs(scale - 10.0) < 0.5  # 4 classes against one: the pills set the scale
    assert (out[:4].argmax(1) == [0, 2, 3, 4]).all()
    found = prior.motif(boxes, probs, threshold=0.9)
    assert found.tolist() == [False] * 4 + [True] * 6
    # the same six boxes, each the size the 11.2 mm pill has at 10 px/mm: pills, not a motif
    big = [[150 * i, 300, 150 * i + 112, 412] for i in range(6)]
    assert not prior.motif(np.array(pills + big, np.float64), probs, threshold=0.9).any()
    # a box alone, or copies overlapping one another (pieces of one pill), are no motif
    assert not prior.motif(np.array(pills + motif[:1], np.float64), probs[:5], 0.9).any()
    touching = [[300, 300, 360, 360], [330, 300, 390, 360]]
    assert not prior.motif(np.array(pills + touching, np.float64), probs[:6], 0.9).any()
    # too few other classes to set a scale: nothing is called a motif
    one_other = np.array(pills[:1] + motif, np.float64)
    assert not prior.motif(one_other, _sure([0] + [1] * 6), threshold=0.9).any()


def test_a_size_tips_an_unsure_reading_but_never_overturns_a_sure_one():
    prior, outlines = _five()
    pills = [_box(outlines[c], 10.0, 0, (150 * c, 0)) for c in (2, 3, 4)]
    # 112 px: the 11.2 mm pill's size; read surely as the 6.5 mm pill, or unsure between them
    odd = [0, 300, 112, 412]
    boxes = np.array(pills + [odd], np.float64)
    sure = _sure([2, 3, 4, 0], p=0.999)
    out, _ = prior.reweigh(boxes, sure, threshold=0.9)
    assert out[3].argmax() == 0  # no outline fits 6.5 mm at 112 px: the crop's reading stands
    unsure = sure.copy()
    unsure[3] = [0.55, 0.45, 0.0, 0.0, 0.0]
    out, _ = prior.reweigh(boxes, unsure, threshold=0.9)
    assert out[3].argmax() == 1 and out[3, 1] > 0.95


def test_a_tilted_camera_reads_each_pill_at_the_scale_around_it(monkeypatch):
    import fedray.pill.identify.sizes as sizes

    prior, outlines = _five()
    # the far (top) edge of the table at 7 px/mm, the near (bottom) one at 12 px/mm
    far = [_box(outlines[c], 7.0, 0, (100 + 150 * k, 60)) for k, c in enumerate((2, 3, 4))]
    near = [_box(outlines[c], 12.0, 0, (350 + 120 * k, 560)) for k, c in enumerate((2, 3))]
    # near the bottom: the 6.5 mm pill at 12 px/mm (78 px), unsure between it and the 8.5 mm one
    odd = _box(outlines[0], 12.0, 0, (600, 560))
    boxes = np.array(far + near + [odd], np.float64)
    probs = np.concatenate([_sure([2, 3, 4, 2, 3]), [[0.5, 0.0, 0.0, 0.0, 0.5]]]).astype(
        np.float32)
    out, _ = prior.reweigh(boxes, probs, threshold=0.9, side=640)
    assert out[5].argmax() == 0 and out[5, 0] > 0.9
    # read at one scale for the whole photo (the far pills' 7 px/mm), 78 px is the 8.5 mm pill
    monkeypatch.setattr(sizes, "REACH", 1e6)
    out, _ = prior.reweigh(boxes, probs, threshold=0.9, side=640)
    assert out[5].argmax() == 4
