"""Layers: equal to the functional calls, PyTorch's initialisation, weight caching and
its invalidation, read-only parameters, explain, thread safety, build info."""
import concurrent.futures
import math
import subprocess
import sys

import numpy as np
import pytest

import engine
import engine.functional as F
from engine import registry as algos

import reference as ref
from conftest import ISAS
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("plans_off")

ALGORITHMS = engine.algorithms()
WINOGRAD = [n for n in ALGORITHMS if n.startswith("winograd")]

LAYER_CONFIGS = [
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=3, groups=3, dilation=2, padding="same"),
    dict(in_channels=5, out_channels=10, kernel_size=3, groups=5, stride=2, padding=1),
    dict(in_channels=3, out_channels=2, kernel_size=4, padding="same", padding_mode="reflect"),
    dict(in_channels=3, out_channels=2, kernel_size=3, padding=2, padding_mode="circular"),
    dict(in_channels=3, out_channels=2, kernel_size=1, padding="valid", padding_mode="replicate"),
]


def _functional_kwargs(cfg):
    return {k: cfg[k] for k in ("stride", "padding", "dilation", "groups", "padding_mode") if k in cfg}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv2d_layer_equals_functional(cfg, dtype, rng):
    layer = engine.Conv2d(**cfg, dtype=dtype, seed=1)
    assert layer.weight.dtype == np.dtype(dtype)
    x = rng.standard_normal((2, cfg["in_channels"], 9, 8)).astype(dtype)
    out = layer(x)
    expected = F.conv2d(x, layer.weight, layer.bias, **_functional_kwargs(cfg))
    np.testing.assert_array_equal(out, expected)
    ref.assert_close(out, ref.conv2d(x, layer.weight, layer.bias, **_functional_kwargs(cfg)),
                     algos.DEFAULT_TOLERANCE[dtype])
    # unbatched input through the same layer (another shape: resolved separately)
    out1 = layer(x[1])
    assert out1.shape == out.shape[1:]
    np.testing.assert_allclose(out1, out[1], rtol=0, atol=algos.DEFAULT_TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_forced_layer_equals_forced_functional(name, rng):
    layer = engine.Conv2d(4, 5, 3, padding=1, seed=2, algorithm=name)
    x = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1, algorithm=name))


def test_layer_follows_input_shape_changes(rng):
    layer = engine.Conv2d(3, 4, 3, padding=1, seed=0)
    for shape in [(1, 3, 5, 5), (2, 3, 9, 7), (1, 3, 5, 5), (3, 3, 16, 16)]:
        x = rng.standard_normal(shape).astype(np.float32)
        ref.assert_close(layer(x), ref.conv2d(x, layer.weight, layer.bias, padding=1), 1e-4)


POOL_LAYERS = [
    (dict(kernel_size=3, stride=2, padding=1), "max"),
    (dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), ceil_mode=True), "max"),
    (dict(kernel_size=2), "max"),
    (dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), "avg"),
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=5), "avg"),
    (dict(kernel_size=(3, 2)), "avg"),
]


@pytest.mark.parametrize("cfg, op", POOL_LAYERS, ids=[f"{op}-{i}" for i, (_, op) in enumerate(POOL_LAYERS)])
def test_pool_layers_equal_functional(cfg, op, rng):
    x = rng.standard_normal((2, 3, 11, 10))
    if op == "max":
        layer = engine.MaxPool2d(**cfg)
        np.testing.assert_array_equal(layer(x), F.max_pool2d(x, **cfg))
        np.testing.assert_array_equal(layer(x), ref.max_pool2d(x, **cfg)[0])
        layer_i = engine.MaxPool2d(**cfg, return_indices=True)
        v, i = layer_i(x)
        ev, ei = F.max_pool2d(x, **cfg, return_indices=True)
        np.testing.assert_array_equal(v, ev)
        np.testing.assert_array_equal(i, ei)
    else:
        layer = engine.AvgPool2d(**cfg)
        np.testing.assert_array_equal(layer(x), F.avg_pool2d(x, **cfg))
        ref.assert_close(layer(x), ref.avg_pool2d(x, **cfg), 1e-13)
    out3 = layer(x[0])
    np.testing.assert_array_equal(out3[0] if isinstance(out3, tuple) else out3,
                                  (layer(x)[0] if isinstance(out3, tuple) else layer(x))[0])


