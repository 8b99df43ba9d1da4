# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled twin of fedray.kernels: uint8 NHWC images -> normalised float32 NCHW."""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange


def normalize_nhwc_to_nchw(const unsigned char[:, :, :, ::1] images, float[::1] mean,
                           float[::1] std):
    cdef Py_ssize_t n = images.shape[0], h = images.shape[1], w = images.shape[2]
    cdef Py_ssize_t c = images.shape[3]
    out = np.empty((n, c, h, w), dtype=np.float32)
    cdef float[:, :, :, ::1] o = out
    cdef float[3] scale
    cdef float[3] shift
    cdef Py_ssize_t i, y, x, k
    for k in range(c):
        # (v/255 - mean)/std == v*scale + shift: one fused multiply-add per pixel
        scale[k] = 1.0 / (255.0 * std[k])
        shift[k] = -mean[k] / std[k]
    for i in prange(n, nogil=True, schedule="static"):
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    o[i, k, y, x] = images[i, y, x, k] * scale[k] + shift[k]
    return out
