"""The compiled kernels called directly with outputs pre-filled with NaN (and indices
with a sentinel): every element must be written, and with the reference's value.

The public API allocates its own outputs, so only here can unwritten elements show.
Kernels take zero padding only; other padding modes are applied with numpy.pad first.
"""
import numpy as np
import pytest

import engine.isa
import engine.threads
from engine import registry as algos
from engine.kernels import direct, igemm, im2col, pool

import reference as ref
from conftest import ISAS
from cases import AVG_CASES, CONV_CASES, MAX_CASES, conv_inputs, is_dilated, pool_input, winograd_expected_ok
from conftest import DTYPES

try:
    from engine.kernels import winograd
except ImportError:  # pragma: no cover
    winograd = None

pytestmark = pytest.mark.usefixtures("plans_off")

FINITE_CONV = [c for c in CONV_CASES if c.finite]
SENTINEL = -987654321


def kernel_inputs(case, dtype):
    """(x4 zero-padding-only input, weight, bias, pad_top, pad_left, expected output 4-D)."""
    x, w, b = conv_inputs(case, dtype)
    expected = ref.conv2d(x, w, b, **case.kwargs)
    if x.ndim == 3:
        x, expected = x[None], expected[None]
    top, bottom, left, right = ref.conv_pads(case.padding, case.w[2:], ref.pair(case.dilation))
    if case.padding_mode != "zeros":
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=ref.NP_PAD_MODE[case.padding_mode])
        top = left = 0
    return np.ascontiguousarray(x), w, b, top, left, expected


def nan_out(expected, dtype):
    return np.full(expected.shape, np.nan, dtype=dtype)


def check(out, expected, tol, relu=False):
    assert not np.isnan(out).any(), f"{np.isnan(out).sum()} output elements never written"
    ref.assert_close(out, np.maximum(expected, 0) if relu else expected, tol)


def is_depthwise(case):
    return case.groups > 1 and case.groups == case.batched_x()[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FINITE_CONV, ids=lambda c: c.id)
def test_conv2d_direct_writes_every_element(case, dtype):
    x, w, b, top, left, expected = kernel_inputs(case, dtype)
    sh, sw = ref.pair(case.stride)
    dh, dw = ref.pair(case.dilation)
    for threads, relu in [(1, False), (2, False), (3, True)]:
        out = nan_out(expected, dtype)
        direct.conv2d_direct(x, w, b, out, sh, sw, top, left, dh, dw, case.groups, threads, relu)
        check(out, expected, algos.TOLERANCE[("direct", dtype)], relu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in FINITE_CONV if is_depthwise(c)], ids=lambda c: c.id)
def test_conv2d_depthwise_writes_every_element(case, dtype):
    x, w, b, top, left, expected = kernel_inputs(case, dtype)
    sh, sw = ref.pair(case.stride)
    dh, dw = ref.pair(case.dilation)
    for threads, relu in [(1, False), (2, False), (2, True)]:
        out = nan_out(expected, dtype)
        direct.conv2d_depthwise(x, w, b, out, sh, sw, top, left, dh, dw, threads, relu)
        check(out, expected, algos.TOLERANCE[("direct", dtype)], relu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FINITE_CONV, ids=lambda c: c.id)
