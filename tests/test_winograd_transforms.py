"""Winograd F(m x m, 3 x 3): the exact derivation, the float64 tile identity, the kernel.

1. Exact: A^T[(G g) * (B^T d)] is correlation as a polynomial identity (Fractions, and
   Q(sqrt2) for the sqrt2 point set), for every variant.
2. float64: A^T[(G g G^T) * (B^T d B)]A == direct 2-D correlation on random tiles.
3. Kernel: conv2d_winograd vs a plain float64 numpy reference, over a table of named
   edge cases (single/partial tiles, every padding side, groups, batch, channels off
   the vector width), outputs pre-filled with NaN, float32 and float64, and 1 vs 2
   threads and tile-block sizes giving the same result within tolerance.
"""
import zlib

import numpy as np
import pytest

from engine import isa as engine_isa
from engine import winograd_transforms as wt
from engine.kernels import winograd as wk
from engine.registry import TOLERANCE

from conftest import ISAS

VARIANTS = [2, 4, 6]
# max |err| / (1 + max |ref|) allowed: the engine's documented tolerance per variant.
TOL = {dt: {m: TOLERANCE[(f"winograd_f{m}x3", np.dtype(dt).name)] for m in VARIANTS}
       for dt in (np.float32, np.float64)}


@pytest.mark.parametrize("m", VARIANTS)
def test_exact_identity_rational(m):
    assert wt.check_exact(m)
    assert wt.check_exact(m, scale=False)


def test_exact_identity_sqrt2_and_rational_f4x3():
    assert wt.check_exact(4, points=wt.POINTS_RATIONAL_F4X3)
    assert wt.check_exact(4, points=wt.POINTS_SQRT2_F4X3)
    AT, G, BT = wt.transform_matrices(4, points=wt.POINTS_SQRT2_F4X3, exact=True)
    # really irrational somewhere, and exact: (sqrt2)^2 == 2 in the field
    assert any(isinstance(e, wt.QSqrt2) for row in BT for e in row)
    assert wt.SQRT2 * wt.SQRT2 == 2


def test_exact_rejects_bad_points():
    with pytest.raises(ValueError):
        wt.transform_matrices(4, points=(0, 1, 1, 2, -2))
    with pytest.raises(ValueError):
        wt.transform_matrices(4, points=(0, 1, -1))


