"""Max and average pooling over NCHW planes, with exactly PyTorch's CPU semantics.

Both kernels see the input as ``x[P][H][W]`` (P = N*C planes) and write
``out[P][OH][OW]``, which the caller allocates; its shape fixes OH and OW (and so
``ceil_mode``'s extra last window). Windows are indexed as in PyTorch
(``MaxPoolKernel.cpp`` / ``AvgPoolKernel.cpp``, ``cpu_max_pool`` / ``cpu_avg_pool``).

How the work is split and vectorised:

- the unit of parallel work is one output row ``(p, oh)``; the P*OH rows are cut into
  contiguous static chunks, so large P means whole planes per thread and small P
  still keeps every thread busy;
- within a row the output columns split into left edge / interior / right edge. An
  interior column has every tap of its window inside ``[0, W)``, so the interior is
  computed as ``kh * kw`` branch-free passes over the output row, one per tap, each a
  strided sweep along W that the compiler vectorises (stride 1 and 2 are specialised
  so the strided loads become permutes, not gathers). The few edge columns use the
  scalar reference loop;
- the passes visit taps in PyTorch's order (kernel rows outer, kernel columns inner)
  and apply PyTorch's update rule per output, so every value and index is bit-for-bit
  PyTorch's, including ties, NaN and infinities.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t

from cython cimport floating


# ----------------------------------------------------------------------------------
# max pooling
# ----------------------------------------------------------------------------------

cdef inline void _max_tap_idx(const floating* src, floating* o, int64_t* idx,
                              Py_ssize_t n, Py_ssize_t sw, int64_t flat0) noexcept nogil:
    """One tap over ``n`` interior outputs: ``src[j*sw]`` is output j's tap, whose
    flat index in the plane is ``flat0 + j*sw``. PyTorch's update, branch-free:
    take the value when it is greater or NaN (so ties keep the first, the last NaN
    wins)."""
    cdef Py_ssize_t j
    cdef floating v, m
    cdef bint take
    for j in range(n):
        v = src[j * sw]
        m = o[j]
        take = (v > m) | (v != v)
        o[j] = v if take else m
        idx[j] = (flat0 + j * sw) if take else idx[j]


cdef inline void _max_tap(const floating* src, floating* o,
                          Py_ssize_t n, Py_ssize_t sw) noexcept nogil:
    """As ``_max_tap_idx`` without indices."""
    cdef Py_ssize_t j
    cdef floating v, m
    for j in range(n):
        v = src[j * sw]
        m = o[j]
        o[j] = v if ((v > m) | (v != v)) else m


cdef inline void _max_window(const floating* xp, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t ih0, Py_ssize_t ih1, Py_ssize_t ow,
                             int kw, int sw, int pw, int dh, int dw,
                             floating* val, int64_t* irow, Py_ssize_t j) noexcept nogil:
    """The scalar reference for one window (edge columns): PyTorch's loop verbatim.
    ``ih0`` is already advanced past the top padding, ``ih1`` clipped to H. OUT:
    ``val[0]`` and, unless ``irow`` is NULL, ``irow[j]``."""
    cdef Py_ssize_t iw0 = <Py_ssize_t>ow * sw - pw
    cdef Py_ssize_t iw1 = iw0 + <Py_ssize_t>(kw - 1) * dw + 1
    cdef Py_ssize_t ih, iw
    cdef floating v
    cdef floating m = -INFINITY
    cdef int64_t mi
    if iw1 > W:
        iw1 = W
    while iw0 < 0:
        iw0 += dw
    mi = ih0 * W + iw0
    ih = ih0
    while ih < ih1:
        iw = iw0
        while iw < iw1:
            v = xp[ih * W + iw]
            if (v > m) or (v != v):
                m = v
                mi = ih * W + iw
            iw += dw
        ih += dh
    val[0] = m
    if irow != NULL:
        irow[j] = mi


cdef void _max_row(const floating* xp, floating* orow, int64_t* irow,
                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW, Py_ssize_t oh,
                   Py_ssize_t lo, Py_ssize_t hi,
                   int kh, int kw, int sh, int sw, int ph, int pw,
                   int dh, int dw) noexcept nogil:
    """One output row ``orow[0:OW]`` (and ``irow`` unless NULL) of plane ``xp``.
    Columns ``[lo, hi)`` are interior (all taps inside the row), the rest edges."""
    cdef Py_ssize_t ih0 = oh * sh - ph
    cdef Py_ssize_t ih1 = ih0 + <Py_ssize_t>(kh - 1) * dh + 1
    cdef Py_ssize_t ow, ih, k, n = hi - lo
    cdef Py_ssize_t c0 = lo * sw - pw      # input column of interior output lo's tap 0
    cdef const floating* src
    if ih1 > H:
        ih1 = H
    while ih0 < 0:
        ih0 += dh

    for ow in range(lo):
        _max_window(xp, H, W, ih0, ih1, ow, kw, sw, pw, dh, dw, &orow[ow], irow, ow)
    for ow in range(hi, OW):
        _max_window(xp, H, W, ih0, ih1, ow, kw, sw, pw, dh, dw, &orow[ow], irow, ow)
    if n <= 0:
        return

    # Interior: start from PyTorch's initial state (-inf, first valid tap's index;
    # with no valid row the loop below is empty and this is also PyTorch's answer).
    for ow in range(lo, hi):
        orow[ow] = -INFINITY
    if irow != NULL:
        for ow in range(lo, hi):
            irow[ow] = ih0 * W + ow * sw - pw

    ih = ih0
    while ih < ih1:
        for k in range(kw):
            src = xp + ih * W + c0 + k * dw
            if irow != NULL:
                # literal strides let the compiler turn strided loads into permutes
                if sw == 1:
                    _max_tap_idx(src, orow + lo, irow + lo, n, 1, ih * W + c0 + k * dw)
                elif sw == 2:
                    _max_tap_idx(src, orow + lo, irow + lo, n, 2, ih * W + c0 + k * dw)
                else:
                    _max_tap_idx(src, orow + lo, irow + lo, n, sw, ih * W + c0 + k * dw)
            else:
                if sw == 1:
                    _max_tap(src, orow + lo, n, 1)
                elif sw == 2:
                    _max_tap(src, orow + lo, n, 2)
                else:
                    _max_tap(src, orow + lo, n, sw)
        ih += dh


cdef inline Py_ssize_t _interior_hi(Py_ssize_t W, Py_ssize_t OW, Py_ssize_t lo,
                                    Py_ssize_t span, int sw, int pw) noexcept nogil:
    """One past the last output column whose window, ``span`` input columns wide from
    ``ow*sw - pw``, ends inside the row; never below ``lo``."""
    cdef Py_ssize_t num = W + pw - span        # need ow*sw <= num
    cdef Py_ssize_t hi = num // sw + 1 if num >= 0 else 0
    if hi > OW:
        hi = OW
    if hi < lo:
        hi = lo
    return hi


def max_pool2d(const floating[:, :, ::1] x, floating[:, :, ::1] out, indices,
               int kernel_h, int kernel_w, int stride_h, int stride_w,
               int pad_h, int pad_w, int dilation_h, int dilation_w, int num_threads):
    """Max pooling over planes, PyTorch's ``cpu_max_pool`` bit for bit.

    IN   x[P][H][W]          the N*C input planes
    OUT  out[P][OH][OW]      caller-allocated; every element is written
    OUT  indices[P][OH][OW]  int64, or None: flat index ``ih*W + iw`` of the maximum
                             within its plane, as ``return_indices=True`` gives it

    Window of output (oh, ow): rows ``oh*stride_h - pad_h + i*dilation_h`` for
    ``i < kernel_h``, columns likewise, clipped to the plane (padding acts as -inf).
    OH = floor_or_ceil((H + 2*pad_h - dilation_h*(kernel_h-1) - 1) / stride_h) + 1,
    with ceil_mode's rule already applied by the caller. Taps are visited rows outer,
    columns inner; a tap replaces the running maximum when it is greater or NaN, so
    ties keep the first, NaN propagates with the last NaN's index, and an all -inf
    window gives -inf at its first valid tap.
    """
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2]
    cdef int64_t[:, :, ::1] ind
    cdef int64_t* ip = NULL
    cdef int64_t* irow
    cdef const floating* xp
    cdef floating* op
    cdef Py_ssize_t r, p, oh, lo, hi
    if P == 0 or OH == 0 or OW == 0:
        return
    if indices is not None:
        ind = indices
        ip = &ind[0, 0, 0]
    xp = &x[0, 0, 0]
    op = &out[0, 0, 0]
    # interior columns: first tap at or right of column 0, last tap left of W
    lo = (pad_w + stride_w - 1) // stride_w
    if lo > OW:
        lo = OW
    hi = _interior_hi(W, OW, lo, <Py_ssize_t>(kernel_w - 1) * dilation_w + 1, stride_w, pad_w)

    with nogil, parallel(num_threads=num_threads):
        # one output row per work item: whole planes per thread when P is large,
        # rows of one plane shared out when P is small
        for r in prange(P * OH, schedule='static'):
            p = r // OH
            oh = r - p * OH
            irow = (ip + r * OW) if ip != NULL else NULL
            _max_row(xp + p * H * W, op + r * OW, irow, H, W, OW, oh, lo, hi,
                     kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     dilation_h, dilation_w)


# ----------------------------------------------------------------------------------
# average pooling
# ----------------------------------------------------------------------------------

cdef inline void _sum_tap(const floating* src, floating* o,
                          Py_ssize_t n, Py_ssize_t sw) noexcept nogil:
    """One tap over ``n`` interior outputs: ``o[j] += src[j*sw]``."""
    cdef Py_ssize_t j
    for j in range(n):
        o[j] = o[j] + src[j * sw]


cdef inline floating _avg_window(const floating* xp, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t oh, Py_ssize_t ow, int kh, int kw,
                                 int sh, int sw, int ph, int pw, bint count_include_pad,
                                 Py_ssize_t divisor_override) noexcept nogil:
    """The scalar reference for one window (edge columns): PyTorch's loop verbatim."""
    cdef Py_ssize_t ih0 = oh * sh - ph, iw0 = ow * sw - pw
    cdef Py_ssize_t ih1 = ih0 + kh, iw1 = iw0 + kw
    cdef Py_ssize_t pool_size, div, ih, iw
    cdef floating s = 0
    if ih1 > H + ph:
        ih1 = H + ph
    if iw1 > W + pw:
        iw1 = W + pw
    pool_size = (ih1 - ih0) * (iw1 - iw0)
    if ih0 < 0:
        ih0 = 0
    if iw0 < 0:
        iw0 = 0
    if ih1 > H:
        ih1 = H
    if iw1 > W:
        iw1 = W
    if ih0 >= ih1 or iw0 >= iw1:
        return 0
    if divisor_override != 0:
        div = divisor_override
    elif count_include_pad:
        div = pool_size
    else:
        div = (ih1 - ih0) * (iw1 - iw0)
    for ih in range(ih0, ih1):
        for iw in range(iw0, iw1):
            s = s + xp[ih * W + iw]
    # PyTorch stores 0 + sum/div: the "+ 0" turns an underflowed -0.0 into +0.0
    return s / <floating>div + 0


