"""Which detector boxes identify drops as background (fedray/pill/identify/pipeline.py)."""

import numpy as np

from fedray.pill.identify.classifier import Classifier
from fedray.pill.identify.pipeline import (
    PATTERN_COUNT,
    PATTERN_SCORE,
    SURE_SCORE,
    name_boxes,
    surface_motif,
)

FLOOR = 6.0


def _clf():
    return Classifier(None, ["a", "b"], 16, "", threshold=0.7, energy_floor=FLOOR)


def _grid(n, side, step=100.0):
    return np.array([[i * step, 0.0, i * step + side, side] for i in range(n)], np.float32)


def _name(boxes, scores, energy):
    probs = np.tile(np.array([[0.6, 0.4]], np.float32), (len(boxes), 1))
    found, dismissed, _ = name_boxes(boxes, np.asarray(scores, np.float32),
                                     probs, np.asarray(energy, np.float32), _clf())
    return len(found), len(dismissed)


def test_a_repeated_motif_unlike_any_pill_is_dismissed_even_when_the_detector_half_believes_it():
    score = (SURE_SCORE + PATTERN_SCORE) / 2  # over the plain dismissal's bar, under the motif's
    n = PATTERN_COUNT
    # n look-alike boxes unlike every pill: a surface's motif, all dropped
    assert _name(_grid(n, 60), [score] * n, [FLOOR - 1] * n) == (0, n)
    # one fewer: not a pattern; each stays (read unknown), as a lone unknown pill would
    assert _name(_grid(n - 1, 60), [score] * (n - 1), [FLOOR - 1] * (n - 1)) == (n - 1, 0)
    # the same boxes at sizes that differ by more than the tolerance are no pattern either
    sizes = [40.0 * 1.4 ** i for i in range(n)]
    boxes = np.array([[i * 200.0, 0, i * 200.0 + s, s] for i, s in enumerate(sizes)], np.float32)
    assert _name(boxes, [score] * n, [FLOOR - 1] * n) == (n, 0)


def test_pills_the_classifier_knows_or_the_detector_is_sure_of_are_never_a_motif():
    n = PATTERN_COUNT + 2
    score = (SURE_SCORE + PATTERN_SCORE) / 2
    # look-alike pills the classifier recognises (energy over its floor): all kept
    assert _name(_grid(n, 60), [score] * n, [FLOOR + 2] * n) == (n, 0)
    # copies of an unknown pill the detector is sure of: kept, read unknown
    assert _name(_grid(n, 60), [PATTERN_SCORE + 0.05] * n, [FLOOR - 1] * n) == (n, 0)
    # a mix: only the unsure, unlike boxes that repeat one another go
    energy = [FLOOR - 1] * PATTERN_COUNT + [FLOOR + 2, FLOOR - 1]
    scores = [score] * PATTERN_COUNT + [score, PATTERN_SCORE + 0.05]
    motif = surface_motif(_grid(n, 60), np.array(scores), np.array(energy) < FLOOR)
    assert motif.tolist() == [True] * PATTERN_COUNT + [False, False]
    assert _name(_grid(n, 60), scores, energy) == (2, PATTERN_COUNT)
