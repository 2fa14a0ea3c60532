"""conv2d against the float64 reference: every algorithm forced on every named case it
supports, the heuristic's choice, thread-count invariance, dtypes and empty batches."""
import numpy as np
import pytest

import engine
import engine.functional as F
from engine import registry as algos
from engine import shapes

import reference as ref
from cases import CONV_CASES, conv_inputs, winograd_expected_ok
from conftest import DTYPES, ISAS

pytestmark = pytest.mark.usefixtures("plans_off")

ALGORITHMS = engine.algorithms()


def conv_params(case, dtype):
    return shapes.conv_params(case.batched_x(), case.w, case.stride, case.padding, case.dilation,
                              case.groups, case.padding_mode, dtype)


def why_not(name, case, dtype="float32"):
    return algos.REGISTRY[name].why_not(conv_params(case, dtype))


def reference_for(case, x, w, b):
    return ref.conv2d(x, w, b, **case.kwargs)


def check_against_reference(out, expected, case, name, dtype):
    tol = algos.TOLERANCE[(name, dtype)]
    assert out.dtype == np.dtype(dtype)
    if not case.finite and name.startswith("winograd"):
        # Winograd mixes a whole input tile into every output of the tile, so a NaN or
        # inf spreads to neighbouring outputs (and inf - inf becomes NaN): only check
        # that non-finite reference outputs are never lost.
        assert out.shape == expected.shape
        lost = np.isfinite(out) & ~np.isfinite(expected)
        assert not lost.any(), f"{name}: non-finite reference outputs became finite"
        return
    ref.assert_close(out, expected, tol, what=f"{name}/{dtype}")


def test_algorithm_list():
    names = engine.algorithms()
    assert names[:2] == ["direct", "im2col"]
    assert set(names) <= {"direct", "im2col", "igemm", "winograd_f2x3", "winograd_f4x3", "winograd_f6x3"}
    assert names == [n for n, a in algos.REGISTRY.items() if a.kind == "conv"]   # + pooling's
    for name in names:
        for dtype in DTYPES:
            assert (name, dtype) in algos.TOLERANCE


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_applicability_matches_expectation(case):
    """direct and im2col take anything; Winograd F(m,3) exactly 3x3, stride 1, and
    dilation 1 or a dilation whose top/left zero padding are multiples of it (the
    polyphase split), with a reason for everything it refuses."""
    for name in ALGORITHMS:
        reason = why_not(name, case)
        expected_ok = winograd_expected_ok(case) if name.startswith("winograd") else True
        assert (reason is None) == expected_ok, f"{name}: why_not={reason!r}"
        if reason is not None:
            assert isinstance(reason, str) and reason
        if (name.startswith("winograd") and case.w[2:] == (3, 3) and case.stride in (1, (1, 1))
                and not expected_ok):
            assert "multiples of the dilation" in reason, reason   # the only other refusal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_forced_algorithm_matches_reference(case, name, dtype):
    if why_not(name, case, dtype) is not None:
        pytest.skip(f"{name} does not support {case.id}")
    x, w, b = conv_inputs(case, dtype)
    out = F.conv2d(x, w, b, **case.kwargs, algorithm=name)
    check_against_reference(out, reference_for(case, x, w, b), case, name, dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n.startswith("winograd")])
