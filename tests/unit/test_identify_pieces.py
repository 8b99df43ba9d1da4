"""Pieces of one pill: joined when their union is named, dropped when inside a larger box."""

import numpy as np
import pytest

from fedray.pill.identify import pipeline
from fedray.pill.identify.classifier import Classifier
from fedray.pill.identify.pipeline import (
    FRAGMENT_COVER,
    Answer,
    iou_matrix,
    merge_pieces,
    name_boxes,
    photo_correct,
    pill_fragments,
)

W, H = 640, 480
PILLS = np.array([[100, 200, 300, 240], [450, 100, 480, 130]], float)  # an oblong, a small pill


class BoxFit(Classifier):
    """Names a crop as surely as its box fits one of PILLS: p = 0.3 + 0.7 IoU for the best pill
    (0.7 is the threshold: IoU >= 0.57 names it). The crops are the boxes themselves (below)."""

    def scores(self, crops, batch=64):
        iou = iou_matrix(np.asarray(crops, float).reshape(-1, 4), PILLS)
        probs = np.zeros((len(iou), 2), np.float32)
        for n, row in enumerate(iou):
            best = int(row.argmax())
            probs[n, best] = 0.3 + 0.7 * row[best]
            probs[n, 1 - best] = 1 - probs[n, best]
        return probs, np.full(len(iou), 10.0, np.float32)


@pytest.fixture
def clf(monkeypatch):
    def boxes_as_crops(rgb, yolo, size, pad):  # yolo (cx, cy, w, h) back to pixel xyxy
        cx, cy, bw, bh = np.asarray(yolo, float).reshape(-1, 4).T
        return np.stack([(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W,
                         (cy + bh / 2) * H], 1)

    monkeypatch.setattr(pipeline, "crop_boxes", boxes_as_crops)
    return BoxFit(None, ["oblong", "small"], 32, "", threshold=0.7, energy_floor=0.0)


def _merge(clf, boxes, scores):
    boxes = np.asarray(boxes, np.float32)
    probs, energy = clf.scores(boxes)
    rgb = np.zeros((H, W, 3), np.uint8)
    return merge_pieces(rgb, boxes, np.asarray(scores, np.float32), probs, energy, clf)


def test_two_pieces_of_one_pill_are_joined_into_its_box_and_named(clf):
    halves = [[98, 198, 215, 242], [185, 198, 302, 242], [448, 98, 482, 132]]
    assert (clf.scores(np.array(halves[:2]))[0].max(1) < clf.threshold).all()  # neither named
    boxes, scores, probs, energy = _merge(clf, halves, [0.7, 0.5, 0.9])
    assert len(boxes) == 2
    assert np.allclose(boxes[0], [98, 198, 302, 242]) and scores[0] == np.float32(0.7)
    found, dismissed, _ = name_boxes(boxes, scores, probs, energy, clf)
    assert sorted(f.name for f in found) == ["oblong", "small"] and dismissed == []
    assert photo_correct(Answer(found), PILLS, np.array([0, 1]))


def test_named_boxes_are_never_joined_and_a_union_no_surer_than_the_pill_is_refused(clf):
    # both named (touching or not): nothing to join
    assert len(_merge(clf, [[98, 198, 302, 242], [448, 98, 482, 132]], [0.9, 0.9])[0]) == 2
    # an unnamed box over the oblong's end and beyond: the union fits the oblong less well
    # than the oblong's own box, so the named box is not widened and the other box stays
    boxes = [[98, 198, 302, 242], [280, 195, 320, 245]]
    out = _merge(clf, boxes, [0.9, 0.4])
    assert len(out[0]) == 2 and np.allclose(out[0], boxes)
    # an unnamed box overlapping nothing: left alone
    assert len(_merge(clf, [[0, 0, 30, 30], [98, 198, 302, 242]], [0.4, 0.9])[0]) == 2


def test_an_unnamed_box_inside_a_larger_one_is_a_piece_and_a_named_one_is_a_pill():
    boxes = np.array([[0, 0, 100, 40], [10, 5, 50, 35], [60, 0, 100, 40], [200, 0, 240, 40]],
                     np.float32)
    named = np.array([True, False, True, False])
    assert pill_fragments(boxes, named).tolist() == [False, True, False, False]
    # a box sticking out of the larger one by more than 1 - FRAGMENT_COVER: not a piece
    edge = 40 * (1 - FRAGMENT_COVER) + 2
    boxes[1] = [100 - 40 + edge, 0, 100 + edge, 40]
    assert not pill_fragments(boxes, named)[1]
    # two unnamed boxes, one inside the other: the smaller goes
    both = np.array([[0, 0, 100, 40], [10, 5, 50, 35]], np.float32)
    assert pill_fragments(both, np.array([False, False])).tolist() == [False, True]


@pytest.mark.parametrize(("argv", "says"),
                         [(["identify", "p.png", "--top-k", "0"],
                           "fedray: error: --top-k: 0 is not in [1, 100]"),
                          (["identify", "p.png", "--top-k", "1000"], "--top-k: 1000 is not in"),
                          (["identify", "p.png", "--top-k", "2.5"], "--top-k: '2.5' is not an "
                           "integer"),
                          (["identify", "p.png", "--conf", "2"], "--conf: 2 is not in [0.0, 1.0]"),
                          (["identify", "p.png", "--conf", "x"], "--conf: 'x' is not a number"),
                          (["serve", "--port", "70000"], "--port: 70000 is not in [0, 65535]"),
                          (["serve", "--port", "abc"], "--port: 'abc' is not an integer")])
def test_out_of_range_options_are_refused_before_any_model_loads(argv, says, capsys):
    from fedray.pill.identify.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and says in err[0], err  # no usage block
    assert build_parser().parse_args(["identify", "p.png", "--conf", "0.4"]).conf == 0.4
