"""Property tests over random parameters: conv2d (every applicable algorithm), max and
avg pooling against the float64 reference. Derandomized (see conftest's profile)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
import engine.functional as F
from engine import registry as algos
from engine import shapes

import reference as ref
from strategies import conv_arrays, conv_configs, pool_array, pool_configs

pytestmark = pytest.mark.usefixtures("plans_off")

ALGORITHMS = engine.algorithms()


@settings(max_examples=150)
@given(cfg=conv_configs(), algorithm=st.sampled_from([None] + ALGORITHMS))
def test_conv_random_matches_reference(cfg, algorithm):
    x, w, b = conv_arrays(cfg)
    dtype = cfg["dtype"]
    expected = ref.conv2d(x, w, b, **cfg["kwargs"])
    if algorithm is not None:
        x4 = x.shape if x.ndim == 4 else (1, *x.shape)
        k = cfg["kwargs"]
        p = shapes.conv_params(x4, w.shape, k["stride"], k["padding"], k["dilation"], k["groups"],
                               k["padding_mode"], dtype)
        if algos.REGISTRY[algorithm].why_not(p) is not None:
            with pytest.raises(ValueError, match=algorithm):
                F.conv2d(x, w, b, **k, algorithm=algorithm)
            return
        tol = algos.TOLERANCE[(algorithm, dtype)]
    else:
        tol = algos.DEFAULT_TOLERANCE[dtype]
    out = F.conv2d(x, w, b, **cfg["kwargs"], algorithm=algorithm)
    assert out.dtype == np.dtype(dtype)
    ref.assert_close(out, expected, tol, what=str(algorithm))


@settings(max_examples=60)
@given(cfg=conv_configs(max_hw=12), threads=st.integers(2, 4))
def test_conv_random_thread_invariance(cfg, threads):
    x, w, b = conv_arrays(cfg)
    engine.set_num_threads(1)
    one = F.conv2d(x, w, b, **cfg["kwargs"])
    engine.set_num_threads(threads)
    many = F.conv2d(x, w, b, **cfg["kwargs"])
    expected = ref.conv2d(x, w, b, **cfg["kwargs"])
    tol = algos.DEFAULT_TOLERANCE[cfg["dtype"]]
    ref.assert_close(one, expected, tol)
    ref.assert_close(many, expected, tol)
    ref.assert_close(many, one.astype(np.float64), tol)


@settings(max_examples=150)
@given(cfg=pool_configs("max"))
def test_max_pool_random_matches_reference(cfg):
    x = pool_array(cfg)
    ev, ei = ref.max_pool2d(x, **cfg["kwargs"])
    v, i = F.max_pool2d(x, **cfg["kwargs"], return_indices=True)
    assert v.dtype == np.dtype(cfg["dtype"]) and i.dtype == np.int64
    assert v.shape == ev.shape
    np.testing.assert_array_equal(v.astype(np.float64), ev)
    np.testing.assert_array_equal(i, ei)


@settings(max_examples=150)
@given(cfg=pool_configs("avg"))
def test_avg_pool_random_matches_reference(cfg):
    x = pool_array(cfg)
    out = F.avg_pool2d(x, **cfg["kwargs"])
    assert out.dtype == np.dtype(cfg["dtype"])
    tol = algos.tolerance("pool", cfg["dtype"])
    ref.assert_close(out, ref.avg_pool2d(x, **cfg["kwargs"]), tol)


@settings(max_examples=80)
@given(size=st.integers(1, 30), k=st.integers(1, 6), s=st.integers(1, 4), d=st.integers(1, 3),
       data=st.data(), ceil_mode=st.booleans())
def test_pool_output_size_rule(size, k, s, d, data, ceil_mode):
    """The engine's output size is the reference's wherever that is valid, and every
    window starts inside the input or the left padding."""
    p = data.draw(st.integers(0, k // 2), label="padding")     # PyTorch's legal range
    out = ref.pool_out_size(size, k, s, p, d, ceil_mode)
    x = np.zeros((1, 1, size, 1))
    if out < 1:
        with pytest.raises(ValueError):
            F.max_pool2d(x, (k, 1), (s, 1), (p, 0), (d, 1), ceil_mode)
        return
    assert F.max_pool2d(x, (k, 1), (s, 1), (p, 0), (d, 1), ceil_mode).shape == (1, 1, out, 1)
    assert (out - 1) * s - p < size           # the last window starts before the right padding
    if d == 1:
        assert F.avg_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode).shape == (1, 1, out, 1)
