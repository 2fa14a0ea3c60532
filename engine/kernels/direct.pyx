"""Direct convolution: the always-applicable fallback, and the depthwise fast path.

conv2d_direct     any kernel size, stride, dilation, zero padding and groups. Row-wise:
                  for each output row, OCB output channels are accumulated at once in a
                  small per-thread buffer acc[OCB][OW] (it stays in L1); every (ic, kh)
                  input row is loaded once and feeds OCB rows of accumulators. For each
                  kw tap the range of ow whose input column lies inside [0, W) is
                  computed analytically, so the inner loop is branch-free and, for stride
                  1, contiguous: it vectorises. Padding taps are skipped, never copied.
                  For kW == 3 the three taps of a kernel row are fused over the ow range
                  where all are inside (each accumulator loaded once per 12 FMAs).
conv2d_depthwise  groups == C_in (depth multiplier m = C_out / C_in). Each input plane
                  (or band of rows) is copied once into a zero-padded per-thread block
                  whose width PW is a multiple of the stride; then every output is the
                  same branch-free expression at a constant offset. The block is walked
                  flattened ("wide rows": q = oh*WW + ow, WW = sh*PW/sw, the garbage
                  columns ow >= OW computed and dropped, the length rounded up to whole
                  vectors), so the vector loop is long and has no scalar remainder even
                  for 7x7 outputs. 3x3 is specialised (9 weights in registers, one pass,
                  stride 1 and 2 unrolled). Strided layers run one line per output row
                  instead (a flattened wide row would be twice OW at stride 2), and 3x3
                  stride 2 keeps each padded row split into its even and odd columns, so
                  every tap is a stride-1 run (_dw_line_s2): MobileNet's 64-channel
                  112x112 stride-2 layer 0.65 of the time on a Zen 4 (one thread).
                  Whole planes of up to DW_SMALL_PLANE pixels of a 3x3 stride-1 layer
                  padded by 1 all round skip the padded block: three shifted copies of
                  the flattened plane (_dw_small_stage), and each output plane computed
                  straight into out (_dw_small_plane): 1024 channels at 7x7 and 512 at
                  14x14 0.68-0.73 of the time on a Zen 3 (one thread, bitwise equal).

Both accumulate in the input dtype with plain multiply-add (NaN/inf propagate as in
torch). Output size, per dimension:  OH = (H + pt + pb - dh*(kH-1) - 1) // sh + 1.
"""
import numpy

from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from ._ranges cimport _ceil_div, _tap_range
from ._rows cimport _copy_strided
from ._shares cimport ws_share_t, ws_next, shares_new
from ._thread_scratch cimport ts_get

cdef enum:
    # Output channels accumulated together by conv2d_direct (shares every input row load).
    OCB = 4
    # Depthwise: cap on the padded block per thread, in elements (~128 KB of float32: L2).
    DW_BLOCK_ELEMS = 32768
    # Depthwise: wide-row loops run in whole multiples of this many elements (a zmm
    # of float32); the scratch has that much slack.
    DW_VEC = 16
    # Depthwise 3x3 stride-1 'same' layers on planes of at most this many pixels run on
    # three shifted copies of each whole plane (_dw_small_stage / _dw_small_plane).
    DW_SMALL_PLANE = 64 * 64


# ----------------------------------------------------------------------------------
# small integer helpers

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