def test_known_f2x3_matches_lavin():
    AT, G, BT = wt.transform_matrices(2)
    np.testing.assert_array_equal(BT, [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]])
    np.testing.assert_array_equal(G, [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    np.testing.assert_array_equal(AT, [[1, 1, 1, 0], [0, 1, -1, 1]])


def _corr2d_valid(d, g):
    r = g.shape[-1]
    m = d.shape[-1] - r + 1
    y = np.zeros(d.shape[:-2] + (m, m))
    for i in range(r):
        for j in range(r):
            y += d[..., i:i + m, j:j + m] * g[..., i:i + 1, j:j + 1]
    return y


@pytest.mark.parametrize("m,points", [(2, None), (4, None), (6, None),
                                      (4, wt.POINTS_RATIONAL_F4X3)])
def test_float64_tile_identity(m, points):
    rng = np.random.default_rng(m)
    AT, G, BT = wt.transform_matrices(m, points=points)
    a = m + 2
    d = rng.standard_normal((50, a, a))
    g = rng.standard_normal((50, 3, 3))
    Ug = G @ g @ G.T
    Vd = BT @ d @ BT.T
    y = AT @ (Ug * Vd) @ AT.T
    np.testing.assert_allclose(y, _corr2d_valid(d, g), rtol=0, atol=1e-12 * 10 ** (m // 2))


def test_compiled_matrices_header_is_generated_from_the_derivation():
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, wt.C_HEADER)) as f:
        assert f.read() == wt.c_header(), f"{wt.C_HEADER} is stale: regenerate it (see c_header)"


@pytest.mark.parametrize("m", VARIANTS)
def test_kernel_matrices_are_the_derived_ones(m):
    AT, G, BT = wt.transform_matrices(m)
    kAT, kBT = wk.kernel_matrices(m)
    np.testing.assert_array_equal(kAT, AT)
    np.testing.assert_array_equal(kBT, BT)


def ref_conv(x, w, b, pt, pl, pb, pr, groups):
    """Plain float64 correlation, PyTorch semantics (zero padding, groups)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    w = w.astype(np.float64)
    N, C, H, W = x.shape
    Co = w.shape[0]
    cig, cog = C // groups, Co // groups
    OH, OW = H - 2, W - 2
    out = np.zeros((N, Co, OH, OW))
    for g in range(groups):
        xs = x[:, g * cig:(g + 1) * cig]
        ws = w[g * cog:(g + 1) * cog]
        for i in range(3):
            for j in range(3):
                out[:, g * cog:(g + 1) * cog] += np.einsum(
                    "nchw,oc->nohw", xs[:, :, i:i + OH, j:j + OW], ws[:, :, i, j])
    if b is not None:
        out += b.astype(np.float64)[None, :, None, None]
    return out


# name: (N, C_in, C_out, H, W, pad (top, left, bottom, right), groups, bias)
CASES = {
    "single_tile":         (1, 1, 1, 3, 3, (0, 0, 0, 0), 1, False),
    "tiny_padded":         (1, 2, 3, 1, 1, (1, 1, 1, 1), 1, True),
    "partial_tiles":       (2, 3, 5, 11, 13, (1, 1, 1, 1), 1, True),
    "pad_top_left_only":   (1, 4, 4, 9, 10, (2, 1, 0, 0), 1, True),
    "pad_bottom_right":    (1, 4, 4, 10, 9, (0, 0, 2, 1), 1, False),
    "asymmetric_pad":      (3, 5, 7, 8, 12, (0, 2, 1, 0), 1, True),
    "groups_2":            (2, 6, 4, 12, 12, (1, 1, 1, 1), 2, True),
    "depthwise":           (1, 8, 8, 9, 9, (1, 1, 1, 1), 8, True),
    "depth_multiplier":    (1, 4, 8, 7, 10, (1, 0, 1, 2), 4, False),
    "channels_off_vector": (1, 17, 19, 15, 14, (1, 1, 1, 1), 1, True),
    "many_tiles":          (2, 8, 16, 30, 27, (1, 1, 1, 1), 1, True),
}


def run_kernel(x, w, b, pads, groups, m, threads, tile_block=0, relu=False, isa=None,
               transforms="auto"):
    """The kernel into a NaN-filled output; ``isa`` names the float32 micro-kernels
    (default: the active ones), ``transforms`` how AVX-512 moves tiles."""
    pt, pl, pb, pr = pads
    N, C, H, W = x.shape
    out = np.full((N, w.shape[0], H + pt + pb - 2, W + pl + pr - 2), np.nan, x.dtype)
    U = wk.transform_weight(w, m)
    level = None if isa is None else engine_isa.NAMES.index(isa)
    wk.conv2d_winograd(x, U, b, out, m, pt, pl, groups, threads, relu, tile_block, isa=level,
                       transforms=transforms)
    return out


@pytest.fixture(scope="module", autouse=True)
def _blas_one_thread():
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# float32 once per micro-kernel ISA (skipped, with the reason, where the CPU lacks it),
# on AVX-512 once per way of moving tiles (winograd.TRANSFORMS: its gather/scatter
# kernels, or AVX2's row loads and transposes beside its GEMM); float64 has one path (BLAS).
DTYPE_ISA = [pytest.param(np.float32, p.values[0], t, id=f"float32-{p.id}" + (f"-{t}" if t != "auto" else ""),
                          marks=p.marks)
             for p in ISAS for t in (("gather", "rows") if p.values[0] == "avx512" else ("auto",))] \
    + [pytest.param(np.float64, None, "auto", id="float64")]


@pytest.mark.parametrize("dtype,isa,transforms", DTYPE_ISA)
@pytest.mark.parametrize("m", VARIANTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_vs_reference(case, m, dtype, isa, transforms):
    N, C, Co, H, W, pads, groups, has_bias = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))     # stable across runs
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Co, C // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(Co).astype(dtype) if has_bias else None
    ref = ref_conv(x, w, b, *pads, groups)
    out = run_kernel(x, w, b, pads, groups, m, threads=2, isa=isa, transforms=transforms)
    assert out.shape == ref.shape
    assert not np.isnan(out).any(), "unwritten output elements"
    err = np.abs(out - ref).max() / (1 + np.abs(ref).max())
    assert err <= TOL[dtype][m], err


@pytest.mark.parametrize("dtype,isa,transforms", DTYPE_ISA)
@pytest.mark.parametrize("m", VARIANTS)
def test_threads_tile_block_and_relu_invariance(m, dtype, isa, transforms):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 9, 25, 23)).astype(dtype)
    w = rng.standard_normal((20, 9, 3, 3)).astype(dtype)
    b = rng.standard_normal(20).astype(dtype)
    pads = (1, 2, 0, 1)
    ref = ref_conv(x, w, b, *pads, 1)
    outs = [run_kernel(x, w, b, pads, 1, m, t, tb, isa=isa, transforms=transforms)
            for t in (1, 2) for tb in (0, 16, 48)]
    scale = 1 + np.abs(ref).max()
    for o in outs:
        assert np.abs(o - ref).max() / scale <= TOL[dtype][m]
        assert np.abs(o - outs[0]).max() / scale <= TOL[dtype][m]
    r = run_kernel(x, w, b, pads, 1, m, 2, relu=True, isa=isa, transforms=transforms)
    assert np.abs(r - np.maximum(ref, 0)).max() / scale <= TOL[dtype][m]
    assert (r >= 0).all()


@pytest.mark.parametrize("isa", ISAS)
def test_split_cout_path_matches(isa):
    # few tiles, many output channels: the kernel splits C_out across threads
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 40, 7, 7)).astype(np.float32)
    w = rng.standard_normal((64, 40, 3, 3)).astype(np.float32)
    assert wk.choose_blocking(4, 6, 40, 64, 4, 2)[1] == 2
    ref = ref_conv(x, w, None, 1, 1, 1, 1, 1)
    for m in VARIANTS:
        out = run_kernel(x, w, None, (1, 1, 1, 1), 1, m, 2, isa=isa)
        assert np.abs(out - ref).max() / (1 + np.abs(ref).max()) <= TOL[np.float32][m]


@pytest.mark.parametrize("isa", ISAS)
def test_chunks_spanning_images(isa):
    """16-tile chunks that straddle image boundaries (4 tiles per image at F(2x2) on a
    4x4 output, batch 5): every lane reads and writes its own image."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ref = ref_conv(x, w, None, 1, 1, 1, 1, 1)
    for m in VARIANTS:
        out = run_kernel(x, w, None, (1, 1, 1, 1), 1, m, 2, isa=isa)
        assert np.abs(out - ref).max() / (1 + np.abs(ref).max()) <= TOL[np.float32][m]


@pytest.mark.parametrize("isa", ISAS)
def test_transforms_choice_is_checked_and_documented(isa):
    """"auto" is auto_transforms: gather/scatter only on a non-AMD AVX-512 CPU, rows
    elsewhere (the only way off AVX-512); an unknown choice is a ValueError."""
    level = engine_isa.NAMES.index(isa)
    expected = "gather" if isa == "avx512" and engine_isa.vendor() != "amd" else "rows"
    assert wk.auto_transforms(level) == expected
    avx2 = engine_isa.NAMES.index("avx2")
    assert wk.transforms_isa(level, "rows") == (avx2 if isa == "avx512" else level)
    assert wk.transforms_isa(level, "gather") == level
    assert wk.transforms_isa(level) == (avx2 if isa == "avx512" and expected == "rows" else level)
    assert engine_isa.vendor() in ("amd", "intel", "other")
    x = np.zeros((1, 1, 3, 3), np.float32)
    U = wk.transform_weight(np.zeros((1, 1, 3, 3), np.float32), 2)
    with pytest.raises(ValueError, match="transforms must be one of auto, gather, rows"):
        wk.conv2d_winograd(x, U, None, np.zeros((1, 1, 1, 1), np.float32), 2, 0, 0, 1, 1,
                           isa=level, transforms="scatter")
    with pytest.raises(ValueError, match="transforms must be one of"):
        wk.conv2d_winograd(x.astype(np.float64), U.astype(np.float64), None,
                           np.zeros((1, 1, 1, 1)), 2, 0, 0, 1, 1, transforms="scatter")


def test_tuner_tries_both_transforms_on_avx512_only(use_isa):
    """The exhaustive candidates hold each way of moving tiles where there are two
    (float32 on AVX-512), a forced choice runs and matches the reference, and explain
    names the transform kernels "auto" runs."""
    import engine
    from engine import dispatch, operator, registry, shapes
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 13, 11)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    p = shapes.conv_params(x.shape, w.shape, 1, 1, 1, 1, "zeros", "float32")
    expected = ref_conv(x, w, None, 1, 1, 1, 1, 1)
    for name in engine_isa.available():
        use_isa(name)
        tried = [params for algo, params in registry.candidates(p, exhaustive=True)
                 if algo == "winograd_f4x3" and "transforms" in params]
        assert tried == ([{"transforms": "gather"}, {"transforms": "rows"}] if name == "avx512" else []), name
        for t in ("gather", "rows"):
            out = operator.create(p, dispatch.Choice("winograd_f4x3", "forced", "test", {"transforms": t}),
                                  weight=w)(x)
            assert np.abs(out - expected).max() / (1 + np.abs(expected).max()) <= TOL[np.float32][4], (name, t)
        runs = engine.explain(dict(in_channels=8, out_channels=8, kernel_size=3, padding=1,
                                   algorithm="winograd_f4x3"), x.shape)["kernels"]["transforms"]
        rows = wk.auto_transforms(engine_isa.level()) == "rows"
        suffix = {"baseline": "scalar", "avx2": "avx2_fma", "avx512": "avx2_fma" if rows else "avx512f"}[name]
        assert runs == f"winograd_f4x3_{{input,output}}__{suffix}", (name, runs)
    f64 = shapes.conv_params(x.shape, w.shape, 1, 1, 1, 1, "zeros", "float64")
    assert not any("transforms" in params for _, params in registry.candidates(f64, exhaustive=True))


def test_kernel_refuses_an_isa_index_it_has_no_kernels_for():
    x = np.zeros((1, 1, 3, 3), np.float32)
    U = wk.transform_weight(np.zeros((1, 1, 3, 3), np.float32), 2)
    with pytest.raises(ValueError, match="no micro-kernels for ISA index 7"):
        wk.conv2d_winograd(x, U, None, np.zeros((1, 1, 1, 1), np.float32), 2, 0, 0, 1, 1, isa=7)


def test_transform_weight_layout():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4, 3, 3))
    for m in VARIANTS:
        a = m + 2
        _, G, _ = wt.transform_matrices(m)
        U = wk.transform_weight(w, m)
        assert U.shape == (a * a, 6, 4) and U.flags.c_contiguous and U.dtype == w.dtype
        np.testing.assert_allclose(U[:, 2, 3].reshape(a, a), G @ w[2, 3] @ G.T, atol=1e-13)


