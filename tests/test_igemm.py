"""The implicit-GEMM convolution (engine/kernels/igemm.pyx, ukernels/igemm_driver.h) on
every micro-kernel ISA, tested like the GEMM micro-kernels (test_ukernels.py): each
piece over its edges against a plain float64 loop written from the layouts in the
docstrings, never from the kernel's code:

- the packed-A register tile (sgemm_<MR>x<NR>_pa__<isa>): every mr, n around the
  vector width, k 0 .. past a cache line;
- the weight packing Ap[G][ceil(Mg/MR)][K][MR] (tap-major K);
- the B-panel gather: every column count 1..NR, row blocks crossing taps and the
  K block, every padding side, strides, dilations, columns crossing output rows and
  images, the 1x1 stride-1 flattened plane;
- the driver: channel blocks around MR, columns around NR, K around KC, NaN-filled
  outputs, relu, thread counts (results bitwise independent of the thread count);
- the whole conv case table through ``algorithm="igemm"`` per ISA, and bad input.
ISAs this CPU lacks are skipped with the reason (conftest.ISAS)."""
import numpy as np
import pytest

import engine
import engine.functional as F
from engine import isa
from engine import registry as algos
from engine.kernels import _ukernels, igemm

import reference as ref
from cases import CONV_CASES, conv_inputs
from conftest import ISAS

pytestmark = pytest.mark.usefixtures("plans_off")

TOL = algos.TOLERANCE[("igemm", "float32")]


def level(name):
    return isa.NAMES.index(name)


def tile(name):
    return isa.kernels(name)["sgemm_tile"]


# ------------------------------------------------------------------ packed-A tile
def plain_gemm(A, B, C0=None):
    M, K = A.shape
    C = np.zeros((M, B.shape[1])) if C0 is None else np.array(C0, np.float64)
    for i in range(M):
        for j in range(B.shape[1]):
            s = 0.0
            for p in range(K):
                s += float(A[i, p]) * float(B[p, j])
            C[i, j] += s
    return C


@pytest.mark.parametrize("accumulate", [False, True], ids=["beta0", "accumulate"])
@pytest.mark.parametrize("name", ISAS)
def test_packed_a_tile_every_mr_and_n_edge(name, accumulate):
    MR, NR = tile(name)
    rng = np.random.default_rng(7)
    for mr in range(1, MR + 1):
        for nr in sorted({1, 7, 8, 9, 15, 16, 17, NR - 1, NR} & set(range(1, NR + 1))):
            for k in (0, 1, 5, 17):
                A = rng.standard_normal((mr, k)).astype(np.float32)
                # the panel: column i of Ap is row i of A; rows past mr hold garbage
                Ap = np.full((k, MR), 1e30, np.float32)
                Ap[:, :mr] = A.T
                Bfull = rng.standard_normal((k, nr + 3)).astype(np.float32)
                B = Bfull[:, :nr]
                big = np.full((mr + 2, nr + 5), np.nan, np.float32)
                C = big[1:1 + mr, 2:2 + nr]
                C[...] = rng.standard_normal((mr, nr))
                C0 = C.copy()
                _ukernels.sgemm_tile_pa(level(name), Ap, B, C, accumulate)
                expected = plain_gemm(A, B, C0 if accumulate else None)
                assert np.abs(C - expected).max() <= 1e-5 * max(1, np.sqrt(k)) * (1 + np.abs(expected).max())
                outside = np.ones(big.shape, bool)
                outside[1:1 + mr, 2:2 + nr] = False
                assert np.isnan(big[outside]).all(), "wrote outside the mr x nr block"