def test_conv2d_im2col_writes_every_element(case, dtype):
    x, w, b, top, left, expected = kernel_inputs(case, dtype)
    sh, sw = ref.pair(case.stride)
    dh, dw = ref.pair(case.dilation)
    tol = algos.TOLERANCE[("im2col", dtype)]
    with engine.threads.blas_single_threaded():
        for threads, relu, extra in [(1, False, {}), (2, False, {}), (2, True, {}),
                                     # tiny workspace: column slices of a single column
                                     (2, False, {"max_workspace_bytes": 1}),
                                     (1, False, {"max_workspace_bytes": 4096})]:
            out = nan_out(expected, dtype)
            im2col.conv2d_im2col(x, w, b, out, sh, sw, top, left, dh, dw, case.groups, threads, relu, **extra)
            check(out, expected, tol, relu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_im2col_every_element_when_threads_steal(dtype):
    """More threads than cores, many small items (a small workspace): the work shares
    go out of step and get stolen from (_shares.h); every element is still written,
    once, with the reference's values, on every repeat."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 12, 19, 19)).astype(dtype)
    w = rng.standard_normal((20, 12, 3, 3)).astype(dtype)
    b = rng.standard_normal(20).astype(dtype)
    expected = ref.conv2d(x, w, b, stride=2, padding=1)
    tol = algos.TOLERANCE[("im2col", dtype)]
    with engine.threads.blas_single_threaded():
        for threads in (2, 3, 5, 8):
            for _ in range(10):
                out = nan_out(expected, dtype)
                im2col.conv2d_im2col(x, w, b, out, 2, 2, 1, 1, 1, 1, 1, threads, False,
                                     max_workspace_bytes=4096)
                check(out, expected, tol, False)


# conv2d_winograd itself is dilation 1; dilated layers reach it through the polyphase
# split (registry.Winograd.run), NaN-fill tested in test_dilated_winograd.py
WINOGRAD_CASES = [c for c in FINITE_CONV if winograd_expected_ok(c) and not is_dilated(c)]


# float32 on every micro-kernel ISA the CPU has (the rest skipped with the reason)
DTYPE_ISA = [pytest.param("float32", p.values[0], id=f"float32-{p.id}", marks=p.marks) for p in ISAS] \
    + [pytest.param("float64", None, id="float64")]


@pytest.mark.skipif(winograd is None, reason="Winograd module not built")
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("dtype,isa", DTYPE_ISA)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: c.id)
def test_conv2d_winograd_writes_every_element(case, dtype, isa, m):
    x, w, b, top, left, expected = kernel_inputs(case, dtype)
    level = None if isa is None else engine.isa.NAMES.index(isa)
    u = winograd.transform_weight(w, m)
    tol = algos.TOLERANCE[(f"winograd_f{m}x3", dtype)]
    with engine.threads.blas_single_threaded():
        # tile blocks of 16 and 32 tiles and the automatic choice: the same result
        for threads, relu, tile_block in [(1, False, 0), (2, False, 0), (2, True, 0), (2, False, 16),
                                          (3, False, 32)]:
            out = nan_out(expected, dtype)
            winograd.conv2d_winograd(x, u, b, out, m, top, left, case.groups, threads, relu, tile_block,
                                     isa=level)
            check(out, expected, tol, relu)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", FINITE_CONV, ids=lambda c: c.id)
def test_conv2d_igemm_writes_every_element(case, isa):
    """float32 on each micro-kernel ISA (float64 runs im2col's kernel, tested above)."""
    x, w, b, top, left, expected = kernel_inputs(case, "float32")
    sh, sw = ref.pair(case.stride)
    dh, dw = ref.pair(case.dilation)
    level = engine.isa.NAMES.index(isa)
    packed = igemm.PackedWeights(w, case.groups, level)
    mr = engine.isa.kernels(isa)["sgemm_tile"][0]
    # automatic blocking, one-tile channel blocks, and odd ones
    for threads, relu, m_block in [(1, False, 0), (2, False, 0), (2, True, 0), (3, False, mr),
                                   (2, False, 2 * mr + 1)]:
        out = nan_out(expected, "float32")
        igemm.conv2d_igemm(x, packed, b, out, w.shape[2], w.shape[3], sh, sw, top, left, dh, dw,
                           case.groups, threads, relu, m_block, isa=level)
        check(out, expected, algos.TOLERANCE[("igemm", "float32")], relu)


def test_padding_pre_pass_writes_every_element():
    from engine.kernels import padding
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    for code, mode in enumerate(["constant", "reflect", "edge", "wrap"]):
        for top, bottom, left, right in [(1, 1, 1, 1), (0, 2, 3, 0), (4, 0, 0, 5)]:
            if mode == "reflect" and max(top, bottom) >= 5 or mode == "reflect" and max(left, right) >= 6:
                continue
            out = np.full((2, 3, 5 + top + bottom, 6 + left + right), np.nan)
            padding.pad2d(x, out, top, left, code, 2)
            np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode))


def pool_planes(case, dtype):
    x = pool_input(case, dtype)
    x4 = x if x.ndim == 4 else x[None]
    return np.ascontiguousarray(x4.reshape(-1, *x4.shape[2:])), x4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: c.id)
