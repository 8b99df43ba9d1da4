# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
# distutils: extra_compile_args = -ffp-contract=off -fno-math-errno
"""Scene compositor kernel, bit-identical to compose.py's NumPy twin.

Identity rests on doing the same IEEE float32 operations in the same order as the twin: every
constant is cast to float (a bare 0.5 would promote the expression to double), no FMA contraction
(-ffp-contract=off, which GCC would otherwise apply on FMA targets), no -ffast-math (-fno-math-errno
only lets sqrtf inline; results are unchanged), sums parenthesised as NumPy evaluates them, left to
right. Rows run in parallel (OpenMP prange); each pixel depends only on the plan, so the thread
count changes nothing. The per-row tail (lighting, rounding, noise) is written as flat loops over
the row's 3*S values so the compiler can vectorise it.
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport ceil, fabs, floor, sqrtf
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

cimport openmp

import numpy as np

cnp.import_array()

cdef enum:
    N_INTS = 12  # h, w, shadow h, shadow w, region x0 y0 x1 y1, shadow region x0 y0 x1 y1
    N_FLT = 31  # hinv 9, shadow hinv 9, colour 3x4, shadow strength
    N_LIGHT = 10  # gain, x slope, y slope, radial, r/g/b gains, read var, shot gain, 1/std

cdef float DEN_EPS = 1e-6
cdef float LABEL_ALPHA = 0.5


cdef struct Scene:
    const uint8_t* bg  # (size, size, 3): the background already warped into the frame
    Py_ssize_t size, k
    const int64_t* ints
    const float* flt
    const float** src
    const float** shadow
    const float* light
    const float* gain3  # (3 * size,): r, g, b white-balance gains repeated along the row
    float inv_size
    uint8_t* out
    int16_t* labels
    uint32_t seed
    bint add_noise


cdef inline uint32_t _hash(uint32_t x) noexcept nogil:
    # lowbias32 (C. Wellons); unsigned arithmetic wraps, as NumPy's uint32 does
    x ^= x >> 16
    x *= <uint32_t>0x7FEB352D
    x ^= x >> 15
    x *= <uint32_t>2221713035u
    x ^= x >> 16
    return x


cdef inline float _clip(float v, float lo, float hi) noexcept nogil:
    # np.clip = minimum(maximum(v, lo), hi); ternaries (not ifs) compile to maxps/minps
    v = lo if v < lo else v
    return hi if v > hi else v


cdef inline float _floor(float v) noexcept nogil:
    # exact floor for |v| < 2**31 without a libm call (x86-64 baseline has no roundss)
    cdef float t = <float><int32_t>v
    return t - <float>1.0 if t > v else t


cdef inline bint _sample_zero(const float* src, Py_ssize_t hs, Py_ssize_t ws, Py_ssize_t ch,
                              const float* h, float x, float y, float* out) noexcept nogil:
    """Bilinear sample of a float32 (hs, ws, ch) source (ch = 1 or 4), zero outside; False =
    nothing there. Callers pass a literal ch, so after inlining the channel loops have a
    constant trip count and the 4-channel case vectorises as one SSE register."""
    cdef float den = (h[6] * x + h[7] * y) + h[8]
    if not den > DEN_EPS:
        return False
    cdef float rden = <float>1.0 / den
    cdef float sx = ((h[0] * x + h[1] * y) + h[2]) * rden
    cdef float sy = ((h[3] * x + h[4] * y) + h[5]) * rden
    if not (sx > <float>-1.0 and sx < <float>ws and sy > <float>-1.0 and sy < <float>hs):
        return False
    cdef float fx0 = _floor(sx), fy0 = _floor(sy)
    cdef float fx = sx - fx0, fy = sy - fy0
    cdef float wx0 = <float>1.0 - fx, wy0 = <float>1.0 - fy
    cdef Py_ssize_t ix = <Py_ssize_t>fx0, iy = <Py_ssize_t>fy0, c
    cdef const float* r0 = src + (iy * ws + ix) * ch
    cdef const float* r1 = r0 + ws * ch
    cdef float p00[4]
    cdef float p01[4]
    cdef float p10[4]
    cdef float p11[4]
    cdef bint okx0, okx1, oky0, oky1
    if ix >= 0 and ix + 1 < ws and iy >= 0 and iy + 1 < hs:  # interior: all four taps exist
        for c in range(ch):
            out[c] = wy0 * (wx0 * r0[c] + fx * r0[ch + c]) + fy * (wx0 * r1[c] + fx * r1[ch + c])
        return True
    okx0, okx1 = ix >= 0, ix + 1 <= ws - 1
    oky0, oky1 = iy >= 0, iy + 1 <= hs - 1
    for c in range(ch):
        p00[c] = r0[c] if (okx0 and oky0) else <float>0.0
        p01[c] = r0[ch + c] if (okx1 and oky0) else <float>0.0
        p10[c] = r1[c] if (okx0 and oky1) else <float>0.0
        p11[c] = r1[ch + c] if (okx1 and oky1) else <float>0.0
    for c in range(ch):
        out[c] = wy0 * (wx0 * p00[c] + fx * p01[c]) + fy * (wx0 * p10[c] + fx * p11[c])
    return True


cdef inline void _span(const float* h, Py_ssize_t hs, Py_ssize_t ws, double y, Py_ssize_t size,
                       Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Narrow [lo, hi) to the x on row y where _sample_zero can succeed. Each of its five tests
    is linear in x once multiplied by the (positive) denominator; every bound is relaxed by a
    tolerance far above float32 rounding, so the span is a superset and results never change."""
    cdef double h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3], h4 = h[4], h5 = h[5]
    cdef double h6 = h[6], h7 = h[7], h8 = h[8]
    cdef double den = h7 * y + h8, nx = h1 * y + h2, ny = h4 * y + h5
    cdef double a[5]
    cdef double b[5]
    cdef double left = <double>lo[0], right = <double>hi[0], bound, tol
    cdef int k
    a[0] = h6
    b[0] = den - DEN_EPS
    a[1] = h0 + h6
    b[1] = nx + den
    a[2] = ws * h6 - h0
    b[2] = ws * den - nx
    a[3] = h3 + h6
    b[3] = ny + den
    a[4] = hs * h6 - h3
    b[4] = hs * den - ny
    for k in range(5):  # a[k] * x + b[k] > 0
        tol = 1e-3 * (fabs(a[k]) * size + fabs(b[k]) + 1.0)
        if a[k] > 1e-12:
            bound = -(b[k] + tol) / a[k]
            if bound > left:
                left = bound
        elif a[k] < -1e-12:
            bound = -(b[k] + tol) / a[k]
            if bound < right:
                right = bound
        elif b[k] + tol <= 0:
            right = left
    if right <= left:
        hi[0] = lo[0]
        return
    if floor(left) - 1 > lo[0]:
        lo[0] = <Py_ssize_t>(floor(left) - 1)
    if ceil(right) + 2 < hi[0]:
        hi[0] = <Py_ssize_t>(ceil(right) + 2)
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef void _composite_row(const Scene* s, Py_ssize_t y, float* canvas,
                         int16_t* label) noexcept nogil:
    """Shadows and pills in plan order over one row of the canvas (pill-major within the row,
    which changes nothing: each pixel sees the same sequence of operations). Where a pill is
    fully opaque its own shadow is skipped: canvas * (1 - 1) + val is val whatever the canvas."""
    cdef Py_ssize_t x, c, i, sh_lo, sh_hi, p_lo, p_hi, start, stop
    cdef const int64_t* pi
    cdef const float* pf
    cdef float yd = <float>y, t, strength, a, cap, val
    cdef float sample[4]
    cdef float shade[1]
    cdef bint got
    for i in range(s.k):
        pi = s.ints + i * N_INTS
        pf = s.flt + i * N_FLT
        strength = pf[30]
        sh_lo = sh_hi = p_lo = p_hi = 0
        # pi: h, w, shadow h, shadow w, region x0 y0 x1 y1, shadow region x0 y0 x1 y1
        if strength > 0 and pi[9] <= y < pi[11]:
            sh_lo, sh_hi = pi[8], pi[10]
            _span(pf + 9, pi[2], pi[3], <double>y, s.size, &sh_lo, &sh_hi)
        if pi[5] <= y < pi[7]:
            p_lo, p_hi = pi[4], pi[6]
            _span(pf, pi[0], pi[1], <double>y, s.size, &p_lo, &p_hi)
        if sh_hi <= sh_lo:
            start, stop = p_lo, p_hi
        elif p_hi <= p_lo:
            start, stop = sh_lo, sh_hi
        else:
            start, stop = min(sh_lo, p_lo), max(sh_hi, p_hi)
        for x in range(start, stop):
            got = p_lo <= x < p_hi and _sample_zero(s.src[i], pi[0], pi[1], 4, pf, <float>x,
                                                    yd, sample)
            if sh_lo <= x < sh_hi and not (got and sample[3] == <float>1.0):
                if _sample_zero(s.shadow[i], pi[2], pi[3], 1, pf + 9, <float>x, yd, shade):
                    t = <float>1.0 - strength * shade[0]
                    for c in range(3):
                        canvas[x * 3 + c] = canvas[x * 3 + c] * t
            if got:
                a = sample[3]
                cap = <float>255.0 * a
                for c in range(3):
                    val = (((pf[18 + 4 * c] * sample[0] + pf[19 + 4 * c] * sample[1])
                            + pf[20 + 4 * c] * sample[2]) + pf[21 + 4 * c] * a)
                    val = <float>0.0 if val < <float>0.0 else val
                    val = cap if val > cap else val
                    canvas[x * 3 + c] = canvas[x * 3 + c] * (<float>1.0 - a) + val
                if a >= LABEL_ALPHA:
                    label[x] = <int16_t>i


