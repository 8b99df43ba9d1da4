"""Hot loops with a compiled (Cython) implementation and an identical NumPy fallback."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np

# ImageNet statistics: the normalisation every torchvision backbone expects.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The one switch for every optional compiled kernel (this one and the pill compositor's).
NO_CYTHON_ENV = "FEDRAY_NO_CYTHON"


def optional_extension(module: str) -> ModuleType | None:
    """Import a compiled extension, or None when it is not built or FEDRAY_NO_CYTHON is set."""
    if os.environ.get(NO_CYTHON_ENV, "").strip() not in ("", "0"):
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


_kernels = optional_extension("fedray._kernels")

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
