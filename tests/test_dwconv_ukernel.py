"""The depthwise line micro-kernel (dwconv_line__<isa>, ukernels/dwconv_generic.c) on
every ISA this CPU has, tested like test_ukernels.py's GEMM tiles: a table of kernel
shapes (3x3 stride 1 and 2 fast paths, the general path for 5x5, 3x1, 1x3, 1x1, 7x7
and other strides), dilations 1-3, n at and around the vector widths, relu on and off,
with and without bias, against a plain float64 sum over the taps; outputs pre-filled
with NaN, and the elements past n must stay NaN. Then NaN inputs and relu's -0.0, and
the whole depthwise convolution (conv2d_depthwise) of the case table under each ISA
cap against tests/reference.py. ISAs this CPU lacks are skipped with the reason."""
import numpy as np
import pytest

import engine
import engine.functional as F
from engine import isa
from engine import registry as algos
from engine.kernels import _ukernels

import reference as ref
from cases import CONV_CASES, conv_inputs
from conftest import ISAS

SUFFIX = {"baseline": "scalar", "avx2": "avx2_fma", "avx512": "avx512f"}

# n at and around the vector widths: 4 (SSE), 8 (AVX2), 16 (AVX-512), their multiples
NS = [1, 7, 8, 9, 15, 16, 17, 33, 100]
# (kh, kw, stride): the 3x3 fast paths (stride 1, 2 and any), the general path
KERNELS = [(3, 3, 1), (3, 3, 2), (3, 3, 3), (5, 5, 1), (5, 5, 2), (3, 1, 1), (1, 3, 1),
           (1, 3, 2), (1, 1, 1), (7, 7, 1), (2, 3, 2)]
DILATIONS = [(1, 1), (2, 2), (3, 3), (1, 3), (2, 1)]


def line_src(n, kh, kw, sw, dh, dw, rng, pw_extra=3):
    """A block with row stride PW whose every tap of outputs 0 .. n-1 is inside, and
    (PW, src): PW wider than one row of outputs, as conv2d_depthwise's padded rows."""
    PW = (n - 1) * sw + (kw - 1) * dw + 1 + pw_extra
    size = (n - 1) * sw + (kh - 1) * dh * PW + (kw - 1) * dw + 1
    return PW, rng.standard_normal(size + 5).astype(np.float32)


def plain_line(src, w, n, sw, PW, dh, dw, b, relu):
    """dst[i] = b + sum_{r, c} w[r][c] * src[i*sw + r*dh*PW + c*dw] in float64, then
    v < 0 ? 0 : v when relu (the loop over taps written out, i vectorised)."""
    i = np.arange(n) * sw
    s = np.full(n, float(b))
    for r in range(w.shape[0]):
        for c in range(w.shape[1]):
            s = s + float(w[r, c]) * src[i + r * dh * PW + c * dw].astype(np.float64)
    if relu:
        s = np.where(s < 0, 0.0, s)
    return s


def run_line(name, src, w, n, sw, PW, dh, dw, b, relu, extra=7):
    """The kernel into a NaN-filled dst of n + extra floats; returns dst."""
    dst = np.full(n + extra, np.nan, np.float32)
    _ukernels.dwconv_line(isa.NAMES.index(name), dst, src, w, n, sw, PW, (dh, dw), b, relu)
    return dst


@pytest.mark.parametrize("name", ISAS)
def test_dwconv_line_is_named_by_isa(name):
    assert isa.kernels(name)["dwconv"] == f"dwconv_line__{SUFFIX[name]}"


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k[0]}x{k[1]}s{k[2]}")
@pytest.mark.parametrize("name", ISAS)
def test_dwconv_line_matches_plain_loop(name, kernel, relu):
    kh, kw, sw = kernel
    rng = np.random.default_rng(kh * 100 + kw * 10 + sw)
    for dh, dw in DILATIONS:
        for n in NS:
            for b in (0.0, 0.75):
                PW, src = line_src(n, kh, kw, sw, dh, dw, rng)
                w = rng.standard_normal((kh, kw)).astype(np.float32)
                dst = run_line(name, src, w, n, sw, PW, dh, dw, b, relu)
                expected = plain_line(src, w, n, sw, PW, dh, dw, b, relu)
                what = f"{kh}x{kw} s{sw} d{dh},{dw} n={n} b={b}"
                # float32 sum of kh*kw products of N(0,1) values
                tol = 1e-6 * np.sqrt(kh * kw) * (1 + np.abs(expected).max())
                err = np.abs(dst[:n].astype(np.float64) - expected).max()
                assert err <= tol, f"{what}: max error {err:g} > {tol:g}"
                assert np.isnan(dst[n:]).all(), f"{what}: wrote past n"
                if relu:
                    assert (dst[:n] >= 0).all(), what