cdef inline uint8_t _noisy(uint8_t u, uint32_t q, uint32_t seed, float read_var, float shot,
                           float inv_std) noexcept nogil:
    # Irwin-Hall: the sum of the hash's four bytes is near-Gaussian (mean 510, std 147.8)
    cdef uint32_t h = _hash(q ^ seed)
    cdef int32_t total = <int32_t>((h & 255) + ((h >> 8) & 255) + ((h >> 16) & 255) + (h >> 24))
    cdef float n = <float>(total - 510) * inv_std
    cdef float uf = <float>u
    cdef float sigma = sqrtf(read_var + shot * uf)
    return <uint8_t>_clip((uf + n * sigma) + <float>0.5, <float>0.0, <float>255.0)


cdef void _render_row(const Scene* s, Py_ssize_t y, float* canvas, float* light,
                      int16_t* label) noexcept nogil:
    cdef Py_ssize_t size = s.size, n3 = s.size * 3, x, j
    cdef const float* lt = s.light
    cdef const uint8_t* bg = s.bg + y * n3
    cdef uint8_t* out = s.out + y * n3
    cdef float vv = <float>y * s.inv_size - <float>0.5, uu, l
    cdef uint32_t base = <uint32_t>(y * n3)
    for j in range(n3):
        canvas[j] = <float>bg[j]
    for x in range(size):
        label[x] = -1
    _composite_row(s, y, canvas, label)
    for x in range(size):
        uu = <float>x * s.inv_size - <float>0.5
        l = ((lt[0] + lt[1] * uu) + lt[2] * vv) + lt[3] * (uu * uu + vv * vv)
        light[x * 3] = l
        light[x * 3 + 1] = l
        light[x * 3 + 2] = l
    # struct members hoisted into locals: GCC will not vectorise a loop that reloads them
    cdef const float* gain3 = s.gain3
    cdef int16_t* labels = s.labels + y * size
    cdef uint32_t seed = s.seed
    cdef float read_var = lt[7], shot = lt[8], inv_std = lt[9]
    for j in range(n3):
        out[j] = <uint8_t>_clip((canvas[j] * light[j]) * gain3[j] + <float>0.5,
                                <float>0.0, <float>255.0)
    if s.add_noise:
        for j in range(n3):
            out[j] = _noisy(out[j], base + <uint32_t>j, seed, read_var, shot, inv_std)
    for x in range(size):
        labels[x] = label[x]


