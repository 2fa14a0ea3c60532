# cython: language_level=3
"""Winograd convolution F(m x m, 3 x 3), m = 2, 4, 6 (stride 1, dilation 1, zero padding).

Math (Lavin & Gray 2016). With alpha = m + 2, every m x m output tile Y of one output
channel is

    Y = A^T [ sum_c (G g_{oc,c} G^T) * (B^T d_c B) ] A = A^T [ sum_c U_{oc,c} * V_c ] A

where d_c is the alpha x alpha input tile of channel c (read with zero padding). For
each of the alpha^2 positions (xi, nu) of the transformed tile, the sum over c is a
matrix product, so the layer is alpha^2 GEMMs  M[a] = U[a] @ V[a]  between a
weight transform (done once per layer, ``transform_weight``), an input transform and
an output transform (``conv2d_winograd``). The matrices A^T, G, B^T come from
``engine.winograd_transforms`` (exact derivation; float64 values copied into module
C arrays at import), so the kernel and the derivation cannot drift apart.

Layouts (all row-major, C-contiguous):
    x    [N][C_in][H][W]                    IN
    U    [alpha*alpha][C_out][C_in/groups]   IN   (from transform_weight)
    out  [N][C_out][OH][OW]                 OUT  (every element overwritten)
    V    [alpha*alpha][C_in][TB]            workspace: transformed inputs of one block
    M    [alpha*alpha][C_out][TB]           workspace: transformed outputs of one block
where TB is the tile-block size (a multiple of the 16-lane vector chunk). Tiles are
numbered over the whole batch (n, tile_row, tile_col), so a block may span images.

Per block the three phases run on all threads in turn:
    1. input transform, parallel over (c, chunk of 16 tiles): gather 16 tiles into a
       [alpha][alpha][16] stack buffer, B^T d B with the 16 tiles in the innermost,
       contiguous loop (it vectorises: one AVX-512 lane per tile), store V[:, c, chunk];
    2. groups * alpha^2 single-threaded GEMMs (C_out/g x C_in/g) @ (C_in/g x tiles),
       parallel over the GEMMs, so each thread streams only its share of U (U is the
       big operand on deep layers: alpha^2 * C_out * C_in/g, e.g. 64 MiB at 512 ch);
    3. output transform, parallel over (oc, chunk): A^T M A, + bias, relu, scattered
       into ``out`` with bounds checks (partial tiles at the right/bottom edges).
Workspace: alpha^2 * TB * (C_in + C_out) elements plus 3 int arrays of TB, chosen
from a byte budget (default 6 MiB, about the two L2s plus slack) and independent of
the batch size N.
"""
import numpy as np

cimport cython
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free

from ._blas cimport gemm

from .. import winograd_transforms as _wt

DEF VL = 16             # tiles per vector chunk: 16 floats = one AVX-512 register
DEF MAXA = 8            # largest alpha (F(6,3))

# A^T (m x alpha) and B^T (alpha x alpha) per variant, float64, row-major; index m//2-1.
cdef double _AT[3][MAXA * MAXA]
cdef double _BT[3][MAXA * MAXA]

WORKSPACE_BYTES = 6 << 20


def _load_matrices():
    for idx, m in enumerate((2, 4, 6)):
        AT, G, BT = _wt.transform_matrices(m, 3)
        alpha = m + 2
        for i in range(m):
            for j in range(alpha):
                _AT[idx][i * alpha + j] = AT[i, j]
        for i in range(alpha):
            for j in range(alpha):
                _BT[idx][i * alpha + j] = BT[i, j]


_load_matrices()


def kernel_matrices(int m):
    """(AT, BT) as baked into the kernel (float64 copies), for tests."""
    cdef int idx = m // 2 - 1, alpha = m + 2, i, j
    AT = np.empty((m, alpha))
    BT = np.empty((alpha, alpha))
    for i in range(m):
        for j in range(alpha):
            AT[i, j] = _AT[idx][i * alpha + j]
    for i in range(alpha):
        for j in range(alpha):
            BT[i, j] = _BT[idx][i * alpha + j]
    return AT, BT


