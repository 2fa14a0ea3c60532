"""Parity with torch.nn.functional (when torch imports): conv2d (F.pad for the padding
modes), max_pool2d with indices, avg_pool2d, on the named cases and random ones."""
import numpy as np
import pytest
from hypothesis import assume, given, settings

import engine
import engine.functional as F
from engine import registry as algos
from engine import shapes

import reference as ref
from cases import AVG_CASES, CONV_CASES, MAX_CASES, conv_inputs, pool_input
from conftest import DTYPES, ISAS
from strategies import conv_arrays, conv_configs, pool_array, pool_configs

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.usefixtures("plans_off"),
              pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")]
TF = torch.nn.functional

ALGORITHMS = engine.algorithms()
# torch's own rounding against the exact result, added to ours
TORCH_TOL = {"float32": 1e-5, "float64": 1e-12}
TORCH_PAD_MODE = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def torch_conv2d(x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch's conv2d; other padding modes as nn.Conv2d does them: F.pad, then conv."""
    xt, wt = t(x), t(w)
    bt = None if b is None else t(b)
    if padding_mode != "zeros":
        kh, kw = w.shape[2:]
        top, bottom, left, right = ref.conv_pads(padding, (kh, kw), ref.pair(dilation))
        xt = TF.pad(xt, (left, right, top, bottom), mode=TORCH_PAD_MODE[padding_mode])
        padding = 0
    with torch.no_grad():
        return TF.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation, groups=groups).numpy()


def check_conv_parity(x, w, b, kwargs, dtype, finite=True):
    expected = torch_conv2d(x, w, b, **kwargs)
    x4 = x.shape if x.ndim == 4 else (1, *x.shape)
    p = shapes.conv_params(x4, w.shape, kwargs["stride"], kwargs["padding"], kwargs["dilation"],
                           kwargs["groups"], kwargs["padding_mode"], dtype)
    for name in [None] + ALGORITHMS:
        if name is not None and algos.REGISTRY[name].why_not(p) is not None:
            continue
        if not finite and name is not None and name.startswith("winograd"):
            continue        # Winograd spreads NaN/inf over a tile (see test_conv)
        out = F.conv2d(x, w, b, **kwargs, algorithm=name)
        assert out.dtype == expected.dtype
        tol = (algos.DEFAULT_TOLERANCE[dtype] if name is None else algos.TOLERANCE[(name, dtype)])
        ref.assert_close(out, expected.astype(np.float64), tol + TORCH_TOL[dtype], what=f"{name} vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_conv2d_parity_cases(case, dtype):
    x, w, b = conv_inputs(case, dtype)
    check_conv_parity(x, w, b, case.kwargs, dtype, finite=case.finite)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_igemm_parity_on_every_isa(case, isa, use_isa):
    """The micro-kernel GEMM convolution against torch on each ISA the CPU has."""
    use_isa(isa)
    x, w, b = conv_inputs(case, "float32")
    expected = torch_conv2d(x, w, b, **case.kwargs)
    out = F.conv2d(x, w, b, **case.kwargs, algorithm="igemm")
    ref.assert_close(out, expected.astype(np.float64),
                     algos.TOLERANCE[("igemm", "float32")] + TORCH_TOL["float32"], what=f"igemm/{isa} vs torch")


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 0), "same"])
def test_conv2d_layer_parity_with_nn_conv2d(mode, padding):
    """engine.Conv2d against torch.nn.Conv2d holding the same weights."""
    rng = np.random.default_rng(1)
    layer = engine.Conv2d(4, 6, (3, 4), padding=padding, padding_mode=mode, groups=2, seed=3)
    tl = torch.nn.Conv2d(4, 6, (3, 4), padding=padding, padding_mode=mode, groups=2)
    with torch.no_grad():
        tl.weight.copy_(t(layer.weight.copy()))
        tl.bias.copy_(t(layer.bias.copy()))
        x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
        expected = tl(t(x)).numpy()
    ref.assert_close(layer(x), expected.astype(np.float64), 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: c.id)
