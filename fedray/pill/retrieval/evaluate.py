"""Evaluation of a trained MultiStream on a fold: the paper's protocol (§6.1.3) on the catalog.

Queries: the consumer photos of the fold's pills (never trained on); gallery: the references of
every pill. Also scored: the same photos under strong colour casts ("shifted"), the colour stream
alone ("color", the paper's Single-CNN: streams are trained independently, so it is one), and
held-out photos of training pills ("seen").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedray.pill.retrieval.data import RetrievalData, colour_cast
from fedray.pill.retrieval.metrics import one_side, two_side
from fedray.pill.retrieval.nets import MultiStream
from fedray.pill.retrieval.streams import fused_similarity
from fedray.pill.retrieval.train import embed


def _score_sets(model: MultiStream, photos: np.ndarray, gallery: dict[str, torch.Tensor],
                std: bool, device: str) -> dict[str, np.ndarray]:
    """{"multi": fused scores, "color": colour-only scores} of (N, S, S, 3) photos, (N, G)."""
    q = embed(model, photos, standardize=std, device=device)
    out = {"multi": fused_similarity(q, gallery).numpy()}
    if "color" in q and len(q) > 1:
        out["color"] = fused_similarity({"color": q["color"]}, {"color": gallery["color"]}).numpy()
    return out


def evaluate_queries(model: MultiStream, data: RetrievalData, pills: np.ndarray,
                     photo_slice: slice, gallery: dict[str, torch.Tensor], cast_seed: int | None,
                     assignment: str, std: bool, device: str) -> dict[str, Any]:
    """One-side and two-side metrics of the photos `photo_slice` of pill rows `pills`."""
    photos = data.photos[pills][:, :, photo_slice]  # (p, 2, q, S, S, 3)
    p, _, q = photos.shape[:3]
    if cast_seed is not None:
        photos = colour_cast(photos, cast_seed)
    flat = photos.reshape(-1, *photos.shape[-3:])  # order: pill, side, photo
    pill_of = np.repeat(data.pill_ids[pills], 2 * q)
    gallery_pill = np.repeat(data.pill_ids, 2)
    gallery_side = np.tile([0, 1], data.num_pills)
    out: dict[str, Any] = {}
    for streams, scores in _score_sets(model, flat, gallery, std, device).items():
        out[f"{streams}/one_side"] = one_side(scores, pill_of, gallery_pill)
        by = scores.reshape(p, 2, q, -1)
        a, b = by[:, 0].reshape(p * q, -1), by[:, 1].reshape(p * q, -1)  # (front j, back j) pairs
        out[f"{streams}/two_side"] = two_side(a, b, np.repeat(data.pill_ids[pills], q),
                                              gallery_pill, gallery_side, assignment)
    return out


def evaluate_fold(model: MultiStream, data: RetrievalData, test_pills: np.ndarray,
                  train_pills: np.ndarray, train_photos: int, rcfg: dict[str, Any], seed: int,
                  device: str = "cpu") -> dict[str, Any]:
    """{query_set/streams/scheme: metrics} for one trained model on one fold."""
    std = bool(rcfg["train"].get("standardize", True))
    assignment = str(rcfg.get("assignment", "best"))
    gallery = embed(model, data.references.reshape(-1, *data.references.shape[-3:]),
                    standardize=std, device=device)
    out: dict[str, Any] = {}
    sets = {"consumer": (test_pills, slice(0, None), None),
            "shifted": (test_pills, slice(0, None), seed + 7919)}
    if train_photos < data.photos.shape[2] and len(train_pills):
        sets["seen"] = (train_pills, slice(train_photos, None), None)
    for name, (pills, sl, cast) in sets.items():
        res = evaluate_queries(model, data, pills, sl, gallery, cast, assignment, std, device)
        out.update({f"{name}/{k}": v for k, v in res.items()})
    return out
