"""Dilated 3x3 stride-1 convolutions through Winograd by the polyphase split.

The split and scatter kernels (engine/kernels/polyphase.pyx) on their own against
numpy slicing (x[:, :, a::dh, b::dw]); then every Winograd F(m) on dilated layers
against the float64 reference (tests/reference.py, which computes the dilated
convolution directly and knows nothing of the split) with the registry's tolerance:
dilations 2, 3, 4, (1, 2), (2, 1); sizes multiples and not of the dilation; padding
d, (2d, 0), 0 and asymmetric top/bottom (pads=); groups 1 and 2; batch 1 and 3; with
and without bias; relu through the operator and the layer; outputs pre-filled with
NaN; float32 on each micro-kernel ISA and float64; and against PyTorch.
"""
import numpy as np
import pytest

import engine
import engine.functional as F
from engine import operator, registry, shapes

import reference as ref
from conftest import DTYPES, ISAS

pytestmark = [pytest.mark.usefixtures("plans_off"),
              pytest.mark.skipif("winograd_f2x3" not in registry.REGISTRY,
                                 reason="Winograd module not built")]

WINOGRAD = ["winograd_f2x3", "winograd_f4x3", "winograd_f6x3"]
DILATIONS = [(2, 2), (3, 3), (4, 4), (1, 2), (2, 1)]

# float32 on every micro-kernel ISA the CPU has (the rest skipped with the reason), float64
DTYPE_ISA = [pytest.param("float32", p.values[0], id=f"float32-{p.id}", marks=p.marks) for p in ISAS] \
    + [pytest.param("float64", None, id="float64")]


def _sizes(d, multiple):
    """(H, W): multiples of the dilation, or not (the largest and the smallest remainder)."""
    dh, dw = d
    if multiple:
        return 5 * dh, 4 * dw
    return 5 * dh + max(dh - 1, 1), 4 * dw + 1


def _pads(d, kind):
    """(top, bottom, left, right) zero padding: d, (2d, 0) (nn.Conv2d's per-axis tuple),
    none, and top/left multiples of d with bottom/right that are not (ONNX's pads)."""
    dh, dw = d
    return {"d": (dh, dh, dw, dw), "2d_0": (2 * dh, 2 * dh, 0, 0), "0": (0, 0, 0, 0),
            "asym": (2 * dh, 1, dw, 3)}[kind]


def _reference(x, w, b, pads, d, groups):
    """The float64 reference on x zero-padded beforehand by ``pads`` (top, bottom, left, right)."""
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    return ref.conv2d(xp, w, b, padding=0, dilation=d, groups=groups)


