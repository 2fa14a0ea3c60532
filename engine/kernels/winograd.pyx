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
``engine.winograd_transforms`` (exact derivation): G at import, for the weight
transform; A^T and B^T as compile-time constants (ukernels/winograd_matrices.h,
generated from the derivation and checked against it by the tests), so the tile
transforms unroll into straight-line vector FMAs.

Layouts (all row-major, C-contiguous):
    x    [N][C_in][H][W]                    IN
    U    [alpha*alpha][C_out][C_in/groups]   IN   (from transform_weight)
    out  [N][C_out][OH][OW]                 OUT  (every element overwritten)
    V    [alpha*alpha][C_in][TB]            workspace: transformed inputs of one block
    M    [alpha*alpha][C_out][TB]           workspace: transformed outputs of one block
where TB is the tile-block size (a multiple of the 16-lane vector chunk). Tiles are
numbered over the whole batch (n, tile_row, tile_col), so a block may span images.

One OpenMP region; work items are (tile block, C_out slice) pairs dealt statically.
For each of its items a thread, on its own workspace and with no barrier in between:
    1. input transform (skipped if its V already holds that tile block): 16 tiles at a
       time, B^T d B with the 16 tiles as one vector, into V[:, c, chunk];
    2. groups * alpha^2 single-threaded GEMMs (C_out slice x C_in/g) @ (C_in/g x tiles);
    3. output transform A^T M A, + bias (+ relu), stored into ``out`` clipped to the
       image (partial tiles at the right/bottom edges).
C_out is sliced only when there are too few tiles to give each thread a block
(deep layers on small images): then each thread reads only its slice of U, the big
operand there (alpha^2 * C_out * C_in/g, 64 MiB for 512 channels at F(6,3)).
Workspace per thread: alpha^2 * TB * (C_in + C_out slice) elements + 5 * TB ints,
TB chosen from a per-thread byte budget (WORKSPACE_BYTES), independent of N.

float32 runs entirely on the micro-kernels of the ISA it is given (``isa``, from
``engine.isa``; ukernels/ukernels.h): winograd_f{m}x3_input / _output (AVX-512: masked
gathers and scatters, or with ``transforms="rows"`` the AVX2 kernels' row loads and
8 x 8 register transposes, ``auto_transforms``; AVX2 and baseline: row copies and
clipped stores) and the
packed-panel GEMM (sgemm_8x48__avx512f, sgemm_6x16__avx2_fma, sgemm_4x16__scalar: V[a]
is already the [K][tiles] panel a BLAS would build and U's rows are contiguous in K,
so nothing is re-packed per call, where OpenBLAS re-packs U on every call). No BLAS in
the float32 path. float64 keeps the C transforms below and BLAS dgemm.
Tile blocks hold whole 16-tile chunks, dealt evenly.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.string cimport memset

from ._blas cimport gemm, blas_serial_begin, blas_serial_end
from ._thread_scratch cimport ts_get

from .. import winograd_transforms as _wt

from ._ukernels cimport (uk_kernels, uk_kernels_t, uk_cpu_isa, uk_cpu_vendor, UK_ISA_COUNT,
                        UK_ISA_BASELINE, UK_ISA_AVX2, UK_ISA_AVX512, UK_VENDOR_AMD, UK_WG_LANES)

# float64 tile transforms: the same 16-lane template the float32 micro-kernels use
# (ukernels/winograd_transform.h), here on double vectors.
cdef extern from *:
    """
    #include "ukernels/winograd_transform.h"
    typedef double wg_v16d __attribute__((vector_size(128)));
    WG_TRANSFORMS(wgd, double, wg_v16d)
    static void wg_d_in(const double* d, double* V, ptrdiff_t plane, int alpha) {
        switch (alpha) {
            case 4: wgd_in_a(d, V, plane, 4); break;
            case 6: wgd_in_a(d, V, plane, 6); break;
            default: wgd_in_a(d, V, plane, 8); break;
        }
    }
    static void wg_d_out(const double* M, ptrdiff_t plane, double b, double* o, int m) {
        switch (m) {
            case 2: wgd_out_a(M, plane, b, o, 2); break;
            case 4: wgd_out_a(M, plane, b, o, 4); break;
            default: wgd_out_a(M, plane, b, o, 6); break;
        }
    }
    static const double* wg_matrix(int m, int which) {   /* which: 0 = A^T, 1 = B^T */
        switch (m) {
            case 2: return which ? WG_BT2 : WG_AT2;
            case 4: return which ? WG_BT4 : WG_AT4;
            default: return which ? WG_BT6 : WG_AT6;
        }
    }
    """
    void wg_d_in(const double* d, double* V, Py_ssize_t plane, int alpha) noexcept nogil
    void wg_d_out(const double* M, Py_ssize_t plane, double b, double* o, int m) noexcept nogil
    const double* wg_matrix(int m, int which) noexcept nogil