def test_max_pool2d_parity_cases(case, dtype):
    x = pool_input(case, dtype)
    k = case.kwargs
    ev, ei = TF.max_pool2d(t(x), k["kernel_size"], k["stride"], k["padding"], k["dilation"],
                           ceil_mode=k["ceil_mode"], return_indices=True)
    v, i = F.max_pool2d(x, **k, return_indices=True)
    np.testing.assert_array_equal(v, ev.numpy())
    np.testing.assert_array_equal(i, ei.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.id)
def test_avg_pool2d_parity_cases(case, dtype):
    x = pool_input(case, dtype)
    k = case.kwargs
    expected = TF.avg_pool2d(t(x), k["kernel_size"], k["stride"], k["padding"], ceil_mode=k["ceil_mode"],
                             count_include_pad=k["count_include_pad"],
                             divisor_override=k["divisor_override"]).numpy()
    out = F.avg_pool2d(x, **k)
    ref.assert_close(out, expected.astype(np.float64), algos.tolerance("pool", dtype))


@settings(max_examples=80)
@given(cfg=conv_configs())
def test_conv2d_parity_random(cfg):
    x, w, b = conv_arrays(cfg)
    assume(not (x.shape[0] == 0 and x.ndim == 4))   # N=0: test_conv covers it
    check_conv_parity(x, w, b, cfg["kwargs"], cfg["dtype"])


@settings(max_examples=80)
@given(cfg=pool_configs("max"))
def test_max_pool2d_parity_random(cfg):
    x = pool_array(cfg)
    assume(x.size)                       # empty batches: test_pool covers them
    k = cfg["kwargs"]
    v, i = F.max_pool2d(x, **k, return_indices=True)
    ev, ei = TF.max_pool2d(t(x), k["kernel_size"], k["stride"], k["padding"], k["dilation"],
                           ceil_mode=k["ceil_mode"], return_indices=True)
    np.testing.assert_array_equal(v, ev.numpy())
    np.testing.assert_array_equal(i, ei.numpy())


@settings(max_examples=80)
@given(cfg=pool_configs("avg"))
def test_avg_pool2d_parity_random(cfg):
    x = pool_array(cfg)
    assume(x.size)
    k = cfg["kwargs"]
    out = F.avg_pool2d(x, **k)
    expected = TF.avg_pool2d(t(x), k["kernel_size"], k["stride"], k["padding"], ceil_mode=k["ceil_mode"],
                             count_include_pad=k["count_include_pad"],
                             divisor_override=k["divisor_override"]).numpy()
    ref.assert_close(out, expected.astype(np.float64), algos.tolerance("pool", cfg["dtype"]))


def test_reference_agrees_with_torch_on_the_table():
    """The reference itself is right: it matches torch on every named case."""
    for case in CONV_CASES:
        x, w, b = conv_inputs(case, "float64")
        ref.assert_close(ref.conv2d(x, w, b, **case.kwargs),
                         torch_conv2d(x, w, b, **case.kwargs), 1e-12, what=case.id)
    for case in MAX_CASES:
        x = pool_input(case, "float64")
        k = case.kwargs
        ev, ei = TF.max_pool2d(t(x), k["kernel_size"], k["stride"], k["padding"], k["dilation"],
                               ceil_mode=k["ceil_mode"], return_indices=True)
        rv, ri = ref.max_pool2d(x, **k)
        np.testing.assert_array_equal(rv, ev.numpy(), err_msg=case.id)
        np.testing.assert_array_equal(ri, ei.numpy(), err_msg=case.id)
    for case in AVG_CASES:
        x = pool_input(case, "float64")
        k = case.kwargs
        expected = TF.avg_pool2d(t(x), k["kernel_size"], k["stride"], k["padding"], ceil_mode=k["ceil_mode"],
                                 count_include_pad=k["count_include_pad"],
                                 divisor_override=k["divisor_override"]).numpy()
        ref.assert_close(ref.avg_pool2d(x, **k), expected, 1e-13, what=case.id)
