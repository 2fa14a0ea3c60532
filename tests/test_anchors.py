"""benchmarks/anchors.py's ncnn anchor: the ``ncnn`` module, or with CONVTUNE_NCNN_LIB
the library it names through the C API (ctypes); skipped where neither is there."""
import importlib.util
import os

import numpy as np
import pytest

from engine import shapes
from tuner.configs import Shape

import reference as ref
from conftest import ROOT


def _anchors():
    spec = importlib.util.spec_from_file_location("anchors", os.path.join(ROOT, "benchmarks", "anchors.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = [  # (input, weight, stride, padding, groups); batch 2: the runner loops over images
    ((2, 5, 13, 11), (7, 5, 3, 3), 1, 1, 1),     # plane sizes not a multiple of 4 (cstep > h*w)
    ((2, 16, 9, 9), (16, 1, 3, 3), 2, 1, 16),    # depthwise
    ((2, 3, 7, 7), (8, 3, 1, 1), 1, 0, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_ncnn_anchor_matches_the_reference(rng, tmp_path, case):
    anchors = _anchors()
    xs, ws, stride, padding, groups = case
    x = rng.uniform(-1, 1, xs).astype(np.float32)
    w = rng.uniform(-1, 1, ws).astype(np.float32)
    b = rng.uniform(-1, 1, ws[0]).astype(np.float32)
    p = shapes.conv_params(xs, ws, stride, padding, 1, groups, "zeros", "float32")
    run, note = anchors.ncnn_runner(Shape(p), x, w, b, 1, str(tmp_path))
    if run is None:
        pytest.skip(note)
    want = ref.conv2d(x, w, b, stride, padding, 1, groups)
    for _ in range(2):                  # the input Mats are reused from call to call
        ref.assert_close(np.asarray(run()), want, 1e-4, what=anchors.ncnn_description())


def test_ncnn_anchor_pooling(rng, tmp_path):
    anchors = _anchors()
    x = rng.uniform(-1, 1, (2, 4, 11, 9)).astype(np.float32)
    p = shapes.pool_params("max_pool2d", x.shape, 3, 2, 1, 1, False, "float32")
    run, note = anchors.ncnn_runner(Shape(p), x, None, None, 1, str(tmp_path))
    if run is None:
        pytest.skip(note)
    ref.assert_close(np.asarray(run()), ref.max_pool2d(x, 3, 2, 1)[0], 1e-6, what=anchors.ncnn_description())


def test_a_library_that_does_not_load_is_a_note(monkeypatch, tmp_path, rng):
    anchors = _anchors()
    monkeypatch.setenv(anchors.NCNN_LIB_ENV, str(tmp_path / "missing-libncnn.so"))
    x = rng.uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)
    p = shapes.conv_params(x.shape, w.shape, 1, 1, 1, 1, "zeros", "float32")
    fns, notes = anchors.runners(Shape(p), x, w, None, 1, str(tmp_path))
    assert "ncnn" not in fns and anchors.NCNN_LIB_ENV in notes["ncnn"]
    assert "does not load" in anchors.ncnn_description()