cdef enum:
    VL = UK_WG_LANES    # tiles per chunk (16 on every ISA: one 16-float vector per tile element)
    MAXA = 8            # largest alpha (F(6,3))

WORKSPACE_BYTES = 4 << 20     # per-thread V + M budget (bytes)
MIN_TILES_PER_THREAD = 48     # fewer tiles per thread than this: split C_out instead

_G = {}        # m -> G (float64), for transform_weight: derived once, not per call

for _m in (2, 4, 6):
    _G[_m] = _wt.transform_matrices(_m, 3)[1]


# How the float32 tile transforms move tiles between the image and the 16-lane vectors
# on AVX-512 (on AVX2 and baseline each ISA has one way, row loads, used whatever is
# asked): "gather", the AVX-512 kernels' masked vpgatherdps / vpscatterdps, one
# instruction per tile element; "rows", the AVX2 kernels (row loads and 8 x 8 register
# transposes: AVX-512F CPUs run AVX2 + FMA, engine.isa), beside the AVX-512 GEMM.
# "auto" is ``auto_transforms``.
TRANSFORMS = ("auto", "gather", "rows")


cpdef str auto_transforms(int isa):
    """What ``transforms="auto"`` runs on ISA ``isa``: "rows" on AMD's AVX-512 (Zen 4),
    where the gathers and scatters cost more than the transposes, and off AVX-512 (the
    only way there); "gather" on the other AVX-512 CPUs (Intel's: the kernels measured
    on a Sapphire Rapids before "rows" could run there; the tuner tries both at
    --level exhaustive). Rows / gather time on an AMD EPYC Zen 4, one thread, CPU time,
    best of 7 (F(4x4), F(6x6)): 0.83, 0.80 on 64 channels at 224x224; 0.83, 0.84 on 128
    at 112x112; 0.95, 0.89 on 256 at 56x56; 0.94, 0.94 on 512 at 28x28; 0.99, 0.98 on 512
    at 14x14; 0.73, 0.71 on 64 at 56x56 batch 8 (2 threads, medians: 0.72-1.01)."""
    if isa == UK_ISA_AVX512 and uk_cpu_vendor() != UK_VENDOR_AMD:
        return "gather"
    return "rows"


cpdef int transforms_isa(int isa, str transforms="auto"):
    """The ISA whose tile-transform kernels run beside ISA ``isa``'s GEMM: AVX2's for
    "rows" on AVX-512, else ``isa``'s own."""
    if transforms not in TRANSFORMS:
        raise ValueError(f"winograd: transforms must be one of {', '.join(TRANSFORMS)}, got {transforms!r}")
    if isa == UK_ISA_AVX512 and (auto_transforms(isa) if transforms == "auto" else transforms) == "rows":
        return UK_ISA_AVX2
    return isa


def kernel_matrices(int m):
    """(AT, BT) as compiled into the kernels (ukernels/winograd_matrices.h), for tests."""
    cdef int alpha = m + 2, i, j
    cdef const double* at = wg_matrix(m, 0)
    cdef const double* bt = wg_matrix(m, 1)
    AT = np.empty((m, alpha))
    BT = np.empty((alpha, alpha))
    for i in range(m):
        for j in range(alpha):
            AT[i, j] = at[i * alpha + j]
    for i in range(alpha):
        for j in range(alpha):
            BT[i, j] = bt[i * alpha + j]
    return AT, BT