cdef inline void _axpy4_k3(floating* acc, Py_ssize_t ld, const floating* src, Py_ssize_t n,
                           Py_ssize_t sx, Py_ssize_t d, const floating* w,
                           Py_ssize_t wld) noexcept nogil:
    """acc[b][i] += sum_{k<3} w[b*wld + k] * src[i*sx + k*d], b < 4, i < n.

    Three taps of one kernel row fused: each accumulator is loaded and stored once per
    12 multiply-adds instead of once per 4 (the accumulators, not the FMAs, bound the
    per-tap loop). Only for the ow range where all three taps are inside the input.
    """
    cdef floating* a0 = acc
    cdef floating* a1 = acc + ld
    cdef floating* a2 = acc + 2 * ld
    cdef floating* a3 = acc + 3 * ld
    cdef floating w00 = w[0], w01 = w[1], w02 = w[2]
    cdef floating w10 = w[wld], w11 = w[wld + 1], w12 = w[wld + 2]
    cdef floating w20 = w[2 * wld], w21 = w[2 * wld + 1], w22 = w[2 * wld + 2]
    cdef floating w30 = w[3 * wld], w31 = w[3 * wld + 1], w32 = w[3 * wld + 2]
    cdef floating v0, v1, v2
    cdef Py_ssize_t i
    if sx == 1:
        for i in range(n):
            v0 = src[i]
            v1 = src[i + d]
            v2 = src[i + 2 * d]
            a0[i] += w00 * v0 + w01 * v1 + w02 * v2
            a1[i] += w10 * v0 + w11 * v1 + w12 * v2
            a2[i] += w20 * v0 + w21 * v1 + w22 * v2
            a3[i] += w30 * v0 + w31 * v1 + w32 * v2
    elif sx == 2:
        for i in range(n):
            v0 = src[2 * i]
            v1 = src[2 * i + d]
            v2 = src[2 * i + 2 * d]
            a0[i] += w00 * v0 + w01 * v1 + w02 * v2
            a1[i] += w10 * v0 + w11 * v1 + w12 * v2
            a2[i] += w20 * v0 + w21 * v1 + w22 * v2
            a3[i] += w30 * v0 + w31 * v1 + w32 * v2
    else:
        for i in range(n):
            v0 = src[i * sx]
            v1 = src[i * sx + d]
            v2 = src[i * sx + 2 * d]
            a0[i] += w00 * v0 + w01 * v1 + w02 * v2
            a1[i] += w10 * v0 + w11 * v1 + w12 * v2
            a2[i] += w20 * v0 + w21 * v1 + w22 * v2
            a3[i] += w30 * v0 + w31 * v1 + w32 * v2


cdef inline void _row_taps(floating* acc, Py_ssize_t ld, const floating* xrow, Py_ssize_t nb,
                           const floating* wp, Py_ssize_t wld, Py_ssize_t kW, Py_ssize_t sw,
                           Py_ssize_t pl, Py_ssize_t dw, const Py_ssize_t* tr,
                           Py_ssize_t lo0, Py_ssize_t hi0) noexcept nogil:
    """acc[b][ow] += sum_kw wp[b*wld + kw] * xrow[ow*sw + kw*dw - pl] for ow in [lo0, hi0)
    whose tap lies inside [0, W) (b < nb); one input row, one kernel row, nb channels.

    tr[2*kw], tr[2*kw+1]: the precomputed ow range of tap kw (see _tap_range).
    """
    cdef Py_ssize_t kw, lo, hi, off, b
    for kw in range(kW):
        off = kw * dw - pl                       # iw = ow*sw + off
        lo = tr[2 * kw]
        hi = tr[2 * kw + 1]
        if lo < lo0:
            lo = lo0
        if hi > hi0:
            hi = hi0
        if lo >= hi:
            continue
        if nb == OCB:
            _axpy4(acc + lo, ld, xrow + lo * sw + off, hi - lo, sw, wp + kw, wld)
        else:
            for b in range(nb):
                _axpy1(acc + b * ld + lo, xrow + lo * sw + off, hi - lo, sw, wp[b * wld + kw])


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
                       floating* out, floating* acc, const Py_ssize_t* tr,
                       Py_ssize_t n, Py_ssize_t g, Py_ssize_t ob, Py_ssize_t oh0, Py_ssize_t oh1,
                       Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t Cout, Py_ssize_t OH, Py_ssize_t OW,
                       Py_ssize_t Cgi, Py_ssize_t Cgo, Py_ssize_t kH, Py_ssize_t kW,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                       Py_ssize_t dh, Py_ssize_t dw, bint relu) noexcept nogil:
    """Output rows [oh0, oh1) of channels oc0 .. oc0+nb-1 (one block of group g), image n.

    acc[OCB][OW] (scratch) holds one output row of each channel of the block;
    tr[kW][2] the ow range of each kw tap whose input column is inside [0, W).
    """
    cdef Py_ssize_t oc0 = g * Cgo + ob * OCB
    cdef Py_ssize_t nb = Cgo - ob * OCB
    cdef Py_ssize_t oh, ic, kh, ih, b, i
    cdef Py_ssize_t wld = Cgi * kH * kW          # weight stride between output channels
    cdef const floating* xrow
    cdef const floating* wp
    cdef floating bv
    cdef Py_ssize_t lo3 = 0, hi3 = 0
    cdef bint fuse3 = False
    if nb > OCB:
        nb = OCB
    if kW == 3 and nb == OCB:
        # ow range where all three taps of a kernel row are inside [0, W)
        lo3 = tr[0] if tr[0] > tr[4] else tr[4]
        hi3 = tr[1] if tr[1] < tr[5] else tr[5]
        fuse3 = hi3 - lo3 > 0
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
                if fuse3:
                    # interior: the three taps fused; the edges tap by tap
                    _axpy4_k3(acc + lo3, OW, xrow + lo3 * sw - pl, hi3 - lo3, sw, dw, wp, wld)
                    if lo3 > 0:
                        _row_taps(acc, OW, xrow, nb, wp, wld, kW, sw, pl, dw, tr, 0, lo3)
                    if hi3 < OW:
                        _row_taps(acc, OW, xrow, nb, wp, wld, kW, sw, pl, dw, tr, hi3, OW)
                else:
                    _row_taps(acc, OW, xrow, nb, wp, wld, kW, sw, pl, dw, tr, 0, OW)
        for b in range(nb):
            _store_row(out + ((n * Cout + oc0 + b) * OH + oh) * OW, acc + b * OW, OW, relu)