cdef const float* _float_ptr(object arr, tuple shape, str what) except NULL:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != shape \
            or not arr.flags.c_contiguous:
        raise ValueError(f"{what}: expected C-contiguous float32 {shape}, got "
                         f"{getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', None)}")
    return <const float*>cnp.PyArray_DATA(arr)


def render(const uint8_t[:, :, ::1] bg, list premults, list shadows,
           const int64_t[:, ::1] ints, const float[:, ::1] flt, const float[::1] light,
           uint8_t[:, :, ::1] out, int16_t[:, ::1] labels, uint32_t seed, bint add_noise,
           int num_threads=0):
    """Composite pills on the warped background, light, round (+ noise) into out and labels."""
    cdef Py_ssize_t k = len(premults), i, y, size = out.shape[0], tid
    if out.shape[1] != size or out.shape[2] != 3 or labels.shape[0] != size \
            or labels.shape[1] != size or bg.shape[0] != size or bg.shape[1] != size \
            or bg.shape[2] != 3:
        raise ValueError("bg and out must be (S, S, 3) and labels (S, S)")
    if light.shape[0] != N_LIGHT:
        raise ValueError(f"light must have {N_LIGHT} entries")
    if len(shadows) != k or (k and (ints.shape[0] != k or ints.shape[1] != N_INTS
                                    or flt.shape[0] != k or flt.shape[1] != N_FLT)):
        raise ValueError(f"pill tables must be ({k}, {N_INTS}) and ({k}, {N_FLT})")
    if num_threads <= 0:
        num_threads = openmp.omp_get_max_threads()
    cdef Scene s
    # per-thread row buffers: canvas and light (3 * S floats each), labels (S)
    cdef float* rows = <float*>malloc(num_threads * size * 6 * sizeof(float))
    cdef int16_t* row_labels = <int16_t*>malloc(num_threads * size * sizeof(int16_t))
    cdef float* gain3 = <float*>malloc(size * 3 * sizeof(float))
    s.src = <const float**>malloc((k + 1) * sizeof(float*))
    s.shadow = <const float**>malloc((k + 1) * sizeof(float*))
    try:
        if s.src == NULL or s.shadow == NULL or rows == NULL or row_labels == NULL \
                or gain3 == NULL:
            raise MemoryError()
        for i in range(size * 3):
            gain3[i] = light[4 + i % 3]
        s.gain3 = gain3
        for i in range(k):
            s.src[i] = _float_ptr(premults[i], (ints[i, 0], ints[i, 1], 4), f"premult {i}")
            s.shadow[i] = _float_ptr(shadows[i], (ints[i, 2], ints[i, 3]), f"shadow {i}")
        s.bg = &bg[0, 0, 0]
        s.size = size
        s.k = k
        s.ints = &ints[0, 0] if k else NULL
        s.flt = &flt[0, 0] if k else NULL
        s.light = &light[0]
        s.inv_size = <float>(1.0 / <double>size)
        s.out = &out[0, 0, 0]
        s.labels = &labels[0, 0]
        s.seed = seed
        s.add_noise = add_noise
        with nogil:
            for y in prange(size, num_threads=num_threads, schedule="static"):
                tid = openmp.omp_get_thread_num()
                _render_row(&s, y, rows + tid * size * 6, rows + tid * size * 6 + size * 3,
                            row_labels + tid * size)
    finally:
        free(<void*>s.src)
        free(<void*>s.shadow)
        free(rows)
        free(row_labels)
        free(gain3)


def add_noise(uint8_t[:, :, ::1] img, const float[::1] light, uint32_t seed,
              int num_threads=0):
    """Sensor noise in place: the same hash stream and rounding as the fused pass."""
    if img.shape[2] != 3 or light.shape[0] != N_LIGHT:
        raise ValueError(f"img must be (H, W, 3) and light have {N_LIGHT} entries")
    cdef Py_ssize_t n = img.shape[0] * img.shape[1] * 3, j
    cdef uint8_t* data = &img[0, 0, 0]
    cdef float read_var = light[7], shot = light[8], inv_std = light[9]
    if num_threads <= 0:
        num_threads = openmp.omp_get_max_threads()
    with nogil:
        for j in prange(n, num_threads=num_threads, schedule="static"):
            data[j] = _noisy(data[j], <uint32_t>j, seed, read_var, shot, inv_std)