@pytest.mark.parametrize("case", [c for c in CONV_CASES if winograd_expected_ok(c)], ids=lambda c: c.id)
def test_winograd_case_table_on_every_isa(case, name, isa, use_isa):
    """The whole case table through each Winograd variant on each micro-kernel ISA the
    CPU has, through the public API (engine.isa caps what runs)."""
    use_isa(isa)
    x, w, b = conv_inputs(case, "float32")
    out = F.conv2d(x, w, b, **case.kwargs, algorithm=name)
    check_against_reference(out, reference_for(case, x, w, b), case, name, "float32")


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n.startswith("winograd")] or ["(none)"])
@pytest.mark.parametrize("case", [c for c in CONV_CASES if not winograd_expected_ok(c)], ids=lambda c: c.id)
def test_forcing_unsupported_algorithm_raises(case, name):
    if name == "(none)":
        pytest.skip("no Winograd module built")
    x, w, b = conv_inputs(case, "float32")
    with pytest.raises(ValueError, match=name):
        F.conv2d(x, w, b, **case.kwargs, algorithm=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_default_dispatch_matches_reference(case, dtype):
    """No algorithm given: whatever the heuristic picks is within the default tolerance."""
    x, w, b = conv_inputs(case, dtype)
    out = F.conv2d(x, w, b, **case.kwargs)
    expected = reference_for(case, x, w, b)
    assert out.dtype == np.dtype(dtype)
    if case.finite:
        ref.assert_close(out, expected, algos.DEFAULT_TOLERANCE[dtype], what="default")
    else:
        ref.assert_close(out, expected, algos.TOLERANCE[("direct", dtype)], what="default")


@pytest.mark.parametrize("algorithm", [None, *ALGORITHMS])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_input_stays_local(value, algorithm, rng):
    """One NaN/inf input pixel on a real layer size (16 channels, 28x28: the heuristic
    picks Winograd). direct and im2col follow PyTorch exactly: the 9 outputs per channel
    whose window covers the pixel are non-finite and an inf stays an inf. Winograd (the
    documented exception, README "Non-finite input") mixes a whole input tile into each
    output of the tile, so the non-finite outputs are a superset of PyTorch's, confined
    to the tiles that read the pixel; every other output is finite and accurate."""
    x = rng.standard_normal((1, 16, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    x[0, 0, 10, 10] = value
    out = F.conv2d(x, w, padding=1, algorithm=algorithm)
    expected = ref.conv2d(x, w, padding=1)
    assert np.isfinite(expected).sum() == expected.size - 9 * 16
    name = algorithm or engine.explain(dict(in_channels=16, out_channels=16, kernel_size=3,
                                            padding=1), x.shape)["algorithm"]
    if name.startswith("winograd"):
        m = int(name[len("winograd_f")])
        bad = ~np.isfinite(out)
        assert np.all(bad[~np.isfinite(expected)]), "every output PyTorch makes non-finite is non-finite"
        rows, cols = np.nonzero(bad.any(axis=(0, 1)))
        assert np.all(np.abs(rows - 10) <= m + 1) and np.all(np.abs(cols - 10) <= m + 1)
        fin = ~bad
        scale = max(1.0, float(np.abs(expected[fin]).max()))
        assert np.abs(out[fin] - expected[fin]).max() <= algos.TOLERANCE[(name, "float32")] * scale
    else:
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
        np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
        ref.assert_close(out, expected, algos.TOLERANCE[(name, "float32")], what=name)


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_same_result_with_1_and_2_threads(case, name):
    dtype = "float32"
    if why_not(name, case, dtype) is not None:
        pytest.skip(f"{name} does not support {case.id}")
    x, w, b = conv_inputs(case, dtype)
    engine.set_num_threads(1)
    out1 = F.conv2d(x, w, b, **case.kwargs, algorithm=name)
    engine.set_num_threads(2)
    out2 = F.conv2d(x, w, b, **case.kwargs, algorithm=name)
    expected = reference_for(case, x, w, b)
    check_against_reference(out1, expected, case, name, dtype)
    check_against_reference(out2, expected, case, name, dtype)
    np.testing.assert_array_equal(np.isnan(out1), np.isnan(out2))
    fin = np.isfinite(out1) & np.isfinite(out2)
    tol = algos.TOLERANCE[(name, dtype)]
    scale = max(1.0, float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0)))
    assert np.max(np.abs(out1[fin] - out2[fin]), initial=0.0) <= tol * scale


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_medium_layer_thread_counts(threads, rng):
    """More threads than cores is legal and still correct."""
    x = rng.standard_normal((3, 16, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    expected = ref.conv2d(x, w, padding=1)
    engine.set_num_threads(threads)
    for name in ALGORITHMS:
        out = F.conv2d(x, w, padding=1, algorithm=name)
        ref.assert_close(out, expected, algos.TOLERANCE[(name, "float32")], what=name)


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(name, dtype):
    x = np.zeros((0, 3, 8, 8), dtype=dtype)
    w = np.ones((4, 3, 3, 3), dtype=dtype)
    out = F.conv2d(x, w, np.zeros(4, dtype=dtype), padding=1, algorithm=name)
    assert out.shape == (0, 4, 8, 8)
    assert out.dtype == np.dtype(dtype)


def test_empty_batch_output_size_strided():
    x = np.zeros((0, 2, 9, 7), dtype=np.float32)
    w = np.ones((5, 2, 3, 2), dtype=np.float32)
    out = F.conv2d(x, w, stride=(2, 3), padding=(1, 0), dilation=(1, 2))
    expected_hw = (ref.conv_out_size(9, 3, 2, 1, 1, 1), ref.conv_out_size(7, 2, 3, 0, 0, 2))
    assert out.shape == (0, 5, *expected_hw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtype_follows_input(dtype, rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    for name in ALGORITHMS:
        out = F.conv2d(x, w, algorithm=name)
        assert out.dtype == np.dtype(dtype)
        assert isinstance(out, np.ndarray)


def test_float64_is_more_accurate_than_float32(rng):
    """float64 really computes in float64 (not a float32 round trip)."""
    x = rng.standard_normal((1, 8, 10, 10))
    w = rng.standard_normal((8, 8, 3, 3)) / 8
    expected = ref.conv2d(x, w, padding=1)
    for name in ALGORITHMS:
        err = ref.max_rel_error(F.conv2d(x, w, padding=1, algorithm=name), expected)
        assert err <= algos.TOLERANCE[(name, "float64")]
        assert err < 1e-9


def test_output_is_fresh_and_input_untouched(rng):
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    x0, w0 = x.copy(), w.copy()
    for name in ALGORITHMS:
        out1 = F.conv2d(x, w, padding=1, padding_mode="reflect", algorithm=name)
        out2 = F.conv2d(x, w, padding=1, padding_mode="reflect", algorithm=name)
        assert not np.shares_memory(out1, out2) and not np.shares_memory(out1, x)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def test_same_padding_keeps_size_and_split(rng):
    """'same' with an even kernel pads the smaller half first (left/top)."""
    x = rng.standard_normal((1, 1, 5, 5))
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0          # picks x[oh - pad_top, ow - pad_left]
    out = F.conv2d(x, w, padding="same", algorithm="direct")
    assert out.shape == x.shape
    # total padding 1: top/left 0, bottom/right 1 -> out[oh, ow] = x[oh, ow]
    np.testing.assert_array_equal(out, x)
    w2 = np.zeros((1, 1, 2, 2))
    w2[0, 0, 1, 1] = 1.0          # x[oh + 1, ow + 1], zero past the edge
    out2 = F.conv2d(x, w2, padding="same", algorithm="im2col")
    expected = np.zeros_like(x)
    expected[..., :-1, :-1] = x[..., 1:, 1:]
    np.testing.assert_array_equal(out2, expected)


def test_numpy_integer_parameters(rng):
    """numpy integers are ints (as torch accepts Python ints); a list is a pair."""
    x = rng.standard_normal((1, 2, 9, 9))
    w = rng.standard_normal((4, 1, 3, 3))
    expected = ref.conv2d(x, w, stride=2, padding=(1, 0), dilation=1, groups=2)
    out = F.conv2d(x, w, stride=np.int64(2), padding=[np.int32(1), 0], dilation=(np.int8(1),), groups=np.int64(2))
    ref.assert_close(out, expected, 1e-12)


def test_bias_broadcast_only(rng):
    """A zero weight leaves exactly the bias, per output channel."""
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = np.zeros((4, 3, 3, 3), dtype=np.float32)
    b = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    for name in ALGORITHMS:
        out = F.conv2d(x, w, b, padding=1, algorithm=name)
        np.testing.assert_allclose(out, np.broadcast_to(b[None, :, None, None], out.shape), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("src_step", [1, 2, 3])
def test_row_copies_every_length(dtype, src_step):
    """kernels/_rows.pxd's row copy (the depthwise bands, the padded and polyphase planes)
    at every length up to past its short-row cutoff (64): each tail (one overlapping
    vector, two overlapping halves, pairs, one element) is its own code path. Exactly
    dst[i] = src[i*step] for i < n; the NaN sentinels on both sides stay."""
    from engine.kernels import direct
    for n in range(0, 80):
        src = np.arange(1, n * src_step + 2, dtype=dtype)
        buf = np.full(n + 40, np.nan, dtype)
        dst = buf[16:16 + n]
        direct.copy_strided(dst, 1, src, src_step, n)
        np.testing.assert_array_equal(dst, src[:n * src_step:src_step][:n], err_msg=f"n={n}")
        assert np.isnan(buf[:16]).all() and np.isnan(buf[16 + n:]).all(), f"n={n}: wrote outside"
    with pytest.raises(ValueError, match="do not fit"):
        direct.copy_strided(np.zeros(3, dtype), 1, np.zeros(3, dtype), 1, 4)
    with pytest.raises(ValueError, match=">= 0"):
        direct.copy_strided(np.zeros(3, dtype), 1, np.zeros(3, dtype), 1, -1)