def copy_strided(floating[::1] dst, Py_ssize_t dst_step, const floating[::1] src,
                 Py_ssize_t src_step, Py_ssize_t n):
    """dst[i*dst_step] = src[i*src_step] for i < n through _rows._copy_strided, the row
    copy of the depthwise kernel's bands and of the padded and polyphase planes (for
    its tests: each tail length has its own path, _short_rows.h)."""
    if n < 0 or dst_step < 1 or src_step < 1:
        raise ValueError(f"copy_strided: n {n} must be >= 0 and steps {dst_step}, {src_step} >= 1")
    if n == 0:
        return
    if (n - 1) * dst_step >= dst.shape[0] or (n - 1) * src_step >= src.shape[0]:
        raise ValueError(f"copy_strided: {n} elements at steps {dst_step}, {src_step} do not "
                         f"fit dst[{dst.shape[0]}] and src[{src.shape[0]}]")
    _copy_strided(&dst[0], dst_step, &src[0], src_step, n)


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
    cdef floating* acc = NULL
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
    # per-tap ow ranges, computed once: the inner loops never divide
    tr_arr = numpy.empty(2 * kW, dtype=numpy.intp)
    cdef Py_ssize_t[::1] trv = tr_arr
    cdef const Py_ssize_t* trp = &trv[0]
    cdef Py_ssize_t kw
    for kw in range(kW):
        _tap_range(kw * dilation_w - pad_left, stride_w, W, OW, &trv[2 * kw], &trv[2 * kw + 1])
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
            _direct_task(xp, wp, bp, op, acc, trp, n, g, ob, oh0, oh1, C, H, W, Cout, OH, OW,
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
    cdef floating s, t, u, v
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
            # one sum per kernel row, then added: three chains of three FMAs instead of
            # one of nine, whose latency bound short lines (a 14x14 plane's 14 vectors)
            for i in range(n):
                s = b + w0 * r0[i] + w1 * r0[i + d1] + w2 * r0[i + d2]
                t = w3 * r1[i] + w4 * r1[i + d1] + w5 * r1[i + d2]
                u = w6 * r2[i] + w7 * r2[i + d1] + w8 * r2[i + d2]
                dst[i] = s + t + u
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


cdef void _dw_line_s2(floating* dst, const floating* src, Py_ssize_t n, Py_ssize_t PW,
                      Py_ssize_t dh, Py_ssize_t dw, const floating* w, floating b,
                      bint relu) noexcept nogil:
    """The 3x3 stride-2 line on polyphase rows: dst[i] = b + sum_{kh,kw} w[kh][kw] *
    row_kh[2*i + kw*dw] for i < n, where padded row kh (src + kh*dh*PW) holds its even
    columns first and its odd ones PW/2 later (``_dw_task``): every tap is then a
    stride-1 run, row_kh[2*i + c] = src[kh*dh*PW + (c % 2)*PW/2 + c//2 + i], so the loop
    vectorises without the permutes of a stride-2 load. The three kernel rows are summed
    separately (three short FMA chains instead of one of nine), then added; relu as
    in _dw_line.
    """
    cdef Py_ssize_t i, half = PW // 2
    cdef Py_ssize_t o0 = 0, o1 = (dw % 2) * half + dw // 2, o2 = dw   # (2*dw: even, dw floats in)
    cdef const floating* r0 = src
    cdef const floating* r1 = src + dh * PW
    cdef const floating* r2 = src + 2 * dh * PW
    cdef floating w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5]
    cdef floating w6 = w[6], w7 = w[7], w8 = w[8]
    cdef floating s0, s1, s2, v
    for i in range(n):
        s0 = b + w0 * r0[i + o0] + w1 * r0[i + o1] + w2 * r0[i + o2]
        s1 = w3 * r1[i + o0] + w4 * r1[i + o1] + w5 * r1[i + o2]
        s2 = w6 * r2[i + o0] + w7 * r2[i + o1] + w8 * r2[i + o2]
        dst[i] = s0 + s1 + s2
    if relu:
        for i in range(n):
            v = dst[i]
            dst[i] = 0 if v < 0 else v