def _inputs(rng, dtype, n, c, cout, h, w, groups, bias):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((cout, c // groups, 3, 3)) / np.sqrt(9 * c // groups)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if bias else None
    return x, wt, b


# ------------------------------------------------------------- the reorder kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DILATIONS + [(1, 1), (3, 1), (4, 3)], ids=str)
def test_split_matches_numpy_slicing(d, dtype, rng):
    from engine.kernels import polyphase
    dh, dw = d
    for (n, c, h, w), extra in [((2, 3, 9, 7), (0, 0)), ((1, 2, 8, 12), (2, 1)), ((3, 1, 1, 5), (1, 0))]:
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        hs, ws = -(-h // dh) + extra[0], -(-w // dw) + extra[1]
        xs = np.full((n * dh * dw, c, hs, ws), np.nan, dtype)
        for threads in (1, 2, 3):
            xs[...] = np.nan
            polyphase.split(x, xs, dh, dw, threads)
            expected = np.zeros_like(xs)
            for i in range(n):
                for a in range(dh):
                    for b in range(dw):
                        comp = x[i, :, a::dh, b::dw]
                        expected[i * dh * dw + a * dw + b, :, :comp.shape[1], :comp.shape[2]] = comp
            np.testing.assert_array_equal(xs, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DILATIONS + [(1, 1), (3, 1), (4, 3)], ids=str)
def test_scatter_matches_numpy_slicing(d, dtype, rng):
    from engine.kernels import polyphase
    dh, dw = d
    for (n, c, oh, ow), extra in [((2, 3, 9, 7), (0, 0)), ((1, 2, 8, 12), (1, 2)), ((3, 1, 1, 5), (0, 1))]:
        ohs, ows = -(-oh // dh) + extra[0], -(-ow // dw) + extra[1]
        outs = rng.standard_normal((n * dh * dw, c, ohs, ows)).astype(dtype)
        expected = np.full((n, c, oh, ow), np.nan, dtype)
        for i in range(n):
            for a in range(dh):
                for b in range(dw):
                    dst = expected[i, :, a::dh, b::dw]
                    dst[...] = outs[i * dh * dw + a * dw + b, :, :dst.shape[1], :dst.shape[2]]
        assert not np.isnan(expected).any()
        for threads in (1, 2, 3):
            out = np.full((n, c, oh, ow), np.nan, dtype)
            polyphase.scatter(outs, out, dh, dw, threads)
            np.testing.assert_array_equal(out, expected)


def test_split_and_scatter_refuse_wrong_shapes():
    from engine.kernels import polyphase
    x = np.zeros((2, 3, 9, 7), np.float32)
    with pytest.raises(ValueError, match="split: xs has shape"):
        polyphase.split(x, np.zeros((8, 3, 4, 4), np.float32), 2, 2, 1)      # 9 rows need 5
    with pytest.raises(ValueError, match="split: xs has shape"):
        polyphase.split(x, np.zeros((4, 3, 5, 4), np.float32), 2, 2, 1)      # batch 2*2*2
    with pytest.raises(ValueError, match="dilation must be positive"):
        polyphase.split(x, np.zeros((2, 3, 9, 7), np.float32), 0, 1, 1)
    with pytest.raises(ValueError, match="scatter: outs has shape"):
        polyphase.scatter(np.zeros((8, 3, 4, 4), np.float32), x, 2, 2, 1)
    with pytest.raises(ValueError, match="scatter: outs has shape"):
        polyphase.scatter(np.zeros((8, 2, 5, 4), np.float32), x, 2, 2, 1)    # channels
    with pytest.raises((ValueError, TypeError)):
        polyphase.split(x, np.zeros((8, 3, 5, 4), np.float64), 2, 2, 1)      # mixed dtypes


# ------------------------------------------------------- Winograd on dilated layers
@pytest.mark.parametrize("dtype,isa", DTYPE_ISA)
@pytest.mark.parametrize("name", WINOGRAD)
@pytest.mark.parametrize("pad", ["d", "2d_0", "0", "asym"])
@pytest.mark.parametrize("multiple", [True, False], ids=["multiple", "non_multiple"])
@pytest.mark.parametrize("d", DILATIONS, ids=lambda d: f"d{d[0]}x{d[1]}")
def test_dilated_winograd_matches_reference(d, multiple, pad, name, dtype, isa, rng, use_isa):
    """Every output element overwritten (NaN-prefilled out) and within the algorithm's
    tolerance of the reference; groups 1 and 2, batch 1 and 3, bias or not, relu or not."""
    if isa is not None:
        use_isa(isa)
    h, w = _sizes(d, multiple)
    pads = _pads(d, pad)
    tol = registry.tolerance(name, dtype)
    for n, groups, bias, relu in [(1, 1, True, False), (3, 2, False, True), (3, 1, True, True),
                                  (1, 2, True, False)]:
        x, wt, b = _inputs(rng, dtype, n, 4, 6, h, w, groups, bias)
        p = shapes.conv_params(x.shape, wt.shape, 1, 0, d, groups, "zeros", dtype, pads=pads)
        assert registry.REGISTRY[name].why_not(p) is None
        expected = _reference(x, wt, b, pads, d, groups)
        assert p.output_shape == expected.shape
        op = operator.ConvOperator(p, name, wt, b, relu=relu, num_threads=2)
        out = np.full(p.output_shape, np.nan, dtype)
        assert op(x, out) is out
        assert not np.isnan(out).any(), f"{np.isnan(out).sum()} output elements never written"
        ref.assert_close(out, np.maximum(expected, 0) if relu else expected, tol,
                         what=f"{name} {dtype} n={n} g={groups} relu={relu}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", WINOGRAD)
@pytest.mark.parametrize("d", DILATIONS, ids=lambda d: f"d{d[0]}x{d[1]}")
def test_dilated_winograd_through_functional_and_layer(d, name, dtype, rng):
    """The public paths: functional.conv2d with padding d (and 'same'), the layer with a
    fused relu (engine.fuse's flag), batched and unbatched."""
    h, w = _sizes(d, False)
    tol = registry.tolerance(name, dtype)
    x, wt, b = _inputs(rng, dtype, 2, 4, 6, h, w, 1, True)
    for padding in (d, "same"):
        out = F.conv2d(x, wt, b, padding=padding, dilation=d, algorithm=name)
        ref.assert_close(out, ref.conv2d(x, wt, b, padding=padding, dilation=d), tol, what=name)
    layer = engine.Conv2d(4, 6, 3, padding=d, dilation=d, dtype=dtype, algorithm=name, seed=3)
    layer.fused_relu = True
    expected = np.maximum(ref.conv2d(x, layer.weight, layer.bias, padding=d, dilation=d), 0)
    ref.assert_close(layer(x), expected, tol, what=f"{name} layer")
    ref.assert_close(layer(x[1]), expected[1], tol, what=f"{name} layer unbatched")
    assert layer.explain(x.shape)["algorithm"] == name


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_dilated_winograd_with_padding_modes(mode, rng):
    """A non-zero padding mode is a pre-pass: the kernel then sees padding 0, so any
    padding is accepted, multiples of the dilation or not."""
    for d, padding in [((2, 2), 2), ((2, 3), (1, 3)), ((3, 1), (2, 1))]:
        x, wt, b = _inputs(rng, "float32", 2, 4, 6, 11, 10, 2, True)
        out = F.conv2d(x, wt, b, padding=padding, dilation=d, groups=2, padding_mode=mode,
                       algorithm="winograd_f4x3")
        expected = ref.conv2d(x, wt, b, padding=padding, dilation=d, groups=2, padding_mode=mode)
        ref.assert_close(out, expected, registry.tolerance("winograd_f4x3", "float32"), what=mode)


@pytest.mark.parametrize("name", WINOGRAD)
def test_dilated_winograd_matches_torch(name, torch, rng):
    """Against torch.nn.functional.conv2d (float64), a real layer size and odd ones."""
    tf = torch.nn.functional
    for (n, c, h, w), d, padding, groups in [((1, 32, 28, 28), 2, 2, 1), ((2, 16, 23, 19), 4, 4, 2),
                                            ((1, 8, 13, 17), (1, 2), (2, 0), 1),
                                            ((3, 8, 15, 9), (3, 1), (3, 1), 2)]:
        for dtype in DTYPES:
            x, wt, b = _inputs(rng, dtype, n, c, 2 * c, h, w, groups, True)
            out = F.conv2d(x, wt, b, padding=padding, dilation=d, groups=groups, algorithm=name)
            want = tf.conv2d(*(torch.from_numpy(a.astype(np.float64)) for a in (x, wt, b)),
                             padding=padding, dilation=d, groups=groups).numpy()
            ref.assert_close(out, want, registry.tolerance(name, dtype), what=f"{name} {dtype} d={d}")


def test_dilated_threads_give_the_same_result(rng):
    """float32 runs on the micro-kernels only: 1, 2 and 3 threads agree bitwise."""
    x, wt, b = _inputs(rng, "float32", 2, 16, 16, 30, 27, 1, True)
    p = shapes.conv_params(x.shape, wt.shape, 1, 3, 3, 1, "zeros", "float32")
    outs = [operator.ConvOperator(p, "winograd_f4x3", wt, b, num_threads=t)(x) for t in (1, 2, 3)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_reused_scratch_is_overwritten_and_per_thread(rng):
    """The polyphase copies live in per-thread scratch reused from call to call
    (registry._Scratch): poisoned with NaN between calls, and shared by calls of other
    shapes, they never leak into a result; Python threads running one operator at once
    each get their own."""
    import threading
    x, wt, b = _inputs(rng, "float32", 3, 8, 8, 21, 18, 1, True)
    p = shapes.conv_params(x.shape, wt.shape, 1, 2, 2, 1, "zeros", "float32")
    op = operator.ConvOperator(p, "winograd_f4x3", wt, b, num_threads=2)
    tol = registry.tolerance("winograd_f4x3", "float32")
    expected = _reference(x, wt, b, (2, 2, 2, 2), (2, 2), 1)
    small = _inputs(rng, "float32", 1, 8, 8, 9, 9, 1, True)
    ps = shapes.conv_params(small[0].shape, small[1].shape, 1, 2, 2, 1, "zeros", "float32")
    small_op = operator.ConvOperator(ps, "winograd_f4x3", small[1], small[2], num_threads=2)
    for _ in range(2):
        for buf in registry._scratch.buffers.values():
            buf.fill(np.nan)
        ref.assert_close(op(x), expected, tol, what="after poisoning")
        small_op(small[0])                       # a smaller call through the same buffers
    inputs = [_inputs(rng, "float32", 3, 8, 8, 21, 18, 1, False)[0] for _ in range(4)]
    wants = [_reference(xi, wt, b, (2, 2, 2, 2), (2, 2), 1) for xi in inputs]
    got = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            got[i] = op(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, want in zip(got, wants):
        ref.assert_close(g, want, tol, what="concurrent calls")


# --------------------------------------------------------- what is accepted, refused
@pytest.mark.parametrize("name", WINOGRAD)
def test_pads_not_multiple_of_the_dilation_are_refused_with_the_reason(name):
    algo = registry.REGISTRY[name]
    for d, pads in [((2, 2), (1, 1, 2, 2)), ((2, 2), (2, 2, 1, 1)), ((3, 3), (2, 2, 3, 3)),
                    ((1, 2), (0, 0, 1, 1)), ((4, 4), (4, 4, 2, 2))]:
        p = shapes.conv_params((1, 8, 20, 20), (8, 8, 3, 3), 1, 0, d, 1, "zeros", "float32", pads=pads)
        reason = algo.why_not(p)
        assert reason is not None and "multiples of the dilation" in reason, reason
        assert f"top {pads[0]}, left {pads[2]}" in reason
        with pytest.raises(ValueError, match=name):
            operator.ConvOperator(p, name, np.zeros((8, 8, 3, 3), np.float32))
    # bottom/right padding need not be multiples: they only decide the output size
    p = shapes.conv_params((1, 8, 20, 20), (8, 8, 3, 3), 1, 0, 2, 1, "zeros", "float32", pads=(2, 1, 4, 3))
    assert algo.why_not(p) is None
    # stride 2 stays refused with dilation
    p = shapes.conv_params((1, 8, 20, 20), (8, 8, 3, 3), 2, 2, 2, 1, "zeros", "float32")
    assert "stride 1" in algo.why_not(p)


def test_explain_names_the_polyphase_split():
    info = engine.explain(dict(in_channels=16, out_channels=16, kernel_size=3, padding=2, dilation=2,
                               algorithm="winograd_f4x3"), (1, 16, 20, 20))
    assert "polyphase" in info["kernels"] and "4 sub-images" in info["kernels"]["polyphase"]
    assert all(n in info["applicable"] for n in WINOGRAD)
    info = engine.explain(dict(in_channels=16, out_channels=16, kernel_size=3, padding=1,
                               algorithm="winograd_f4x3"), (1, 16, 20, 20))
    assert "polyphase" not in info["kernels"]            # dilation 1: no split, no copy


def test_dilation_1_runs_the_kernel_directly(monkeypatch, rng):
    """Dilation 1 calls conv2d_winograd on x and out themselves (no split, no copy)."""
    from engine.kernels import polyphase

    def refuse(*args):
        raise AssertionError("the polyphase split ran for a dilation-1 layer")
    monkeypatch.setattr(polyphase, "split", refuse)
    monkeypatch.setattr(polyphase, "scatter", refuse)
    x, wt, b = _inputs(rng, "float32", 1, 8, 8, 12, 12, 1, True)
    out = F.conv2d(x, wt, b, padding=1, algorithm="winograd_f2x3")
    ref.assert_close(out, ref.conv2d(x, wt, b, padding=1), registry.tolerance("winograd_f2x3", "float32"))