# --------------------------------------------------------------------- init
@pytest.mark.parametrize("cin, cout, k, groups", [(3, 16, 3, 1), (8, 16, (1, 5), 2), (6, 12, 3, 6)])
def test_weight_init_bound(cin, cout, k, groups):
    layer = engine.Conv2d(cin, cout, k, groups=groups, seed=11)
    kh, kw = (k, k) if isinstance(k, int) else k
    fan_in = cin // groups * kh * kw
    bound = 1 / math.sqrt(fan_in)
    w, b = layer.weight, layer.bias
    assert w.shape == (cout, cin // groups, kh, kw) and b.shape == (cout,)
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(b).max() <= bound * (1 + 1e-6)
    # uniform over the whole interval, not a narrower one
    assert np.abs(w).max() > 0.8 * bound
    assert abs(float(w.mean())) < 0.25 * bound
    assert (w > 0).any() and (w < 0).any()


def test_weight_init_seedable():
    a = engine.Conv2d(3, 8, 3, seed=5)
    b = engine.Conv2d(3, 8, 3, seed=5)
    c = engine.Conv2d(3, 8, 3, seed=6)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.array_equal(a.weight, c.weight)
    g1 = engine.Conv2d(3, 8, 3, seed=np.random.default_rng(9))
    g2 = engine.Conv2d(3, 8, 3, seed=np.random.default_rng(9))
    np.testing.assert_array_equal(g1.weight, g2.weight)


def test_manual_seed():
    engine.manual_seed(1234)
    a1, a2 = engine.Conv2d(3, 8, 3), engine.Conv2d(3, 8, 3)
    engine.manual_seed(1234)
    b1, b2 = engine.Conv2d(3, 8, 3), engine.Conv2d(3, 8, 3)
    np.testing.assert_array_equal(a1.weight, b1.weight)
    np.testing.assert_array_equal(a2.weight, b2.weight)
    assert not np.array_equal(a1.weight, a2.weight)     # the stream moves on
    engine.manual_seed(None)


def test_no_bias():
    layer = engine.Conv2d(3, 4, 3, bias=False, seed=0)
    assert layer.bias is None
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
    ref.assert_close(layer(x), ref.conv2d(x, layer.weight), 1e-4)


# ------------------------------------------------- parameters and caching
@pytest.mark.parametrize("algorithm", [None] + ALGORITHMS)
def test_assigning_weight_invalidates_cache(algorithm, rng):
    # 16 channels and 16x16: the heuristic path (algorithm=None) may pick Winograd too
    layer = engine.Conv2d(16, 16, 3, padding=1, seed=3, algorithm=algorithm)
    x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    tol = algos.DEFAULT_TOLERANCE["float32"] if algorithm is None else algos.TOLERANCE[(algorithm, "float32")]
    first = layer(x)
    ref.assert_close(first, ref.conv2d(x, layer.weight, layer.bias, padding=1), tol)
    new_w = rng.standard_normal(layer.weight.shape).astype(np.float32) / 12
    layer.weight = new_w
    second = layer(x)
    ref.assert_close(second, ref.conv2d(x, new_w, layer.bias, padding=1), tol)
    assert not np.allclose(first, second)
    new_b = np.arange(16, dtype=np.float32)
    layer.bias = new_b
    ref.assert_close(layer(x), ref.conv2d(x, new_w, new_b, padding=1), tol)
    layer.bias = None
    ref.assert_close(layer(x), ref.conv2d(x, new_w, None, padding=1), tol)


def test_weight_is_read_only_and_a_private_copy(rng):
    layer = engine.Conv2d(3, 4, 3, seed=0)
    with pytest.raises(ValueError):
        layer.weight[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        layer.bias[0] = 1.0
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    src = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    layer.weight = src
    before = layer(x)
    src[...] = 0.0                       # the caller's array changes, the layer's does not
    np.testing.assert_array_equal(layer(x), before)
    assert not np.shares_memory(layer.weight, src)
    assert not layer.weight.flags.writeable


def test_weight_assignment_casts_to_layer_dtype(rng):
    layer = engine.Conv2d(2, 3, 3, seed=0, dtype=np.float64)
    layer.weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    assert layer.weight.dtype == np.float64


# -------------------------------------------------------------------- explain
@pytest.mark.parametrize("name", ALGORITHMS)
def test_explain_forced_layer(name):
    layer = engine.Conv2d(8, 8, 3, padding=1, seed=0, algorithm=name)
    info = engine.explain(layer, (2, 8, 12, 12))
    assert info["source"] == "forced"
    assert info["algorithm"] == name
    assert name in info["applicable"]
    assert set(info["applicable"]) <= set(ALGORITHMS)


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 32, 28, 28), dict(in_channels=32, out_channels=32, kernel_size=3, padding=1)),
    ((1, 8, 9, 9), dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, padding=1)),
    ((8, 5, 5), dict(in_channels=8, out_channels=4, kernel_size=1)),
    ((2, 4, 10, 10), dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2)),
])
def test_explain_heuristic_layer_and_dict(shape, kwargs):
    layer = engine.Conv2d(**kwargs, seed=0)
    info = engine.explain(layer, shape)
    assert info["source"] == "heuristic"
    assert info["algorithm"] in info["applicable"]
    assert info["reason"]
    info_d = engine.explain(dict(kwargs), shape)
    assert info_d["source"] == "heuristic"
    assert info_d["algorithm"] == info["algorithm"]
    assert info_d["algorithm"] in info_d["applicable"]
    assert ("direct" in info["applicable"]) and ("im2col" in info["applicable"])
    k = kwargs["kernel_size"]
    stride = kwargs.get("stride", 1)
    wino_ok = k == 3 and stride == 1
    assert all((n in info["applicable"]) == wino_ok for n in WINOGRAD)