@pytest.mark.parametrize("kernel", [(3, 3, 1), (3, 3, 2), (5, 5, 1)], ids=lambda k: f"{k[0]}x{k[1]}s{k[2]}")
@pytest.mark.parametrize("name", ISAS)
def test_dwconv_line_nan_input_propagates(name, kernel):
    """A NaN input makes every output whose window holds it NaN (relu too: NaN passes
    max(0, v) as torch's relu), and no other."""
    kh, kw, sw = kernel
    rng = np.random.default_rng(7)
    n = 33
    PW, src = line_src(n, kh, kw, sw, 1, 1, rng)
    src[[5, PW + 20, len(src) - 40]] = np.nan
    w = rng.standard_normal((kh, kw)).astype(np.float32)
    for relu in (False, True):
        dst = run_line(name, src, w, n, sw, PW, 1, 1, 0.5, relu)
        expected = plain_line(src, w, n, sw, PW, 1, 1, 0.5, relu)
        assert expected.dtype == np.float64 and np.isnan(expected).any()
        assert np.array_equal(np.isnan(dst[:n]), np.isnan(expected)), f"relu={relu}"
        fin = np.isfinite(expected)
        assert np.abs(dst[:n][fin] - expected[fin]).max() <= 1e-5 * (1 + np.abs(expected[fin]).max())


@pytest.mark.parametrize("kernel", [(3, 3, 1), (3, 3, 2), (5, 5, 1)], ids=lambda k: f"{k[0]}x{k[1]}s{k[2]}")
@pytest.mark.parametrize("name", ISAS)
def test_dwconv_line_relu_keeps_negative_zero(name, kernel):
    """relu is v < 0 ? 0 : v, as the Cython loop: -0.0 stays -0.0 (bias -0.0 plus
    products -0.0 = negative weights times +0.0 inputs)."""
    kh, kw, sw = kernel
    n = 17
    PW, src = line_src(n, kh, kw, sw, 1, 1, np.random.default_rng(0))
    src[:] = 0.0
    w = -np.ones((kh, kw), np.float32)
    for relu in (False, True):
        dst = run_line(name, src, w, n, sw, PW, 1, 1, -0.0, relu)
        assert (dst[:n] == 0).all() and np.signbit(dst[:n]).all(), f"relu={relu}"


@pytest.mark.parametrize("name", ISAS)
def test_dwconv_line_refuses_taps_outside_src(name):
    w = np.ones((3, 3), np.float32)
    src = np.zeros(50, np.float32)
    dst = np.zeros(20, np.float32)
    level = isa.NAMES.index(name)
    with pytest.raises(ValueError, match="past the end of src"):
        _ukernels.dwconv_line(level, dst, src, w, 20, 1, 16)   # last tap 19 + 32 + 2
    with pytest.raises(ValueError, match="n <= len"):
        _ukernels.dwconv_line(level, dst, src, w, 21, 1, 1)
    with pytest.raises(TypeError, match="float32"):
        _ukernels.dwconv_line(level, dst, src.astype(np.float64), w, 4, 1, 1)


DEPTHWISE_CASES = [c for c in CONV_CASES if c.groups > 1 and c.groups == c.x[-3]]


def test_the_case_table_has_depthwise_cases():
    assert len(DEPTHWISE_CASES) >= 8


@pytest.mark.usefixtures("plans_off")
@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: c.id)
def test_depthwise_conv_on_every_isa(case, name, use_isa):
    """Every depthwise case of the table through conv2d_depthwise with the line kernel
    of each ISA (engine.isa caps what runs), against the float64 reference."""
    use_isa(name)
    x, w, b = conv_inputs(case, "float32")
    out = F.conv2d(x, w, b, **case.kwargs, algorithm="direct")
    expected = ref.conv2d(x, w, b, **case.kwargs)
    ref.assert_close(out, expected, algos.TOLERANCE[("direct", "float32")],
                     what=f"direct/{name}")


@pytest.mark.usefixtures("plans_off")
@pytest.mark.parametrize("name", ISAS)
def test_explain_names_the_depthwise_line_kernel(name, use_isa):
    use_isa(name)
    layer = dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8)
    kernels = engine.explain(layer, (1, 8, 10, 10))["kernels"]
    assert kernels == {"kernel": "conv2d_depthwise", "isa": name,
                       "line": f"dwconv_line__{SUFFIX[name]}"}
    assert engine.build_info()["ukernels"]["dwconv"] == f"dwconv_line__{SUFFIX[name]}"
    k64 = engine.explain(dict(layer, dtype="float64"), (1, 8, 10, 10))["kernels"]
    assert k64 == {"kernel": "conv2d_depthwise"}
