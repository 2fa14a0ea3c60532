"""Direct convolution: the always-applicable fallback, and the depthwise fast path.

conv2d_direct     any kernel size, stride, dilation, zero padding and groups. Row-wise:
                  for each output row, OCB output channels are accumulated at once in a
                  small per-thread buffer acc[OCB][OW] (it stays in L1); every (ic, kh)
                  input row is loaded once and feeds OCB rows of accumulators. For each
                  kw tap the range of ow whose input column lies inside [0, W) is
                  computed analytically, so the inner loop is branch-free and, for stride
                  1, contiguous: it vectorises. Padding taps are skipped, never copied.
conv2d_depthwise  groups == C_in (depth multiplier m = C_out / C_in). Each input plane
                  (or band of rows) is copied once into a zero-padded per-thread block
                  whose width is a multiple of the stride; then every output is the same
                  branch-free expression at a constant offset, vectorised along ow. 3x3
                  is specialised (9 weights in registers, one pass, stride 1 and 2
                  unrolled). Small planes are computed over the padded block flattened
                  ("wide rows", garbage columns computed and dropped) so the vector loop
                  is long even for 7x7 outputs.

Both accumulate in the input dtype with plain multiply-add (NaN/inf propagate as in
torch). Output size, per dimension:  OH = (H + pt + pb - dh*(kH-1) - 1) // sh + 1.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

cdef enum:
    # Output channels accumulated together by conv2d_direct (shares every input row load).
    OCB = 4
    # Depthwise: cap on the padded block per thread, in elements (~128 KB of float32: L2).
    DW_BLOCK_ELEMS = 32768
    # Depthwise: below this output width use flattened "wide rows" (longer vector loops).
    DW_WIDE_MAX_OW = 32


# ----------------------------------------------------------------------------------
# small integer helpers

cdef inline Py_ssize_t _floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """floor(a / b) for b > 0 (C division truncates toward zero)."""
    cdef Py_ssize_t q = a // b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return -_floor_div(-a, b)


cdef inline void _tap_range(Py_ssize_t off, Py_ssize_t s, Py_ssize_t W, Py_ssize_t OW,
                            Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the ow with 0 <= ow*s + off < W, clipped to [0, OW)."""
    cdef Py_ssize_t a = _ceil_div(-off, s)
    cdef Py_ssize_t b = _floor_div(W - 1 - off, s) + 1
    if a < 0:
        a = 0
    if b > OW:
        b = OW
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef inline void _tasks_split(Py_ssize_t base, Py_ssize_t OH, int nt,
                              Py_ssize_t* nchunk, Py_ssize_t* rows) noexcept nogil:
    """Split OH into chunks so that base * nchunk tasks give every thread ~4 tasks."""
    cdef Py_ssize_t want = 1
    if base < 4 * nt:
        want = _ceil_div(4 * nt, base)
    if want > OH:
        want = OH
    if want < 1:
        want = 1
    rows[0] = _ceil_div(OH, want)
    nchunk[0] = _ceil_div(OH, rows[0])


# ----------------------------------------------------------------------------------
# conv2d_direct

cdef inline void _axpy1(floating* acc, const floating* src, Py_ssize_t n, Py_ssize_t sx,
                        floating w) noexcept nogil:
    """acc[i] += w * src[i*sx], i < n."""
    cdef Py_ssize_t i
    if sx == 1:                          # contiguous: vectorises
        for i in range(n):
            acc[i] += w * src[i]
    else:
        for i in range(n):
            acc[i] += w * src[i * sx]