def test_explain_forced_dict():
    name = ALGORITHMS[-1]
    info = engine.explain(dict(in_channels=4, out_channels=4, kernel_size=3, algorithm=name), (1, 4, 8, 8))
    assert info["source"] == "forced" and info["algorithm"] == name and name in info["applicable"]


def test_explain_forced_where_impossible_raises():
    if not WINOGRAD:
        pytest.skip("Winograd not built")
    with pytest.raises(ValueError, match=WINOGRAD[0]):
        engine.explain(dict(in_channels=4, out_channels=4, kernel_size=5, algorithm=WINOGRAD[0]), (1, 4, 8, 8))


# --------------------------------------------------------------- concurrency
@pytest.mark.parametrize("algorithm", [None, "direct", "im2col"] + WINOGRAD[1:2])
def test_layer_called_from_4_threads(algorithm, rng):
    layer = engine.Conv2d(16, 16, 3, padding=1, seed=4, algorithm=algorithm)
    xs = [rng.standard_normal((n, 16, s, s)).astype(np.float32)
          for n, s in [(1, 14), (2, 16), (1, 14), (3, 9), (1, 20), (2, 16), (1, 14), (2, 11)]]
    # concurrent first: the per-shape caches are filled under contention
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        concurrent_out = list(pool.map(layer, xs * 2))
    serial = [layer(x) for x in xs * 2]
    for c, s, x in zip(concurrent_out, serial, xs * 2):
        chosen = layer.explain(x.shape)["algorithm"]
        tol = algos.TOLERANCE[(chosen, "float32")]
        if algos.REGISTRY[chosen].needs_blas(layer.op_params(x.shape)):
            # A BLAS need not round bitwise alike from one thread to another (see
            # engine/kernels/im2col.pyx, "Calling thread"): within tolerance.
            ref.assert_close(c, s, tol)
        else:
            np.testing.assert_array_equal(c, s)
        ref.assert_close(c, ref.conv2d(x, layer.weight, layer.bias, padding=1), tol)


