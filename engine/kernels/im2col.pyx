# cython: language_level=3
"""im2col + GEMM convolution: the column matrix is built in bounded slices of output
pixels and each slice is one single-threaded GEMM through the ``_blas`` shim.

Layouts (C-contiguous, one dtype, float32 or float64; see ``engine.kernels``):

    x[N][C_in][H][W]   weight[C_out][C_in/g][kH][kW]   out[N][C_out][OH][OW]

With g groups, Cg = C_in/g input and Mg = C_out/g output channels per group,
K = Cg*kH*kW and P = OH*OW, the convolution of image n, group g is one matrix product

    out_g[Mg][P] = W_g[Mg][K] @ col[K][P]  (+ bias[oc], then max(., 0) with relu)

    col[(ic*kH + kh)*kW + kw][oh*OW + ow] = x[n][g*Cg + ic][ih][iw]   (0 outside x)
        ih = oh*sh - pad_top  + kh*dh,   iw = ow*sw - pad_left + kw*dw

W_g is the weight exactly as stored (rows g*Mg .. g*Mg+Mg-1, each K long), and out_g is
the block out[n][g*Mg:(g+1)*Mg] viewed as an Mg x P matrix: no repacking either side.
A 1x1 kernel at stride 1 without padding needs no im2col: the input block
x[n][g*Cg:(g+1)*Cg] viewed as Cg x (H*W) IS the column matrix.

Output size (the caller allocates ``out``; its shape fixes the bottom/right padding):

    OH = (H + pad_top + pad_bottom - dh*(kH-1) - 1) // sh + 1   (likewise OW)

Work decomposition: items (n, group, pixel slice, output-channel block), one
contiguous share of them per thread of one OpenMP team, which the threads that finish
first steal halves of (_shares.h). Each thread owns one column buffer of
K x (slice width) elements, built just before its GEMM while it is in L2. The slice
width comes from the workspace budget and an L2 target, never from N, C, H, W alone,
so the scratch is bounded (see ``conv2d_im2col``).

Calling thread: each work item's output is one GEMM whose operands do not depend on
which thread computes it or which Python thread started the team: the items come
from ``num_threads`` alone (whichever thread takes each), column buffers are 64-byte
aligned in every thread, and each GEMM is single-threaded (``_blas.blas_serial_begin`` for an OpenMP BLAS, the pool limit
of ``engine.threads`` for a pthreads one). What stays outside our control is the BLAS
itself (its per-thread packing buffers and run-time kernel choice): it does not promise
bitwise-identical rounding from one thread to another, and on an AMD Zen 3 with
OpenBLAS a call from a ``threading.Thread`` differed from one from the main thread by
1.5e-6. Across calling threads im2col therefore agrees within its tolerance (tests:
test_robustness.py); the kernels that use no BLAS agree bitwise.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from ._blas cimport gemm, blas_serial_begin, blas_serial_end
from ._ranges cimport _tap_range
from ._shares cimport ws_share_t, ws_next, shares_new
from ._thread_scratch cimport ts_get


# Tuning constants, measured on the 2-core Sapphire Rapids box (L2 = 2 MiB per core)
# with OpenBLAS sgemm. The GEMM's speed depends on the slice width (its N) far more
# than on the column slice staying in L2: widths below ~192 lose up to half the
# speed at large K, widths past ~512 lose a little at small K. So a slice is
# max(COL_TARGET_BYTES / (K*itemsize), MIN_WIDTH) columns (256 for every K >= 256,
# wider for small K such as the 7x7 stem's K = 147), capped by the workspace.
cdef Py_ssize_t COL_TARGET_BYTES = 256 * 1024
cdef Py_ssize_t MIN_WIDTH = 256
# When splitting work over threads, pixel slices narrower than this are avoided
# (output channels are split instead, when there are enough of them).
cdef Py_ssize_t MIN_SLICE = 64
# Fewest output channels per block when output channels are split over threads.
cdef Py_ssize_t MIN_MBLOCK = 32
# 1x1 stride-1 path (no column buffer): pixel slice per GEMM, in bytes of x read.
# Measured flat from 1 MiB to whole planes; smaller slices repack the weights often.
cdef Py_ssize_t DIRECT_SLICE_BYTES = 4 * 1024 * 1024

DEFAULT_MAX_WORKSPACE_BYTES = 16 * 1024 * 1024


cdef struct Geom:
    Py_ssize_t C, H, W, M, OH, OW, P, HW
    int kH, kW, sh, sw, pt, pl, dh, dw
    int G, Cg, Mg, K
    int S          # pixel slices per (n, g)
    int SM         # output-channel blocks per (n, g)
    int mb         # output channels per block
    bint direct    # 1x1, stride 1, no padding: x is the column matrix


cdef inline Py_ssize_t _slice_start(const Geom* g, Py_ssize_t s) noexcept nogil:
    """Start pixel of slice s of S: near-equal slices, inner boundaries on multiples
    of 16 (the sgemm kernel's unroll) unless the slices are too narrow for that."""
    if s >= g.S:
        return g.P
    cdef Py_ssize_t b = s * g.P // g.S
    if g.P // g.S >= 32:
        b = b & ~(<Py_ssize_t>15)
    return b


cdef inline void _gather_stride2(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[j] = src[2*j] for j < n."""
    cdef Py_ssize_t j
    for j in range(n):
        dst[j] = src[2 * j]


cdef void _im2col(const floating* xg, floating* col, const Geom* g,
                  Py_ssize_t p0, Py_ssize_t npx) noexcept nogil:
    """col[K][npx] = columns p0 .. p0+npx-1 of the im2col matrix of one (image, group).

    xg = &x[n][group*Cg][0][0]. For each row (ic, kh, kw) and each output row touched
    by the slice, the in-bounds ow range is computed analytically; the rest is
    zero-filled and the middle is a contiguous copy at stride 1 (a strided gather
    otherwise), so there is no per-element bounds test.
    """
    cdef Py_ssize_t ic, p, p_end = p0 + npx, oh, ow_a, ow_b, a, b, j, ih, off
    cdef Py_ssize_t lo, hi, OW = g.OW, W = g.W, H = g.H, sw = g.sw
    cdef int kh, kw
    cdef floating* dst
    cdef floating* d
    cdef const floating* src
    cdef const floating* plane
    for ic in range(g.Cg):
        plane = xg + ic * g.HW
        for kh in range(g.kH):
            for kw in range(g.kW):
                dst = col + ((ic * g.kH + kh) * g.kW + kw) * npx
                # iw = ow*sw + off must lie in [0, W): ow in [lo, hi)
                off = <Py_ssize_t>kw * g.dw - g.pl
                _tap_range(off, sw, W, OW, &lo, &hi)
                p = p0
                oh = p0 // OW
                ow_a = p0 - oh * OW
                while p < p_end:
                    ow_b = OW if OW - ow_a <= p_end - p else ow_a + (p_end - p)
                    d = dst + (p - p0)
                    ih = oh * g.sh - g.pt + <Py_ssize_t>kh * g.dh
                    if ih < 0 or ih >= H or lo >= hi:
                        memset(d, 0, (ow_b - ow_a) * sizeof(floating))
                    else:
                        a = lo if lo > ow_a else ow_a
                        b = hi if hi < ow_b else ow_b
                        if a >= b:
                            memset(d, 0, (ow_b - ow_a) * sizeof(floating))
                        else:
                            if a > ow_a:
                                memset(d, 0, (a - ow_a) * sizeof(floating))
                            src = plane + ih * W + a * sw + off
                            if sw == 1:
                                memcpy(d + (a - ow_a), src, (b - a) * sizeof(floating))
                            elif sw == 2:
                                # constant stride: gcc vectorises it (load pairs + permute)
                                _gather_stride2(d + (a - ow_a), src, b - a)
                            else:
                                for j in range(b - a):
                                    d[a - ow_a + j] = src[j * sw]
                            if b < ow_b:
                                memset(d + (b - ow_a), 0, (ow_b - b) * sizeof(floating))
                    p += ow_b - ow_a
                    ow_a = 0
                    oh += 1


cdef void _item(const floating* x, const floating* w, const floating* bias,
                floating* out, const Geom* g, bint relu, Py_ssize_t it,
                floating* col, Py_ssize_t* built) noexcept nogil:
    """One work item: (n, group, pixel slice, channel block) -> its output block.

    ``col``/``built`` are the calling thread's column buffer and the key of the slice
    it holds, so consecutive channel blocks of one slice reuse the columns.
    """
    cdef Py_ssize_t mblk = it % g.SM
    cdef Py_ssize_t rest = it // g.SM
    cdef Py_ssize_t s = rest % g.S
    cdef Py_ssize_t ng = rest // g.S          # n * G + group
    cdef Py_ssize_t n = ng // g.G, grp = ng % g.G
    cdef Py_ssize_t p0 = _slice_start(g, s), npx = _slice_start(g, s + 1) - p0
    cdef Py_ssize_t m0 = mblk * g.mb
    cdef Py_ssize_t nm = g.Mg - m0
    cdef Py_ssize_t i, j, oc0
    cdef const floating* xg = x + (n * g.C + grp * g.Cg) * g.HW
    cdef const floating* B
    cdef floating* C
    cdef floating* c
    cdef floating bv, one = 1, beta = 0
    cdef int ldb
    if nm > g.mb:
        nm = g.mb
    if npx <= 0 or nm <= 0:
        return
    if g.direct:
        B = xg + p0                           # x block is the K x HW column matrix
        ldb = <int>g.HW
    else:
        if built[0] != rest:
            _im2col(xg, col, g, p0, npx)
            built[0] = rest
        B = col
        ldb = <int>npx
    oc0 = grp * g.Mg + m0
    C = out + (n * g.M + oc0) * g.P + p0       # output slice, row stride P
    if bias != NULL:
        # Bias goes in before the GEMM and beta = 1: OpenBLAS would otherwise zero C
        # itself for beta = 0, so the bias costs no extra pass.
        for i in range(nm):
            bv = bias[oc0 + i]
            c = C + i * g.P
            for j in range(npx):
                c[j] = bv
        beta = 1
    gemm(False, False, <int>nm, <int>npx, g.K, one, w + oc0 * g.K, g.K,
         B, ldb, beta, C, <int>g.P)
    if relu:
        # The slice was just written: clamp it while it is still in cache. Every
        # element is stored (a select, NaN kept), not only the negative ones: that
        # conditional store became AVX2's masked store, microcoded on AMD Zen 2/3.
        for i in range(nm):
            c = C + i * g.P
            for j in range(npx):
                c[j] = 0 if c[j] < 0 else c[j]


cdef Py_ssize_t _gcd(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef void _plan(Geom* g, Py_ssize_t N, int nt, Py_ssize_t itemsize,
                Py_ssize_t max_workspace_bytes):
    """Choose the pixel slices (S) and output-channel blocks (SM, mb)."""
    cdef Py_ssize_t P = g.P, K = g.K, width, S, SM = 1, units, T
    cdef Py_ssize_t colbytes = K * itemsize
    cdef Py_ssize_t budget
    if g.direct:
        width = DIRECT_SLICE_BYTES // colbytes
    else:
        # Per-thread budget: the total workspace is nt * K * width * itemsize.
        budget = max_workspace_bytes // nt
        width = COL_TARGET_BYTES // colbytes
        if width < MIN_WIDTH:
            width = MIN_WIDTH
        if width > budget // colbytes:
            width = budget // colbytes
    if width >= 32:
        width = width & ~(<Py_ssize_t>15)
    if width < 1:
        width = 1                     # one column per thread is the floor
    S = (P + width - 1) // width
    units = N * g.G
    # Give every thread work, in equal shares, when the natural item count is small.
    T = units * S
    if T < 4 * nt and T % nt != 0:
        if units * SM < nt and P // ((nt + units - 1) // units) < MIN_SLICE \
                and g.Mg >= 2 * MIN_MBLOCK:
            # Too few pixels to split further: split output channels instead.
            SM = nt // _gcd(T, nt)       # T * SM is then a multiple of nt
            if g.Mg // SM < MIN_MBLOCK:
                SM = g.Mg // MIN_MBLOCK
            if SM < 1:
                SM = 1
        else:
            while (units * S) % nt != 0 and S < P:
                S += 1
    g.S = <int>S
    g.SM = <int>SM
    g.mb = <int>((g.Mg + SM - 1) // SM)


def conv2d_im2col(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                  bias, floating[:, :, :, ::1] out,
                  int stride_h, int stride_w, int pad_top, int pad_left,
                  int dilation_h, int dilation_w, int groups, int num_threads,
                  bint relu=False,
                  Py_ssize_t max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
    """2-D convolution as im2col + GEMM, zero padding, PyTorch's ``conv2d`` semantics.

    IN:  x[N][C_in][H][W], weight[C_out][C_in/groups][kH][kW], bias None or bias[C_out],
         strides, top/left zero padding, dilations, groups, the OpenMP team size.
    OUT: out[N][C_out][OH][OW], every element overwritten. Its shape fixes the
         bottom/right padding: OH = (H + pad_top + pad_bottom - dh*(kH-1) - 1)//sh + 1.

    Per (image n, group g): out_g[Mg][OH*OW] = W_g[Mg][K] @ col[K][OH*OW] + bias,
    K = (C_in/g)*kH*kW, col as in the module docstring; relu clamps at 0 afterwards.
    A 1x1 kernel at stride 1 and zero padding multiplies straight from ``x``.

    Workspace: each of the ``num_threads`` threads holds one K x width column slice;
    the total, num_threads*K*width*itemsize, is at most ``max_workspace_bytes`` except
    that a slice is never narrower than one column (so the floor is
    num_threads*K*itemsize). The 1x1 stride-1 path uses none.

    Precondition (validated by ``engine.functional``): C-contiguous arrays of one dtype,
    shapes consistent, groups dividing C_in and C_out, and the BLAS pool held at one
    thread (``engine.threads.blas_single_threaded``) around the call.
    """
    cdef Geom g
    cdef Py_ssize_t N = x.shape[0], n_items
    cdef int nt = num_threads if num_threads > 0 else 1
    cdef const floating[::1] bmv
    cdef const floating* bptr = NULL
    cdef const floating* xp
    cdef const floating* wp
    cdef floating* op
    cdef floating* col = NULL          # thread-private inside the team
    cdef Py_ssize_t* built = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    cdef Py_ssize_t colsize = 0, s
    cdef int saved = 1                 # thread-private: this thread's nested-team ICV
    cdef int tid
    cdef int64_t lo, hi
    cdef ws_share_t* shares = NULL

    g.C = x.shape[1]; g.H = x.shape[2]; g.W = x.shape[3]; g.HW = g.H * g.W
    g.M = out.shape[1]; g.OH = out.shape[2]; g.OW = out.shape[3]; g.P = g.OH * g.OW
    g.kH = <int>weight.shape[2]; g.kW = <int>weight.shape[3]
    g.sh = stride_h; g.sw = stride_w; g.pt = pad_top; g.pl = pad_left
    g.dh = dilation_h; g.dw = dilation_w
    g.G = groups; g.Cg = <int>(g.C // groups); g.Mg = <int>(g.M // groups)
    g.K = g.Cg * g.kH * g.kW
    g.direct = (g.kH == 1 and g.kW == 1 and stride_h == 1 and stride_w == 1
                and pad_top == 0 and pad_left == 0 and g.OH == g.H and g.OW == g.W)
    if N == 0 or g.M == 0 or g.P == 0:
        return
    if bias is not None:
        bmv = bias
        bptr = &bmv[0]
    _plan(&g, N, nt, sizeof(floating), max_workspace_bytes)
    if not g.direct:
        colsize = <Py_ssize_t>g.K * (_slice_start(&g, 1) - _slice_start(&g, 0))
        for s in range(1, g.S):    # the widest slice (boundaries are rounded)
            if g.K * (_slice_start(&g, s + 1) - _slice_start(&g, s)) > colsize:
                colsize = g.K * (_slice_start(&g, s + 1) - _slice_start(&g, s))
    n_items = N * g.G * g.S * g.SM
    if nt > n_items:
        nt = <int>n_items
    xp = &x[0, 0, 0, 0]
    wp = &weight[0, 0, 0, 0]
    op = &out[0, 0, 0, 0]

    shares = shares_new(nt, n_items)
    with nogil, parallel(num_threads=nt):
        # Per-thread scratch, allocated inside the team: the column slice and the key
        # of the slice it currently holds.
        saved = blas_serial_begin()
        # (the thread's blocks kept from call to call, _thread_scratch.h: 64-byte aligned
        # in every thread, as malloc's alignment, which depends on the thread's arena,
        # is not; nothing a GEMM sees depends on the calling thread)
        col = NULL
        if colsize > 0:
            col = <floating*>ts_get(0, colsize * sizeof(floating))
        built = <Py_ssize_t*>ts_get(1, sizeof(Py_ssize_t))
        if built != NULL:
            built[0] = -1
        if built == NULL or (colsize > 0 and col == NULL):
            failed_p[0] = 1
        # one contiguous share of the items per thread, stolen from by the threads that
        # finish first (_shares.h): consecutive channel blocks of a slice stay together
        for tid in prange(nt, schedule="static", chunksize=1):
            lo = 0                     # (assigned here: private to each thread)
            hi = 0
            if built != NULL and (colsize == 0 or col != NULL):
                while ws_next(shares, nt, tid, 1, &lo, &hi):
                    _item(xp, wp, bptr, op, &g, relu, lo, col, built)
        blas_serial_end(saved)
    free(shares)
    if failed:
        raise MemoryError("conv2d_im2col: could not allocate the per-thread column buffer")