def transform_weight(weight, int m):
    """U = G g G^T for every (oc, ic): the transformed weights, computed once per layer.

    IN:  weight[C_out][C_in/groups][3][3], float32 or float64.
    OUT: U[alpha*alpha][C_out][C_in/groups], same dtype, C-contiguous; U[xi*alpha + nu]
         is the GEMM's left operand for transformed position (xi, nu), group gi's rows
         are oc in [gi*C_out/g, (gi+1)*C_out/g). Computed in float64 and rounded once
         (G holds the non-dyadic factors of the transform, see winograd_transforms).
    The layout does not depend on the groups: the kernel slices U's rows per group.
    """
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2] != 3 or w.shape[3] != 3:
        raise ValueError(f"transform_weight expects weight[C_out][C_in/g][3][3], got {w.shape}")
    if m not in (2, 4, 6):
        raise ValueError(f"m must be 2, 4 or 6, got {m}")
    alpha = m + 2
    g = np.ascontiguousarray(w, dtype=np.float64)
    U = np.empty((alpha * alpha, w.shape[0], w.shape[1]), dtype=w.dtype)
    if U.dtype == np.float32:
        _weight_transform[float](g, _G[m], U, alpha)
    else:
        _weight_transform[double](g, _G[m], U, alpha)
    return U


cdef void _weight_transform(const double[:, :, :, ::1] g, const double[:, ::1] G,
                            floating[:, :, ::1] U, int alpha) noexcept:
    """U[i*alpha + j][oc][ic] = sum_{k,l} G[i][k] g[oc][ic][k][l] G[j][l], in float64,
    rounded once to U's dtype. One pass over the kernels: t = G g (alpha x 3), then
    t G^T (alpha x alpha) written straight into the GEMM layout."""
    cdef Py_ssize_t oc, ic
    cdef int i, j, l
    cdef double t[MAXA][3]
    with nogil:
        for oc in range(g.shape[0]):
            for ic in range(g.shape[1]):
                for i in range(alpha):
                    for l in range(3):
                        t[i][l] = (G[i, 0] * g[oc, ic, 0, l] + G[i, 1] * g[oc, ic, 1, l]
                                   + G[i, 2] * g[oc, ic, 2, l])
                for i in range(alpha):
                    for j in range(alpha):
                        U[i * alpha + j, oc, ic] = <floating>(t[i][0] * G[j, 0] + t[i][1] * G[j, 1]
                                                              + t[i][2] * G[j, 2])


cdef void _input_chunk_f64(const double* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t c, const int* tn, const int* ty, const int* tx, int nl,
                           int alpha, double* V, Py_ssize_t plane) noexcept nogil:
    """V[xi*alpha+nu][lane] (plane stride ``plane``) = (B^T d B)[xi][nu] for nl <= 16 tiles
    of channel c, float64 (float32 has its micro-kernels).

    ``ty``/``tx`` are the tiles' top-left input coordinates (padding already subtracted),
    ``tn`` their image. Lanes >= nl are zero. Stack scratch: 2 * 64 * 16 elements.
    """
    cdef double d[MAXA * MAXA * VL]      # d[i][j][lane]
    cdef const double* src
    cdef const double* row
    cdef int l, i, j, k, y0, x0, yy, xx
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
    wg_d_in(d, V, plane, alpha)


cdef void _output_chunk_f64(const double* M, Py_ssize_t plane, double* out,
                            Py_ssize_t Cout, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t oc,
                            const int* tn, const int* oy, const int* ox, int nl,
                            int m, double b, bint relu) noexcept nogil:
    """out tiles (oc; 16 lanes) = A^T M A + b, relu; writes only in-bounds outputs.

    M[xi*alpha+nu][lane] with plane stride ``plane``; ``oy``/``ox`` are the tiles'
    top-left output coordinates. Stack scratch: (64 + 48 + 36) * 16 elements.
    """
    cdef double o[6 * 6 * VL]            # o[i][j][lane]
    cdef double* orow
    cdef double v
    cdef int l, i, j, hh, ww
    wg_d_out(M, plane, b, o, m)
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
                v = o[(i * m + j) * VL + l]
                if relu and v < 0:        # relu where the output is written
                    v = 0
                orow[i * OW + j] = v


def choose_blocking(Py_ssize_t n_tiles, int m, Py_ssize_t C_in, Py_ssize_t C_out,
                    int itemsize, int num_threads=1, Py_ssize_t tile_block=0,
                    Py_ssize_t budget=0):
    """(TB, n_cout_blocks); see _blocking."""
    return _blocking(n_tiles, m, C_in, C_out, itemsize, num_threads, tile_block, budget)[:2]