cdef void _dw_small_stage(const floating* src, floating* buf, Py_ssize_t H,
                          Py_ssize_t W) noexcept nogil:
    """The three copies of one H x W plane that _dw_small_plane reads: copy kw (kernel
    column kw = 0, 1, 2) at buf + kw*S, S = (H+2)*W + 2, is the plane flattened with a
    zero row above and below it and a zero float before and after,

        copy[1 + (r+1)*W + c] = src[r*W + c],

    copy 0 with its last column and copy 2 with its first column zeroed: a flattened
    read of tap kw = 0 (2) at the row's first (last) output wraps around into exactly
    that column of the neighbouring row, where the padding's zero belongs."""
    cdef Py_ssize_t S = (H + 2) * W + 2, v, r
    cdef floating* B
    for v in range(3):
        B = buf + v * S
        memset(B, 0, <size_t>(1 + W) * sizeof(floating))
        _copy_strided(B + 1 + W, 1, src, 1, H * W)
        memset(B + 1 + (H + 1) * W, 0, <size_t>(W + 1) * sizeof(floating))
        if v == 0:
            for r in range(H):
                B[(r + 2) * W] = 0               # copy[1 + (r+1)*W + W-1]
        elif v == 2:
            for r in range(H):
                B[1 + (r + 1) * W] = 0