cdef void _avg_row(const floating* xp, floating* orow,
                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW, Py_ssize_t oh,
                   Py_ssize_t lo, Py_ssize_t hi, int kh, int kw, int sh, int sw,
                   int ph, int pw, bint count_include_pad,
                   Py_ssize_t divisor_override) noexcept nogil:
    """One output row ``orow[0:OW]`` of plane ``xp``; columns ``[lo, hi)`` interior."""
    cdef Py_ssize_t ih0 = oh * sh - ph
    cdef Py_ssize_t ih1 = ih0 + kh
    cdef Py_ssize_t ih0c, ih1c, div, ow, ih, k, n = hi - lo
    cdef Py_ssize_t c0 = lo * sw - pw
    cdef floating d
    cdef const floating* src
    if ih1 > H + ph:
        ih1 = H + ph
    ih0c = ih0 if ih0 > 0 else 0
    ih1c = ih1 if ih1 < H else H
    if ih0c >= ih1c:
        # no input row under this window: PyTorch writes 0 across the row
        for ow in range(OW):
            orow[ow] = 0
        return
    for ow in range(lo):
        orow[ow] = _avg_window(xp, H, W, oh, ow, kh, kw, sh, sw, ph, pw,
                               count_include_pad, divisor_override)
    for ow in range(hi, OW):
        orow[ow] = _avg_window(xp, H, W, oh, ow, kh, kw, sh, sw, ph, pw,
                               count_include_pad, divisor_override)
    if n <= 0:
        return

    # Interior: sum each output in PyTorch's order (rows outer, columns inner),
    # accumulating in the output row itself, in the input's dtype.
    for ow in range(lo, hi):
        orow[ow] = 0
    for ih in range(ih0c, ih1c):
        for k in range(kw):
            src = xp + ih * W + c0 + k
            if sw == 1:
                _sum_tap(src, orow + lo, n, 1)
            elif sw == 2:
                _sum_tap(src, orow + lo, n, 2)
            else:
                _sum_tap(src, orow + lo, n, sw)
    # every interior window spans kw columns; only its rows can be clipped
    if divisor_override != 0:
        div = divisor_override
    elif count_include_pad:
        div = (ih1 - ih0) * kw
    else:
        div = (ih1c - ih0c) * kw
    d = <floating>div
    for ow in range(lo, hi):
        orow[ow] = orow[ow] / d + 0