@pytest.mark.parametrize("accumulate", [False, True], ids=["beta0", "accumulate"])
@pytest.mark.parametrize("name", ISAS)
def test_indirect_b_tile_every_mr_and_n_edge(name, accumulate):
    """sgemm_<MR>x<NR>_pa_ib__<isa>: B row p is B[boff[p] : boff[p] + n], rows at any
    offsets (unaligned, overlapping, repeated, in any order), read up to B's last float."""
    MR, NR = tile(name)
    rng = np.random.default_rng(11)
    for mr in range(1, MR + 1):
        for nr in sorted({1, 7, 8, 9, 15, 16, 17, NR - 1, NR} & set(range(1, NR + 1))):
            for k in (0, 1, 5, 17, 130):
                A = rng.standard_normal((mr, k)).astype(np.float32)
                Ap = np.full((k, MR), 1e30, np.float32)
                Ap[:, :mr] = A.T
                Bflat = rng.standard_normal(3 * NR + 7).astype(np.float32)
                boff = rng.integers(0, Bflat.size - nr + 1, size=k).astype(np.intc)
                if k:
                    boff[-1] = Bflat.size - nr          # a row ending at B's last float
                Bk = np.array([Bflat[o:o + nr] for o in boff], np.float32).reshape(k, nr)
                big = np.full((mr + 2, nr + 5), np.nan, np.float32)
                C = big[1:1 + mr, 2:2 + nr]
                C[...] = rng.standard_normal((mr, nr))
                C0 = C.copy()
                _ukernels.sgemm_tile_pa_ib(level(name), Ap, Bflat, boff, C, accumulate)
                expected = plain_gemm(A, Bk, C0 if accumulate else None)
                assert np.abs(C - expected).max() <= 1e-5 * max(1, np.sqrt(k)) * (1 + np.abs(expected).max())
                outside = np.ones(big.shape, bool)
                outside[1:1 + mr, 2:2 + nr] = False
                assert np.isnan(big[outside]).all(), "wrote outside the mr x nr block"


def test_indirect_b_tile_refuses_rows_outside_b():
    MR, NR = tile("baseline")
    Ap = np.zeros((2, MR), np.float32)
    B = np.zeros(20, np.float32)
    C = np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match="inside B"):
        _ukernels.sgemm_tile_pa_ib(0, Ap, B, np.array([0, 13], np.intc), C)
    with pytest.raises(ValueError, match="inside B"):
        _ukernels.sgemm_tile_pa_ib(0, Ap, B, np.array([-1, 0], np.intc), C)
    with pytest.raises(TypeError, match="int"):
        _ukernels.sgemm_tile_pa_ib(0, Ap, B, np.array([0, 1], np.int64), C)
    with pytest.raises(ValueError, match=r"\[K\]"):
        _ukernels.sgemm_tile_pa_ib(0, Ap, B, np.array([0], np.intc), C)


