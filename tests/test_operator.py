"""engine.operator: one prepared convolution or pooling call, and pooling in the
registry. Every operator is checked against the plain float64 reference of
tests/reference.py; the layers, functional API, tuner and benchmarks build these."""
import importlib.util
import os

import numpy as np
import pytest

import engine
from engine import dispatch, operator, registry, shapes

import reference as ref
from conftest import ROOT, ISAS

TOL64 = 1e-10


def _conv_case(rng, dtype="float32", n=2, c=8, h=9, w=11, cout=6, k=3, stride=1, padding=1,
               dilation=1, groups=1, padding_mode="zeros", bias=True):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((cout, c // groups, k, k)) / (c * k)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if bias else None
    p = shapes.conv_params(x.shape, wt.shape, stride, padding, dilation, groups, padding_mode, dtype)
    want = ref.conv2d(x, wt, b, stride, padding, dilation, groups, padding_mode)
    return x, wt, b, p, want


CONV_CASES = {
    "plain": {},
    "even_kernel_same": dict(k=4, padding="same"),            # asymmetric padding
    "reflect": dict(padding=2, padding_mode="reflect"),
    "circular_same": dict(k=2, padding="same", padding_mode="circular"),
    "strided_dilated": dict(stride=2, dilation=2, padding=2),
    "grouped": dict(groups=2, c=8, cout=6),
    "no_bias_1x1": dict(k=1, padding=0, bias=False),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_applicable_algorithm_as_an_operator_matches_the_reference(rng, case, dtype):
    x, wt, b, p, want = _conv_case(rng, dtype, **CONV_CASES[case])
    names = registry.applicable(p)
    assert "direct" in names and "pool" not in names
    for name in names:
        op = operator.ConvOperator(p, name, wt, b, num_threads=2)
        tol = registry.tolerance(name, dtype)
        ref.assert_close(op(x), want, tol, what=f"{case} {name}")
        out = np.full(p.output_shape, np.nan, dtype)          # into a given output
        assert op(x, out) is out
        ref.assert_close(out, want, tol, what=f"{case} {name} out=")


@pytest.mark.parametrize("isa", ISAS)
def test_operators_with_fused_relu_on_every_isa(rng, isa, use_isa):
    use_isa(isa)
    x, wt, b, p, want = _conv_case(rng, c=16, cout=16, h=12, w=12)
    for name in registry.applicable(p):
        op = operator.ConvOperator(p, dispatch.Choice(name, "forced", "test"), wt, b, relu=True)
        ref.assert_close(op(x), np.maximum(want, 0), registry.tolerance(name, "float32"),
                         what=f"{isa} {name} relu")


def test_prepared_weights_are_used_as_given(rng):
    """A layer hands its cached prepared weights over: the operator must not prepare
    them again (the result follows what it was given)."""
    x, wt, b, p, want = _conv_case(rng)
    prepared = registry.get("direct").prepare_weight(wt * 2, p)
    op = operator.ConvOperator(p, "direct", wt, b, prepared=prepared)
    assert op.prepared_weight is prepared
    ref.assert_close(op(x), 2 * (want - b[None, :, None, None]) + b[None, :, None, None], 1e-5)


def test_kernel_params_from_a_choice_are_checked(rng):
    x, wt, b, p, want = _conv_case(rng, c=16, cout=16, h=12, w=12)
    ok = dispatch.Choice("im2col", "plan", "test", {"max_workspace_bytes": 1 << 20})
    op = operator.ConvOperator(p, ok, wt, b)
    assert op.kernel_params == {"max_workspace_bytes": 1 << 20}
    ref.assert_close(op(x), want, 1e-5)
    bad = dispatch.Choice("im2col", "plan", "test", {"tile_block": 64})
    with pytest.raises(ValueError, match="unsupported parameter tile_block"):
        operator.ConvOperator(p, bad, wt, b)


@pytest.mark.parametrize("make, err, needle", [
    (lambda x, wt, b, p: operator.ConvOperator(p, "nope", wt, b), ValueError, "unknown algorithm"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "pool", wt, b), ValueError, "unknown algorithm 'pool'"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "winograd_f4x3", wt, b), ValueError, "3x3"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "direct", wt, b)(x[:1]), ValueError, "shape"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "direct", wt, b)(x.astype(np.float64)), ValueError, "float32"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "direct", wt, b)(np.asfortranarray(x)), ValueError, "contiguous"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "direct", wt, b)(x.tolist()), TypeError, "ndarray"),
    (lambda x, wt, b, p: operator.ConvOperator(p, "direct", wt, b)(x, np.empty((1, 2, 3, 4), np.float32)),
     ValueError, "out must be"),
    (lambda x, wt, b, p: operator.create(p, "direct"), ValueError, "needs its weight"),
    (lambda x, wt, b, p: operator.create("conv", "direct", wt), TypeError, "ConvParams or PoolParams"),
])
def test_bad_operator_use_is_a_clear_error(rng, make, err, needle):
    x, wt, b, p, _ = _conv_case(rng, k=5, padding=2)
    with pytest.raises(err, match=needle):
        make(x, wt, b, p)