def test_pool_layers_from_4_threads(rng):
    mp = engine.MaxPool2d(3, 2, 1, return_indices=True)
    av = engine.AvgPool2d(3, 2, 1, count_include_pad=False)
    xs = [rng.standard_normal((2, 8, s, s)).astype(np.float32) for s in (9, 12, 16, 9, 12, 16)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        mres = list(pool.map(mp, xs))
        ares = list(pool.map(av, xs))
    for x, (v, i), a in zip(xs, mres, ares):
        ev, ei = mp(x)
        np.testing.assert_array_equal(v, ev)
        np.testing.assert_array_equal(i, ei)
        np.testing.assert_array_equal(a, av(x))


# ----------------------------------------------------------------- build info
def test_build_info_keys():
    info = engine.build_info()
    for key in ("openmp", "cflags", "isa", "blas"):
        assert key in info
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["isa"], (list, tuple))
    assert isinstance(info["blas"], list)


def test_python_m_engine_exits_0():
    proc = subprocess.run([sys.executable, "-m", "engine"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "convtune" in proc.stdout.lower()


def test_thread_count_api():
    engine.set_num_threads(1)
    assert engine.get_num_threads() == 1
    engine.set_num_threads(3)
    assert engine.get_num_threads() == 3


# The heuristic's documented rules (engine.dispatch.heuristic, README "Algorithms"),
# written out as the table a reader of the docs would expect.
@pytest.mark.parametrize("shape, kwargs, expected", [
    ((1, 32, 112, 112), dict(in_channels=32, out_channels=32, kernel_size=3, padding=1, groups=32), "direct"),
    ((1, 32, 56, 56), dict(in_channels=32, out_channels=64, kernel_size=3, padding=1, groups=32), "direct"),
    ((1, 64, 56, 56), dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), "winograd_f4x3"),
    # large planes with few channels: F(6x6)
    ((1, 64, 224, 224), dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), "winograd_f6x3"),
    ((2, 128, 112, 112), dict(in_channels=128, out_channels=128, kernel_size=3, padding=1), "winograd_f6x3"),
    ((1, 64, 111, 112), dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), "winograd_f4x3"),
    ((1, 128, 112, 112), dict(in_channels=128, out_channels=256, kernel_size=3, padding=1), "winograd_f4x3"),
    ((1, 256, 14, 14), dict(in_channels=256, out_channels=256, kernel_size=3, padding=1), "winograd_f4x3"),
    ((1, 512, 7, 7), dict(in_channels=512, out_channels=512, kernel_size=3, padding=1), "winograd_f2x3"),
    ((8, 512, 7, 7), dict(in_channels=512, out_channels=512, kernel_size=3, padding=1), "winograd_f4x3"),
    ((1, 512, 5, 5), dict(in_channels=512, out_channels=512, kernel_size=3, padding=1), "igemm"),
    # few channels: their harmonic mean below 16 -> igemm (8->8, 8->64, the seed CNN's 10->16)
    ((1, 8, 56, 56), dict(in_channels=8, out_channels=8, kernel_size=3, padding=1), "igemm"),
    ((1, 8, 56, 56), dict(in_channels=8, out_channels=64, kernel_size=3, padding=1), "igemm"),
    ((1, 16, 56, 56), dict(in_channels=16, out_channels=16, kernel_size=3, padding=1), "winograd_f4x3"),
    ((8, 10, 31, 31), dict(in_channels=10, out_channels=16, kernel_size=3, padding=1), "igemm"),
    ((1, 16, 56, 56), dict(in_channels=16, out_channels=32, kernel_size=3, padding=1), "winograd_f4x3"),
    ((1, 20, 28, 28), dict(in_channels=20, out_channels=20, kernel_size=3, padding=1), "winograd_f4x3"),
    ((1, 4, 56, 56), dict(in_channels=4, out_channels=8, kernel_size=3, padding=1), "igemm"),
    ((1, 16, 56, 56), dict(in_channels=16, out_channels=4, kernel_size=3, padding=1), "im2col"),
    ((1, 64, 56, 56), dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, stride=2), "igemm"),
    # dilated 3x3 stride 1, pads multiples of the dilation: Winograd's rule on the
    # N*dh*dw polyphase sub-images (sub-outputs ceil(OH/dh) x ceil(OW/dw))
    ((1, 64, 56, 56), dict(in_channels=64, out_channels=64, kernel_size=3, padding=2, dilation=2), "winograd_f4x3"),
    ((1, 256, 28, 28), dict(in_channels=256, out_channels=256, kernel_size=3, padding=2, dilation=2), "winograd_f4x3"),
    ((1, 128, 56, 56), dict(in_channels=128, out_channels=128, kernel_size=3, padding=4, dilation=4), "winograd_f4x3"),
    ((1, 32, 30, 31), dict(in_channels=32, out_channels=32, kernel_size=3, padding=(2, 4), dilation=(1, 2)), "winograd_f4x3"),
    ((1, 256, 12, 12), dict(in_channels=256, out_channels=256, kernel_size=3, padding=2, dilation=2), "winograd_f2x3"),
    ((1, 64, 20, 20), dict(in_channels=64, out_channels=64, kernel_size=3, padding=4, dilation=4), "igemm"),
    ((1, 64, 56, 56), dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, dilation=2), "igemm"),
    ((1, 64, 56, 56), dict(in_channels=64, out_channels=64, kernel_size=3, padding=2, dilation=2, stride=2), "igemm"),
    ((1, 64, 28, 28), dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, groups=32), "direct"),
    ((1, 256, 28, 28), dict(in_channels=256, out_channels=256, kernel_size=3, padding=1, groups=32), "igemm"),
    ((1, 256, 56, 56), dict(in_channels=256, out_channels=64, kernel_size=1), "igemm"),
    ((1, 3, 224, 224), dict(in_channels=3, out_channels=64, kernel_size=7, stride=2, padding=3), "igemm"),
    ((1, 64, 28, 28), dict(in_channels=64, out_channels=128, kernel_size=3, stride=2, padding=1, groups=4), "igemm"),
    ((1, 8, 28, 28), dict(in_channels=8, out_channels=4, kernel_size=1), "im2col"),
    ((8, 2048, 7, 7), dict(in_channels=2048, out_channels=512, kernel_size=1), "igemm"),
    ((2, 2048, 7, 7), dict(in_channels=2048, out_channels=512, kernel_size=1), "igemm"),
    ((1, 2048, 7, 7), dict(in_channels=2048, out_channels=512, kernel_size=1), "im2col"),
    ((1, 256, 56, 56), dict(in_channels=256, out_channels=512, kernel_size=1, stride=2), "igemm"),
])
@pytest.mark.parametrize("isa", [p for p in ISAS if p.values[0] != "baseline"])
def test_heuristic_follows_its_documented_rules(shape, kwargs, expected, isa, use_isa):
    """The same table on every ISA with vector micro-kernels (WINOGRAD_RULE), except
    that 1x1 layers with fewer than 64 output pixels in the batch (the table's) stay on
    im2col on both, and on AVX2 those with fewer than 128 too (IGEMM_RULE: OpenBLAS
    is ahead of the tile there)."""
    use_isa(isa)
    k, s = kwargs["kernel_size"], kwargs.get("stride", 1)
    out_pixels = shape[0] * (-(-shape[2] // s)) * (-(-shape[3] // s))       # 1x1, no padding
    if expected == "igemm" and isa == "avx2" and k == 1 and out_pixels < 128:
        expected = "im2col"     # (98 pixels at batch 2: igemm on AVX-512, im2col here)
    info = engine.explain(kwargs, shape)
    assert (info["algorithm"], info["source"]) == (expected, "heuristic"), info["reason"]


def test_heuristic_needs_winograds_vector_kernels(use_isa):
    """With only the baseline micro-kernels, float32 Winograd has no fast GEMM, so the
    heuristic leaves 3x3 layers to im2col (BLAS); float64 Winograd runs on BLAS anyway."""
    kwargs = dict(in_channels=64, out_channels=64, kernel_size=3, padding=1)
    use_isa("baseline")
    info = engine.explain(kwargs, (1, 64, 56, 56))
    assert info["algorithm"] == "im2col", info["reason"]
    assert engine.explain(dict(kwargs, dtype="float64"), (1, 64, 56, 56))["algorithm"] == "winograd_f4x3"


def test_heuristic_keeps_dilated_layers_off_winograd_where_unmeasured(use_isa):
    """The polyphase split goes to Winograd by default for float32 on the vector ISAs
    only: float64 dilated layers (not measured enough) and baseline's float32 stay on im2col."""
    kwargs = dict(in_channels=64, out_channels=64, kernel_size=3, padding=2, dilation=2)
    assert engine.explain(dict(kwargs, dtype="float64"), (1, 64, 56, 56))["algorithm"] == "im2col"
    if engine.isa.cpu() != "baseline":
        use_isa(None)      # the CPU's best vector kernels, also under CONVTUNE_ISA=baseline
        assert engine.explain(kwargs, (1, 64, 56, 56))["reason"].startswith("dilated 3x3")
    use_isa("baseline")
    assert engine.explain(kwargs, (1, 64, 56, 56))["algorithm"] == "im2col"


def test_heuristic_keeps_blas_where_igemm_has_no_vector_tile(use_isa):
    """A 1x1 layer goes to igemm only for float32 with vector tiles: on baseline (scalar
    tile) and for float64 (no micro-kernels) it stays on im2col's BLAS; one of fewer
    than 128 output pixels on AVX2, 64 on AVX-512, does too (IGEMM_RULE), strided or not."""
    kwargs = dict(in_channels=256, out_channels=64, kernel_size=1)
    use_isa("baseline")
    assert engine.explain(kwargs, (1, 256, 56, 56))["algorithm"] == "im2col"
    if "avx2" in engine.isa.available():
        use_isa("avx2")
        assert engine.explain(kwargs, (1, 256, 56, 56))["algorithm"] == "igemm"
        assert engine.explain(dict(kwargs, stride=2), (1, 256, 56, 56))["algorithm"] == "igemm"
        assert engine.explain(dict(kwargs, stride=2), (1, 256, 22, 22))["algorithm"] == "im2col"  # 121
        assert engine.explain(kwargs, (1, 256, 11, 11))["algorithm"] == "im2col"     # 121 pixels
        assert engine.explain(kwargs, (1, 256, 12, 12))["algorithm"] == "igemm"      # 144
    if "avx512" in engine.isa.available():
        use_isa("avx512")
        assert engine.explain(kwargs, (1, 256, 7, 7))["algorithm"] == "im2col"       # 49 pixels
        assert engine.explain(kwargs, (1, 256, 8, 8))["algorithm"] == "igemm"        # 64
        assert engine.explain(kwargs, (2, 256, 7, 7))["algorithm"] == "igemm"        # 98
    use_isa(None)
    assert engine.explain(dict(kwargs, dtype="float64"), (1, 256, 56, 56))["algorithm"] == "im2col"


@pytest.mark.parametrize("isa", ISAS)
def test_explain_names_the_kernels_that_run(isa, use_isa):
    use_isa(isa)
    info = engine.explain(dict(in_channels=16, out_channels=16, kernel_size=3, padding=1,
                               algorithm="winograd_f4x3"), (1, 16, 20, 20))
    uk = engine.isa.kernels(isa)
    # AVX-512 runs AVX2's tile transforms where auto_transforms says rows (AMD's)
    from engine.kernels.winograd import auto_transforms
    rows = isa == "avx512" and auto_transforms(engine.isa.level()) == "rows"
    tk = engine.isa.kernels("avx2") if rows else uk
    assert info["kernels"] == {"kernel": "conv2d_winograd", "isa": isa, "gemm": uk["sgemm"],
                               "transforms": f"winograd_f4x3_{{input,output}}__{tk['sgemm'].split('__')[1]}"}
    info = engine.explain(dict(in_channels=16, out_channels=16, kernel_size=1, algorithm="im2col"),
                          (1, 16, 20, 20))
    assert info["kernels"]["gemm"] == "BLAS sgemm"