cdef void _dw_small_plane(floating* dst, const floating* buf, Py_ssize_t H, Py_ssize_t W,
                          const floating* w, floating b, bint relu) noexcept nogil:
    """One output plane of a 3x3 stride-1 depthwise layer with padding 1 on every side,
    from the copies of _dw_small_stage, flattened over q = oh*W + ow < H*W:

        dst[q] = b + sum_{kh,kw} w[kh*3 + kw] * copy_kw[q + kh*W + kw]

    (copy_kw[q + kh*W + kw] is input (oh + kh - 1, ow + kw - 1), or 0 outside it), then
    relu (v < 0 ? 0 : v, NaN kept). The plane is written straight into dst, whole: no
    padded block, no wide rows to cut, no per-row copies, which on small planes (7x7 and
    14x14) cost more than the nine FMAs per output. The sums are _dw_line's, in its
    order (three kernel rows, then added), so the results are bitwise its."""
    cdef Py_ssize_t S = (H + 2) * W + 2, n = H * W, i
    cdef const floating* l0 = buf
    cdef const floating* c0 = buf + S + 1
    cdef const floating* r0 = buf + 2 * S + 2
    cdef const floating* l1 = l0 + W
    cdef const floating* c1 = c0 + W
    cdef const floating* r1 = r0 + W
    cdef const floating* l2 = l0 + 2 * W
    cdef const floating* c2 = c0 + 2 * W
    cdef const floating* r2 = r0 + 2 * W
    cdef floating w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5]
    cdef floating w6 = w[6], w7 = w[7], w8 = w[8]
    cdef floating s, t, u, v
    if relu:
        for i in range(n):
            s = b + w0 * l0[i] + w1 * c0[i] + w2 * r0[i]
            t = w3 * l1[i] + w4 * c1[i] + w5 * r1[i]
            u = w6 * l2[i] + w7 * c2[i] + w8 * r2[i]
            v = s + t + u
            dst[i] = 0 if v < 0 else v
    else:
        for i in range(n):
            s = b + w0 * l0[i] + w1 * c0[i] + w2 * r0[i]
            t = w3 * l1[i] + w4 * c1[i] + w5 * r1[i]
            u = w6 * l2[i] + w7 * c2[i] + w8 * r2[i]
            dst[i] = s + t + u


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
    cdef Py_ssize_t r, ih, m, oc, oh, Q
    cdef Py_ssize_t WW = sh * PW // sw     # wide-row length: PW is a multiple of sw
    cdef const floating* xplane = x + (n * C + c) * H * W
    cdef floating* dst
    cdef floating bv
    # 3x3 stride 2: each padded row is stored split into its even and odd columns
    # (polyphase, _dw_line_s2), blk[r*PW + (pc % 2)*PW/2 + pc//2] = padded column pc
    cdef bint poly = kH == 3 and kW == 3 and sw == 2
    cdef Py_ssize_t half = PW // 2
    # the u whose input column 2u - pl (even) or 2u + 1 - pl (odd) lies in [0, W)
    cdef Py_ssize_t e_lo = (pl + 1) // 2, e_hi = (W - 1 + pl) // 2 + 1
    cdef Py_ssize_t o_lo = pl // 2, o_hi = (W - 2 + pl) // 2 + 1 if W + pl >= 2 else 0
    # src = x plane band, dst = padded block. blk is zeroed at the start of each call
    # (conv2d_depthwise) and its columns outside [pl, pl + W) (their places) are never
    # written, so only rows need zeroing (they may hold data of an earlier band).
    for r in range(nrows):
        ih = R0 + r - pt
        if ih < 0 or ih >= H:
            memset(blk + r * PW + (0 if poly else pl), 0, <size_t>(PW if poly else W) * sizeof(floating))
        elif poly:
            # even padded columns 2u (input column 2u - pl), then odd ones 2u + 1
            _copy_strided(blk + r * PW + e_lo, 1, xplane + ih * W + 2 * e_lo - pl, 2, e_hi - e_lo)
            _copy_strided(blk + r * PW + half + o_lo, 1, xplane + ih * W + 2 * o_lo + 1 - pl, 2,
                          o_hi - o_lo)
        else:
            _copy_strided(blk + r * PW + pl, 1, xplane + ih * W, 1, W)
    cdef Py_ssize_t WR = WW if sh == 1 and sw == 1 else _ceil_div(OW, DW_VEC) * DW_VEC
    for m in range(mult):
        oc = c * mult + m
        bv = bias[oc] if bias != NULL else 0
        dst = out + ((n * C * mult + oc) * OH + oh0) * OW
        if sh == 1 and sw == 1:
            # flattened: wide[q], q = (oh-oh0)*WW + ow, reads blk[q + taps]; the columns
            # ow >= OW of each wide row, and q >= Q up to a whole vector, are computed
            # and dropped (so the vector loop has no scalar remainder).
            Q = (oh1 - oh0 - 1) * WW + OW
            Q = _ceil_div(Q, DW_VEC) * DW_VEC
            _dw_line(wide, blk, Q, sw, PW, dh, dw, wt + oc * kH * kW, kH, kW, bv, relu)
        else:
            # strided: one line per output row, OW rounded up to a whole vector (a
            # flattened wide row would be sh*PW/sw long, twice OW at stride 2: half of
            # it computed and dropped); rows WR apart in wide
            for oh in range(oh1 - oh0):
                if poly:
                    _dw_line_s2(wide + oh * WR, blk + oh * sh * PW, WR, PW, dh, dw,
                                wt + oc * kH * kW, bv, relu)
                else:
                    _dw_line(wide + oh * WR, blk + oh * sh * PW, WR, sw, PW, dh, dw,
                             wt + oc * kH * kW, kH, kW, bv, relu)
        for oh in range(oh1 - oh0):
            _copy_strided(dst + oh * OW, 1, wide + oh * WR, 1, OW)


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
    Parallel over (n, input channel, band of output rows), in work shares with
    stealing (_shares.h); each task pads its input band once into per-thread scratch
    and computes all m output channels from it.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Cout = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t kH = weight.shape[2], kW = weight.shape[3]
    cdef Py_ssize_t mult = Cout // C
    cdef Py_ssize_t sh = stride_h, sw = stride_w
    cdef Py_ssize_t PW, WW, nchunk, rows, cap_rows, ntask, t, r, chunk, c, n, oh0, oh1, m, oc
    cdef Py_ssize_t blk_elems, wide_elems
    cdef const floating[::1] bview
    cdef const floating* bp = NULL
    cdef floating* blk = NULL
    cdef floating* wide = NULL
    cdef int nfail = 0
    if N == 0 or Cout == 0 or OH == 0 or OW == 0:
        return
    if num_threads < 1:
        num_threads = 1
    if bias is not None:
        bview = bias
        bp = &bview[0]
    # The padded band holds every tap's rows and columns. When the window's extent
    # (dilation x kernel) is far beyond both the data and the output, the band is
    # nearly all zeros (dilation = padding = 2**14 on a 4x4 image: 256 MB) and its size
    # products can overflow: the general direct kernel, which skips the taps outside
    # the input and needs one output row of scratch, computes it instead.
    if ((kW - 1) * <Py_ssize_t>dilation_w > 2 * (W + sw * OW) + 64
            or (kH - 1) * <Py_ssize_t>dilation_h > 2 * (H + sh * OH) + 64):
        conv2d_direct(x, weight, bias, out, stride_h, stride_w, pad_top, pad_left,
                      dilation_h, dilation_w, <int>C, num_threads, relu)
        return
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
    # bands of output rows: enough tasks for the threads, and the padded band in L2
    _tasks_split(N * C, OH, num_threads, &nchunk, &rows)
    cap_rows = (DW_BLOCK_ELEMS // PW - (kH - 1) * dilation_h - 1) // sh + 1
    if cap_rows < 1:
        cap_rows = 1
    if rows > cap_rows:
        rows = cap_rows
        nchunk = _ceil_div(OH, rows)
    blk_elems = ((rows - 1) * sh + (kH - 1) * dilation_h + 1) * PW
    if sh == 1 and sw == 1:
        wide_elems = _ceil_div((rows - 1) * WW + OW, DW_VEC) * DW_VEC
    else:
        wide_elems = rows * _ceil_div(OW, DW_VEC) * DW_VEC      # _dw_task's WR-long rows
    blk_elems += DW_VEC * sw       # slack read by the rounded-up vector loop
    # whole small planes of a 3x3 stride-1 layer padded by 1 all round: three shifted
    # copies of the plane instead of a padded block (_dw_small_plane)
    cdef bint small = (kH == 3 and kW == 3 and sh == 1 and sw == 1 and dilation_h == 1
                       and dilation_w == 1 and pad_top == 1 and pad_left == 1 and OH == H
                       and OW == W and nchunk == 1 and H * W <= DW_SMALL_PLANE)
    if small and blk_elems < 3 * ((H + 2) * W + 2):
        blk_elems = 3 * ((H + 2) * W + 2)
    ntask = N * C * nchunk
    # one contiguous share of the tasks per thread, with stealing (_shares.h): a 7x7
    # plane is ~50 ns of work, and with a static split the call waited at the closing
    # barrier for whichever core the shared host slowed (14% of a 1024-channel 7x7
    # layer's samples in libgomp's spin on a Zen 4)
    cdef int nt = num_threads if num_threads < ntask else <int>ntask
    cdef int tid
    cdef int64_t lo = 0, hi = 0
    cdef int64_t want = max(1, ntask // (32 * nt))
    cdef ws_share_t* shares = shares_new(nt, ntask)
    with nogil, parallel(num_threads=nt):
        # this thread's scratch, kept from call to call (_thread_scratch.h); zeroed:
        # the band's pad columns are never written, and the slack past it is read
        # (lanes dropped)
        blk = <floating*>ts_get(0, <size_t>blk_elems * sizeof(floating))
        if blk != NULL:
            memset(blk, 0, <size_t>blk_elems * sizeof(floating))
        wide = <floating*>ts_get(1, <size_t>wide_elems * sizeof(floating))
        for tid in prange(nt, schedule="static", chunksize=1):
            if blk == NULL or wide == NULL:
                nfail += 1
                continue
            lo = 0                     # (assigned here: private to each thread)
            hi = 0
            while ws_next(shares, nt, tid, want, &lo, &hi):
                for t in range(lo, hi):
                    chunk = t % nchunk
                    r = t // nchunk
                    c = r % C
                    n = r // C
                    if small:
                        _dw_small_stage(xp + (n * C + c) * H * W, blk, H, W)
                        for m in range(mult):
                            oc = c * mult + m
                            _dw_small_plane(op + (n * Cout + oc) * H * W, blk, H, W, wp + oc * 9,
                                            bp[oc] if bp != NULL else 0, relu)
                        continue
                    oh0 = chunk * rows
                    oh1 = oh0 + rows
                    if oh1 > OH:
                        oh1 = OH
                    _dw_task(xp, wp, bp, op, blk, wide, n, c, oh0, oh1, C, H, W, mult, OH, OW,
                             kH, kW, sh, sw, pad_top, pad_left, dilation_h, dilation_w, PW, relu)
    free(shares)
    if nfail:
        raise MemoryError("conv2d_depthwise: could not allocate per-thread scratch")
