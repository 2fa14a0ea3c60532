"""Max and average pooling over NCHW planes, with exactly PyTorch's CPU semantics.

Both kernels see the input as ``x[P][H][W]`` (P = N*C planes) and write
``out[P][OH][OW]``, which the caller allocates; its shape fixes OH and OW (and so
``ceil_mode``'s extra last window). Windows are indexed as in PyTorch
(``MaxPoolKernel.cpp`` / ``AvgPoolKernel.cpp``, ``cpu_max_pool`` / ``cpu_avg_pool``).

How the work is split and vectorised:

- the unit of parallel work is one output row ``(p, oh)``; the P*OH rows are cut into
  contiguous static chunks, so large P means whole planes per thread and small P
  still keeps every thread busy;
- a row is computed as branch-free passes along W over all its output columns at
  once, each pass applying up to three kernel columns of one kernel row (the
  compiler vectorises the sweep over columns; strides 1 and 2 and pass widths 1-3
  are literal so strided loads become permutes, not gathers);
- max pooling copies each input row it needs into a per-thread scratch row padded
  with -inf, so edge windows need no special case (a -inf tap never wins), and keeps
  the running max/index in scratch rounded up to whole vectors. Average pooling
  reads the input directly for interior columns (every tap inside the row, one
  divisor per row) and uses the scalar reference loop for the few edge columns;
- taps are visited in PyTorch's order (kernel rows outer, kernel columns inner) with
  PyTorch's update rule and accumulation order per output, so values and indices are
  bit-for-bit PyTorch's, including ties, NaN, infinities and signed zeros.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from cython cimport floating

from ._ranges cimport _ceil_div, _tap_range


# Smallest amount of work (window taps) worth a thread: waking an OpenMP team costs
# microseconds (far more on a busy machine), so tiny pools run on fewer threads.
cdef enum:
    GRAIN = 32768


cdef inline int _team(int num_threads, Py_ssize_t work) noexcept nogil:
    """``num_threads`` capped so that each thread gets at least GRAIN taps."""
    cdef Py_ssize_t cap = work // GRAIN
    if cap < 1:
        cap = 1
    return <int>cap if cap < num_threads else num_threads


# ----------------------------------------------------------------------------------
# max pooling
# ----------------------------------------------------------------------------------

cdef inline void _max_taps_idx(const floating* src, floating* o, int64_t* idx,
                               Py_ssize_t n, Py_ssize_t sw, int ntap, Py_ssize_t dw,
                               int64_t flat0) noexcept nogil:
    """``ntap`` consecutive kernel columns of one kernel row over ``n`` interior
    outputs: output j's taps are ``src[j*sw + t*dw]``, flat index ``flat0 + j*sw +
    t*dw``, visited in order t = 0..ntap-1. PyTorch's update, branch-free: take the
    tap when it is greater or NaN (ties keep the first, the last NaN wins). Called
    with literal ``sw`` and ``ntap`` so the tap loop unrolls and the j loop
    vectorises with permutes instead of gathers."""
    cdef Py_ssize_t j
    cdef int t
    cdef floating v, m
    cdef int64_t mi
    cdef bint take
    for j in range(n):
        m = o[j]
        mi = idx[j]
        for t in range(ntap):
            v = src[j * sw + t * dw]
            take = (v > m) | (v != v)
            m = v if take else m
            mi = (flat0 + j * sw + t * dw) if take else mi
        o[j] = m
        idx[j] = mi


cdef inline void _max_taps(const floating* src, floating* o, Py_ssize_t n,
                           Py_ssize_t sw, int ntap, Py_ssize_t dw) noexcept nogil:
    """As ``_max_taps_idx`` without indices."""
    cdef Py_ssize_t j
    cdef int t
    cdef floating v, m
    for j in range(n):
        m = o[j]
        for t in range(ntap):
            v = src[j * sw + t * dw]
            m = v if ((v > m) | (v != v)) else m
        o[j] = m


cdef void _max_kernel_row(const floating* src, floating* o, int64_t* idx,
                          Py_ssize_t n, int sw, int kw, Py_ssize_t dw,
                          int64_t flat0) noexcept nogil:
    """All ``kw`` taps of one kernel row, in groups of up to three columns per pass
    over the outputs (fewer loads and stores of the running maxima); ``idx`` may be
    NULL."""
    cdef int t0 = 0, g
    while t0 < kw:
        g = kw - t0
        if g > 3:
            g = 3
        if idx != NULL:
            if sw == 1:
                if g == 3:
                    _max_taps_idx(src, o, idx, n, 1, 3, dw, flat0)
                elif g == 2:
                    _max_taps_idx(src, o, idx, n, 1, 2, dw, flat0)
                else:
                    _max_taps_idx(src, o, idx, n, 1, 1, dw, flat0)
            elif sw == 2:
                if g == 3:
                    _max_taps_idx(src, o, idx, n, 2, 3, dw, flat0)
                elif g == 2:
                    _max_taps_idx(src, o, idx, n, 2, 2, dw, flat0)
                else:
                    _max_taps_idx(src, o, idx, n, 2, 1, dw, flat0)
            else:
                if g == 3:
                    _max_taps_idx(src, o, idx, n, sw, 3, dw, flat0)
                elif g == 2:
                    _max_taps_idx(src, o, idx, n, sw, 2, dw, flat0)
                else:
                    _max_taps_idx(src, o, idx, n, sw, 1, dw, flat0)
        else:
            if sw == 1:
                if g == 3:
                    _max_taps(src, o, n, 1, 3, dw)
                elif g == 2:
                    _max_taps(src, o, n, 1, 2, dw)
                else:
                    _max_taps(src, o, n, 1, 1, dw)
            elif sw == 2:
                if g == 3:
                    _max_taps(src, o, n, 2, 3, dw)
                elif g == 2:
                    _max_taps(src, o, n, 2, 2, dw)
                else:
                    _max_taps(src, o, n, 2, 1, dw)
            else:
                if g == 3:
                    _max_taps(src, o, n, sw, 3, dw)
                elif g == 2:
                    _max_taps(src, o, n, sw, 2, dw)
                else:
                    _max_taps(src, o, n, sw, 1, dw)
        src += g * dw
        flat0 += g * dw
        t0 += g


cdef void _max_row_padded(const floating* xp, floating* orow, int64_t* irow,
                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW, Py_ssize_t OWr,
                          Py_ssize_t oh, const Py_ssize_t* first,
                          floating* srow, floating* mrow, int64_t* mirow,
                          int kh, int kw, int sh, int sw, int ph, int pw,
                          int dh, int dw) noexcept nogil:
    """One output row through per-thread scratch, with no edge cases at all:

        srow[pw + iw] = x[ih][iw], -inf elsewhere (set once per thread; only the
                        middle is rewritten), so every tap of every column is a load
        mrow[0:OWr], mirow[0:OWr]  running max / index; OWr = OW rounded up to 16,
                        so every pass is whole vectors (columns past OW discarded)

    A padding tap is -inf, which never replaces the running max (not greater, not
    NaN), so this is PyTorch's loop over valid taps exactly. ``first[ow]`` is the
    first valid column of window ow (PyTorch's ``iw0`` after skipping padding)."""
    cdef Py_ssize_t ih0 = oh * sh - ph
    cdef Py_ssize_t ih1 = ih0 + <Py_ssize_t>(kh - 1) * dh + 1
    cdef Py_ssize_t j, ih
    if ih1 > H:
        ih1 = H
    if ih0 < 0:          # the first row tap inside the plane (O(1), not O(padding))
        ih0 += _ceil_div(-ih0, dh) * dh
    for j in range(OWr):
        mrow[j] = -INFINITY
    if irow != NULL:
        for j in range(OW):
            mirow[j] = ih0 * W + first[j]
        for j in range(OW, OWr):
            mirow[j] = 0
    ih = ih0
    while ih < ih1:
        memcpy(srow + pw, xp + ih * W, W * sizeof(floating))
        # padded column c is input column c - pw: tap (j, t) has flat index
        # ih*W - pw + j*sw + t*dw
        _max_kernel_row(srow, mrow, mirow if irow != NULL else NULL, OWr, sw, kw, dw,
                        ih * W - pw)
        ih += dh
    memcpy(orow, mrow, OW * sizeof(floating))
    if irow != NULL:
        memcpy(irow, mirow, OW * sizeof(int64_t))


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
    cdef Py_ssize_t OWr = (OW + 15) // 16 * 16
    cdef Py_ssize_t span, t_lo, t_hi
    cdef Py_ssize_t Lp, r, p, oh, j, c
    cdef int64_t[:, :, ::1] ind
    cdef int64_t* ip = NULL
    cdef int64_t* irow
    cdef const floating* xp
    cdef floating* op
    cdef Py_ssize_t* first
    cdef floating* srow
    cdef floating* mrow
    cdef int64_t* mirow
    cdef int nfail = 0
    if P == 0 or OH == 0 or OW == 0:
        return
    if indices is not None:
        ind = indices
        ip = &ind[0, 0, 0]
    xp = &x[0, 0, 0]
    op = &out[0, 0, 0]
    # Scratch is sized by what is read, not by the window: column taps that fall in the
    # padding for every output column (t < t_lo or t >= t_hi) can never be the maximum
    # (-inf), so they are dropped, with the padding moved by as many taps. The window
    # keeps its order and every flat index, and spans at most the row plus the output's
    # extent, however large kernel_w or pad_w are.
    t_lo = _ceil_div(<Py_ssize_t>pad_w - (OW - 1) * stride_w, dilation_w)
    if t_lo > pad_w // dilation_w:
        t_lo = pad_w // dilation_w       # keep the padding >= 0
    if t_lo < 0:
        t_lo = 0
    t_hi = _ceil_div(<Py_ssize_t>pad_w + W, dilation_w)
    if t_hi > kernel_w:
        t_hi = kernel_w
    if t_hi <= t_lo:
        t_hi = t_lo + 1
    kernel_w = <int>(t_hi - t_lo)
    pad_w = <int>(pad_w - t_lo * dilation_w)
    if kernel_h > H + (OH - 1) * <Py_ssize_t>stride_h + pad_h:
        kernel_h = <int>(H + (OH - 1) * stride_h + pad_h)   # rows past that are never read
    span = <Py_ssize_t>(kernel_w - 1) * dilation_w + 1
    # Padded row length: every tap of the OWr columns, and the whole input row. Whole
    # vectors (OWr) only while that keeps the row near the input's size: with a stride
    # far beyond the row (2**22 would ask ~250 MB per thread) the exact OW columns are
    # used, and then Lp < pad_w + W + span, since the last window starts in the row.
    Lp = (OWr - 1) * stride_w + span
    if Lp > 4 * (pad_w + W) + 1024:
        OWr = OW
        Lp = (OW - 1) * stride_w + span
    if Lp < pad_w + W:
        Lp = pad_w + W
    first = <Py_ssize_t*>malloc(OW * sizeof(Py_ssize_t))
    if first == NULL:
        raise MemoryError()
    for j in range(OW):
        c = j * stride_w - pad_w
        if c < 0:
            c += _ceil_div(-c, dilation_w) * dilation_w
        first[j] = c
    # (assigned again in each thread; set here so the compiler sees them initialised)
    srow = mrow = NULL
    mirow = NULL
    c = 0

    num_threads = _team(num_threads, P * OH * OWr * kernel_h * kernel_w)

    with nogil, parallel(num_threads=num_threads):
        srow = <floating*>malloc(Lp * sizeof(floating))
        mrow = <floating*>malloc(OWr * sizeof(floating))
        mirow = <int64_t*>malloc(OWr * sizeof(int64_t)) if ip != NULL else NULL
        if srow != NULL:
            for c in range(Lp):
                srow[c] = -INFINITY
        # one output row per work item: whole planes per thread when P is large,
        # rows of one plane shared out when P is small
        for r in prange(P * OH, schedule='static'):
            if srow == NULL or mrow == NULL or (ip != NULL and mirow == NULL):
                nfail += 1
            else:
                p = r // OH
                oh = r - p * OH
                irow = (ip + r * OW) if ip != NULL else NULL
                _max_row_padded(xp + p * H * W, op + r * OW, irow, H, W, OW, OWr, oh,
                                first, srow, mrow, mirow,
                                kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                dilation_h, dilation_w)
        free(srow)
        free(mrow)
        free(mirow)
    free(first)
    if nfail:
        raise MemoryError("max_pool2d: could not allocate the per-thread scratch rows")


# ----------------------------------------------------------------------------------
# average pooling
# ----------------------------------------------------------------------------------

cdef inline void _sum_taps(const floating* src, floating* o, Py_ssize_t n,
                           Py_ssize_t sw, int ntap) noexcept nogil:
    """``o[j] += src[j*sw + t]`` for t = 0..ntap-1 in that order (PyTorch's order,
    so the same rounding), over ``n`` interior outputs; literal ``sw``/``ntap``."""
    cdef Py_ssize_t j
    cdef int t
    cdef floating acc
    for j in range(n):
        acc = o[j]
        for t in range(ntap):
            acc = acc + src[j * sw + t]
        o[j] = acc


cdef void _sum_kernel_row(const floating* src, floating* o, Py_ssize_t n,
                          int sw, int kw) noexcept nogil:
    """All ``kw`` taps of one kernel row, up to three columns per pass."""
    cdef int t0 = 0, g
    while t0 < kw:
        g = kw - t0
        if g > 3:
            g = 3
        if sw == 1:
            if g == 3:
                _sum_taps(src, o, n, 1, 3)
            elif g == 2:
                _sum_taps(src, o, n, 1, 2)
            else:
                _sum_taps(src, o, n, 1, 1)
        elif sw == 2:
            if g == 3:
                _sum_taps(src, o, n, 2, 3)
            elif g == 2:
                _sum_taps(src, o, n, 2, 2)
            else:
                _sum_taps(src, o, n, 2, 1)
        else:
            if g == 3:
                _sum_taps(src, o, n, sw, 3)
            elif g == 2:
                _sum_taps(src, o, n, sw, 2)
            else:
                _sum_taps(src, o, n, sw, 1)
        src += g
        t0 += g


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
    cdef Py_ssize_t ih0c, ih1c, div, ow, ih, n = hi - lo
    cdef Py_ssize_t c0 = lo * sw - pw
    cdef floating d
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
        _sum_kernel_row(xp + ih * W + c0, orow + lo, n, sw, kw)
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


cdef void _avg_global_block(const floating* xp, floating* op, Py_ssize_t nplanes,
                            Py_ssize_t H, Py_ssize_t W, int kh, int kw,
                            floating d) noexcept nogil:
    """One output per plane, window rows [0, kh) x columns [0, kw) (no padding), for up
    to 16 planes at once: each plane's sum keeps PyTorch's order (rows outer, columns
    inner), but the 16 independent sums interleave, so the adds pipeline instead of
    waiting on one dependency chain (global average pooling: ~8x faster)."""
    cdef floating acc[16]
    cdef Py_ssize_t j, ih, iw, plane = H * W
    for j in range(nplanes):
        acc[j] = 0
    for ih in range(kh):
        for iw in range(kw):
            for j in range(nplanes):
                acc[j] += xp[j * plane + ih * W + iw]
    for j in range(nplanes):
        op[j] = acc[j] / d + 0


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
    cdef Py_ssize_t r, p, oh, lo, hi, unused
    cdef floating d
    if P == 0 or OH == 0 or OW == 0:
        return
    xp = &x[0, 0, 0]
    op = &out[0, 0, 0]
    # Interior columns [lo, hi): the window's first tap (offset -pad_w) and its last
    # (kernel_w - 1 - pad_w) both inside the row.
    _tap_range(-pad_w, stride_w, W, OW, &lo, &unused)
    _tap_range(kernel_w - 1 - pad_w, stride_w, W, OW, &unused, &hi)
    if hi < lo:
        hi = lo
    num_threads = _team(num_threads, P * OH * OW * kernel_h * kernel_w)

    if OH == 1 and OW == 1 and pad_h == 0 and pad_w == 0 and kernel_h <= H and kernel_w <= W:
        # One unpadded window inside each plane (global pooling): blocks of 16 planes.
        # (ceil_mode can give a window larger than the plane: that takes the row path.)
        d = <floating>(divisor_override if divisor_override != 0 else kernel_h * kernel_w)
        with nogil, parallel(num_threads=num_threads):
            for r in prange((P + 15) // 16, schedule='static'):
                _avg_global_block(xp + r * 16 * H * W, op + r * 16,
                                  16 if P - r * 16 >= 16 else P - r * 16, H, W,
                                  kernel_h, kernel_w, d)
        return

    with nogil, parallel(num_threads=num_threads):
        for r in prange(P * OH, schedule='static'):
            p = r // OH
            oh = r - p * OH
            _avg_row(xp + p * H * W, op + r * OW, H, W, OW, oh, lo, hi,
                     kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     count_include_pad, divisor_override)