def _f32_winograd_error(points, channels=128, tiles=64, seed=0):
    """Max |error| of F(4,3) computed entirely in float32 (transforms, channel sum,
    output transform) against float64 correlation, over random N(0,1) tiles."""
    AT, G, BT = (np.asarray(a, dtype=np.float32) for a in wt.transform_matrices(4, 3, points))
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((tiles, channels, 6, 6)).astype(np.float32)
    g = rng.standard_normal((channels, 3, 3)).astype(np.float32)
    U = np.einsum("ik,ckl,jl->cij", G, g, G)
    V = np.einsum("ik,tckl,jl->tcij", BT, d, BT)
    Y = np.einsum("ik,tkl,jl->tij", AT, (U[None] * V).sum(axis=1, dtype=np.float32), AT)
    d64, g64 = d.astype(np.float64), g.astype(np.float64)
    ref = np.zeros((tiles, 4, 4))
    for kh in range(3):
        for kw in range(3):
            ref += np.einsum("tcij,c->tij", d64[:, :, kh:kh + 4, kw:kw + 4], g64[:, kh, kw])
    return np.abs(Y - ref).max()


def test_f4x3_sqrt2_points_beat_the_rational_ones_in_float32():
    """The documented reason F(4,3) uses {0, ±√2, ±√2/2}: in float32 it is markedly more
    accurate than {0, ±1, ±2} (measured ~4-5x on VGG/ResNet layers)."""
    rational = _f32_winograd_error(wt.POINTS_RATIONAL_F4X3)
    sqrt2 = _f32_winograd_error(wt.POINTS_SQRT2_F4X3)
    assert sqrt2 < 0.5 * rational, (sqrt2, rational)
