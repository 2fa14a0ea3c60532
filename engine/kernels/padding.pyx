"""Padding pre-pass: zeros / reflect / replicate / circular, exactly ``torch.nn.functional.pad``.

Convolution kernels implement zero padding themselves; the other padding modes of
``nn.Conv2d`` run this pass first and then convolve the padded copy with padding 0.
Each output row is built as: left border (mapped indices) + interior (one memcpy of the
source row) + right border (mapped indices); only border indices go through the mode's
index map, so the pass costs about one read and one write of the tensor.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

cdef enum PadMode:
    ZEROS = 0
    REFLECT = 1
    REPLICATE = 2
    CIRCULAR = 3

# The mode codes pad2d takes, for Python callers.
PAD_ZEROS = ZEROS
PAD_REFLECT = REFLECT
PAD_REPLICATE = REPLICATE
PAD_CIRCULAR = CIRCULAR


cdef inline Py_ssize_t _map_index(Py_ssize_t i, Py_ssize_t n, int mode) noexcept nogil:
    """Source index for padded coordinate ``i`` (relative to the source, may be < 0 or >= n).

    Returns -1 for a zero element (ZEROS outside [0, n)). The caller guarantees reflect
    pads < n and circular pads <= n, as torch requires, so one reflection / wrap suffices.
    """
    if 0 <= i < n:
        return i
    if mode == REFLECT:                 # reflect: edge element not repeated
        return -i if i < 0 else 2 * (n - 1) - i
    if mode == REPLICATE:               # replicate: clamp to the edge
        return 0 if i < 0 else n - 1
    if mode == CIRCULAR:                # circular: wrap around
        return i + n if i < 0 else i - n
    return -1                           # zeros


cdef inline void _pad_row(const floating* src, floating* dst, Py_ssize_t W, Py_ssize_t OW,
                          Py_ssize_t pad_left, int mode) noexcept nogil:
    """dst[0:OW] = padded view of src[0:W]; dst[j] = src[map(j - pad_left)]."""
    cdef Py_ssize_t j, s
    # interior columns: the part of [pad_left, pad_left + W) that lies inside [0, OW)
    cdef Py_ssize_t lo = pad_left if pad_left > 0 else 0
    cdef Py_ssize_t hi = pad_left + W
    if hi > OW:
        hi = OW
    if lo > hi:
        lo = hi = OW if pad_left > 0 else 0
    for j in range(lo):                 # left border
        s = _map_index(j - pad_left, W, mode)
        dst[j] = src[s] if s >= 0 else 0
    if hi > lo:
        memcpy(dst + lo, src + (lo - pad_left), <size_t>(hi - lo) * sizeof(floating))
    for j in range(hi, OW):             # right border
        s = _map_index(j - pad_left, W, mode)
        dst[j] = src[s] if s >= 0 else 0


def pad2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
          Py_ssize_t pad_top, Py_ssize_t pad_left, int mode, int num_threads):
    """Pad every plane of ``x`` into ``out``.

    IN   x[N][C][H][W]
    OUT  out[N][C][OH][OW], OH = H + pad_top + pad_bottom, OW = W + pad_left + pad_right
         (out's shape gives pad_bottom and pad_right);
         out[n][c][i][j] = x[n][c][map(i - pad_top, H)][map(j - pad_left, W)], or 0
         where mode is PAD_ZEROS and the source index falls outside.
    mode PAD_ZEROS=0, PAD_REFLECT=1, PAD_REPLICATE=2, PAD_CIRCULAR=3, as torch's
         F.pad modes 'constant' (value 0), 'reflect', 'replicate', 'circular'; the caller
         guarantees reflect pads < dim and circular pads <= dim.
    Parallel over the N*C planes (static schedule, ``num_threads`` OpenMP threads).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t planes = N * C
    cdef Py_ssize_t p, i, s
    cdef const floating* xp
    cdef floating* op
    if planes == 0 or OH == 0 or OW == 0:
        return
    if num_threads < 1:
        num_threads = 1
    xp = &x[0, 0, 0, 0] if H > 0 and W > 0 else NULL
    op = &out[0, 0, 0, 0]
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            for i in range(OH):
                s = _map_index(i - pad_top, H, mode) if H > 0 else -1
                if s < 0 or W == 0:
                    memset(op + (p * OH + i) * OW, 0, <size_t>OW * sizeof(floating))
                else:
                    _pad_row(xp + (p * H + s) * W, op + (p * OH + i) * OW, W, OW, pad_left, mode)