def test_max_pool_kernel_writes_every_element(case, dtype):
    planes, x4 = pool_planes(case, dtype)
    ev, ei = ref.max_pool2d(x4, **case.kwargs)
    ev, ei = ev.reshape(-1, *ev.shape[2:]), ei.reshape(-1, *ei.shape[2:])
    (kh, kw), (ph, pw), (dh, dw) = ref.pair(case.kernel_size), ref.pair(case.padding), ref.pair(case.dilation)
    sh, sw = (kh, kw) if case.stride is None else ref.pair(case.stride)
    for threads, with_indices in [(1, True), (2, True), (2, False)]:
        # NaN inputs make NaN a legal output, so fill with a value no input can produce
        fill = np.nan if np.isfinite(planes).all() else 12345.0
        out = np.full(ev.shape, fill, dtype=dtype)
        idx = np.full(ev.shape, SENTINEL, dtype=np.int64) if with_indices else None
        pool.max_pool2d(planes, out, idx, kh, kw, sh, sw, ph, pw, dh, dw, threads)
        np.testing.assert_array_equal(out.astype(np.float64), ev)
        if with_indices:
            assert not (idx == SENTINEL).any()
            np.testing.assert_array_equal(idx, ei)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.id)
def test_avg_pool_kernel_writes_every_element(case, dtype):
    planes, x4 = pool_planes(case, dtype)
    expected = ref.avg_pool2d(x4, **case.kwargs)
    expected = expected.reshape(-1, *expected.shape[2:])
    (kh, kw), (ph, pw) = ref.pair(case.kernel_size), ref.pair(case.padding)
    sh, sw = (kh, kw) if case.stride is None else ref.pair(case.stride)
    divisor = case.divisor_override or 0
    for threads in (1, 2, 3):
        fill = np.nan if np.isfinite(planes).all() else 12345.0
        out = np.full(expected.shape, fill, dtype=dtype)
        pool.avg_pool2d(planes, out, kh, kw, sh, sw, ph, pw, case.count_include_pad, divisor, threads)
        assert not (out == 12345.0).any()
        if fill is np.nan:
            assert not np.isnan(out).any()
        ref.assert_close(out, expected, algos.tolerance("pool", dtype))


# ------------------------------------------------------------------ kept workspaces
# (name, x shape, weight shape, padding, groups): a layer each algorithm computes
KEPT_SCRATCH_LAYERS = [
    ("direct", (2, 6, 21, 19), (5, 6, 3, 3), 1, 1),
    ("direct", (2, 12, 9, 13), (12, 1, 5, 5), 2, 12),           # depthwise: its zeroed band
    ("direct", (1, 8, 7, 7), (8, 1, 3, 3), 1, 8),               # depthwise, small planes
    ("im2col", (2, 6, 21, 19), (5, 6, 3, 3), 2, 1),
    ("igemm", (2, 6, 21, 19), (9, 6, 3, 3), 1, 1),
    ("igemm", (2, 8, 17, 17), (8, 2, 3, 3), 1, 4),              # grouped: padded planes
    ("winograd_f2x3", (2, 6, 21, 19), (5, 6, 3, 3), 1, 1),
    ("winograd_f4x3", (2, 6, 21, 19), (5, 6, 3, 3), 1, 1),
    ("winograd_f6x3", (2, 6, 21, 19), (5, 6, 3, 3), 1, 1),
]


@pytest.mark.parametrize("name, xs, ws, pad, groups", KEPT_SCRATCH_LAYERS,
                         ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("isa", ISAS)
def test_kept_workspaces_carry_nothing_into_the_next_call(name, xs, ws, pad, groups, isa, use_isa):
    """Each kernel thread keeps its workspace blocks from call to call
    (_thread_scratch.h). A larger call on NaN input first leaves NaN all over them;
    the next, smaller call (padding read from the kept blocks, lanes past a block's
    last tile) must still give the reference's values, at 1 and 2 threads."""
    import engine
    from engine import functional as F
    use_isa(isa)
    if algos.REGISTRY.get(name) is None:
        pytest.skip(f"{name} is not in this build")
    rng = np.random.default_rng(7)
    big_x = np.full((xs[0] + 2, xs[1], xs[2] * 3, xs[3] * 3), np.nan, np.float32)
    big_w = rng.standard_normal(ws).astype(np.float32)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    expected = ref.conv2d(x.astype(np.float64), w, b, padding=pad, groups=groups)
    before = engine.get_num_threads()
    try:
        for threads in (2, 1, 2):
            engine.set_num_threads(threads)
            poisoned = F.conv2d(big_x, big_w, None, padding=pad, groups=groups, algorithm=name)
            assert np.isnan(poisoned).all()
            out = F.conv2d(x, w, b, padding=pad, groups=groups, algorithm=name)
            ref.assert_close(out, expected, algos.tolerance(name, "float32"),
                             what=f"{name}/{isa} after a NaN call, {threads} thread(s)")
    finally:
        engine.set_num_threads(before)
