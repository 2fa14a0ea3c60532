# cython: language_level=3
"""Packed-weight implicit-GEMM convolution on the micro-kernels (float32, every ISA).

Layouts (C-contiguous float32):

    x[N][C_in][H][W]    weight[C_out][C_in/g][kH][kW]    out[N][C_out][OH][OW]
    Ap[G][ceil(Mg/MR)][K][MR]   the packed weights (``pack_weight``, once per layer
                        and register tile): MR output channels side by side per k, K =
                        Cg*kH*kW in tap-major order,
                        Ap[gi][b][(kh*kW + kw)*Cg + ic][r] = weight[gi*Mg + b*MR + r][ic][kh][kw]
                        (src = kw-kh-inch-outch, dst = MR-inch-kw-kh/MR-outch/MR), rows past
                        Mg zero. MR is the ISA's tile height (8 AVX-512, 6 AVX2, 4 baseline);
                        ``PackedWeights`` keeps one packing per MR, made on first use.

With g groups (Cg input, Mg output channels each) and P = OH*OW, group gi of the
whole batch is one matrix product over batch-wide columns c = n*P + oh*OW + ow:

    out_gi[Mg][N*P] = W_gi[Mg][K] @ col_gi[K][N*P]  (+ bias, relu),   W_gi = Ap[gi] unpacked
    col_gi[(kh*kW + kw)*Cg + ic][c] = x[n][gi*Cg + ic][oh*sh - pt + kh*dh][ow*sw - pl + kw*dw]
                                      (0 outside x)
    OH = (H + pt + pb - dh*(kH-1) - 1) // sh + 1   (likewise OW; out's shape fixes pb, pr)

col is never materialised: the micro-kernel layer's igemm driver (ukernels/
igemm_driver.h, one instance per ISA) gathers KC x NR slices of it straight into the
packed B panel its register tile (sgemm_8x48_pa__avx512f, sgemm_6x16_pa__avx2_fma,
sgemm_4x16_pa__scalar: the sgemm tiles reading A as packed panels) reads, multiplies
them by Ap's panels, and stores each C tile with bias and relu. Or, in the padded
mode (``panels``, ``auto_panels``), each thread zero-pads the image and group its
items read into polyphase planes of its own,
xq[n][c][a][b][u][v] = x[n][c][u*sh + a - pt][v*sw + b - pl] (the phases a, b the taps
use), where col's row for tap (kh, kw) is a stride-1 shift of one plane:

    col_gi[(kh*kW + kw)*Cg + ic][oh*Wq + ow] = xq[n][gi*Cg + ic][(kh*dh) % sh][(kw*dw) % sw]
                                                 [oh + (kh*dh) // sh][ow + (kw*dw) // sw]

with columns numbered by their flat position in a Wq-wide plane (ow >= OW computed
and dropped); the tile reads those rows in place through per-k offsets
(sgemm_<MR>x<NR>_pa_ib__<isa>). A 1x1 stride-1
unpadded layer is the same product with each image's plane viewed as one row (the
gather is then one row copy per panel row): no im2col, no BLAS.

Work split: units (group, block of mb output channels, NR-column panel) dealt to one
OpenMP team in contiguous shares, so a thread walks consecutive panels of one
channel block (its mb x K panels of A, re-read for every panel, from L2 or L3: mb
comes from A_BLOCK_BYTES); the gather takes up to ``wide_panels`` of them at
a time and gathers their K rows together (WIDE_BYTES of B). When
groups x channel blocks x panels would leave threads idle (batch 1 on a 7x7 image),
channel blocks shrink down to one register tile's MR rows. Per-thread workspace:
mb x NR floats of C and at most WIDE_BYTES (512 KiB) of B, or KC x NR floats when K is
too large for two panels there, whatever the layer; in the padded mode C and one
group's padded planes (Cg x phases x about (H + pads) x (W + pads) floats) of one image.

float64 has no micro-kernels: the registry runs it through im2col's BLAS path.
"""
from math import gcd

import numpy as np

from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free
from libc.string cimport memset

from ._rows cimport _copy_strided
from ._shares cimport ws_share_t, ws_next, ws_share_end, shares_new
from ._thread_scratch cimport ts_get
from ._ukernels cimport (uk_kernels, uk_kernels_t, uk_cpu_isa, uk_conv_t, UK_ISA_COUNT, IG_WIDE_MAX,
                        IG_PADDED_RUN, UK_KC_PADDED)

# Bytes of A (mb rows x K) one channel block may hold (mb is at most MAX_MB): a thread
# re-reads its block for every panel, and gathers each panel once per block, so larger
# blocks amortise the gather over more rows while the packed panels, one stream a
# tile, come well enough from L3. Measured: 1 MiB beat 256 KiB on 3x3 layers with
# K = 2304 by 1.7x on the Sapphire Rapids; on an AMD EPYC Zen 4 (1 MiB of L2), 8 MiB
# (mb = 256 up to K = 8192) against 1 MiB, time ratio: strided 3x3 512 ch 14x14 0.62
# (one thread) / 0.74 (two) at batch 1 and 0.56 at batch 8, 256 ch 28x28 0.87 / 0.93
# and 0.83, ResNet-50's 1x1 stride-2 0.87-0.95, its other 1x1 layers and the stem
# 0.97-1.03 (noise).
A_BLOCK_BYTES = 8 * 1024 * 1024
# Most output channels per block (bounds the per-thread C buffer, MAX_MB x NR floats).
# Each block gathers every panel again, so fewer blocks gather less: on a Zen 3 (AVX2)
# 256 (which also split Mg = 256 into two blocks of 132, 256 not being a multiple of
# MR = 6) against 2048, time ratio 0.90-0.97 on the 1x1 and strided 3x3 layers with
# 256-2048 output channels at one and two threads, batch 1 and 8.
MAX_MB = 2048
# Panels a padded-mode thread takes from its work share at a time (_shares.h): each
# chunk costs one compare-and-swap and a look at which plane rows it needs.
cdef int PADDED_CHUNK = 8