def transform_weight(weight, int m, int groups=1):
    """U = G g G^T for every (oc, ic): the transformed weights, computed once per layer.

    IN:  weight[C_out][C_in/groups][3][3], float32 or float64.
    OUT: U[alpha*alpha][C_out][C_in/groups], same dtype, C-contiguous; U[xi*alpha + nu]
         is the GEMM's left operand for transformed position (xi, nu), group gi's rows
         are oc in [gi*C_out/g, (gi+1)*C_out/g). Computed in float64 and rounded once
         (G holds the non-dyadic factors of the transform, see winograd_transforms).
    ``groups`` is accepted for symmetry with the kernel; the layout does not depend on it.
    """
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2] != 3 or w.shape[3] != 3:
        raise ValueError(f"transform_weight expects weight[C_out][C_in/g][3][3], got {w.shape}")
    if m not in (2, 4, 6):
        raise ValueError(f"m must be 2, 4 or 6, got {m}")
    _, G, _ = _wt.transform_matrices(m, 3)
    alpha = m + 2
    U = np.einsum("ik,ockl,jl->ijoc", G, w.astype(np.float64), G, optimize=True)
    return np.ascontiguousarray(U.reshape(alpha * alpha, w.shape[0], w.shape[1]), dtype=w.dtype)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _input_chunk(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t c, const int* tn, const int* ty, const int* tx, int nl,
                       int alpha, const double* BT, floating* V, Py_ssize_t plane) noexcept nogil:
    """V[xi*alpha+nu][lane] (plane stride ``plane``) = (B^T d B)[xi][nu] for nl <= 16 tiles.

    ``ty``/``tx`` are the tiles' top-left input coordinates (padding already subtracted),
    ``tn`` their image. Lanes >= nl are zero. Stack scratch: 2 * 64 * 16 elements.
    """
    cdef floating d[MAXA * MAXA * VL]      # d[i][j][lane]
    cdef floating t[MAXA * MAXA * VL]      # t[xi][j][lane] = sum_i BT[xi][i] d[i][j]
    cdef floating acc[VL]
    cdef floating cf
    cdef const floating* src
    cdef const floating* row
    cdef floating* dst
    cdef int l, i, j, k, q, y0, x0, yy, xx
    cdef int aa = alpha * alpha
    # gather: one tile per lane; fast path for tiles entirely inside the image
    for l in range(VL):
        if l >= nl:
            for k in range(aa):
                d[k * VL + l] = 0
            continue
        src = x + (tn[l] * C + c) * H * W
        y0 = ty[l]
        x0 = tx[l]
        if y0 >= 0 and y0 + alpha <= H and x0 >= 0 and x0 + alpha <= W:
            for i in range(alpha):
                row = src + (y0 + i) * W + x0
                for j in range(alpha):
                    d[(i * alpha + j) * VL + l] = row[j]
        else:
            for i in range(alpha):
                yy = y0 + i
                for j in range(alpha):
                    xx = x0 + j
                    if 0 <= yy < H and 0 <= xx < W:
                        d[(i * alpha + j) * VL + l] = src[yy * W + xx]
                    else:
                        d[(i * alpha + j) * VL + l] = 0
    # columns: t = B^T d   (innermost loop over the 16 lanes: vectorised)
    for k in range(alpha):
        for j in range(alpha):
            for l in range(VL):
                acc[l] = 0
            for i in range(alpha):
                cf = <floating>BT[k * alpha + i]
                if cf != 0:                        # B^T is sparse: skip zero entries
                    src = &d[(i * alpha + j) * VL]
                    for l in range(VL):
                        acc[l] += cf * src[l]
            dst = &t[(k * alpha + j) * VL]
            for l in range(VL):
                dst[l] = acc[l]
    # rows: V[k][q] = sum_j t[k][j] BT[q][j]
    for k in range(alpha):
        for q in range(alpha):
            for l in range(VL):
                acc[l] = 0
            for j in range(alpha):
                cf = <floating>BT[q * alpha + j]
                if cf != 0:
                    src = &t[(k * alpha + j) * VL]
                    for l in range(VL):
                        acc[l] += cf * src[l]
            dst = V + (k * alpha + q) * plane
            for l in range(VL):
                dst[l] = acc[l]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _output_chunk(const floating* M, Py_ssize_t plane, floating* out,
                        Py_ssize_t Cout, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t oc,
                        const int* tn, const int* oy, const int* ox, int nl,
                        int m, const double* AT, floating b, bint relu) noexcept nogil:
    """out tiles (oc; 16 lanes) = A^T M A + b, relu; writes only in-bounds outputs.

    M[xi*alpha+nu][lane] with plane stride ``plane``; ``oy``/``ox`` are the tiles'
    top-left output coordinates. Stack scratch: (64 + 48 + 36) * 16 elements.
    """
    cdef int alpha = m + 2
    cdef floating mm[MAXA * MAXA * VL]     # mm[k][q][lane]
    cdef floating t[6 * MAXA * VL]         # t[i][q][lane] = sum_k AT[i][k] M[k][q]
    cdef floating o[6 * 6 * VL]            # o[i][j][lane]
    cdef floating acc[VL]
    cdef floating cf
    cdef const floating* src
    cdef floating* dst
    cdef floating* orow
    cdef int l, i, j, k, q, hh, ww
    for k in range(alpha * alpha):
        src = M + k * plane
        dst = &mm[k * VL]
        for l in range(VL):
            dst[l] = src[l]
    for i in range(m):
        for q in range(alpha):
            for l in range(VL):
                acc[l] = 0
            for k in range(alpha):
                cf = <floating>AT[i * alpha + k]
                if cf != 0:
                    src = &mm[(k * alpha + q) * VL]
                    for l in range(VL):
                        acc[l] += cf * src[l]
            dst = &t[(i * alpha + q) * VL]
            for l in range(VL):
                dst[l] = acc[l]
    for i in range(m):
        for j in range(m):
            for l in range(VL):
                acc[l] = b                        # bias added here, not in another pass
            for q in range(alpha):
                cf = <floating>AT[j * alpha + q]
                if cf != 0:
                    src = &t[(i * alpha + q) * VL]
                    for l in range(VL):
                        acc[l] += cf * src[l]
            if relu:
                for l in range(VL):
                    acc[l] = acc[l] if acc[l] > 0 else 0
            dst = &o[(i * m + j) * VL]
            for l in range(VL):
                dst[l] = acc[l]
    for l in range(nl):
        orow = out + ((tn[l] * Cout + oc) * OH + oy[l]) * OW + ox[l]
        hh = OH - oy[l]
        if hh > m:
            hh = m
        ww = OW - ox[l]
        if ww > m:
            ww = m
        for i in range(hh):
            for j in range(ww):
                orow[i * OW + j] = o[(i * m + j) * VL + l]


