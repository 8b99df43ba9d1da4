"""The three input streams of MobileDeepPill and the fused similarity (paper §4.2.3, eqs. 3-4).

colour: the RGB crop; gray: its luminance; gradient: the Sobel magnitude of the luminance.
Gray and gradient are standardised per image (zero mean, unit std) when `standardize` is set,
so a global change of light moves neither; colour keeps a fixed scaling, so it sees a colour cast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]; a float (B, 3, H, W) tensor passes."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images
    x = torch.as_tensor(np.asarray(images))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def gray(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) luminance."""
    w = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def sobel_magnitude(lum: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, H, W) sqrt(Gx^2 + Gy^2), 3x3 Sobel filters, edges replicated."""
    kx = _SOBEL_X.to(lum).view(1, 1, 3, 3)
    ky = kx.transpose(2, 3)
    padded = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, kx), F.conv2d(padded, ky)
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)


def stream_inputs(rgb: torch.Tensor, streams: Sequence[str],
                  standardize: bool = True) -> dict[str, torch.Tensor]:
    """{stream: network input} from (B, 3, H, W) RGB in [0, 1]."""
    out: dict[str, torch.Tensor] = {}
    lum = gray(rgb) if ("gray" in streams or "gradient" in streams) else None
    for s in streams:
        if s == "color":
            out[s] = (rgb - 0.5) / 0.25
        elif s == "gray":
            out[s] = _standardize(lum) if standardize else (lum - 0.5) / 0.25
        elif s == "gradient":
            mag = sobel_magnitude(lum)
            out[s] = _standardize(mag) if standardize else mag
        else:
            raise ValueError(f"unknown stream {s!r}")
    return out


def fused_similarity(queries: Mapping[str, torch.Tensor],
                     gallery: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """S_final = sum over streams of f(I_q)^T f(I_ref): (Q, D) and (G, D) per stream -> (Q, G)."""
    if set(queries) != set(gallery):
        raise ValueError(f"stream mismatch: {sorted(queries)} vs {sorted(gallery)}")
    return sum(queries[s] @ gallery[s].T for s in queries)
