"""The tuner's accuracy gate judges every algorithm against its own float64 reference
(``tuner.search.reference_conv`` / ``reference_pool``: shipped code, which cannot import
the tests). It is pinned here to the test suite's independent reference on the named
edge cases, so a wrong gate cannot pass or reject candidates unnoticed."""
import numpy as np
import pytest

import engine.functional as F
from engine import shapes
from tuner import search

import reference as ref
from cases import AVG_CASES, CONV_CASES, MAX_CASES, conv_inputs, pool_input


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c.finite], ids=lambda c: c.id)
def test_tuner_conv_reference_matches_the_tests(case):
    x, w, b = conv_inputs(case, "float64")
    x4, w, b, p, _ = F.conv_setup(x, w, b, case.stride, case.padding, case.dilation, case.groups,
                                  case.padding_mode)
    expected = ref.conv2d(x4, w, b, **case.kwargs)
    np.testing.assert_allclose(search.reference_conv(x4, w, b, p), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in MAX_CASES + AVG_CASES
                                  if c.divisor_override is None and c.fill == "normal"],
                         ids=lambda c: c.id)
def test_tuner_pool_reference_matches_the_tests(case):
    x = pool_input(case, "float64")
    x4 = x if x.ndim == 4 else x[None]
    op = "max_pool2d" if case.op == "max" else "avg_pool2d"
    p = shapes.pool_params(op, x4.shape, case.kernel_size, case.stride, case.padding,
                           case.dilation if case.op == "max" else 1, case.ceil_mode, "float64")
    if case.op == "max":
        expected = ref.max_pool2d(x4, **case.kwargs)[0]
        got = search.reference_pool(x4, p)
    else:
        expected = ref.avg_pool2d(x4, **case.kwargs)
        got = search.reference_pool(x4, p, case.count_include_pad)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
