"""Hot loops with a compiled (Cython) implementation and an identical NumPy fallback."""

from __future__ import annotations

import os

import numpy as np

from fedray.data.datasets import MEAN, STD

try:
    if os.environ.get("FEDRAY_NO_CYTHON"):
        raise ImportError("disabled by FEDRAY_NO_CYTHON")
    from fedray import _kernels
except ImportError:
    _kernels = None

BACKEND = "cython" if _kernels is not None else "numpy"


def normalize_numpy(
    images: np.ndarray, mean: np.ndarray = MEAN, std: np.ndarray = STD
) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W), (x/255 - mean)/std, in NumPy."""
    scale = (1.0 / (255.0 * std.astype(np.float32))).astype(np.float32)
    shift = (-mean / std).astype(np.float32)
    x = images.astype(np.float32) * scale + shift  # same fused form as the kernel
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalize(images: np.ndarray, mean: np.ndarray = MEAN, std: np.ndarray = STD) -> np.ndarray:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W); compiled when available."""
    if _kernels is None or images.shape[-1] > 3:
        return normalize_numpy(images, mean, std)
    return _kernels.normalize_nhwc_to_nchw(
        np.ascontiguousarray(images, dtype=np.uint8),
        np.ascontiguousarray(mean, dtype=np.float32),
        np.ascontiguousarray(std, dtype=np.float32),
    )