def _blocking(Py_ssize_t n_tiles, int m, Py_ssize_t C_in, Py_ssize_t C_out,
              int itemsize, int num_threads=1, Py_ssize_t tile_block=0,
              Py_ssize_t budget=0):
    """(TB, n_cout_blocks): tiles per block (a multiple of 16) and how many slices the
    output channels are cut into.

    Work items are (tile block, C_out slice) pairs, dealt statically to the threads.
    Normally C_out is not cut (each thread owns whole tile blocks, and its per-thread
    V + M workspace, alpha^2 * TB * (C_in + C_out) elements, stays within ``budget``
    bytes, default WORKSPACE_BYTES). When there are too few tiles to give every thread
    a GEMM-worthy block (deep layers on small images, where U is the big operand),
    the threads instead share the tiles and split C_out: each reads only its slice of
    U and repeats the (cheap) input transform.
    """
    cdef Py_ssize_t alpha = m + 2
    nthr = max(1, num_threads)
    if budget <= 0:
        budget = WORKSPACE_BYTES
    ncb = 1
    if nthr > 1 and n_tiles < nthr * MIN_TILES_PER_THREAD and C_out >= 16 * nthr:
        ncb = nthr
    cout_slice = (C_out + ncb - 1) // ncb
    nch = (n_tiles + VL - 1) // VL          # 16-tile chunks; blocks get whole chunks, evenly
    if tile_block > 0:
        tb = (tile_block + VL - 1) // VL
        nblocks = (nch + tb - 1) // tb
        return tb * VL, ncb, nblocks
    per_tile = alpha * alpha * (C_in + cout_slice) * itemsize
    tb_max = max(2 * VL, (budget // per_tile) // VL * VL)
    nblocks = (n_tiles + tb_max - 1) // tb_max
    if ncb == 1:       # at least one block per thread, and a multiple of the thread count
        nblocks = max(nblocks, nthr)
        nblocks = (nblocks + nthr - 1) // nthr * nthr
    nblocks = min(nblocks, nch)
    return (nch + nblocks - 1) // nblocks * VL, ncb, nblocks


def conv2d_winograd(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U, bias,
                    floating[:, :, :, ::1] out, int m, int pad_top, int pad_left,
                    int groups, int num_threads, bint relu=False,
                    Py_ssize_t tile_block=0, isa=None, transforms="auto"):
    """out = conv2d(x, weight, bias, stride 1, dilation 1, zero padding) via F(m x m, 3 x 3).

    IN:  x[N][C_in][H][W]; U[alpha*alpha][C_out][C_in/groups] = transform_weight(w, m);
         bias None or bias[C_out]; pad_top/pad_left: zero padding (bottom/right follow
         from out's shape: OH = H + pad_top + pad_bottom - 2).
    OUT: out[N][C_out][OH][OW], every element overwritten (+ bias, relu if asked).
    ``tile_block``: tiles per block (rounded up to a multiple of 16), 0 = automatic
    (``choose_blocking``). ``isa``: index of the micro-kernel ISA (engine.isa.NAMES)
    for float32, default ``engine.isa.level()``. ``transforms``: how AVX-512 moves tiles
    (``TRANSFORMS``; "auto" = ``auto_transforms(isa)``). float64 calls BLAS, and the caller
    holds BLAS at one thread while this runs. The image planes must keep their tile
    offsets in 32 bits: (H + 8) * (W + 8) and (OH + 8) * (OW + 8) below 2^31
    (``Winograd.why_not`` checks it).

    One OpenMP region; each thread, for each of its (tile block, C_out slice) items:
    input-transforms the block into its own V (skipped when the block is the one it
    just did), runs groups * alpha^2 single-threaded GEMMs into its own M, and
    output-transforms M into ``out``. No barrier between phases, so a descheduled
    thread on a busy machine stalls nobody but itself until the end.
    Workspace per thread: alpha^2 * TB * (C_in + C_out slice) elements + 5 * TB ints,
    independent of N.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Cout = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef int alpha = m + 2, aa = (m + 2) * (m + 2)
    cdef int idx = m // 2 - 1
    cdef Py_ssize_t Cig = C // groups, Cog = Cout // groups
    cdef Py_ssize_t TH = (OH + m - 1) // m, TW = (OW + m - 1) // m
    cdef Py_ssize_t n_tiles = N * TH * TW
    cdef Py_ssize_t TB, ncb, cbs, nTB, w, MR
    cdef int nthr = num_threads if num_threads > 0 else 1
    cdef const uk_kernels_t* uk = NULL     # the GEMM's kernels
    cdef const uk_kernels_t* tk = NULL     # the tile transforms' kernels
    cdef int tisa
    cdef const floating* xp
    cdef const floating* Up
    cdef floating* outp
    cdef const floating[::1] bview
    cdef const floating* bp = NULL
    # thread-private (assigned inside the parallel block)
    cdef floating* V
    cdef floating* Mw
    cdef int* tinfo
    cdef Py_ssize_t* state
    cdef int saved_threads
    cdef Py_ssize_t failed = 0

    if m != 2 and m != 4 and m != 6:
        raise ValueError(f"m must be 2, 4 or 6, got {m}")
    if U.shape[0] != aa or U.shape[1] != Cout or U.shape[2] != Cig:
        raise ValueError(f"U has shape {(U.shape[0], U.shape[1], U.shape[2])}, expected {(aa, Cout, Cig)}")
    if (H + 8) * (W + 8) >= (1 << 31) or (OH + 8) * (OW + 8) >= (1 << 31):
        raise ValueError(f"winograd: planes of {H}x{W} -> {OH}x{OW} exceed the 32-bit tile offsets")
    if floating is float:
        if isa is None:
            from .. import isa as _isa
            isa = _isa.level()
        uk = uk_kernels(isa) if 0 <= isa < UK_ISA_COUNT else NULL
        if uk == NULL or isa > uk_cpu_isa():
            raise ValueError(f"winograd: no micro-kernels for ISA index {isa!r} on this CPU")
    # checks ``transforms`` for float64 too (whose C transforms ignore it)
    tisa = transforms_isa(isa if floating is float else UK_ISA_BASELINE, transforms)
    if floating is float:
        tk = uk_kernels(tisa)
    if n_tiles == 0 or Cout == 0:
        return
    if bias is not None:
        bview = bias
        bp = &bview[0]
    TB, ncb, nTB = _blocking(n_tiles, m, C, Cout, sizeof(floating), nthr, tile_block)
    cbs = (Cog + ncb - 1) // ncb          # C_out slice per group
    ncb = (Cog + cbs - 1) // cbs
    MR = groups * cbs                      # rows of the per-thread M
    xp = &x[0, 0, 0, 0]
    Up = &U[0, 0, 0]
    outp = &out[0, 0, 0, 0]
    with nogil, parallel(num_threads=nthr):
        saved_threads = blas_serial_begin()     # float64's dgemm: one thread per GEMM
        # the thread's blocks kept from call to call (_thread_scratch.h)
        V = <floating*>ts_get(0, aa * C * TB * sizeof(floating))
        # zeroed once a call: lanes past a block's last tile are never written by the
        # GEMM, and the output transform reads them (then drops them)
        Mw = <floating*>ts_get(1, aa * MR * TB * sizeof(floating))
        if Mw != NULL:
            memset(Mw, 0, aa * MR * TB * sizeof(floating))
        tinfo = <int*>ts_get(2, 5 * TB * sizeof(int))
        state = <Py_ssize_t*>ts_get(3, sizeof(Py_ssize_t))
        if state != NULL:
            state[0] = -1                  # tile block currently in V
        # Every thread reaches the work-sharing loop (OpenMP requires it); one whose
        # workspace could not be allocated counts its items as failed instead.
        for w in prange(nTB * ncb, schedule="static"):
            if V == NULL or Mw == NULL or tinfo == NULL or state == NULL:
                failed += 1
            else:
                _work_item(xp, Up, bp, outp, w // ncb, w % ncb, state, V, Mw, tinfo,
                           C, H, W, Cout, OH, OW, TH, TW, n_tiles, TB, cbs, MR,
                           groups, Cig, Cog, m, pad_top, pad_left, relu, uk, tk, nTB)
        blas_serial_end(saved_threads)
    if failed:
        raise MemoryError("winograd: could not allocate the per-thread workspace")


cdef void _work_item(const floating* x, const floating* U, const floating* bp, floating* out,
                     Py_ssize_t tb, Py_ssize_t cb, Py_ssize_t* state, floating* V,
                     floating* Mw, int* tinfo,
                     Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t Cout, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t TH,
                     Py_ssize_t TW, Py_ssize_t n_tiles, Py_ssize_t TB, Py_ssize_t cbs,
                     Py_ssize_t MR, int groups, Py_ssize_t Cig, Py_ssize_t Cog, int m,
                     int pad_top, int pad_left, bint relu, const uk_kernels_t* uk,
                     const uk_kernels_t* tk, Py_ssize_t nTB) noexcept nogil:
    """One (tile block tb, C_out slice cb) item on the calling thread's workspace.
    ``uk``: the float32 GEMM's micro-kernels, ``tk``: the tile transforms' (both unused
    for float64)."""
    cdef int alpha = m + 2, aa = (m + 2) * (m + 2), idx = m // 2 - 1
    # block tb: 16-tile chunks [tb*nch/nTB, (tb+1)*nch/nTB), at most TB tiles
    cdef Py_ssize_t nch = (n_tiles + VL - 1) // VL
    cdef Py_ssize_t t0 = (tb * nch // nTB) * VL
    cdef Py_ssize_t nt = ((tb + 1) * nch // nTB) * VL - t0
    cdef Py_ssize_t t, rem, c, ch, g, a, r, oc, lane0
    cdef Py_ssize_t nchunks, r0, r1
    cdef int* tn = tinfo                   # image of each tile
    cdef int* ty = tinfo + TB              # top-left output row / column
    cdef int* tx = tinfo + 2 * TB
    cdef int* iy = tinfo + 3 * TB          # top-left input row / column (padding subtracted)
    cdef int* ix = tinfo + 4 * TB
    cdef int nl
    cdef floating bval
    if nt > n_tiles - t0:
        nt = n_tiles - t0
    nchunks = (nt + VL - 1) // VL
    if state[0] != tb:
        # tile -> (image, top-left output row/col); whole chunks, lanes past nt zeroed
        for t in range(nchunks * VL):
            if t < nt:
                rem = t0 + t
                tn[t] = <int>(rem // (TH * TW))
                rem = rem % (TH * TW)
                ty[t] = <int>((rem // TW) * m)
                tx[t] = <int>((rem % TW) * m)
                iy[t] = ty[t] - pad_top
                ix[t] = tx[t] - pad_left
            else:
                tn[t] = ty[t] = tx[t] = iy[t] = ix[t] = 0
        # 1. input transform of all C_in channels, 16 tiles at a time
        for ch in range(nchunks):
            lane0 = ch * VL
            nl = <int>(nt - lane0)
            if nl > VL:
                nl = VL
            for c in range(C):
                if floating is float:
                    tk.wg_input[idx](x + c * H * W, C * H * W, tn + lane0, iy + lane0,
                                     ix + lane0, nl, <int>H, <int>W,
                                     V + c * TB + lane0, C * TB)
                else:
                    _input_chunk_f64(x, C, H, W, c, tn + lane0, iy + lane0, ix + lane0, nl,
                                     alpha, V + c * TB + lane0, C * TB)
        state[0] = tb
    # 2. GEMMs: M[a][g*cbs + i][t] = sum_k U[a][g*Cog + r0 + i][k] V[a][g*Cig + k][t]
    r0 = cb * cbs
    r1 = r0 + cbs
    if r1 > Cog:
        r1 = Cog
    for g in range(groups):
        for a in range(aa):
            if floating is float:
                # exactly the block's nt tiles: the tile kernels mask the last columns
                uk.sgemm(<int>(r1 - r0), <int>nt, <int>Cig,
                         U + (a * Cout + g * Cog + r0) * Cig, <int>Cig,
                         V + (a * C + g * Cig) * TB, <int>TB,
                         Mw + (a * MR + g * cbs) * TB, <int>TB, 0)
            else:
                gemm(False, False, <int>(r1 - r0), <int>nt, <int>Cig, <floating>1.0,
                     U + (a * Cout + g * Cog + r0) * Cig, <int>Cig,
                     V + (a * C + g * Cig) * TB, <int>TB, <floating>0.0,
                     Mw + (a * MR + g * cbs) * TB, <int>TB)
    # 3. output transform + bias + relu into out
    for g in range(groups):
        for r in range(r0, r1):
            oc = g * Cog + r
            bval = bp[oc] if bp != NULL else 0
            for ch in range(nchunks):
                lane0 = ch * VL
                nl = <int>(nt - lane0)
                if nl > VL:
                    nl = VL
                if floating is float:
                    tk.wg_output[idx](Mw + (g * cbs + r - r0) * TB + lane0, MR * TB, bval,
                                      relu, out + oc * OH * OW, Cout * OH * OW, tn + lane0,
                                      ty + lane0, tx + lane0, nl, <int>OH, <int>OW)
                else:
                    _output_chunk_f64(Mw + (g * cbs + r - r0) * TB + lane0, MR * TB, out,
                                      Cout, OH, OW, oc, tn + lane0, ty + lane0, tx + lane0,
                                      nl, m, bval, relu)