def test_read_only_output_is_refused(rng):
    x, wt, b, p, _ = _conv_case(rng)
    out = np.empty(p.output_shape, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        operator.ConvOperator(p, "direct", wt, b)(x, out)


def test_an_empty_batch_runs_no_kernel(rng):
    x, wt, b, p, _ = _conv_case(rng, n=0)
    assert operator.ConvOperator(p, "direct", wt, b)(x).shape == (0, 6, 9, 11)


@pytest.mark.parametrize("shape", [(1, 64, 112, 112), (3, 5), 7, 70000, (0, 4), ()])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint8"])
def test_empty_aligned_starts_on_a_cache_line(shape, dtype):
    """Large arrays start on a line; small ones are plain np.empty (aligning would cost
    more than their stores gain); every one has the shape, dtype and layout asked."""
    from engine._memory import ALIGN_MIN_BYTES, ALIGNMENT, allocator_for, empty_aligned
    a = empty_aligned(shape, dtype)
    assert allocator_for(shape, dtype) is (empty_aligned if a.nbytes >= ALIGN_MIN_BYTES else np.empty)
    want = (shape,) if isinstance(shape, int) else shape
    assert a.shape == want and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    if a.nbytes >= ALIGN_MIN_BYTES:
        assert a.ctypes.data % ALIGNMENT == 0
    a[...] = 1                             # the whole view is usable memory
    assert a.sum() == a.size


def test_operator_outputs_and_padded_inputs_are_aligned(rng, monkeypatch):
    """The outputs an operator allocates (and its padded copy of the input) start on a
    64-byte line, whatever malloc's alignment; so the kernels' 64-byte row stores do
    not straddle lines."""
    from engine._memory import ALIGNMENT
    x, wt, b, p, want = _conv_case(rng, n=2, c=8, h=40, w=40, cout=16, padding=2,
                                   padding_mode="reflect")
    op = operator.ConvOperator(p, "direct", wt, b)
    seen = []
    real = operator._padding.pad2d

    def spy(src, dst, *args):
        seen.append(dst.ctypes.data % ALIGNMENT)
        return real(src, dst, *args)
    monkeypatch.setattr(operator._padding, "pad2d", spy)
    for _ in range(3):
        out = op(x)
        assert out.ctypes.data % ALIGNMENT == 0
        ref.assert_close(out, want, registry.tolerance("direct", "float32"))
    assert seen == [0, 0, 0]
    pp = shapes.pool_params("max_pool2d", (2, 8, 40, 40), 1, 1, 0, 1, False, "float32")
    assert operator.PoolOperator(pp, "pool")(x[:, :, :40, :40].copy()).ctypes.data % ALIGNMENT == 0


def _overlap(a, b):
    a0, b0 = a.ctypes.data, b.ctypes.data
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def test_block_pool_hands_out_a_block_again_only_once_no_array_uses_it():
    """A large array's block comes back once it and every view of it are gone, and is
    never given to a second array while any of them lives."""
    from engine._memory import empty_aligned
    shape = (3, 64, 40, 40)                         # 1.2 MB: a pooled size
    a = empty_aligned(shape, np.float32)
    addr = a.ctypes.data
    del a
    b = empty_aligned(shape, np.float32)
    assert b.ctypes.data == addr                    # the freed block, reused
    view = b[1:, ::2]                               # a view alone keeps the block in use
    del b
    c = empty_aligned(shape, np.float32)
    assert not _overlap(c, view)
    c[...] = 1.0
    view[...] = 2.0
    assert (c == 1.0).all() and (view == 2.0).all()
    d = empty_aligned(shape, np.float32)            # c and view both alive: a third block
    assert not _overlap(d, c) and not _overlap(d, view)


def test_block_pool_keeps_at_most_its_bounds():
    from engine._memory import _BlockPool
    pool = _BlockPool(max_bytes=3000, per_size=2)
    live = [pool.take(1000) for _ in range(3)]      # all in use: three blocks, two pooled
    assert len(pool.blocks[1000]) == 2 and pool.nbytes == 2000
    assert len({id(b) for b in live}) == 3
    live.append(pool.take(1500))                    # would pass max_bytes: not pooled
    assert 1500 not in pool.blocks and pool.nbytes == 2000
    kept = live[2]
    del live
    again = [pool.take(1000) for _ in range(3)]     # the two pooled blocks, then a new one
    assert sum(any(b is p for p in pool.blocks[1000]) for b in again) == 2
    assert all(b is not kept for b in again)


def test_block_pool_never_shares_a_block_between_threads():
    """Python threads allocating, filling and checking pooled arrays at once: each array
    keeps what its thread wrote (a block handed out twice would mix the fills)."""
    import threading
    from engine._memory import empty_aligned
    errors = []

    def worker(tag):
        for _ in range(200):
            a = empty_aligned((70000,), np.float32)
            a[...] = tag
            b = empty_aligned((70000,), np.float32)
            b[...] = -tag
            if not ((a == tag).all() and (b == -tag).all()):
                errors.append(tag)

    threads = [threading.Thread(target=worker, args=(t + 1,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_operator_output_reuses_its_block_without_page_faults(rng):
    """An operator's large output, dropped and asked for again, is the same memory even
    when other large allocations come and go between the calls (as PyTorch's do in a
    side-by-side run, which make glibc give freed blocks back to the system): no fresh
    pages for the kernel to fault in and zero on each call. resource counts the
    process's minor faults; a fresh 1.6 MB output takes about 400."""
    resource = pytest.importorskip("resource")
    from engine._memory import _pool
    x, wt, b, p, want = _conv_case(rng, n=1, c=8, h=102, w=102, cout=40, padding=0)
    op = operator.ConvOperator(p, "direct", wt, b)
    addr = op(x).ctypes.data                        # (the result dies at once)
    faults = 0
    for i in range(5):
        other = np.ones(3_000_000 + i * 100_000, np.uint8)   # growing: no block fits it
        del other
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = op(x)
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert y.ctypes.data == addr
        assert any(y.base is block for block in _pool.blocks[y.base.nbytes])
        del y
    assert faults < 100
    np.testing.assert_allclose(op(x), want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------- pooling
POOL_CASES = {
    "max_k3_s2_p1": ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    "max_dilated_ceil": ("max_pool2d", dict(kernel_size=2, stride=2, padding=1, dilation=2, ceil_mode=True)),
    "avg_k3_s2_p1": ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    "avg_no_pad_count_ceil": ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                 count_include_pad=False)),
    "avg_divisor": ("avg_pool2d", dict(kernel_size=2, divisor_override=3)),
}


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pool_operators_match_the_reference(rng, case, dtype):
    op_name, kw = POOL_CASES[case]
    x = rng.standard_normal((2, 3, 11, 10)).astype(dtype)
    p = shapes.pool_params(op_name, x.shape, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0),
                           kw.get("dilation", 1), kw.get("ceil_mode", False), dtype)
    assert registry.applicable(p) == ["pool"]
    choice = dispatch.choose(p)
    assert (choice.algorithm, choice.source) == ("pool", "heuristic")
    if op_name == "max_pool2d":
        op = operator.PoolOperator(p, choice, return_indices=True)
        out, idx = op(x)
        want, want_idx = ref.max_pool2d(x, **kw)
        np.testing.assert_array_equal(out.astype(np.float64), want)
        np.testing.assert_array_equal(idx, want_idx)
    else:
        op = operator.PoolOperator(p, choice, count_include_pad=kw.get("count_include_pad", True),
                                   divisor_override=kw.get("divisor_override") or 0)
        want = ref.avg_pool2d(x, **kw)
        ref.assert_close(op(x), want, registry.tolerance("pool", dtype), what=case)


def test_pool_operator_refuses_what_it_cannot_do(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    p = shapes.pool_params("avg_pool2d", x.shape, 2, None, 0, 1, False, "float32")
    with pytest.raises(ValueError, match="return_indices is for max pooling"):
        operator.PoolOperator(p, "pool", return_indices=True)
    with pytest.raises(ValueError, match="unknown algorithm 'direct'"):
        operator.PoolOperator(p, "direct")
    with pytest.raises(ValueError, match="shape"):
        operator.PoolOperator(p, "pool")(x[:, :1])


def test_pooling_is_registered_with_one_tolerance_table():
    assert registry.get("pool").kind == "pool"
    assert "pool" not in engine.algorithms()          # algorithm= takes convolutions only
    assert set(registry.TOLERANCE) >= {("pool", "float32"), ("pool", "float64")}
    for dtype in ("float32", "float64"):
        assert registry.tolerance("pool", dtype) <= registry.DEFAULT_TOLERANCE[dtype]
    with pytest.raises(ValueError, match="unknown algorithm 'pool'"):
        engine.Conv2d(2, 2, 3, algorithm="pool")
    info = engine.explain(engine.AvgPool2d(3, stride=2), (1, 4, 9, 9))
    assert info["algorithm"] == "pool" and info["kernels"] == {"kernel": "avg_pool2d"}
    assert info["params"]["op"] == "avg_pool2d" and info["applicable"] == ["pool"]


def test_candidates_for_a_shape():
    conv = shapes.conv_params((1, 16, 12, 12), (16, 16, 3, 3), 1, 1, 1, 1, "zeros", "float32")
    auto = registry.candidates(conv)
    assert auto == [(n, {}) for n in registry.applicable(conv)]
    every = registry.candidates(conv, exhaustive=True)
    wino = registry.get("winograd_f4x3")
    for name, values in wino.tunables.items():
        for v in values:
            # a value that cannot run here (the tile transforms off AVX-512) is not tried
            assert (("winograd_f4x3", {name: v}) in every) == wino.variant_applies(name, v, conv)
    assert ("winograd_f4x3", {"tile_block": wino.tunables["tile_block"][0]}) in every
    pool = shapes.pool_params("max_pool2d", (1, 3, 8, 8), 2, None, 0, 1, False, "float32")
    assert registry.candidates(pool, exhaustive=True) == [("pool", {})]


# -------------------------------------------------- a layer's operators follow it
def test_a_layer_rebuilds_its_operator_when_bias_or_relu_change(rng):
    layer = engine.Conv2d(8, 6, 3, padding=1, seed=3)
    x = rng.standard_normal((1, 8, 7, 7)).astype(np.float32)
    want = ref.conv2d(x, layer.weight, layer.bias, padding=1)
    ref.assert_close(layer(x), want, 1e-5)
    layer.bias = np.full(6, 5.0, np.float32)
    want = ref.conv2d(x, layer.weight, layer.bias, padding=1)
    ref.assert_close(layer(x), want, 1e-5, what="new bias")
    layer.bias = -layer.bias
    layer.fused_relu = True
    ref.assert_close(layer(x), np.maximum(ref.conv2d(x, layer.weight, layer.bias, padding=1), 0), 1e-5,
                     what="fused relu")
    layer.fused_relu = False
    assert (layer(x) < 0).any()


def test_bench_layers_runs_asymmetric_padding(rng):
    """benchmarks/bench_layers.py builds operators too, so a padding="same" layer with an
    even kernel (pads 1 before, 2 after) is timed as it is, not symmetrised."""
    spec = importlib.util.spec_from_file_location("bench_layers", os.path.join(ROOT, "benchmarks", "bench_layers.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from tuner.configs import Shape
    x, wt, b, p, want = _conv_case(rng, k=4, padding="same")
    assert p.pads[0] != p.pads[1]
    runners = bench.engine_runners(Shape(p), x, wt, b, cached=False, threads=1)
    runners["default"] = bench._default_runner(Shape(p), x, wt, b, 1)
    assert set(runners) >= {"direct", "im2col", "default"}
    for name, run in runners.items():
        ref.assert_close(run(), want, 1e-5, what=name)


def test_resolved_pads_replace_padding(rng):
    """shapes.conv_params(pads=...) takes the (top, bottom, left, right) padding that
    nn.Conv2d cannot express (ONNX's asymmetric pads), checks it, and the output size
    counts it: a 2x3 input is smaller than the 3x3 kernel until padded."""
    x = rng.standard_normal((1, 2, 2, 3)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    p = shapes.conv_params(x.shape, w.shape, 1, 0, 1, 1, "zeros", "float32", pads=(2, 0, 1, 1))
    assert p.pads == (2, 0, 1, 1) and p.output_shape == (1, 3, 2, 3)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 0), (1, 1)))
    ref.assert_close(operator.ConvOperator(p, "direct", w)(x), ref.conv2d(padded, w), 1e-5)
    for bad in ((1, 1), (1, -1, 0, 0), (1, 1.5, 0, 0)):
        with pytest.raises((ValueError, TypeError), match="pads"):
            shapes.conv_params(x.shape, w.shape, 1, 0, 1, 1, "zeros", "float32", pads=bad)
