# cython: language_level=3
"""Polyphase (space-to-batch) reorders: a dilated stride-1 convolution as ordinary ones.

A stride-1 convolution with dilation (dh, dw) only ever combines input pixels of one
polyphase component (row mod dh, column mod dw) into the outputs of that same
component, provided its top/left zero padding are multiples of dh/dw. With
pt = dh * P and pl = dw * Q, output row oh = dh*u + a reads input rows
oh - pt + dh*i = dh*(u + i - P) + a (i = 0..kH-1), and likewise for columns, so

    xs[n*dh*dw + a*dw + b][c][t][v] = x[n][c][dh*t + a][dw*v + b]   (0 where outside x)
    outs = conv2d(xs, w, bias, stride 1, dilation 1, padding (P, Q))
    out[n][m][dh*u + a][dw*v + b] = outs[n*dh*dw + a*dw + b][m][u][v]

i.e. d_h*d_w ordinary convolutions of the same weights, one per component, batched.
A component with fewer real rows than xs has is padded with zeros, which is exactly
the zero padding the dilated convolution sees there. ``split`` builds xs,
``scatter`` puts outs back; the Winograd algorithm (engine.registry.Winograd) runs
dilated 3x3 layers as split -> conv2d_winograd -> scatter.

Layouts (all row-major, C-contiguous, one dtype, float32 or float64):
    x     [N][C][H][W]
    xs    [N*dh*dw][C][Hs][Ws]      Hs >= ceil(H/dh), Ws >= ceil(W/dw)
    outs  [N*dh*dw][C][OHs][OWs]    OHs >= ceil(OH/dh), OWs >= ceil(OW/dw)
    out   [N][C][OH][OW]
Both kernels overwrite every element of their output (split writes zeros where the
source falls outside x; scatter reads only the valid sub-outputs and drops the rest)
and run in parallel over the N*C source / destination planes (OpenMP, static).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from ._ranges cimport _ceil_div
from ._rows cimport _copy_strided


def split(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xs, int dh, int dw,
          int num_threads):
    """xs[(n*dh + a)*dw + b][c][t][v] = x[n][c][dh*t + a][dw*v + b], 0 outside x.

    IN:  x[N][C][H][W].
    OUT: xs[N*dh*dw][C][Hs][Ws] with Hs >= ceil(H/dh), Ws >= ceil(W/dw) (xs's shape
         gives them), every element written.
    Parallel over the N*C planes of x: each source row y (component a = y % dh, row
    t = y // dh) is read once and dealt to the dw rows of components (a, b), then the
    rows and columns past the image are zeroed.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Hs = xs.shape[2], Ws = xs.shape[3]
    cdef Py_ssize_t planes = N * C, pl, n, c, y, t, a, b, nv, nt
    cdef Py_ssize_t dd = <Py_ssize_t>dh * dw, plane_s = Hs * Ws
    cdef const floating* xp
    cdef const floating* src
    cdef floating* xsp
    cdef floating* dst
    if dh < 1 or dw < 1:
        raise ValueError(f"split: dilation must be positive, got ({dh}, {dw})")
    if xs.shape[0] != N * dd or xs.shape[1] != C or Hs < _ceil_div(H, dh) or Ws < _ceil_div(W, dw):
        raise ValueError(f"split: xs has shape {(xs.shape[0], xs.shape[1], Hs, Ws)}, expected "
                         f"({N * dd}, {C}, >= {_ceil_div(H, dh)}, >= {_ceil_div(W, dw)}) "
                         f"for x of shape {(N, C, H, W)} and dilation ({dh}, {dw})")
    if planes == 0 or plane_s == 0:
        return
    if num_threads < 1:
        num_threads = 1
    xp = &x[0, 0, 0, 0] if H > 0 and W > 0 else NULL
    xsp = &xs[0, 0, 0, 0]
    with nogil:
        for pl in prange(planes, schedule="static", num_threads=num_threads):
            n = pl // C
            c = pl % C
            for y in range(H):
                a = y % dh
                t = y // dh
                src = xp + (pl * H + y) * W
                for b in range(dw):
                    dst = xsp + (((n * dd + a * dw + b) * C + c) * Hs + t) * Ws
                    nv = _ceil_div(W - b, dw) if b < W else 0     # columns b, b+dw, ... < W
                    _copy_strided(dst, 1, src + b, dw, nv)
                    if Ws > nv:
                        memset(dst + nv, 0, <size_t>(Ws - nv) * sizeof(floating))
            # rows t of component a with dh*t + a >= H (and all rows past ceil(H/dh))
            for a in range(dh):
                nt = _ceil_div(H - a, dh) if a < H else 0
                if nt < Hs:
                    for b in range(dw):
                        dst = xsp + (((n * dd + a * dw + b) * C + c) * Hs + nt) * Ws
                        memset(dst, 0, <size_t>((Hs - nt) * Ws) * sizeof(floating))


def scatter(const floating[:, :, :, ::1] outs, floating[:, :, :, ::1] out, int dh, int dw,
            int num_threads):
    """out[n][c][dh*u + a][dw*v + b] = outs[(n*dh + a)*dw + b][c][u][v].

    IN:  outs[N*dh*dw][C][OHs][OWs] with OHs >= ceil(OH/dh), OWs >= ceil(OW/dw).
    OUT: out[N][C][OH][OW] (its shape gives N, OH, OW), every element written; the
         sub-outputs that fall past OH / OW are not read.
    Parallel over the N*C planes of out, each output row built from the dw rows of
    its components. Values are only moved (bias and relu belong to the convolution).
    """
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t OHs = outs.shape[2], OWs = outs.shape[3]
    cdef Py_ssize_t planes = N * C, pl, n, c, y, u, a, b, nv
    cdef Py_ssize_t dd = <Py_ssize_t>dh * dw
    cdef const floating* op
    cdef const floating* src
    cdef floating* outp
    cdef floating* dst
    if dh < 1 or dw < 1:
        raise ValueError(f"scatter: dilation must be positive, got ({dh}, {dw})")
    if (outs.shape[0] != N * dd or outs.shape[1] != C or OHs < _ceil_div(OH, dh)
            or OWs < _ceil_div(OW, dw)):
        raise ValueError(f"scatter: outs has shape {(outs.shape[0], outs.shape[1], OHs, OWs)}, expected "
                         f"({N * dd}, {C}, >= {_ceil_div(OH, dh)}, >= {_ceil_div(OW, dw)}) "
                         f"for out of shape {(N, C, OH, OW)} and dilation ({dh}, {dw})")
    if planes == 0 or OH == 0 or OW == 0:
        return
    if num_threads < 1:
        num_threads = 1
    op = &outs[0, 0, 0, 0]
    outp = &out[0, 0, 0, 0]
    with nogil:
        for pl in prange(planes, schedule="static", num_threads=num_threads):
            n = pl // C
            c = pl % C
            for y in range(OH):
                a = y % dh
                u = y // dh
                dst = outp + (pl * OH + y) * OW
                for b in range(dw):
                    src = op + (((n * dd + a * dw + b) * C + c) * OHs + u) * OWs
                    nv = _ceil_div(OW - b, dw) if b < OW else 0
                    _copy_strided(dst + b, dw, src, 1, nv)
