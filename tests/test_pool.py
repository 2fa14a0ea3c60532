"""max_pool2d and avg_pool2d against the float64 reference on the named cases."""
import numpy as np
import pytest

import engine
import engine.functional as F
from engine import registry

import reference as ref
from cases import AVG_CASES, MAX_CASES, pool_input
from conftest import DTYPES

pytestmark = pytest.mark.usefixtures("plans_off")

# avg pool sums a window (at most a few dozen taps) in the input's dtype


def run_max(case, x, **extra):
    return F.max_pool2d(x, **case.kwargs, **extra)


def assert_max_equal(values, indices, expected_values, expected_indices):
    """Max pooling is exact: the values are input elements, the indices are positions."""
    assert values.shape == expected_values.shape
    np.testing.assert_array_equal(values.astype(np.float64), expected_values)   # NaN == NaN here
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_indices)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: c.id)
def test_max_pool_values_and_indices(case, dtype):
    x = pool_input(case, dtype)
    exp_v, exp_i = ref.max_pool2d(x, **case.kwargs)
    values, indices = F.max_pool2d(x, **case.kwargs, return_indices=True)
    assert values.dtype == np.dtype(dtype)
    assert_max_equal(values, indices, exp_v, exp_i)
    plain = F.max_pool2d(x, **case.kwargs)          # without indices: same values
    np.testing.assert_array_equal(plain, values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.id)
def test_avg_pool(case, dtype):
    x = pool_input(case, dtype)
    out = F.avg_pool2d(x, **case.kwargs)
    assert out.dtype == np.dtype(dtype)
    ref.assert_close(out, ref.avg_pool2d(x, **case.kwargs), registry.tolerance("pool", dtype), what=case.id)


@pytest.mark.parametrize("case", MAX_CASES + AVG_CASES, ids=lambda c: c.id)
def test_pool_same_with_1_and_2_threads(case):
    """Pooling has no reduction across threads: results are bit-identical."""
    x = pool_input(case, "float32")
    fn = F.max_pool2d if case.op == "max" else F.avg_pool2d
    extra = {"return_indices": True} if case.op == "max" else {}
    engine.set_num_threads(1)
    one = fn(x, **case.kwargs, **extra)
    engine.set_num_threads(2)
    two = fn(x, **case.kwargs, **extra)
    if case.op == "max":
        np.testing.assert_array_equal(one[0], two[0])
        np.testing.assert_array_equal(one[1], two[1])
    else:
        np.testing.assert_array_equal(one, two)


# ---------------------------------------------------------------- specific rules
def test_ceil_mode_adds_partial_last_window():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    assert F.max_pool2d(x, 2, 2).shape == (1, 1, 2, 2)
    out = F.max_pool2d(x, 2, 2, ceil_mode=True)
    assert out.shape == (1, 1, 3, 3)
    # the last window covers only row/column 4
    np.testing.assert_array_equal(out[0, 0, 2], [21, 23, 24])
    avg = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    # partial window: pool_size clipped to the input (no padding) -> divides by 2, then 1
    np.testing.assert_allclose(avg[0, 0, 2], [(20 + 21) / 2, (22 + 23) / 2, 24.0])


def test_ceil_mode_drops_window_starting_in_right_padding():
    # H=5, k=3, s=3, p=1: ceil would give 3 windows, the third starts at 5 = H (in the
    # right padding) and is dropped.
    x = np.zeros((1, 1, 5, 5))
    assert F.max_pool2d(x, 3, 3, 1, ceil_mode=True).shape == (1, 1, 2, 2)
    assert F.avg_pool2d(x, 3, 3, 1, ceil_mode=True).shape == (1, 1, 2, 2)
    assert ref.pool_out_size(5, 3, 3, 1, 1, True) == 2


def test_max_pool_first_max_wins_and_last_nan_wins():
    x = np.array([[[[1.0, 3.0, 3.0],
                    [3.0, np.nan, 2.0],
                    [np.nan, 0.0, 3.0]]]])
    v, i = F.max_pool2d(x, 3, return_indices=True)
    assert np.isnan(v[0, 0, 0, 0]) and i[0, 0, 0, 0] == 6          # last NaN (row 2, col 0)
    v, i = F.max_pool2d(x[..., :2, :], (2, 3), return_indices=True)
    assert np.isnan(v[0, 0, 0, 0]) and i[0, 0, 0, 0] == 4
    v, i = F.max_pool2d(x[..., :1, :], (1, 3), return_indices=True)
    assert v[0, 0, 0, 0] == 3.0 and i[0, 0, 0, 0] == 1               # first of the tied 3s


def test_max_pool_padding_is_minus_infinity():
    x = np.full((1, 1, 3, 3), -5.0)
    v, i = F.max_pool2d(x, 3, 1, 1, return_indices=True)
    assert (v == -5.0).all()          # padding never wins against -5
    v, i = F.max_pool2d(np.full((1, 1, 3, 3), -np.inf), 3, 1, 1, return_indices=True)
    assert np.isneginf(v).all()
    # an all -inf window points at its first in-input tap
    np.testing.assert_array_equal(i[0, 0], [[0, 0, 1], [0, 0, 1], [3, 3, 4]])


def test_max_pool_indices_are_per_plane():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5))
    v, i = F.max_pool2d(x, 2, return_indices=True)
    assert i.min() >= 0 and i.max() < 4 * 5
    planes = x.reshape(2, 3, 20)
    np.testing.assert_array_equal(np.take_along_axis(planes, i.reshape(2, 3, -1), 2).reshape(v.shape), v)


def test_avg_count_include_pad_and_divisor():
    x = np.ones((1, 1, 3, 3))
    incl = F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)
    excl = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    np.testing.assert_allclose(incl[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9], [4 / 9, 6 / 9, 4 / 9]])
    np.testing.assert_allclose(excl, np.ones_like(excl))
    div = F.avg_pool2d(x, 3, 1, 1, divisor_override=2)
    np.testing.assert_allclose(div[0, 0], [[2, 3, 2], [3, 4.5, 3], [2, 3, 2]])


def test_stride_none_means_kernel():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 9))
    np.testing.assert_array_equal(F.max_pool2d(x, (2, 3)), F.max_pool2d(x, (2, 3), (2, 3)))
    np.testing.assert_array_equal(F.avg_pool2d(x, (2, 3)), F.avg_pool2d(x, (2, 3), (2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_empty_batch(dtype):
    x = np.zeros((0, 3, 7, 7), dtype=dtype)
    v, i = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert v.shape == i.shape == (0, 3, 4, 4) and v.dtype == np.dtype(dtype) and i.dtype == np.int64
    a = F.avg_pool2d(x, 2, 2)
    assert a.shape == (0, 3, 3, 3) and a.dtype == np.dtype(dtype)


@pytest.mark.parametrize("stride", [(1, 2 ** 22), (2 ** 22, 3), (5, 97)])
def test_max_pool_stride_far_beyond_the_row(stride):
    """A stride much longer than the row (one output column) is correct and takes the
    fallback path rather than a padded scratch row sized by the stride."""
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 40)).astype(np.float32)
    out, idx = F.max_pool2d(x, (2, 3), stride=stride, padding=1, ceil_mode=True,
                            return_indices=True)
    exp, exp_idx = ref.max_pool2d(x, (2, 3), stride=stride, padding=1, ceil_mode=True)
    np.testing.assert_array_equal(out, exp)
    np.testing.assert_array_equal(idx, exp_idx)