def test_packed_a_tile_refuses_bad_shapes():
    MR, NR = tile("baseline")
    Ap = np.zeros((4, MR), np.float32)
    with pytest.raises(ValueError, match="rows"):
        _ukernels.sgemm_tile_pa(0, Ap, np.zeros((4, 2), np.float32), np.zeros((MR + 1, 2), np.float32))
    with pytest.raises(ValueError, match="do not form"):
        _ukernels.sgemm_tile_pa(0, np.zeros((4, MR + 1), np.float32), np.zeros((4, 2), np.float32),
                                np.zeros((1, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _ukernels.sgemm_tile_pa(0, Ap.astype(np.float64), np.zeros((4, 2), np.float32),
                                np.zeros((1, 2), np.float32))


# ------------------------------------------------------------------ weight packing
@pytest.mark.parametrize("mr", [1, 4, 6, 8])
def test_pack_weight_layout(mr):
    rng = np.random.default_rng(mr)
    for M, Cg, kh, kw, G in [(5, 3, 3, 2, 1), (16, 2, 1, 1, 4), (9, 4, 5, 3, 3), (1, 1, 1, 1, 1)]:
        w = rng.standard_normal((M * G, Cg, kh, kw)).astype(np.float32)
        Ap = igemm.pack_weight(w, G, mr)
        nb = -(-M // mr)
        assert Ap.shape == (G, nb, Cg * kh * kw, mr) and Ap.flags.c_contiguous
        for g in range(G):
            for b in range(nb):
                for i in range(kh):
                    for j in range(kw):
                        for ic in range(Cg):
                            for r in range(mr):
                                m = b * mr + r
                                want = w[g * M + m, ic, i, j] if m < M else 0.0
                                assert Ap[g, b, (i * kw + j) * Cg + ic, r] == want


def test_packed_weights_follow_the_isa(use_isa):
    """PackedWeights packs for each tile height on first use, from its own snapshot."""
    w = np.random.default_rng(0).standard_normal((10, 3, 3, 3)).astype(np.float32)
    pw = igemm.PackedWeights(w, 1, 0)
    w[...] = 0                                    # the snapshot is not the caller's array
    for name in isa.available():
        mr = tile(name)[0]
        assert pw.panels(mr).shape == (1, -(-10 // mr), 27, mr)
        assert np.abs(pw.panels(mr)).sum() > 0


# ------------------------------------------------------------------ B-panel gather
def plain_col(x, C_out, OH, OW, kh, kw, s, pads, d, groups, g):
    """col_g[(i*kw + j)*Cg + ic][n*OH*OW + oh*OW + ow], one element at a time."""
    N, C, H, W = x.shape
    Cg = C // groups
    col = np.zeros((Cg * kh * kw, N * OH * OW))
    for i in range(kh):
        for j in range(kw):
            for ic in range(Cg):
                row = (i * kw + j) * Cg + ic
                for n in range(N):
                    for oh in range(OH):
                        for ow in range(OW):
                            ih, iw = oh * s[0] - pads[0] + i * d[0], ow * s[1] - pads[1] + j * d[1]
                            if 0 <= ih < H and 0 <= iw < W:
                                col[row, (n * OH + oh) * OW + ow] = x[n, g * Cg + ic, ih, iw]
    return col


GATHER_GEOMETRIES = [
    # (x shape, C_out, kernel, stride, (pad top, bottom, left, right), dilation, groups)
    ((1, 3, 9, 11), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 4, 5, 7), 4, (3, 2), (2, 3), (0, 2, 3, 0), (1, 2), 2),        # asymmetric pads
    ((2, 2, 6, 6), 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),        # 1x1: one flat row
    ((3, 2, 7, 5), 6, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 2),        # 1x1 stride 2
    ((1, 2, 4, 70), 2, (2, 5), (1, 3), (2, 1, 4, 4), (2, 2), 1),       # wide rows
    ((2, 1, 3, 3), 1, (5, 5), (1, 1), (4, 4, 4, 4), (1, 1), 1),        # mostly padding
    ((1, 20, 6, 5), 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),       # K = 180 > KC (AVX-512)
    ((1, 2, 5, 81), 2, (3, 3), (2, 2), (1, 1, 1, 2), (1, 1), 1),       # stride-2 runs of 40
    ((1, 1, 4, 67), 1, (1, 3), (1, 2), (0, 0, 0, 0), (1, 2), 1),       # ... reaching the end of x
]


def out_size(n, k, s, p0, p1, d):
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("geom", GATHER_GEOMETRIES, ids=lambda g: "x{}k{}s{}".format(*[
    "x".join(map(str, v)) for v in (g[0], g[2], g[3])]))
@pytest.mark.parametrize("name", ISAS)
def test_pack_panel_matches_plain_im2col(name, geom):
    xs, M, (kh, kw), s, pads, d, G = geom
    MR, NR = tile(name)
    KC = isa.kernels(name)["igemm_kc"]
    x = np.random.default_rng(1).standard_normal(xs).astype(np.float32)
    N, C, H, W = xs
    OH, OW = out_size(H, kh, s[0], pads[0], pads[1], d[0]), out_size(W, kw, s[1], pads[2], pads[3], d[1])
    K = C // G * kh * kw
    cols = N * OH * OW
    for g in range(G):
        col = plain_col(x, M, OH, OW, kh, kw, s, (pads[0], pads[2]), d, G, g)
        k_blocks = sorted({(0, K), (0, 1), (K - 1, 1), (min(KC, K) - 1, min(2, K - min(KC, K) + 1)),
                           (K // 2, K - K // 2), (0, min(K, KC))})
        starts = sorted({0, 1, OW - 1, max(0, cols - NR), max(0, cols - 1), cols // 2})
        for k0, kc in k_blocks:
            for c0 in starts:
                for nc in sorted({1, min(NR, cols - c0), min(NR, cols - c0, 9)}):
                    if nc < 1:
                        continue
                    Bp = igemm.pack_panel(x, (N, M, OH, OW), kh, kw, s[0], s[1], pads[0], pads[2],
                                          d[0], d[1], G, g, k0, kc, c0, nc, isa=level(name))
                    assert Bp.shape == (kc, NR)
                    np.testing.assert_array_equal(Bp[:, :nc], col[k0:k0 + kc, c0:c0 + nc].astype(np.float32))
                    assert (Bp[:, nc:] == 0).all(), "columns past nc must be zero"


def test_pack_panel_refuses_out_of_range():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        igemm.pack_panel(x, (1, 2, 4, 4), 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 10, 10, 0, 1, isa=0)
    with pytest.raises(ValueError, match="out of range"):
        igemm.pack_panel(x, (1, 2, 4, 4), 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 15, 5, isa=0)


# ------------------------------------------------------------------ driver
DRIVER_CASES = [
    # (x shape, weight shape, stride, padding, dilation, groups)
    ((1, 3, 9, 11), (5, 3, 3, 3), 1, 1, 1, 1),
    ((2, 8, 13, 7), (16, 4, 3, 2), 2, 1, 1, 2),
    ((1, 16, 8, 8), (20, 16, 1, 1), 1, 0, 1, 1),
    ((3, 6, 10, 10), (9, 2, 5, 5), 2, 2, 2, 3),
    ((1, 64, 7, 7), (64, 64, 1, 1), 2, 0, 1, 1),
    ((4, 24, 7, 7), (49, 24, 1, 1), 1, 0, 1, 1),             # columns cross images
    ((1, 15, 9, 9), (17, 15, 3, 3), 1, 1, 1, 1),             # K = 135 just past 128
    ((1, 29, 6, 6), (7, 29, 3, 3), 1, 1, 1, 1),              # K = 261 just past 256
    ((2, 4, 5, 70), (9, 4, 3, 7), 3, 4, 2, 1),
    ((1, 32, 6, 6), (64, 4, 3, 3), 1, 1, 1, 8),              # 4 channels per group
    ((1, 3, 1, 1), (2, 3, 1, 1), 1, 0, 1, 1),                # one pixel
    ((2, 3, 11, 101), (10, 3, 7, 7), 2, 3, 1, 1),            # a stem: stride-2 runs of 51
    ((1, 160, 5, 5), (9, 160, 3, 3), 1, 1, 1, 1),            # K = 1440: a K block at a time on AVX-512
    ((1, 30, 6, 52), (7, 30, 3, 3), 1, 1, 1, 1),             # K = 270, rows of 52: padded panels
                                                             # accumulate in out over two K blocks
]


def driver_run(xs, ws, s, p, d, g, name, threads, relu=False, m_block=0, bias=True, panels="auto"):
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32) if bias else None
    expected = ref.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    if relu:
        expected = np.maximum(expected, 0)
    out = np.full(expected.shape, np.nan, np.float32)
    igemm.conv2d_igemm(x, igemm.PackedWeights(w, g, level(name)), b, out, ws[2], ws[3], s, s, p, p,
                       d, d, g, threads, relu, m_block, isa=level(name), panels=panels)
    return out, expected


@pytest.mark.parametrize("panels", ["gather", "padded"])
@pytest.mark.parametrize("case", DRIVER_CASES, ids=lambda c: "x{}w{}".format(*["x".join(map(str, v)) for v in c[:2]]))
@pytest.mark.parametrize("name", ISAS)
def test_driver_against_reference_every_blocking(name, case, panels):
    """Both ways of making B panels, every channel blocking, thread counts, relu;
    results independent of the partition."""
    MR, NR = tile(name)
    outs = []
    for threads, relu, m_block in [(1, False, 0), (2, False, 0), (3, True, 0), (2, False, MR),
                                   (1, False, 2 * MR + 1), (5, False, 1)]:
        out, expected = driver_run(*case, name, threads, relu, m_block, panels=panels)
        assert not np.isnan(out).any(), f"{np.isnan(out).sum()} outputs never written"
        ref.assert_close(out, expected, TOL, what=f"igemm/{name}")
        if not relu:
            outs.append(out)
    for o in outs[1:]:
        # the partition changes which thread computes a tile, never its arithmetic
        np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("case", DRIVER_CASES, ids=lambda c: "x{}w{}".format(*["x".join(map(str, v)) for v in c[:2]]))
@pytest.mark.parametrize("name", ISAS)
def test_wide_and_narrow_gathers_agree(name, case, monkeypatch):
    """Gathering several panels' rows at once (wide_panels > 1) and a K block of one
    panel at a time compute the same products in the same order: bitwise equal, at
    thread counts that cut the threads' shares inside and across images and blocks."""
    MR, NR = tile(name)
    outs = {}
    for wide_bytes in (igemm.WIDE_BYTES, 0):
        monkeypatch.setattr(igemm, "WIDE_BYTES", wide_bytes)
        outs[wide_bytes] = [driver_run(*case, name, threads, m_block=m_block, panels="gather")[0]
                            for threads, m_block in [(1, 0), (3, 0), (2, MR)]]
    monkeypatch.undo()
    for a, b in zip(outs[igemm.WIDE_BYTES], outs[0]):
        np.testing.assert_array_equal(a, b)


def test_wide_panels_bounds_the_workspace():
    """The wide gather's B stays within WIDE_BYTES and IG_WIDE_MAX panels; K too large
    for two panels falls back to one K block at a time."""
    for nr in (4, 16, 48):
        for K in (1, 9, 147, 576, 1365, 1366, 4608, 10 ** 6):
            w = igemm.wide_panels(K, nr)
            assert 1 <= w <= 8
            assert w == 1 or w * 4 * K * nr <= igemm.WIDE_BYTES
            if 2 * 4 * K * nr <= igemm.WIDE_BYTES:
                assert w >= 2


# the padded mode's own edges: (x shape, weight shape, (pt, pb), (pl, pr), stride,
# dilation, groups)
PADDED_CASES = [
    ((1, 3, 30, 30), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),   # 32x32: 4 KiB planes
    ((2, 16, 62, 62), (8, 8, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 2),  # 64x64, two images
    ((1, 4, 9, 11), (6, 4, 3, 5), (2, 0), (0, 3), (1, 1), (1, 1), 1),    # asymmetric pads
    ((1, 4, 5, 6), (7, 4, 4, 3), (0, 0), (0, 0), (1, 1), (1, 1), 1),     # no padding
    ((1, 2, 2, 3), (3, 2, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), 1),     # kernel past the image
    ((1, 6, 7, 8), (4, 3, 1, 1), (1, 2), (2, 0), (1, 1), (1, 1), 2),     # padded 1x1
    ((1, 5, 12, 9), (4, 5, 3, 3), (2, 2), (4, 4), (1, 1), (1, 2), 1),    # rectangular dilation
    ((1, 6, 20, 20), (5, 6, 3, 3), (2, 2), (2, 2), (1, 1), (2, 2), 1),   # dilated
    ((1, 3, 17, 1), (4, 3, 3, 1), (1, 1), (0, 0), (1, 1), (1, 1), 1),    # one column
    ((3, 8, 4, 4), (16, 1, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 8),    # depthwise, 2.5 images a panel
    ((1, 40, 7, 7), (10, 40, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),  # K = 360: three K blocks
    ((1, 30, 5, 52), (7, 30, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),  # panels inside a row fused into out
    ((2, 5, 6, 48), (7, 5, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),    # rows of 48: panels start at each row
    ((1, 3, 8, 30), (5, 3, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), 1),    # ... and end it short (AVX2: 16 + 14)
    ((1, 3, 40, 64), (6, 3, 7, 7), (3, 3), (3, 3), (2, 2), (1, 1), 1),   # a stem whose rows take whole panels
    ((1, 3, 10, 224), (9, 3, 7, 7), (3, 3), (3, 3), (2, 2), (1, 1), 1),  # rows of 112 in 115: whole vectors (AVX-512 48+48+16)
    ((1, 4, 3, 63), (5, 4, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),    # rows of 63 in 65: a last panel of 15
    ((1, 2, 5, 9), (3, 2, 3, 21), (1, 1), (10, 10), (1, 1), (1, 1), 1),  # dropped columns reach 20 past the planes
    ((5, 3, 12, 12), (9, 3, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),   # threads' shares split images
    ((2, 8, 30, 30), (16, 2, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), 4),  # shares split images and groups
    # polyphase planes: strides
    ((1, 3, 23, 20), (8, 3, 7, 7), (3, 3), (3, 3), (2, 2), (1, 1), 1),   # a stem: 4 phases
    ((2, 6, 9, 10), (5, 6, 3, 3), (1, 1), (1, 1), (2, 2), (1, 1), 1),    # odd and even sizes
    ((1, 8, 8, 8), (6, 8, 1, 1), (0, 0), (0, 0), (2, 2), (1, 1), 1),     # 1x1 s2: phase 0 only
    ((1, 4, 11, 13), (6, 2, 3, 3), (2, 0), (1, 2), (3, 2), (1, 1), 2),   # stride 3 x 2, asymmetric
    ((1, 3, 15, 15), (4, 3, 3, 3), (2, 2), (2, 2), (2, 2), (2, 2), 1),   # stride = dilation: one phase
    ((1, 3, 16, 14), (4, 3, 3, 2), (1, 1), (0, 1), (2, 3), (3, 2), 1),   # stride 2 x 3, dilation 3 x 2
    ((1, 2, 5, 5), (3, 2, 2, 2), (0, 0), (0, 0), (4, 4), (1, 1), 1),     # stride past the kernel
]


@pytest.mark.parametrize("case", PADDED_CASES, ids=lambda c: "x{}w{}s{}d{}".format(
    *["x".join(map(str, v)) for v in (c[0], c[1], c[4], c[5])]))
@pytest.mark.parametrize("name", ISAS)
def test_padded_mode_edges(name, case):
    """The padded mode against the float64 reference: plane sizes that alias in L1,
    every asymmetric pad, kernels past the image, panels crossing rows and images,
    strides and dilations split into polyphase planes; bitwise equal to the gather."""
    xs, ws, (pt, pb), (pl, pr), (sh, sw), (dh, dw), g = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    expected = ref.conv2d(xpad, w, b, stride=(sh, sw), dilation=(dh, dw), groups=g)
    outs = []
    for threads in (1, 2, 3):
        out = np.full(expected.shape, np.nan, np.float32)
        igemm.conv2d_igemm(x, igemm.PackedWeights(w, g, level(name)), b, out, ws[2], ws[3], sh, sw,
                           pt, pl, dh, dw, g, threads, isa=level(name), panels="padded")
        ref.assert_close(out, expected, TOL, what=f"igemm padded/{name}")
        outs.append(out)
    gathered = np.full(expected.shape, np.nan, np.float32)
    igemm.conv2d_igemm(x, igemm.PackedWeights(w, g, level(name)), b, gathered, ws[2], ws[3], sh, sw,
                       pt, pl, dh, dw, g, 2, isa=level(name), panels="gather")
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    # the same products in the same order: only where B comes from differs
    np.testing.assert_array_equal(outs[0], gathered)


def test_phases_of_strided_taps():
    assert igemm.phases(3, 1, 1) == [0]
    assert igemm.phases(3, 1, 2) == [0, 1]
    assert igemm.phases(1, 1, 2) == [0]
    assert igemm.phases(3, 2, 2) == [0]
    assert igemm.phases(7, 1, 2) == [0, 1]
    assert igemm.phases(3, 1, 4) == [0, 1, 2]
    assert igemm.phases(3, 2, 3) == [0, 1, 2]
    assert igemm.phases(5, 4, 6) == [0, 2, 4]
    assert igemm.phases(2, 4, 6) == [0, 4]
    with pytest.raises(ValueError, match="stride"):
        igemm.phases(3, 1, 0)


def test_padded_mode_refuses_bad_names_and_sizes():
    x = np.zeros((1, 4, 6, 6), np.float32)
    w = igemm.PackedWeights(np.zeros((3, 4, 3, 3), np.float32), 1, 0)
    with pytest.raises(ValueError, match="panels must be one of"):
        igemm.conv2d_igemm(x, w, None, np.zeros((1, 3, 4, 4), np.float32), 3, 3, 1, 1, 0, 0, 1, 1, 1,
                           1, isa=0, panels="rows")
    assert igemm.auto_panels(1, 1, 8, 28, 28, 3, 3, 1, 1) == "padded"
    assert igemm.auto_panels(1, 1, 8, 28, 28, 1, 1, 1, 1) == "gather"
    assert igemm.auto_panels(2, 2, 8, 28, 28, 3, 3, 1, 1) == "gather"
    assert igemm.auto_panels(2, 2, 3, 112, 112, 7, 7, 1, 1) == "padded"
    assert igemm.auto_panels(1, 1, 8, 28, 28, 3, 3, 2, 2) == "gather"
    # a group's planes past the 32-bit offsets: auto gathers, forcing it is refused
    assert igemm.padded_applies(1, 1, 2 ** 20, 60, 60, 3, 3, 1, 1) is not None
    assert igemm.auto_panels(1, 1, 2 ** 20, 60, 60, 3, 3, 1, 1) == "gather"
    assert igemm.padded_applies(1, 1, 0, 6, 6, 3, 3, 1, 1) is not None


@pytest.mark.parametrize("name", ISAS)
def test_driver_without_bias_and_relu_keeps_nan(name):
    x = np.random.default_rng(3).standard_normal((1, 4, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    w = np.random.default_rng(4).standard_normal((3, 4, 3, 3)).astype(np.float32)
    expected = ref.conv2d(x, w, None, padding=1)
    out = np.full(expected.shape, -7.0, np.float32)
    igemm.conv2d_igemm(x, igemm.PackedWeights(w, 1, level(name)), None, out, 3, 3, 1, 1, 1, 1, 1, 1, 1,
                       2, True, isa=level(name))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))     # relu passes NaN
    fin = np.isfinite(expected)
    ref.assert_close(out[fin], np.maximum(expected[fin], 0), TOL)


def test_driver_refuses_bad_input():
    x = np.zeros((1, 4, 6, 6), np.float32)
    w = np.zeros((3, 4, 3, 3), np.float32)
    out = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="packed weight has shape"):
        igemm.conv2d_igemm(x, igemm.pack_weight(w, 1, 5), None, out, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1, isa=0)
    with pytest.raises(ValueError, match="groups"):
        igemm.conv2d_igemm(x, igemm.PackedWeights(w, 1, 0), None, out, 3, 3, 1, 1, 0, 0, 1, 1, 3, 1, isa=0)
    with pytest.raises(ValueError, match="bias"):
        igemm.conv2d_igemm(x, igemm.PackedWeights(w, 1, 0), np.zeros(2, np.float32), out, 3, 3, 1, 1, 0, 0,
                           1, 1, 1, 1, isa=0)
    with pytest.raises(ValueError, match="ISA"):
        igemm.conv2d_igemm(x, igemm.PackedWeights(w, 1, 0), None, out, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1, isa=7)
    with pytest.raises(ValueError, match="stride"):
        igemm.conv2d_igemm(x, igemm.PackedWeights(w, 1, 0), None, out, 3, 3, 0, 1, 0, 0, 1, 1, 1, 1, isa=0)
    with pytest.raises((ValueError, TypeError)):
        igemm.conv2d_igemm(x.astype(np.float64), igemm.PackedWeights(w, 1, 0), None, out, 3, 3, 1, 1, 0, 0,
                           1, 1, 1, 1, isa=0)
    with pytest.raises(TypeError, match="float32"):
        igemm.pack_weight(w.astype(np.float64), 1, 4)


def test_blocking_keeps_threads_busy_at_batch_1():
    """2 and 16 threads both get work on a deep 7x7 layer at batch 1 (few columns):
    the channel blocks shrink until groups x blocks x panels >= threads, and with few
    panels (49 columns: 48 + 1 on NR = 48, which no split of units evens out) the
    blocks are a multiple of the threads, so each thread's share is whole rows."""
    for threads in (2, 16):
        for mr, nr in [(8, 48), (6, 16), (4, 16)]:
            mb, nmb, panels = igemm.blocking(512, 2048, 1, 49, mr, nr, threads)
            assert nmb * panels >= threads
            if (-(-512 // mr)) % threads == 0:     # (whole tiles a block: 86 on MR = 6 do not split in 16)
                assert nmb % threads == 0
            assert mb % mr == 0 or (nmb == 1 and mb == 512)     # whole tiles, or all of Mg
            assert mb * nmb >= 512 and mb * (nmb - 1) < 512


@pytest.mark.parametrize("mr", [4, 6, 8])
@pytest.mark.parametrize("mg", [256, 512, 1024, 2048])
def test_blocking_keeps_up_to_max_mb_channels_in_one_block(mr, mg):
    """With columns enough for every thread, up to MAX_MB output channels stay one
    block (each block gathers every panel again), whether or not MR divides them: 256
    channels had been cut into two blocks of 132 on AVX2's MR = 6."""
    mb, nmb, _ = igemm.blocking(mg, 256, 1, 6272, mr, 16, 2)
    assert mg <= igemm.MAX_MB and (nmb, mb) == (1, mg)


# ------------------------------------------------------------------ work shares
@pytest.mark.parametrize("nt, n, want", [(1, 7, 3), (2, 10, 2), (3, 100, 4), (4, 3, 1), (2, 0, 1),
                                         (5, 1000, 16)])
def test_work_shares_hand_out_every_item_once(nt, n, want):
    """_shares.h driven from one thread, threads asking in random orders: every item
    handed out exactly once, in contiguous chunks of at most ``want``; each thread
    begins at the front of its static share (n*t/nt); a thread that never asks
    loses all but at most one item of its share to the others' steals."""
    rng = np.random.default_rng(nt * 1000 + n)
    for trial in range(20):
        lazy = trial % 2 == 1 and nt > 1              # thread 0 never asks
        askers = range(1, nt) if lazy else range(nt)
        tids = [int(t) for t in rng.choice(list(askers), size=4 * n + 8 * nt)]
        tids += [t for t in askers for _ in range(n + 2)]     # enough asks to finish
        seen = np.zeros(n, int)
        first = {}
        for t, lo, hi in igemm.share_schedule(nt, n, want, tids):
            if lo is None:
                continue
            assert 0 <= lo < hi <= n and hi - lo <= want
            seen[lo:hi] += 1
            first.setdefault(t, lo)
        for t, lo in first.items():
            if n * (t + 1) // nt > n * t // nt:       # a share of its own: begun at its front
                assert lo == n * t // nt, f"thread {t} began at {lo}"
        share0 = range(0, n // nt)
        if lazy:
            assert seen[share0.start:share0.stop].sum() >= len(share0) - 1
            assert np.all(seen[share0.stop:] == 1) and np.all(seen <= 1)
        else:
            np.testing.assert_array_equal(seen, np.ones(n, int))


def test_work_shares_under_threads():
    """Real OpenMP threads, more than this machine's cores among them: every item
    exactly once; a thread slowed down loses most of its share to the others."""
    for nt, n, want in [(2, 20000, 1), (4, 100000, 3), (8, 5000, 7)]:
        seen, taken = igemm.share_stress(nt, n, want)
        np.testing.assert_array_equal(seen, np.ones(n, np.intc))
        assert taken.sum() == n
    # thread 0 spends 200 us on each of its items (its share alone would take 200 ms,
    # so the other thread steals even if a loaded host keeps it off a core for a while)
    seen, taken = igemm.share_stress(2, 2000, 4, slow_tid=0, slow_us=200.0)
    np.testing.assert_array_equal(seen, np.ones(2000, np.intc))
    assert taken[0] < 1000 // 2, f"thread 0 kept {taken[0]} of its 1000 items"


@pytest.mark.parametrize("panels", ["gather", "padded"])
@pytest.mark.parametrize("name", ISAS)
def test_driver_bitwise_when_threads_steal(name, panels):
    """More threads than cores (2 here: the shares go out of step and get stolen,
    padded-mode planes padded piecewise) and repeated calls, NaN-filled outputs: the
    same bits as one thread every time."""
    for xs, ws, s, p in [((1, 3, 60, 60), (16, 3, 7, 7), 2, 3), ((2, 24, 20, 20), (20, 24, 3, 3), 1, 1),
                         ((1, 40, 28, 28), (30, 40, 1, 1), 1, 0)]:
        one, expected = driver_run(xs, ws, s, p, 1, 1, name, 1, panels=panels)
        ref.assert_close(one, expected, TOL, what=f"igemm/{name}")
        for threads in (2, 3, 4, 7):
            for _ in range(10):
                out, _ = driver_run(xs, ws, s, p, 1, 1, name, threads, panels=panels)
                np.testing.assert_array_equal(out, one, err_msg=f"{threads} threads, {xs} {ws}")


# ------------------------------------------------------------------ through the API
@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_case_table_on_every_isa(case, name, use_isa):
    """The whole conv case table through algorithm='igemm' on each ISA (float32), at
    1 and 2 threads, with the same tolerance and the same results for both."""
    use_isa(name)
    x, w, b = conv_inputs(case, "float32")
    expected = ref.conv2d(x, w, b, **case.kwargs)
    outs = []
    for threads in (1, 2):
        engine.set_num_threads(threads)
        out = F.conv2d(x, w, b, **case.kwargs, algorithm="igemm")
        ref.assert_close(out, expected, TOL, what=f"igemm/{name}")
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_layer_caches_packed_weights_across_isas(use_isa):
    """A Conv2d layer prepares igemm's weights once; switching the ISA repacks for the
    new tile height and the result stays right."""
    layer = engine.Conv2d(6, 10, 3, padding=1)
    layer.algorithm = "igemm"
    x = np.random.default_rng(2).standard_normal((2, 6, 9, 9)).astype(np.float32)
    expected = ref.conv2d(x, layer.weight, layer.bias, padding=1)
    for name in isa.available():
        use_isa(name)
        ref.assert_close(layer(x), expected, TOL, what=name)
    assert engine.explain(layer, x.shape)["kernels"]["gemm"] == isa.kernels()["igemm"]


def test_tuner_tries_the_padded_mode_where_it_runs():
    """The exhaustive candidates hold panels='padded' where its offsets fit, and a
    plan's padded entry runs and matches the reference."""
    from engine import shapes
    x = np.random.default_rng(5).standard_normal((1, 8, 10, 10)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((8, 8, 3, 3)).astype(np.float32)
    for stride in (1, 2):
        p = shapes.conv_params(x.shape, w.shape, stride, 1, 1, 1, "zeros", "float32")
        tried = [params for name, params in algos.candidates(p, exhaustive=True) if name == "igemm"]
        assert {"panels": "gather"} in tried and {"panels": "padded"} in tried
    wide = shapes.conv_params((1, 2 ** 20, 60, 60), (8, 2 ** 20, 3, 3), 1, 1, 1, 1, "zeros", "float32")
    tried = [params for name, params in algos.candidates(wide, exhaustive=True) if name == "igemm"]
    assert {"panels": "padded"} not in tried and {"panels": "gather"} in tried
    expected = ref.conv2d(x, w, None, padding=1)
    for panels in ("gather", "padded"):
        out = engine.operator.ConvOperator(shapes.conv_params(x.shape, w.shape, 1, 1, 1, 1, "zeros", "float32"),
                                           engine.dispatch.Choice("igemm", "test", "forced",
                                                                  {"panels": panels}),
                                           w, None)(x)
        ref.assert_close(out, expected, TOL)