cdef inline void _axpy4(floating* acc, Py_ssize_t ld, const floating* src, Py_ssize_t n,
                        Py_ssize_t sx, const floating* w, Py_ssize_t wld) noexcept nogil:
    """acc[b][i] += w[b*wld] * src[i*sx] for b < 4, i < n; acc rows ``ld`` apart.

    One load of the input feeds four accumulator rows (four output channels).
    """
    cdef floating* a0 = acc
    cdef floating* a1 = acc + ld
    cdef floating* a2 = acc + 2 * ld
    cdef floating* a3 = acc + 3 * ld
    cdef floating w0 = w[0], w1 = w[wld], w2 = w[2 * wld], w3 = w[3 * wld]
    cdef floating v
    cdef Py_ssize_t i
    if sx == 1:
        for i in range(n):
            v = src[i]
            a0[i] += w0 * v
            a1[i] += w1 * v
            a2[i] += w2 * v
            a3[i] += w3 * v
    else:
        for i in range(n):
            v = src[i * sx]
            a0[i] += w0 * v
            a1[i] += w1 * v
            a2[i] += w2 * v
            a3[i] += w3 * v


cdef inline void _store_row(floating* dst, const floating* acc, Py_ssize_t n,
                            bint relu) noexcept nogil:
    """dst[i] = acc[i], clamped at 0 when relu (NaN stays NaN, as torch's relu)."""
    cdef Py_ssize_t i
    cdef floating v
    if relu:
        for i in range(n):
            v = acc[i]
            dst[i] = 0 if v < 0 else v
    else:
        memcpy(dst, acc, <size_t>n * sizeof(floating))


cdef void _direct_task(const floating* x, const floating* wt, const floating* bias,
                       floating* out, floating* acc,
                       Py_ssize_t n, Py_ssize_t g, Py_ssize_t ob, Py_ssize_t oh0, Py_ssize_t oh1,
                       Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t Cout, Py_ssize_t OH, Py_ssize_t OW,
                       Py_ssize_t Cgi, Py_ssize_t Cgo, Py_ssize_t kH, Py_ssize_t kW,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                       Py_ssize_t dh, Py_ssize_t dw, bint relu) noexcept nogil:
    """Output rows [oh0, oh1) of channels oc0 .. oc0+nb-1 (one block of group g), image n.

    acc[OCB][OW] (scratch) holds one output row of each channel of the block.
    """
    cdef Py_ssize_t oc0 = g * Cgo + ob * OCB
    cdef Py_ssize_t nb = Cgo - ob * OCB
    cdef Py_ssize_t oh, ic, kh, kw, ih, b, lo, hi, off, i
    cdef Py_ssize_t wld = Cgi * kH * kW          # weight stride between output channels
    cdef const floating* xrow
    cdef const floating* wp
    cdef floating bv
    if nb > OCB:
        nb = OCB
    for oh in range(oh0, oh1):
        for b in range(nb):                       # acc = bias (or 0)
            bv = bias[oc0 + b] if bias != NULL else 0
            for i in range(OW):
                acc[b * OW + i] = bv
        for ic in range(Cgi):
            for kh in range(kH):
                ih = oh * sh - pt + kh * dh
                if ih < 0 or ih >= H:             # whole input row is padding: skip
                    continue
                xrow = x + ((n * C + g * Cgi + ic) * H + ih) * W
                wp = wt + (oc0 * Cgi + ic) * kH * kW + kh * kW
                for kw in range(kW):
                    off = kw * dw - pl            # iw = ow*sw + off
                    _tap_range(off, sw, W, OW, &lo, &hi)
                    if lo >= hi:
                        continue
                    if nb == OCB:
                        _axpy4(acc + lo, OW, xrow + lo * sw + off, hi - lo, sw, wp + kw, wld)
                    else:
                        for b in range(nb):
                            _axpy1(acc + b * OW + lo, xrow + lo * sw + off, hi - lo, sw,
                                   wp[b * wld + kw])
        for b in range(nb):
            _store_row(out + ((n * Cout + oc0 + b) * OH + oh) * OW, acc + b * OW, OW, relu)