def pack_weight(weight, int groups, int mr):
    """Ap[G][ceil(Mg/mr)][K][mr] from weight[C_out][C_in/g][kH][kW] (float32): the panels
    the register tile of height ``mr`` reads (module docstring). Done once per layer."""
    w = np.asarray(weight)
    if w.dtype != np.float32 or w.ndim != 4:
        raise TypeError(f"igemm.pack_weight expects a 4-D float32 weight, got {w.dtype} {w.shape}")
    if groups < 1 or w.shape[0] % groups or mr < 1:
        raise ValueError(f"igemm.pack_weight: groups={groups} must divide C_out={w.shape[0]}, mr={mr} >= 1")
    M, K = w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]
    Mg = M // groups
    nb = -(-Mg // mr)
    t = np.zeros((groups, nb * mr, K), np.float32)
    t[:, :Mg] = w.transpose(0, 2, 3, 1).reshape(groups, Mg, K)      # tap-major rows
    return np.ascontiguousarray(t.reshape(groups, nb, mr, K).transpose(0, 1, 3, 2))


class PackedWeights:
    """A layer's weights for conv2d_igemm: a snapshot of the weight and its packing for
    each register-tile height used so far (the ISA can change at run time,
    engine.isa.set_cap), the active ISA's made at once."""
    __slots__ = ("weight", "groups", "_panels")

    def __init__(self, weight, groups, isa=None):
        self.weight = np.array(weight, dtype=np.float32, copy=True)
        self.groups = groups
        self._panels = {}
        self.panels(_table(isa).sgemm_mr)

    def panels(self, int mr):
        ap = self._panels.get(mr)
        if ap is None:
            ap = self._panels[mr] = pack_weight(self.weight, self.groups, mr)
        return ap


cdef const uk_kernels_t* _table(isa) except NULL:
    if isa is None:
        from .. import isa as _isa
        isa = _isa.level()
    if not isinstance(isa, int) or not 0 <= isa < UK_ISA_COUNT or uk_kernels(isa) == NULL \
            or isa > uk_cpu_isa():
        raise ValueError(f"igemm: no micro-kernels for ISA index {isa!r} on this CPU")
    return uk_kernels(isa)


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for a >= 0, b > 0."""
    return (a + b - 1) // b


def blocking(Py_ssize_t Mg, Py_ssize_t K, Py_ssize_t groups, Py_ssize_t columns, int mr, int nr,
             int num_threads, Py_ssize_t m_block=0):
    """(mb, n_mblocks, n_panels): output channels per block (a multiple of mr unless it
    is all of Mg), blocks per group, NR-column panels of the batch. ``m_block`` > 0
    forces the block size (rounded up to mr). Channel blocks shrink until every thread
    has a unit, and with fewer than 4 panels a thread their rows are made a multiple
    of the threads (when there are tiles enough), so the threads' shares are even."""
    cdef Py_ssize_t nt = max(1, num_threads), panels = _cdiv(columns, nr), mb, nmb
    if m_block > 0:
        mb = _cdiv(m_block, mr) * mr
    else:
        mb = (A_BLOCK_BYTES // (4 * max(K, 1))) // mr * mr
        mb = max(mr, min(mb, _cdiv(MAX_MB, mr) * mr))   # (a block of MAX_MB = Mg stays one block)
        # every thread gets work: shrink the channel blocks (not below one tile)
        while mb > mr and groups * _cdiv(Mg, mb) * panels < nt:
            mb = max(mr, (mb // 2) // mr * mr)
    mb = min(mb, _cdiv(Mg, mr) * mr, MAX_MB)
    nmb = _cdiv(Mg, mb)
    if m_block <= 0 and nt > 1 and panels < 4 * nt:
        # Few panels a thread, the last one narrow (49 columns on NR = 48: 48 + 1), so
        # shares of units are uneven however they are cut; make the (group, channel
        # block) rows a multiple of the threads instead: each share then holds whole rows.
        step = nt // gcd(groups, nt)
        if _cdiv(nmb, step) * step <= _cdiv(Mg, mr):
            nmb = _cdiv(nmb, step) * step
    mb = min(_cdiv(_cdiv(Mg, nmb), mr) * mr, Mg)     # even blocks of whole tiles
    return mb, _cdiv(Mg, mb), panels


cdef int _fill(uk_conv_t* cv, const float[:, :, :, ::1] x, const float[:, :, :, ::1] A, int mr, bias,
               Py_ssize_t M, Py_ssize_t OH, Py_ssize_t OW, int kh, int kw, int sh, int sw,
               int pt, int pl, int dh, int dw, int groups, bint relu) except -1:
    """The kernel's description of the convolution (out pointer left NULL), checked:
    bad sizes are a ValueError here, never a crash in the kernel."""
    cdef const float[::1] bv
    N, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    if groups < 1 or C % groups or M % groups:
        raise ValueError(f"igemm: groups={groups} must divide C_in={C} and C_out={M}")
    K = C // groups * kh * kw
    expected = (groups, _cdiv(M // groups, mr), K, mr)
    if (A.shape[0], A.shape[1], A.shape[2], A.shape[3]) != expected:
        raise ValueError(f"igemm: packed weight has shape {(A.shape[0], A.shape[1], A.shape[2], A.shape[3])}, "
                         f"expected {expected} (pack_weight for a tile of {mr} rows)")
    if min(kh, kw, sh, sw, dh, dw) < 1 or pt < 0 or pl < 0:
        raise ValueError("igemm: kernel, stride and dilation must be >= 1, padding >= 0")
    for what, v in (("H*W", H * W), ("OH*OW", OH * OW), ("K", K), ("K*MR", K * mr),
                    ("N", N), ("C_out", M), ("C_in", C),
                    ("input rows", (OH + kh) * sh + pt + kh * dh + H),
                    ("input columns", (OW + kw) * sw + pl + kw * dw + W)):
        if v >= 2 ** 31:
            raise ValueError(f"igemm: {what} = {v} exceeds the kernel's 32-bit sizes")
    if bias is not None:
        bv = bias
        if bv.shape[0] != M:
            raise ValueError(f"igemm: bias has {bv.shape[0]} elements, expected {M}")
        cv.bias = &bv[0] if M > 0 else NULL
    else:
        cv.bias = NULL
    cv.x = &x[0, 0, 0, 0] if x.size else NULL
    cv.w = &A[0, 0, 0, 0] if A.size else NULL
    cv.out = NULL
    cv.N, cv.C, cv.H, cv.W, cv.M, cv.OH, cv.OW = N, C, H, W, M, OH, OW
    cv.kh, cv.kw, cv.sh, cv.sw, cv.pt, cv.pl, cv.dh, cv.dw = kh, kw, sh, sw, pt, pl, dh, dw
    cv.G, cv.Cg, cv.Mg, cv.K, cv.relu = groups, C // groups, M // groups, K, relu
    if (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
            and OH == H and OW == W):
        # 1x1 stride 1 unpadded: the plane is one row, so a panel is one run of x
        cv.W = cv.OW = H * W
        cv.H = cv.OH = 1
    return 0


# How the B panels are made (conv2d_igemm's ``panels``): "gather" copies each KC x NR
# slice of the im2col matrix into a packed panel; "padded" zero-pads the input once,
# split into the polyphase planes its stride needs, and lets the tile read B's rows in
# place (igemm_driver.h, padded mode). Both compute any layer, with the same products
# in the same order (bitwise equal results). "auto" is ``auto_panels``.
PANELS = ("auto", "gather", "padded")


cdef inline Py_ssize_t _phase_extent(Py_ssize_t out, int k, int d, int s) noexcept nogil:
    """Rows (or columns) of a polyphase plane: the outputs plus the largest tap
    offset (k-1)*d // s within the plane."""
    return out + (k - 1) * d // s


cpdef padded_applies(int stride_h, int stride_w, Py_ssize_t Cg, Py_ssize_t OH, Py_ssize_t OW,
                     int kh, int kw, int dh, int dw):
    """None when the padded mode can compute this layer, else why not: it needs input
    channels, and a group's polyphase planes within its 32-bit offsets."""
    if Cg < 1:
        return "panels='padded' needs input channels"
    Hq, Wq = _phase_extent(OH, kh, dh, stride_h), _phase_extent(OW, kw, dw, stride_w)
    planes = Cg * _phase_count(kh, dh, stride_h) * _phase_count(kw, dw, stride_w)
    if planes * _plane_stride(Hq * Wq) + OH * Wq >= 2 ** 31:
        return (f"a group's padded planes ({planes} x {Hq} x {Wq}) exceed the padded mode's "
                "32-bit offsets")
    return None


cpdef str auto_panels(int stride_h, int stride_w, Py_ssize_t Cg, Py_ssize_t OH, Py_ssize_t OW,
                      int kh, int kw, int dh, int dw):
    """The mode "auto" picks: padded for stride-1, dilation-1 layers with a kernel
    larger than 1x1 and for strided layers with kernels of 5x5 and more, gather for
    the rest. Measured on a Sapphire Rapids (AVX-512, one thread, batch 1), padded /
    gather time: ResNeXt's 8-channel groups (256 ch 28x28) 0.53, the seed CNN's 3x3
    layers 0.5, ResNet-18 layer1 0.71-0.95, layer3 0.87, VGG-16 conv5_2 0.8, the 7x7
    stride-2 stem 0.6-0.85 (49 taps of a few channels: many short gathered runs).
    It lost on 3x3 stride 2 (1.1-1.25: ResNet-18's, grouped and 3-32 channel ones),
    1x1 layers (1.05-1.3) and dilated 3x3 (1.05-1.1): their B rows share fewer cache
    lines than a stride-1 3x3's neighbouring taps, and a packed panel keeps a K block
    in fewer lines of L1."""
    if dh != 1 or dw != 1 or kh * kw == 1:
        return "gather"
    if (stride_h != 1 or stride_w != 1) and kh * kw < 25:
        return "gather"
    return "padded" if padded_applies(stride_h, stride_w, Cg, OH, OW, kh, kw, dh, dw) is None else "gather"


def conv2d_igemm(const float[:, :, :, ::1] x, weights, bias,
                 float[:, :, :, ::1] out, int kh, int kw, int stride_h, int stride_w,
                 int pad_top, int pad_left, int dilation_h, int dilation_w, int groups,
                 int num_threads, bint relu=False, Py_ssize_t m_block=0, isa=None,
                 panels="auto"):
    """out = conv2d(x, weight, bias) (zero padding, PyTorch semantics), float32.

    IN:  x[N][C_in][H][W]; weights: PackedWeights(weight[C_out][C_in/g][kH][kW], groups)
         or the ISA's pack_weight(weight, groups, MR) array; bias None or
         bias[C_out]; strides, top/left zero padding, dilations, groups; the OpenMP team
         size; ``m_block`` output channels per block (0: automatic, ``blocking``);
         ``isa`` the micro-kernel ISA index (engine.isa.NAMES), default engine.isa.level();
         ``panels`` how B panels are made (PANELS: "auto", "gather", "padded").
    OUT: out[N][C_out][OH][OW], every element written; its shape fixes the
         bottom/right padding. relu: max(., 0) with NaN passing, as torch.relu.
    Workspace per thread: mb x NR floats and at most WIDE_BYTES of gathered B, or in
    the padded mode one image's padded planes of a group (``_run_padded``).
    """
    cdef const uk_kernels_t* uk = _table(isa)
    cdef uk_conv_t cv
    cdef const float[:, :, :, ::1] A = (weights.panels(uk.sgemm_mr) if isinstance(weights, PackedWeights)
                                        else weights)
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"igemm: out batch {out.shape[0]} vs x batch {x.shape[0]}")
    if panels not in PANELS:
        raise ValueError(f"igemm: panels must be one of {PANELS}, got {panels!r}")
    _fill(&cv, x, A, uk.sgemm_mr, bias, out.shape[1], out.shape[2], out.shape[3], kh, kw, stride_h,
          stride_w, pad_top, pad_left, dilation_h, dilation_w, groups, relu)
    cv.out = &out[0, 0, 0, 0] if out.size else NULL
    cdef Py_ssize_t columns = <Py_ssize_t>cv.N * cv.OH * cv.OW
    if columns == 0 or cv.M == 0:
        return
    cdef int nt = num_threads if num_threads > 0 else 1
    if panels == "auto":
        panels = auto_panels(stride_h, stride_w, cv.Cg, cv.OH, cv.OW, kh, kw, dilation_h, dilation_w)
    elif panels == "padded":
        why = padded_applies(stride_h, stride_w, cv.Cg, cv.OH, cv.OW, kh, kw, dilation_h, dilation_w)
        if why is not None:
            raise ValueError(f"igemm: {why}; use panels='gather'")
    if panels == "padded":
        _run_padded(&cv, uk, nt, m_block)
    else:
        _run_gather(&cv, uk, columns, nt, m_block)


cdef int _run_gather(uk_conv_t* cv, const uk_kernels_t* uk, Py_ssize_t columns, int nt,
                     Py_ssize_t m_block) except -1:
    """The gather mode: units (group, channel block, NR-column panel of the batch), each
    thread a contiguous share of them (with stealing, ``_shares.h``), taken ``wide``
    panels at a time (``wide_panels``) within one channel block."""
    cdef int MR = uk.sgemm_mr, NR = uk.sgemm_nr
    mb_, nmb_, panels_ = blocking(cv.Mg, cv.K, cv.G, columns, MR, NR, nt, m_block)
    cdef Py_ssize_t mb = mb_, nmb = nmb_, panels = panels_
    cdef Py_ssize_t n_items = cv.G * nmb * panels, it, hi, g, rem, m0, pi, c0, cnt
    if nt > n_items:
        nt = <int>n_items
    cdef Py_ssize_t wide = wide_panels(cv.K, NR)
    cdef Py_ssize_t bsize = (wide * cv.K if wide > 1 else uk.igemm_kc) * NR, csize = mb * NR
    cdef int failed = 0, tid
    cdef int64_t lo, hi_
    cdef float* Bb = NULL          # thread-private inside the team
    cdef float* Cb = NULL
    cdef ws_share_t* shares = shares_new(nt, n_items)
    with nogil, parallel(num_threads=nt):
        # the thread's blocks kept from call to call (_thread_scratch.h)
        Bb = <float*>ts_get(0, bsize * sizeof(float))
        Cb = <float*>ts_get(1, csize * sizeof(float))
        # one share per thread (nt iterations, one each), so that a thread's panels
        # are consecutive and can be packed several at a time
        for tid in prange(nt, schedule="static", chunksize=1):
            if Bb == NULL or Cb == NULL:
                failed += 1            # (a reduction: every thread's failures count)
                continue
            lo = 0                     # (assigned here: private to each thread)
            hi_ = 0
            while ws_next(shares, nt, tid, wide, &lo, &hi_):
                it = lo
                while it < hi_:
                    g = it // (nmb * panels)
                    rem = it - g * nmb * panels
                    m0 = (rem // panels) * mb
                    pi = rem % panels
                    cnt = min(wide, panels - pi, hi_ - it)
                    c0 = pi * NR
                    uk.igemm(cv, <int>g, <int>m0, <int>(cv.Mg - m0 if cv.Mg - m0 < mb else mb),
                             c0, min(cnt * NR, columns - c0), Bb, Cb)
                    it = it + cnt
    free(shares)
    if failed:
        raise MemoryError("conv2d_igemm: could not allocate the per-thread workspace")
    return 0


# Bytes of packed B one gather item may hold when it gathers several panels at once
# (igemm_driver.h, ig_pack_wide): L2-resident beside the channel block's A.
WIDE_BYTES = 512 * 1024


cpdef Py_ssize_t wide_panels(Py_ssize_t K, int nr):
    """Panels one gather item packs at once: as many of K x nr floats as fit WIDE_BYTES,
    at most IG_WIDE_MAX; 1 (a K block at a time, the narrow gather) when even two do not."""
    cdef Py_ssize_t w = WIDE_BYTES // (4 * max(K, 1) * nr)
    return 1 if w < 2 else min(w, IG_WIDE_MAX)


cdef inline Py_ssize_t _plane_stride(Py_ssize_t plane) noexcept nogil:
    """Floats between padded planes: at least ``plane``, and an odd number of 64-byte
    lines (16 mod 32 floats), so the same position in consecutive channels falls in
    different L1 sets. Planes a multiple of 4 KiB apart (32 x 32 padded, 64 x 64) made
    every channel's rows of a K block compete for one set: the dilated layers ran 1.4x
    slower than with the gather."""
    return (plane + 31) // 32 * 32 + 16


cdef Py_ssize_t _used_phases(int k, int d, int s, int* ph) noexcept nogil:
    """ph[0 .. n) = the distinct residues (i*d) mod s of the taps i < k, ascending
    (ph holds k ints); returns n."""
    cdef Py_ssize_t n = 0, pos, q
    cdef int i, r
    for i in range(k):
        r = (i * d) % s
        pos = 0
        while pos < n and ph[pos] < r:
            pos += 1
        if pos < n and ph[pos] == r:
            continue
        q = n
        while q > pos:
            ph[q] = ph[q - 1]
            q -= 1
        ph[pos] = r
        n += 1
    return n


cdef inline Py_ssize_t _phase_count(int k, int d, int s) noexcept nogil:
    """How many residues _used_phases finds: i*d mod s runs through the multiples of
    gcd(d, s), s / gcd(d, s) of them, before it repeats."""
    cdef int a = d, b = s, t
    while b:
        t = a % b
        a = b
        b = t
    return k if k < s // a else s // a


cdef inline Py_ssize_t _phase_pos(int r, const int* ph) noexcept nogil:
    """Index of residue r in ph (it is there)."""
    cdef Py_ssize_t pos = 0
    while ph[pos] != r:
        pos += 1
    return pos


def phases(int k, int d, int s):
    """The residues (i*d) mod s that the taps i < k of one axis read, ascending: the
    polyphase planes the padded mode builds along that axis (all s of them for a
    3x3 stride 2, only phase 0 for a 1x1 stride 2)."""
    if k < 1 or d < 1 or s < 1:
        raise ValueError(f"phases: kernel {k}, dilation {d} and stride {s} must be >= 1")
    ph = np.empty(k, np.intc)
    cdef int[::1] v = ph
    return [int(r) for r in ph[:_used_phases(k, d, s, &v[0])]]


cdef void _pad_rows(const float* src, float* d, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Hq,
                    Py_ssize_t Wq, Py_ssize_t PS, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
                    Py_ssize_t sw, Py_ssize_t a, Py_ssize_t b, Py_ssize_t u_lo,
                    Py_ssize_t u_hi) noexcept nogil:
    """Rows u_lo .. u_hi of one polyphase plane d[Hq][Wq] of the zero-padded input
    channel src[H][W], phases (a, b):

        d[u*Wq + v] = src[u*sh + a - pt][v*sw + b - pl]   (0 outside src)

    and, when the rows reach Hq, the plane's PS - Hq*Wq floats past them are 0."""
    cdef Py_ssize_t u, r, v_lo, v_hi
    # the columns v whose source column v*sw + b - pl lies in [0, W)
    # (divisions of non-negative numbers only: the build has cdivision)
    v_lo = (pl - b + sw - 1) // sw if pl > b else 0
    v_hi = (W - 1 - b + pl) // sw + 1 if W - 1 - b + pl >= 0 else 0
    if v_hi > Wq:
        v_hi = Wq
    if v_hi < v_lo:
        v_hi = v_lo
    for u in range(u_lo, u_hi):
        r = u * sh + a - pt
        if r < 0 or r >= H or v_hi == v_lo:
            memset(d + u * Wq, 0, Wq * sizeof(float))
            continue
        memset(d + u * Wq, 0, v_lo * sizeof(float))
        _copy_strided(d + u * Wq + v_lo, 1, src + r * W + b - pl + v_lo * sw, sw, v_hi - v_lo)
        memset(d + u * Wq + v_hi, 0, (Wq - v_hi) * sizeof(float))
    if u_hi == Hq:
        memset(d + Hq * Wq, 0, (PS - Hq * Wq) * sizeof(float))


cdef inline void _panel_rows(Py_ssize_t ra, Py_ssize_t rb, Py_ssize_t ppi, Py_ssize_t ppr,
                             Py_ssize_t Wq, int NR, Py_ssize_t OW, Py_ssize_t Q, Py_ssize_t Hq,
                             Py_ssize_t reach, Py_ssize_t* u_lo, Py_ssize_t* u_hi) noexcept nogil:
    """The rows u_lo .. u_hi of an image's polyphase planes that its padded-mode items
    ra .. rb-1 (of one (image, group): channel block ra // ppi, panel ra % ppi) read:
    those of their panels when they lie in one channel block, else of all panels."""
    cdef Py_ssize_t pa = 0, pb = ppi - 1
    if ra // ppi == (rb - 1) // ppi:
        pa = ra % ppi
        pb = (rb - 1) % ppi
    u_lo[0] = _panel_start(pa, ppr, Wq, NR) // Wq
    u_hi[0] = min(Hq, (_panel_start(pb, ppr, Wq, NR) + _panel_len(pb, ppr, OW, Q, NR) - 1 + reach)
                  // Wq + 1)


cdef void _pad_group(const uk_conv_t* cv, float* Pb, Py_ssize_t n, Py_ssize_t g, const int* ph_h,
                     const int* ph_w, Py_ssize_t nh, Py_ssize_t nw, Py_ssize_t Hq, Py_ssize_t Wq,
                     Py_ssize_t PS, Py_ssize_t u_lo, Py_ssize_t u_hi) noexcept nogil:
    """Rows u_lo .. u_hi of every polyphase plane of group g of image n (``_pad_rows``),
    the planes Pb + i*PS for i = (input channel, row phase, column phase)."""
    cdef Py_ssize_t i
    for i in range(cv.Cg * nh * nw):
        _pad_rows(cv.x + ((n * cv.C + g * cv.Cg + i // (nh * nw)) * cv.H * cv.W), Pb + i * PS,
                  cv.H, cv.W, Hq, Wq, PS, cv.pt, cv.pl, cv.sh, cv.sw, ph_h[(i // nw) % nh],
                  ph_w[i % nw], u_lo, u_hi)


cdef inline Py_ssize_t _panel_start(Py_ssize_t pi, Py_ssize_t ppr, Py_ssize_t Wq,
                                    int NR) noexcept nogil:
    """First flat plane position q of an image's padded-mode panel pi: with ppr > 0
    panels per output row, panel c of row r starts at r*Wq + c*NR; else (0) the panels
    run on across the rows, NR positions each."""
    if ppr > 0:
        return (pi // ppr) * Wq + (pi % ppr) * NR
    return pi * NR


cdef inline Py_ssize_t _panel_len(Py_ssize_t pi, Py_ssize_t ppr, Py_ssize_t OW, Py_ssize_t Q,
                                  int NR) noexcept nogil:
    """Positions of panel pi (_panel_start): at most NR, up to its row's OW outputs or
    the image's Q positions."""
    cdef Py_ssize_t left = OW - (pi % ppr) * NR if ppr > 0 else Q - pi * NR
    return left if left < NR else NR


cdef int _run_padded(uk_conv_t* cv, const uk_kernels_t* uk, int nt, Py_ssize_t m_block) except -1:
    """The padded mode. Items (image, group, channel block, NR-position panel of a
    Wq-wide plane) are dealt to the threads in contiguous shares, taken PADDED_CHUNK
    at a time and stolen from by threads that finish first (``_shares.h``); for each
    (image, group) its chunks reach, a thread zero-pads and splits that group's input
    channels into polyphase planes of its own (``_pad_group``; only the plane rows the
    rest of its share there reads, more rows when a later or stolen chunk needs them),
    where the items then read their B rows in place (igemm_driver.h). Tap (i, j)
    of input channel ic reads the plane of phases ((i*dh) % sh, (j*dw) % sw) at row
    offset (i*dh) // sh and column offset (j*dw) // sw, so every tap is a stride-1 shift
    of one plane. The planes stay in the thread's L2 while its items read them: the
    stem at batch 8 took 0.67-0.75 of the time at one thread (0.92-0.96 at two) of
    padding the whole batch first and reading its planes back from L3. Where an output
    row takes whole panels without computing more columns than its padded row holds
    (OW a multiple of NR, about), panels start at each row (``_panel_start``): on a
    Zen 3 (AVX2) the stem took 0.87-0.99 of the time, a 32x32 3x3 layer 0.75-0.85 and
    a 64x64 one 0.93-0.96."""
    # one int buffer: the phases of each axis (ph_h[kh], ph_w[kw]) and boff[K]
    ibuf = np.empty(cv.kh + cv.kw + cv.K, np.intc)
    cdef int[::1] ib = ibuf
    cdef int* ph_h = &ib[0]
    cdef int* ph_w = ph_h + cv.kh
    cdef int* boff = ph_w + cv.kw
    cdef Py_ssize_t nh = _used_phases(cv.kh, cv.dh, cv.sh, ph_h)
    cdef Py_ssize_t nw = _used_phases(cv.kw, cv.dw, cv.sw, ph_w)
    cdef Py_ssize_t Hq = _phase_extent(cv.OH, cv.kh, cv.dh, cv.sh), Wq = _phase_extent(cv.OW, cv.kw, cv.dw, cv.sw)
    cdef Py_ssize_t Q = cv.OH * Wq, PS = _plane_stride(Hq * Wq), i, j, ic, k, t
    # the farthest any B row starts from the panel's first position
    cdef Py_ssize_t reach = ((cv.kh - 1) * cv.dh // cv.sh) * Wq + (cv.kw - 1) * cv.dw // cv.sw
    with nogil:
        # B row of tap (i, j), input channel ic (k tap-major, as the packed weights' K)
        k = 0
        for i in range(cv.kh):
            for j in range(cv.kw):
                t = ((_phase_pos((i * cv.dh) % cv.sh, ph_h) * nw
                      + _phase_pos((j * cv.dw) % cv.sw, ph_w)) * PS
                     + (i * cv.dh) // cv.sh * Wq + (j * cv.dw) // cv.sw)
                for ic in range(cv.Cg):
                    boff[k] = <int>(t + ic * nh * nw * PS)
                    k += 1
    # one group's planes, and past the last one the dropped columns of its last row
    # (ow >= OW) read up to Wq - OW floats more
    cdef Py_ssize_t group_floats = cv.Cg * nh * nw * PS + Wq
    cdef int MR = uk.sgemm_mr, NR = uk.sgemm_nr
    # panels per output row when they can start at each row (none of a panel's columns
    # in the next row: every panel is one run of the output, stored by the fused tile,
    # and the row's dropped tail is never computed), which pays when those panels
    # compute no more columns than a padded row holds; else 0: panels run across rows.
    # The tile computes whole vectors (sgemm_vec), so a row's short last panel costs
    # less than a whole one: when the row's vectors hold fewer columns than Wq and K
    # is one pass of the tile (the C buffer's round trip is then the largest part of a
    # crossing panel's overhead), row panels pay too (AVX-512, the stem: 112 = 7 x 16
    # of 115, K = 147). Deeper layers with such rows (64->64 3x3 at 112x112, K = 576)
    # were 2% slower, 256 channels at 14x14 (16 of 16) 12%.
    cdef Py_ssize_t ppr = _cdiv(cv.OW, NR)
    if ppr * NR > Wq and not (cv.K <= UK_KC_PADDED
                              and _cdiv(cv.OW, uk.sgemm_vec) * uk.sgemm_vec < Wq):
        ppr = 0
    cdef Py_ssize_t ppi = cv.OH * ppr if ppr > 0 else _cdiv(Q, NR)   # panels per image
    mb_, nmb_, panels_ = blocking(cv.Mg, cv.K, cv.G, cv.N * ppi * NR, MR, NR, nt, m_block)
    cdef Py_ssize_t mb = mb_, nmb = nmb_
    cdef Py_ssize_t per_ng = nmb * ppi, n_items = cv.N * cv.G * per_ng
    if nt > n_items:
        nt = <int>n_items
    cdef Py_ssize_t it, end, ng, n, g, ra, pa, u_lo, u_hi, m0, cur_ng, p_lo, p_hi, cnt, q_lo
    cdef int failed = 0, tid
    cdef int64_t lo, hi
    cdef float* Pb = NULL          # thread-private inside the team
    cdef float* Cb = NULL
    cdef ws_share_t* shares = shares_new(nt, n_items)
    with nogil, parallel(num_threads=nt):
        Pb = <float*>ts_get(0, group_floats * sizeof(float))    # (_thread_scratch.h)
        if Pb != NULL:
            memset(Pb + group_floats - Wq, 0, Wq * sizeof(float))
        Cb = <float*>ts_get(1, mb * NR * sizeof(float))
        # one share per thread (nt iterations, one each; with stealing, _shares.h): its
        # (image, group)s in order, a chunk of panels at a time
        for tid in prange(nt, schedule="static", chunksize=1):
            if Pb == NULL or Cb == NULL:
                failed += 1            # (a reduction: every thread's failures count)
                continue
            lo = 0                     # (assigned here: private to each thread; the
            hi = 0                     # pointers below are not assignments to Cython)
            u_lo = 0
            u_hi = 0
            cur_ng = -1                # the (image, group) in Pb, rows p_lo .. p_hi padded
            p_lo = 0
            p_hi = 0
            while ws_next(shares, nt, tid, PADDED_CHUNK, &lo, &hi):
                it = lo
                while it < hi:
                    ng = it // per_ng
                    n = ng // cv.G
                    g = ng - n * cv.G
                    end = min(hi, (ng + 1) * per_ng)
                    # the plane rows this chunk's panels of (n, g) read (_panel_rows), and when Pb lacks some of them
                    # (a new (n, g), or rows outside those padded already) the rows of
                    # all of this share's panels of (n, g) as it stands, padded at once
                    # (the owner's later chunks then find theirs there; Pb's padded rows
                    # stay one range)
                    _panel_rows(it - ng * per_ng, end - ng * per_ng, ppi, ppr, Wq, NR, cv.OW, Q, Hq,
                                reach, &u_lo, &u_hi)
                    if ng != cur_ng or u_lo < p_lo or u_hi > p_hi:
                        _panel_rows(it - ng * per_ng,
                                    min(max(hi, ws_share_end(shares, tid)), (ng + 1) * per_ng) - ng * per_ng,
                                    ppi, ppr, Wq, NR, cv.OW, Q, Hq, reach, &u_lo, &u_hi)
                        if ng != cur_ng:
                            _pad_group(cv, Pb, n, g, ph_h, ph_w, nh, nw, Hq, Wq, PS, u_lo, u_hi)
                            cur_ng = ng
                            p_lo = u_lo
                            p_hi = u_hi
                        else:
                            if u_lo < p_lo:
                                _pad_group(cv, Pb, n, g, ph_h, ph_w, nh, nw, Hq, Wq, PS, u_lo, p_lo)
                                p_lo = u_lo
                            if u_hi > p_hi:
                                _pad_group(cv, Pb, n, g, ph_h, ph_w, nh, nw, Hq, Wq, PS, p_hi, u_hi)
                                p_hi = u_hi
                    while it < end:
                        # up to IG_PADDED_RUN consecutive panels of one channel block (and
                        # one output row, where panels start at each row): consecutive
                        # positions, which the driver finishes MR channels at a time
                        ra = it - ng * per_ng
                        m0 = (ra // ppi) * mb
                        pa = ra % ppi
                        cnt = min(end - it, IG_PADDED_RUN, ppi - pa)
                        if ppr > 0:
                            cnt = min(cnt, ppr - pa % ppr)
                        q_lo = _panel_start(pa, ppr, Wq, NR)
                        uk.igemm_padded(cv, <int>g, <int>m0, <int>(cv.Mg - m0 if cv.Mg - m0 < mb else mb),
                                        <int>n, <int>q_lo,
                                        <int>(_panel_start(pa + cnt - 1, ppr, Wq, NR) - q_lo
                                              + _panel_len(pa + cnt - 1, ppr, cv.OW, Q, NR)),
                                        <int>Wq, Pb, boff, Cb)
                        it = it + cnt
    free(shares)
    if failed:
        raise MemoryError("conv2d_igemm: could not allocate the per-thread workspace")
    return 0


def pack_panel(const float[:, :, :, ::1] x, tuple out_shape, int kh, int kw, int stride_h,
               int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w,
               int groups, int group, int k0, int kc, Py_ssize_t c0, int nc, isa=None):
    """The packed B panel the igemm driver gathers (for tests): Bp[kc][NR] with
    Bp[kk][j] = col_group[k0 + kk][c0 + j] for j < nc and 0 for nc <= j < NR, where
    out_shape = (N, C_out, OH, OW) fixes the geometry (module docstring)."""
    cdef const uk_kernels_t* uk = _table(isa)
    cdef uk_conv_t cv
    N, M, OH, OW = out_shape
    if N != x.shape[0]:
        raise ValueError(f"pack_panel: out batch {N} vs x batch {x.shape[0]}")
    mr = uk.sgemm_mr
    A = np.zeros((groups, -(-(M // max(groups, 1)) // mr), kh * kw * (x.shape[1] // max(groups, 1)), mr),
                 np.float32)
    _fill(&cv, x, A, mr, None, M, OH, OW, kh, kw, stride_h, stride_w, pad_top, pad_left,
          dilation_h, dilation_w, groups, False)
    if not (0 <= group < groups and 0 <= k0 and 0 <= kc and k0 + kc <= cv.K
            and 1 <= nc <= uk.sgemm_nr and 0 <= c0 and c0 + nc <= <Py_ssize_t>cv.N * cv.OH * cv.OW):
        raise ValueError(f"pack_panel: group {group}, rows {k0}+{kc} of K={cv.K}, columns "
                         f"{c0}+{nc} (1..{uk.sgemm_nr}) of {cv.N * cv.OH * cv.OW} out of range")
    Bp = np.full((max(kc, 0), uk.sgemm_nr), np.nan, np.float32)
    cdef float[:, ::1] b = Bp
    if kc > 0:
        uk.igemm_pack(&cv, group, k0, kc, c0, nc, &b[0, 0])
    return Bp


def share_schedule(int nt, Py_ssize_t n, Py_ssize_t want, tids):
    """The work shares (``_shares.h``) driven from one thread, for tests: asks for the
    next chunk on behalf of thread tids[i] in turn and returns, per ask, (tid, lo, hi)
    or (tid, None, None) when that thread would be done."""
    if not 1 <= nt or want < 1:
        raise ValueError(f"share_schedule: nt {nt} and want {want} must be >= 1")
    cdef ws_share_t* shares = shares_new(nt, n)
    cdef int64_t lo = 0, hi = 0
    got = []
    try:
        for t in tids:
            if not 0 <= t < nt:
                raise ValueError(f"share_schedule: thread {t} outside 0 .. {nt - 1}")
            if ws_next(shares, nt, t, want, &lo, &hi):
                got.append((t, lo, hi))
            else:
                got.append((t, None, None))
    finally:
        free(shares)
    return got


cdef extern from *:
    """
    #include <time.h>
    static inline void ws_test_mark(int* seen, long long lo, long long hi) {
        for (long long i = lo; i < hi; i++) __atomic_fetch_add(&seen[i], 1, __ATOMIC_RELAXED);
    }
    static inline void ws_test_spin(double us) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        do clock_gettime(CLOCK_MONOTONIC, &b);
        while ((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) * 1e-3 < us);
    }
    """
    void ws_test_mark(int* seen, long long lo, long long hi) nogil
    void ws_test_spin(double us) nogil


def share_stress(int nt, Py_ssize_t n, Py_ssize_t want, int slow_tid=-1, double slow_us=0.0):
    """The work shares under nt real OpenMP threads, for tests: each takes chunks until
    it is done, thread slow_tid spinning slow_us microseconds per item it takes (so the
    others run out first and steal from it). Returns (seen[n]: how many times each item
    was handed out, taken[nt]: items each thread took)."""
    if not 1 <= nt or want < 1 or n < 0:
        raise ValueError(f"share_stress: nt {nt}, n {n} and want {want} out of range")
    seen_a = np.zeros(max(n, 1), np.intc)
    taken_a = np.zeros(nt, np.int64)
    cdef int[::1] seen = seen_a
    cdef int64_t[::1] taken = taken_a
    cdef ws_share_t* shares = shares_new(nt, n)
    cdef int tid
    cdef int64_t lo, hi
    with nogil, parallel(num_threads=nt):
        for tid in prange(nt, schedule="static", chunksize=1):
            lo = 0
            hi = 0
            while ws_next(shares, nt, tid, want, &lo, &hi):
                ws_test_mark(&seen[0], lo, hi)
                taken[tid] += hi - lo
                if tid == slow_tid:
                    ws_test_spin(slow_us * (hi - lo))
    free(shares)
    return seen_a[:n], taken_a