def avg_pool2d(const floating[:, :, ::1] x, floating[:, :, ::1] out,
               int kernel_h, int kernel_w, int stride_h, int stride_w,
               int pad_h, int pad_w, bint count_include_pad,
               Py_ssize_t divisor_override, int num_threads):
    """Average pooling over planes, PyTorch's ``cpu_avg_pool`` bit for bit.

    IN   x[P][H][W]       the N*C input planes
    OUT  out[P][OH][OW]   caller-allocated; every element is written

    Window of output (oh, ow): rows ``[oh*stride_h - pad_h, + kernel_h)`` clipped to
    ``H + pad_h`` (its size there is ``pool_size``) and then to the plane, columns
    likewise. OH = floor_or_ceil((H + 2*pad_h - kernel_h) / stride_h) + 1, ceil_mode's
    rule applied by the caller. out = sum / divisor, the sum taken rows outer, columns
    inner in the input's dtype, divisor = ``divisor_override`` when non-zero, else
    ``pool_size`` if ``count_include_pad`` else the number of in-plane taps; a window
    with no in-plane tap gives 0.
    """
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2]
    cdef const floating* xp
    cdef floating* op
    cdef Py_ssize_t r, p, oh, lo, hi
    if P == 0 or OH == 0 or OW == 0:
        return
    xp = &x[0, 0, 0]
    op = &out[0, 0, 0]
    lo = (pad_w + stride_w - 1) // stride_w
    if lo > OW:
        lo = OW
    hi = _interior_hi(W, OW, lo, kernel_w, stride_w, pad_w)

    with nogil, parallel(num_threads=num_threads):
        for r in prange(P * OH, schedule='static'):
            p = r // OH
            oh = r - p * OH
            _avg_row(xp + p * H * W, op + r * OW, H, W, OW, oh, lo, hi,
                     kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     count_include_pad, divisor_override)
