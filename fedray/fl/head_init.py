"""Closed-form head initialisation from the clients' feature statistics (Fed3R).

With the backbone frozen, the head is a linear map of the globally pooled features, and the ridge
regression of one-hot labels on those features has a closed form that needs only two sums over
the data: the Gram matrix X^T X and X^T Y (per-class feature sums), X with a constant 1 column.
Each client sends its two sums once, the server adds them up and solves: the result is *exactly*
the head a centralized solve on the pooled data would give, however skewed the clients' labels
are (Fanì et al., "Accelerating Heterogeneous Federated Learning with Closed-form Classifiers",
ICML 2024). Federated rounds then fine-tune from there instead of from random weights, which is
where label-skewed FedAvg on a head otherwise loses points to client drift.

The sums reveal no more than a round of FedAvg on the head does (class-wise feature sums), and
they are sums, so secure aggregation applies unchanged. Cost, once per client: the Gram matrix's
upper triangle (it is symmetric), (D+1)(D+2)/2 float32 — summed in float64 on both ends, sent in
float32: the same head to the last val prediction on pill_noniid — plus X^T Y, (D+1)·C float64.
That is 0.6 MB for SqueezeNet's 512 features, 2.2 MB for 1,024 with `model.zooms=[1.0, 1.6]` and
52 MB for pill_noniid's 5,120 tapped features (`model.taps`), counted in the run's communication.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fedray.config import ConfigError
from fedray.fl.types import Params

HEAD_INITS = ("random", "ridge")
# layers a head may have and still be one linear map of the pooled features
_PASSIVE = (nn.Dropout, nn.Flatten, nn.Identity, nn.AdaptiveAvgPool2d)


def linear_head(model: nn.Module) -> nn.Module:
    """The one Conv2d(1x1)/Linear of `model.classifier`, if the head is linear in pooled features.

    Average pooling commutes with a 1x1 conv, so [Dropout, Conv1x1, AvgPool] is a linear map of
    the pooled features; a ReLU on the logits (torchvision's SqueezeNet) is not.
    """
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Module) or not isinstance(getattr(model, "features", None),
                                                         nn.Module):
        raise ConfigError(
            f"fl.head_init=ridge solves a head `classifier` on the frozen blocks `features`; "
            f"{type(model).__name__} has no such split (docs/byo.md, 'The model "
            "contract'). Use fl.head_init=random"
        )
    layers = [m for m in head.modules() if m is not head]
    maps = [m for m in layers if isinstance(m, nn.Linear | nn.Conv2d)]
    other = [m for m in layers if not isinstance(m, (nn.Linear, nn.Conv2d, *_PASSIVE))]
    pools_ok = all(
        m.output_size in (1, (1, 1)) for m in layers if isinstance(m, nn.AdaptiveAvgPool2d)
    )
    conv_ok = all(m.kernel_size == (1, 1) for m in maps if isinstance(m, nn.Conv2d))
    if len(maps) != 1 or other or not pools_ok or not conv_ok or maps[0].bias is None:
        names = ", ".join(type(m).__name__ for m in layers)
        raise ConfigError(
            f"fl.head_init=ridge needs a head that is one linear map (1x1 conv or Linear, with "
            f"bias) of the average-pooled features; this model's classifier is [{names}]. "
            "Use fl.head_init=random"
        )
    return maps[0]


def check_head_init(
    cfg_fl: dict[str, Any], model: nn.Module, trainable: list[str], cached: int
) -> str:
    """Validate fl.head_init against the model and what trains; returns the method."""
    method = str(cfg_fl.get("head_init", "random"))
    if method not in HEAD_INITS:
        raise ConfigError(f"fl.head_init={method!r}: choose one of {HEAD_INITS}")
    if method == "random":
        return method
    linear_head(model)
    if cached != len(model.features) or not all(n.startswith("classifier.") for n in trainable):
        raise ConfigError(
            "fl.head_init=ridge solves the head on frozen backbone features: it needs "
            f"fl.trainable=classifier and fl.cache_features=true (got fl.trainable="
            f"{cfg_fl.get('trainable')!r}, fl.cache_features={cfg_fl.get('cache_features')})"
        )
    return method


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, D, H, W) backbone output, or already-pooled (N, D) -> (N, D)."""
    return features.mean((2, 3)) if features.ndim == 4 else features.reshape(len(features), -1)


def feature_stats(features: torch.Tensor, labels: np.ndarray, num_classes: int) -> Params:
    """This client's sums: `gram` = X^T X (upper triangle, row by row, float32) and `xty` =
    X^T Y (float64), X = [pooled features, 1], summed in float64."""
    x = pooled(features).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    y = torch.nn.functional.one_hot(
        torch.as_tensor(np.asarray(labels), dtype=torch.long), num_classes
    ).double()
    # symmetric: its upper triangle travels (half the bytes), gram_matrix() unfolds it
    gram = pack_upper((x.T @ x).numpy()).astype(np.float32)
    return {"gram": gram, "xty": (x.T @ y).numpy()}


def pack_upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a square matrix, row by row (row slices: no index arrays, which
    for 5,000 features would take more memory than the matrix)."""
    n = len(matrix)
    out = np.empty(n * (n + 1) // 2, dtype=matrix.dtype)
    start = 0
    for i in range(n):
        out[start : start + n - i] = matrix[i, i:]
        start += n - i
    return out


def gram_matrix(packed: np.ndarray) -> np.ndarray:
    """The full symmetric (D+1, D+1) Gram matrix from its packed upper triangle."""
    n = int(round((np.sqrt(8 * len(packed) + 1) - 1) / 2))
    if n * (n + 1) // 2 != len(packed):
        raise ValueError(f"{len(packed)} values are not the upper triangle of a square matrix")
    full = np.empty((n, n), dtype=packed.dtype)
    start = 0
    for i in range(n):
        full[i, i:] = full[i:, i] = packed[start : start + n - i]
        start += n - i
    return full


def solve_head(stats: list[Params], model: nn.Module, lam: float, scale: float) -> Params:
    """Head params (the head layer's weight and bias) of the ridge solve over all `stats`.

    `lam` is relative: the ridge is lam x the mean feature energy (mean of diag X^T X), so the same
    value suits one client or a thousand; the bias is not penalised. `scale` multiplies the
    solution: ridge scores live in [0, 1], and softmax fine-tuning starts better from sharper
    logits.
    """
    if not stats:
        raise ValueError("no client statistics to solve the head from")
    packed = stats[0]["gram"].astype(np.float64, copy=True)
    xty = stats[0]["xty"].astype(np.float64, copy=True)
    for s in stats[1:]:  # summed in place: one packed Gram in memory, however many clients
        packed += s["gram"]
        xty += s["xty"]
    gram = gram_matrix(packed)
    del packed
    dim = gram.shape[0] - 1
    ridge = float(lam) * max(float(np.trace(gram[:dim, :dim])) / max(dim, 1), 1e-12)
    gram[np.arange(dim), np.arange(dim)] += ridge  # the bias (last row/column) is not penalised
    w = np.linalg.solve(gram, xty) * float(scale)  # (D+1, C)
    layer = linear_head(model)
    names = {id(p): n for n, p in model.named_parameters()}
    weight = np.ascontiguousarray(w[:dim].T).reshape(tuple(layer.weight.shape))
    return {
        names[id(layer.weight)]: weight.astype(np.float32),
        names[id(layer.bias)]: np.ascontiguousarray(w[dim]).astype(np.float32),
    }
