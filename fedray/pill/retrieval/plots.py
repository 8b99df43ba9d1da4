"""The CMC figure of a retrieval run (paper Fig. 8): top-k accuracy against k, per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SCHEMES = ("one_side", "two_side")


def plot_cmc(per_model: dict[str, list[dict[str, Any]]], path: str | Path,
             query_set: str = "consumer") -> Path:
    """Two panels (one-side, two-side): each model's multi-stream curve, and its colour-only
    curve dashed, averaged over folds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, scheme in zip(axes, SCHEMES, strict=True):
        for name, folds in per_model.items():
            for streams, style in (("multi", "-"), ("color", "--")):
                key = f"{query_set}/{streams}/{scheme}"
                if key not in folds[0]:
                    continue
                cmc = np.mean([r[key]["cmc"] for r in folds], 0)
                label = name if streams == "multi" else f"{name} (colour only)"
                ax.plot(np.arange(1, len(cmc) + 1), cmc, style, marker=".", label=label)
        ax.set_title(f"CMC, {scheme.replace('_', '-')} ({query_set} queries)")
        ax.set_xlabel("rank k")
        ax.set_xticks([1, 5, 10, 15, 20])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-k accuracy")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
