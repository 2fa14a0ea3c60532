"""kernels.elementwise.add_relu and operator.add_relu_ (the residual block's end) against a
float64 reference written here: every size around the thread grain and chunk, every
thread count, the IEEE special values, and numpy's path for what the kernel does not
take (broadcasting, integers, strided and overlapping views)."""
import numpy as np
import pytest

from engine.kernels import elementwise
from engine.operator import add_relu_

RNG = np.random.default_rng(11)
GRAIN, CHUNK = 32768, 16384          # elementwise.pyx: elements per thread, per chunk
SIZES = [0, 1, 15, 17, GRAIN - 1, GRAIN, 2 * GRAIN + 5, 3 * CHUNK + 1]
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38]


def reference(a, b, relu):
    """Elementwise in float64, rounded once to the dtype (for float32 that is the one
    correctly rounded sum), then v < 0 -> 0 with NaN and -0 left as they are."""
    with np.errstate(over="ignore", invalid="ignore"):        # inf - inf is NaN, as wanted
        s = (a.astype(np.float64) + b.astype(np.float64)).astype(a.dtype)
    if relu:
        s = np.where(s < 0, np.zeros_like(s), s)
    return s


def operands(n, dtype):
    a = RNG.standard_normal(n).astype(dtype)
    b = RNG.standard_normal(n).astype(dtype)
    k = min(n, len(SPECIALS) ** 2)
    # every (special, special) pair once, where the vector is long enough
    pairs = np.array([(x, y) for x in SPECIALS for y in SPECIALS][:k], dtype=np.float64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        a[:k], b[:k] = pairs[:, 0].astype(dtype), pairs[:, 1].astype(dtype)
    return a, b


def same_bits(x, y):
    """Equal including the sign of zero and NaN in the same places."""
    return (np.array_equal(np.isnan(x), np.isnan(y))
            and np.array_equal(np.signbit(x[~np.isnan(x)]), np.signbit(y[~np.isnan(y)]))
            and np.array_equal(x[~np.isnan(x)], y[~np.isnan(y)]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("relu", [True, False])
def test_kernel_matches_the_reference(dtype, n, threads, relu):
    a, b = operands(n, dtype)
    out = a.copy()
    expected = reference(a, b, relu)
    elementwise.add_relu(out, b, relu, threads)
    assert same_bits(out, expected)


def test_kernel_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="out has 4 elements, other 3"):
        elementwise.add_relu(np.zeros(4, np.float32), np.zeros(3, np.float32), True, 1)


def test_add_relu_takes_the_kernel_path_in_place_for_nchw_arrays():
    a = RNG.standard_normal((2, 8, 33, 31)).astype(np.float32)
    b = RNG.standard_normal((2, 8, 33, 31)).astype(np.float32)
    out = a.copy()
    assert add_relu_(out, b) is out
    assert same_bits(out, reference(a, b, True))
    out = a.copy()
    add_relu_(out, out)                        # the same array on both sides: 2x, clamped
    assert same_bits(out, reference(a, a, True))


@pytest.mark.parametrize("case", ["broadcast", "int", "strided_out", "overlap", "mixed_dtype"])
def test_add_relu_falls_back_to_numpy_with_numpy_semantics(case):
    x = RNG.standard_normal((3, 4, 5, 6)).astype(np.float32)
    if case == "broadcast":
        out, other = x.copy(), RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)
    elif case == "int":
        out, other = (x * 10).astype(np.int64), (x[::-1] * 10).astype(np.int64)
    elif case == "strided_out":
        out, other = x.copy()[..., ::2], x[..., 1::2].copy()
    elif case == "overlap":
        buf = RNG.standard_normal(200).astype(np.float32)
        out, other = buf[1:101], buf[:100]         # one float apart: numpy buffers it
    else:
        out, other = x.copy(), x.astype(np.float64)
    expected = out.astype(np.float64) + other.astype(np.float64)
    expected = np.where(expected < 0, 0, expected).astype(out.dtype)
    result = add_relu_(out, other)
    assert result is out
    np.testing.assert_array_equal(out, expected)
