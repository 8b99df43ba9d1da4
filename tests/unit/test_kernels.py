"""The compiled kernel and its NumPy twin agree exactly."""

from __future__ import annotations

import numpy as np
import pytest

from fedray import kernels


def test_numpy_twin_matches_definition():
    x = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    expected = ((x / 255.0 - kernels.MEAN) / kernels.STD).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(kernels.normalize_numpy(x), expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(kernels.BACKEND != "cython", reason="compiled extension not built")
def test_cython_equals_numpy():
    x = np.random.default_rng(1).integers(0, 256, (4, 9, 11, 3), dtype=np.uint8)
    out = kernels.normalize(x)
    assert out.dtype == np.float32 and out.shape == (4, 3, 9, 11)
    np.testing.assert_array_equal(out, kernels.normalize_numpy(x))


def test_extension_was_built_in_ci():
    # pip install -e . builds the kernel; CI must not silently fall back
    import os

    if os.environ.get("CI"):
        assert kernels.BACKEND == "cython"