def conv2d_direct(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight, bias,
                  floating[:, :, :, ::1] out, int stride_h, int stride_w, int pad_top,
                  int pad_left, int dilation_h, int dilation_w, int groups, int num_threads,
                  bint relu=False):
    """Direct 2-D convolution (cross-correlation, as torch), any parameters.

    IN   x[N][C_in][H][W]
         weight[C_out][C_in/groups][kH][kW]
         bias   None or bias[C_out] (same dtype)
    OUT  out[N][C_out][OH][OW], every element overwritten;
         OH = (H + pt + pb - dh*(kH-1) - 1) // sh + 1 (likewise OW); out's shape fixes
         the bottom/right zero padding pb, pr.

         out[n][oc][oh][ow] = bias[oc] + sum_{ic < C_in/g, kh, kw}
             weight[oc][ic][kh][kw] * x[n][g*C_in/g + ic][oh*sh - pt + kh*dh][ow*sw - pl + kw*dw]
         with g = oc // (C_out/groups); taps outside the input contribute 0 (skipped);
         relu: out = max(out, 0) in the same write.
    Parallel (static) over tasks (n, group, block of 4 output channels, band of output
    rows); bands are only split when there are too few tasks for the threads.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Cout = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t kH = weight.shape[2], kW = weight.shape[3]
    cdef Py_ssize_t G = groups, Cgi = C // groups, Cgo = Cout // groups
    cdef Py_ssize_t nob = (Cgo + OCB - 1) // OCB
    cdef Py_ssize_t base = N * G * nob
    cdef Py_ssize_t nchunk, rows, ntask, t, r, chunk, ob, g, n, oh0, oh1
    cdef const floating[::1] bview
    cdef const floating* bp = NULL
    cdef floating* acc
    cdef int nfail = 0
    if N == 0 or Cout == 0 or OH == 0 or OW == 0:
        return
    if num_threads < 1:
        num_threads = 1
    if bias is not None:
        bview = bias
        bp = &bview[0]
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    _tasks_split(base, OH, num_threads, &nchunk, &rows)
    ntask = base * nchunk
    with nogil, parallel(num_threads=num_threads):
        acc = <floating*>malloc(<size_t>(OCB * OW) * sizeof(floating))   # this thread's
        for t in prange(ntask, schedule='static'):
            if acc == NULL:
                nfail += 1
                continue
            chunk = t % nchunk
            r = t // nchunk
            ob = r % nob
            r = r // nob
            g = r % G
            n = r // G
            oh0 = chunk * rows
            oh1 = oh0 + rows
            if oh1 > OH:
                oh1 = OH
            _direct_task(xp, wp, bp, op, acc, n, g, ob, oh0, oh1, C, H, W, Cout, OH, OW,
                         Cgi, Cgo, kH, kW, stride_h, stride_w, pad_top, pad_left,
                         dilation_h, dilation_w, relu)
        free(acc)
    if nfail:
        raise MemoryError("conv2d_direct: could not allocate per-thread scratch")


# ----------------------------------------------------------------------------------
# conv2d_depthwise

cdef void _dw_line(floating* dst, const floating* src, Py_ssize_t n, Py_ssize_t sw,
                   Py_ssize_t PW, Py_ssize_t dh, Py_ssize_t dw, const floating* w,
                   Py_ssize_t kH, Py_ssize_t kW, floating b, bint relu) noexcept nogil:
    """dst[i] = b + sum_{kh,kw} w[kh][kw] * src[i*sw + kh*dh*PW + kw*dw], i < n (then relu).

    ``src`` is a zero-padded block with row stride PW: every tap is in bounds, so the
    loops have no branches and vectorise along i.
    """
    cdef Py_ssize_t i, kh, kw
    cdef floating s, v
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef floating w0, w1, w2, w3, w4, w5, w6, w7, w8
    cdef Py_ssize_t d1, d2
    if kH == 3 and kW == 3:
        # 9 weights in registers, one pass over the output line
        r0 = src
        r1 = src + dh * PW
        r2 = src + 2 * dh * PW
        d1 = dw
        d2 = 2 * dw
        w0 = w[0]; w1 = w[1]; w2 = w[2]
        w3 = w[3]; w4 = w[4]; w5 = w[5]
        w6 = w[6]; w7 = w[7]; w8 = w[8]
        if sw == 1:
            for i in range(n):
                s = (b + w0 * r0[i] + w1 * r0[i + d1] + w2 * r0[i + d2]
                     + w3 * r1[i] + w4 * r1[i + d1] + w5 * r1[i + d2]
                     + w6 * r2[i] + w7 * r2[i + d1] + w8 * r2[i + d2])
                dst[i] = s
        elif sw == 2:
            for i in range(n):
                s = (b + w0 * r0[2 * i] + w1 * r0[2 * i + d1] + w2 * r0[2 * i + d2]
                     + w3 * r1[2 * i] + w4 * r1[2 * i + d1] + w5 * r1[2 * i + d2]
                     + w6 * r2[2 * i] + w7 * r2[2 * i + d1] + w8 * r2[2 * i + d2])
                dst[i] = s
        else:
            for i in range(n):
                s = (b + w0 * r0[sw * i] + w1 * r0[sw * i + d1] + w2 * r0[sw * i + d2]
                     + w3 * r1[sw * i] + w4 * r1[sw * i + d1] + w5 * r1[sw * i + d2]
                     + w6 * r2[sw * i] + w7 * r2[sw * i + d1] + w8 * r2[sw * i + d2])
                dst[i] = s
    else:
        # any kernel: one branch-free axpy per tap over the line (dst stays in cache)
        for i in range(n):
            dst[i] = b
        for kh in range(kH):
            for kw in range(kW):
                _axpy1(dst, src + kh * dh * PW + kw * dw, n, sw, w[kh * kW + kw])
    if relu:
        for i in range(n):
            v = dst[i]
            dst[i] = 0 if v < 0 else v


cdef void _dw_task(const floating* x, const floating* wt, const floating* bias,
                   floating* out, floating* blk, floating* wide,
                   Py_ssize_t n, Py_ssize_t c, Py_ssize_t oh0, Py_ssize_t oh1,
                   Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t mult,
                   Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kH, Py_ssize_t kW,
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                   Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t PW, bint relu) noexcept nogil:
    """Output rows [oh0, oh1) of channels c*mult .. c*mult+mult-1, image n.

    blk = zero-padded input rows R in [oh0*sh, (oh1-1)*sh + (kH-1)*dh] (padded
    coordinates, row stride PW):  blk[R - oh0*sh][pl + iw] = x[n][c][R - pt][iw].
    """
    cdef Py_ssize_t R0 = oh0 * sh
    cdef Py_ssize_t nrows = (oh1 - oh0 - 1) * sh + (kH - 1) * dh + 1
    cdef Py_ssize_t r, ih, m, oc, oh, j, Q
    cdef Py_ssize_t WW = sh * PW // sw     # wide-row length: PW is a multiple of sw
    cdef Py_ssize_t tail = PW - pl - W
    cdef const floating* xplane = x + (n * C + c) * H * W
    cdef floating* dst
    cdef floating bv
    for r in range(nrows):                  # src = x plane band, dst = padded block
        ih = R0 + r - pt
        if ih < 0 or ih >= H:
            memset(blk + r * PW, 0, <size_t>PW * sizeof(floating))
        else:
            if pl > 0:
                memset(blk + r * PW, 0, <size_t>pl * sizeof(floating))
            memcpy(blk + r * PW + pl, xplane + ih * W, <size_t>W * sizeof(floating))
            if tail > 0:
                memset(blk + r * PW + pl + W, 0, <size_t>tail * sizeof(floating))
    for m in range(mult):
        oc = c * mult + m
        bv = bias[oc] if bias != NULL else 0
        dst = out + ((n * C * mult + oc) * OH + oh0) * OW
        if wide != NULL:
            # flattened: wide[q], q = (oh-oh0)*WW + ow, reads blk[sw*q + taps]; the
            # columns ow >= OW of each wide row are computed and dropped.
            Q = (oh1 - oh0 - 1) * WW + OW
            _dw_line(wide, blk, Q, sw, PW, dh, dw, wt + oc * kH * kW, kH, kW, bv, relu)
            for oh in range(oh1 - oh0):
                memcpy(dst + oh * OW, wide + oh * WW, <size_t>OW * sizeof(floating))
        else:
            for oh in range(oh1 - oh0):
                _dw_line(dst + oh * OW, blk + oh * sh * PW, OW, sw, PW, dh, dw,
                         wt + oc * kH * kW, kH, kW, bv, relu)


def conv2d_depthwise(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight, bias,
                     floating[:, :, :, ::1] out, int stride_h, int stride_w, int pad_top,
                     int pad_left, int dilation_h, int dilation_w, int num_threads,
                     bint relu=False):
    """Depthwise 2-D convolution: groups == C_in, depth multiplier m = C_out / C_in.

    IN   x[N][C_in][H][W]
         weight[C_out][1][kH][kW]
         bias   None or bias[C_out] (same dtype)
    OUT  out[N][C_out][OH][OW], every element overwritten;
         OH = (H + pt + pb - dh*(kH-1) - 1) // sh + 1 (likewise OW);

         out[n][oc][oh][ow] = bias[oc] + sum_{kh, kw}
             weight[oc][0][kh][kw] * x[n][oc // m][oh*sh - pt + kh*dh][ow*sw - pl + kw*dw]
         with zero padding; relu: out = max(out, 0) in the same write.
    Parallel (static) over (n, input channel, band of output rows); each task pads its
    input band once into per-thread scratch and computes all m output channels from it.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Cout = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t kH = weight.shape[2], kW = weight.shape[3]
    cdef Py_ssize_t mult = Cout // C
    cdef Py_ssize_t sh = stride_h, sw = stride_w
    cdef Py_ssize_t PW, WW, nchunk, rows, cap_rows, ntask, t, r, chunk, c, n, oh0, oh1
    cdef Py_ssize_t blk_elems, wide_elems
    cdef bint use_wide
    cdef const floating[::1] bview
    cdef const floating* bp = NULL
    cdef floating* blk
    cdef floating* wide
    cdef int nfail = 0
    if N == 0 or Cout == 0 or OH == 0 or OW == 0:
        return
    if num_threads < 1:
        num_threads = 1
    if bias is not None:
        bview = bias
        bp = &bview[0]
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    # padded width: holds the left pad, the input and every tap of the last output
    # column; rounded up to a multiple of sw so that wide rows have a whole length.
    PW = W + pad_left
    if sw * (OW - 1) + (kW - 1) * dilation_w + 1 > PW:
        PW = sw * (OW - 1) + (kW - 1) * dilation_w + 1
    PW = _ceil_div(PW, sw) * sw
    WW = sh * PW // sw
    use_wide = OW < DW_WIDE_MAX_OW
    # bands of output rows: enough tasks for the threads, and the padded band in L2
    _tasks_split(N * C, OH, num_threads, &nchunk, &rows)
    cap_rows = (DW_BLOCK_ELEMS // PW - (kH - 1) * dilation_h - 1) // sh + 1
    if cap_rows < 1:
        cap_rows = 1
    if rows > cap_rows:
        rows = cap_rows
        nchunk = _ceil_div(OH, rows)
    blk_elems = ((rows - 1) * sh + (kH - 1) * dilation_h + 1) * PW
    wide_elems = (rows - 1) * WW + OW
    ntask = N * C * nchunk
    with nogil, parallel(num_threads=num_threads):
        blk = <floating*>malloc(<size_t>blk_elems * sizeof(floating))      # this thread's
        wide = <floating*>malloc(<size_t>wide_elems * sizeof(floating)) if use_wide else NULL
        for t in prange(ntask, schedule='static'):
            if blk == NULL or (use_wide and wide == NULL):
                nfail += 1
                continue
            chunk = t % nchunk
            r = t // nchunk
            c = r % C
            n = r // C
            oh0 = chunk * rows
            oh1 = oh0 + rows
            if oh1 > OH:
                oh1 = OH
            _dw_task(xp, wp, bp, op, blk, wide, n, c, oh0, oh1, C, H, W, mult, OH, OW,
                     kH, kW, sh, sw, pad_top, pad_left, dilation_h, dilation_w, PW, relu)
        free(blk)
        free(wide)
    if nfail:
        raise MemoryError("conv2d_depthwise: could not allocate per-thread scratch")