def choose_tile_block(Py_ssize_t n_tiles, int m, Py_ssize_t C_in, Py_ssize_t C_out,
                      int itemsize, int num_threads=1, Py_ssize_t budget=0):
    """Tiles per block: the largest multiple of 16 whose V + M workspace
    (alpha^2 * TB * (C_in + C_out) elements) fits ``budget`` bytes, at least 32,
    then evened out over the blocks so the last one is not a sliver."""
    cdef Py_ssize_t alpha = m + 2
    if budget <= 0:
        budget = WORKSPACE_BYTES
    per_tile = alpha * alpha * (C_in + C_out) * itemsize
    tb = max(32, (budget // per_tile) // VL * VL)
    n_pad = (n_tiles + VL - 1) // VL * VL
    if tb >= n_pad:
        return n_pad
    nblocks = (n_tiles + tb - 1) // tb
    tb = (n_tiles + nblocks - 1) // nblocks
    return (tb + VL - 1) // VL * VL


@cython.boundscheck(False)
@cython.wraparound(False)
def conv2d_winograd(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U, bias,
                    floating[:, :, :, ::1] out, int m, int pad_top, int pad_left,
                    int groups, int num_threads, bint relu=False,
                    Py_ssize_t tile_block=0):
    """out = conv2d(x, weight, bias, stride 1, dilation 1, zero padding) via F(m x m, 3 x 3).

    IN:  x[N][C_in][H][W]; U[alpha*alpha][C_out][C_in/groups] = transform_weight(w, m);
         bias None or bias[C_out]; pad_top/pad_left: zero padding (bottom/right follow
         from out's shape: OH = H + pad_top + pad_bottom - 2).
    OUT: out[N][C_out][OH][OW], every element overwritten (+ bias, relu if asked).
    ``tile_block``: tiles per block (rounded up to a multiple of 16), 0 = automatic
    (``choose_tile_block``). The caller holds BLAS at one thread while this runs.
    Workspace: alpha^2 * tile_block * (C_in + C_out) elements, independent of N.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Cout = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef int alpha = m + 2, aa = (m + 2) * (m + 2)
    cdef int idx = m // 2 - 1
    cdef Py_ssize_t Cig = C // groups, Cog = Cout // groups
    cdef Py_ssize_t TH = (OH + m - 1) // m, TW = (OW + m - 1) // m
    cdef Py_ssize_t n_tiles = N * TH * TW
    cdef Py_ssize_t TB, t0, nt, t, w, nchunks, nwork, ch, c, oc, g, a, rem
    cdef int nl, nthr = num_threads if num_threads > 0 else 1
    cdef const floating* xp
    cdef const floating* Up
    cdef floating* outp
    cdef floating* V = NULL
    cdef floating* Mw = NULL
    cdef int* tn = NULL
    cdef int* ty = NULL
    cdef int* tx = NULL
    cdef const double* ATp = _AT[idx]
    cdef const double* BTp = _BT[idx]
    cdef const floating[::1] bview
    cdef const floating* bp = NULL
    cdef floating bval

    if m != 2 and m != 4 and m != 6:
        raise ValueError(f"m must be 2, 4 or 6, got {m}")
    if U.shape[0] != aa or U.shape[1] != Cout or U.shape[2] != Cig:
        raise ValueError(f"U has shape {(U.shape[0], U.shape[1], U.shape[2])}, expected {(aa, Cout, Cig)}")
    if n_tiles == 0 or Cout == 0:
        return
    if bias is not None:
        bview = bias
        bp = &bview[0]
    if tile_block <= 0:
        TB = choose_tile_block(n_tiles, m, C, Cout, sizeof(floating), nthr)
    else:
        TB = (tile_block + VL - 1) // VL * VL
    xp = &x[0, 0, 0, 0]
    Up = &U[0, 0, 0]
    outp = &out[0, 0, 0, 0]

    V = <floating*>malloc(aa * C * TB * sizeof(floating))
    Mw = <floating*>malloc(aa * Cout * TB * sizeof(floating))
    tn = <int*>malloc(3 * TB * sizeof(int))
    if V == NULL or Mw == NULL or tn == NULL:
        free(V); free(Mw); free(tn)
        raise MemoryError("winograd workspace")
    ty = tn + TB
    tx = tn + 2 * TB
    try:
        with nogil:
            t0 = 0
            while t0 < n_tiles:
                nt = n_tiles - t0
                if nt > TB:
                    nt = TB
                # tile -> (image, top-left output row/col), once per block
                for t in range(nt):
                    rem = t0 + t
                    tn[t] = <int>(rem // (TH * TW))
                    rem = rem % (TH * TW)
                    ty[t] = <int>((rem // TW) * m)
                    tx[t] = <int>((rem % TW) * m)
                nchunks = (nt + VL - 1) // VL
                # 1. input transform: padding folded into the tile's input origin
                nwork = C * nchunks
                for w in prange(nwork, num_threads=nthr, schedule="static"):
                    c = w // nchunks
                    ch = w % nchunks
                    _in_chunk_padded(xp, C, H, W, c, tn + ch * VL, ty + ch * VL,
                                     tx + ch * VL, nt, ch, pad_top, pad_left,
                                     alpha, BTp, V + c * TB + ch * VL, C * TB)
                # 2. alpha^2 GEMMs per group: M[a][g rows] = U[a][g rows] @ V[a][g rows]
                for w in prange(groups * aa, num_threads=nthr, schedule="static"):
                    a = w % aa
                    g = w // aa
                    gemm(False, False, <int>Cog, <int>nt, <int>Cig, <floating>1.0,
                         Up + (a * Cout + g * Cog) * Cig, <int>Cig,
                         V + (a * C + g * Cig) * TB, <int>TB, <floating>0.0,
                         Mw + (a * Cout + g * Cog) * TB, <int>TB)
                # 3. output transform + bias + relu, scattered into out
                nwork = Cout * nchunks
                for w in prange(nwork, num_threads=nthr, schedule="static"):
                    oc = w // nchunks
                    ch = w % nchunks
                    nl = <int>(nt - ch * VL)
                    if nl > VL:
                        nl = VL
                    bval = bp[oc] if bp != NULL else 0
                    _output_chunk(Mw + oc * TB + ch * VL, Cout * TB, outp, Cout, OH, OW, oc,
                                  tn + ch * VL, ty + ch * VL, tx + ch * VL, nl,
                                  m, ATp, bval, relu)
                t0 += nt
    finally:
        free(V)
        free(Mw)
        free(tn)


cdef inline void _in_chunk_padded(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                  Py_ssize_t c, const int* tn, const int* oy, const int* ox,
                                  Py_ssize_t nt, Py_ssize_t ch, int pad_top, int pad_left,
                                  int alpha, const double* BT, floating* V,
                                  Py_ssize_t plane) noexcept nogil:
    """Input transform of chunk ``ch``: output origins -> input origins (minus padding)."""
    cdef int iy[VL]
    cdef int ix[VL]
    cdef int l
    cdef int nl = <int>(nt - ch * VL)
    if nl > VL:
        nl = VL
    for l in range(nl):
        iy[l] = oy[l] - pad_top
        ix[l] = ox[l] - pad_left
    _input_chunk(x, C, H, W, c, tn, iy, ix, nl, alpha, BT, V, plane)
