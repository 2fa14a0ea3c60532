"""engine.from_onnx: every supported op against onnx's own ReferenceEvaluator (an
independent implementation of the ONNX semantics) on one-node models built with
onnx.helper, the edge cases of each attribute, and the errors for what is not supported
or damaged. No torch needed."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests need the onnx package (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import engine  # noqa: E402

RNG = np.random.default_rng(1234)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def model(nodes, inputs, outputs, inits=None, opset=17):
    """A ModelProto: ``inputs`` {name: array (float graph inputs)}, ``outputs`` a list
    of names (shapes left free), ``inits`` {name: array}."""
    def info(name, a):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                             list(a.shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    g = helper.make_graph(nodes, "test", [info(n, a) for n, a in inputs.items()], outs,
                          [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 17 else 10
    # onnx.checker wants each output's type and shape: take them from the reference.
    try:
        results = ReferenceEvaluator(m).run(None, inputs)
    except Exception:       # a model the reference cannot run either (error tests)
        results = [np.zeros((), np.float32)] * len(outputs)
    for o, r in zip(m.graph.output, results):
        o.CopyFrom(helper.make_tensor_value_info(o.name, helper.np_dtype_to_tensor_dtype(r.dtype),
                                                 list(r.shape)))
    return m


def ort_run(m, inputs):
    ort = pytest.importorskip("onnxruntime", reason="this case is checked against ONNX Runtime")
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def check(m, inputs, rtol=1e-5, against="reference"):
    """from_onnx(m) computes what ReferenceEvaluator does (or, where that deviates from
    the ONNX specification, ONNX Runtime), within rtol of max|ref|."""
    ref = ReferenceEvaluator(m).run(None, inputs) if against == "reference" else ort_run(m, inputs)
    g = engine.from_onnx(m)
    out = g(*inputs.values())
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == r.shape, (o.shape, r.shape)
        assert o.dtype == r.dtype
        scale = max(float(np.abs(r).max()), 1.0) if r.size else 1.0
        np.testing.assert_allclose(o, r, rtol=0, atol=rtol * scale)
    return g


def one(op, x, inits=None, opset=17, extra_inputs=(), n_out=1, **attrs):
    """A one-node model ``op(x, *extra_inputs)`` where the extra inputs are initializers."""
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, ["x", *extra_inputs], outs, **attrs)
    return model([node], {"x": x}, outs, inits, opset)


# --------------------------------------------------------------------- Conv
CONV_CASES = {
    "plain": dict(w=(4, 3, 3, 3), x=(2, 3, 9, 9), attrs=dict(pads=[1, 1, 1, 1])),
    "no_bias": dict(w=(4, 3, 3, 3), x=(1, 3, 7, 8), attrs={}, bias=False),
    "asymmetric_pads": dict(w=(4, 3, 3, 3), x=(1, 3, 8, 8), attrs=dict(pads=[0, 2, 1, 0])),
    "stride_2_1": dict(w=(5, 3, 3, 2), x=(2, 3, 9, 10), attrs=dict(strides=[2, 1], pads=[1, 0, 1, 1])),
    "dilation": dict(w=(4, 3, 3, 3), x=(1, 3, 11, 11), attrs=dict(dilations=[2, 3], pads=[2, 3, 2, 3])),
    "group": dict(w=(6, 2, 3, 3), x=(1, 4, 8, 8), attrs=dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": dict(w=(8, 1, 3, 3), x=(2, 8, 8, 8), attrs=dict(group=8, strides=[2, 2], pads=[1, 1, 1, 1])),
    "depth_multiplier": dict(w=(8, 1, 5, 5), x=(1, 4, 9, 9), attrs=dict(group=4, pads=[2, 2, 2, 2])),
    "pointwise": dict(w=(7, 5, 1, 1), x=(2, 5, 6, 6), attrs=dict(kernel_shape=[1, 1])),
    "same_upper_s2_odd": dict(w=(4, 3, 3, 3), x=(1, 3, 9, 9), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_upper_s2_even": dict(w=(4, 3, 4, 4), x=(1, 3, 8, 8), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower_s2": dict(w=(4, 3, 4, 3), x=(1, 3, 8, 9), attrs=dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "same_lower_s1_even": dict(w=(4, 3, 2, 2), x=(1, 3, 7, 7), attrs=dict(auto_pad="SAME_LOWER")),
    "valid": dict(w=(4, 3, 3, 3), x=(1, 3, 7, 7), attrs=dict(auto_pad="VALID", strides=[2, 2])),
    # inputs smaller than the kernel, which only the (asymmetric / SAME) padding lets fit
    "same_upper_input_below_kernel": dict(w=(4, 3, 3, 3), x=(1, 3, 2, 2), attrs=dict(auto_pad="SAME_UPPER")),
    "asymmetric_pads_input_below_kernel": dict(w=(4, 3, 3, 3), x=(1, 3, 1, 2), attrs=dict(pads=[2, 1, 0, 1])),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv(case):
    c = CONV_CASES[case]
    w = randn(*c["w"])
    inits = {"W": w}
    ins = ["W"]
    if c.get("bias", True):
        inits["B"] = randn(c["w"][0])
        ins.append("B")
    x = randn(*c["x"])
    check(one("Conv", x, inits, extra_inputs=ins, **c["attrs"]), {"x": x})


def test_conv_float64():
    x, w = randn(1, 3, 6, 6, dtype=np.float64), randn(2, 3, 3, 3, dtype=np.float64)
    check(one("Conv", x, {"W": w}, extra_inputs=["W"], pads=[1, 1, 1, 1]), {"x": x}, rtol=1e-12)


def test_conv_auto_pad_follows_the_input_size():
    """SAME_UPPER with stride 2 pads differently for odd and even sizes: the graph
    resolves it per input shape (a dynamic spatial size)."""
    w = randn(4, 3, 3, 3)
    node = helper.make_node("Conv", ["x", "W"], ["y0"], auto_pad="SAME_UPPER", strides=[2, 2])
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1, 4, "oh", "ow"])
    m = helper.make_model(helper.make_graph([node], "t", [x_info], [y], [numpy_helper.from_array(w, "W")]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    g = engine.from_onnx(m)
    for hw in (8, 9):
        x = randn(1, 3, hw, hw)
        ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
        np.testing.assert_allclose(g(x), ref, atol=1e-5)


# ------------------------------------------------------------------ pooling
POOL_CASES = {
    "k3s2p1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "k2s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "default_stride_1": dict(kernel_shape=[3, 2]),
    "ceil_mode": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "ceil_mode_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "asymmetric_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "pads_over_half": dict(kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 1, 1]),
    "same_upper": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
    "valid": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"),
}


@pytest.mark.parametrize("case", POOL_CASES, ids=list(POOL_CASES))
def test_max_pool(case):
    x = randn(2, 3, 9, 10)
    # onnx 1.23's reference MaxPool gives SAME_LOWER ceil(9/2) - 1 rows, not the
    # specified ceil(9/2) (its AveragePool and ONNX Runtime give 5): checked against ORT.
    against = "ort" if case == "same_lower" else "reference"
    check(one("MaxPool", x, **POOL_CASES[case]), {"x": x}, against=against)


def test_max_pool_dilation():
    x = randn(1, 2, 11, 11)
    check(one("MaxPool", x, kernel_shape=[3, 3], strides=[1, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
          {"x": x})


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", POOL_CASES, ids=list(POOL_CASES))
def test_average_pool(case, count_include_pad):
    x = randn(2, 3, 9, 10)
    check(one("AveragePool", x, count_include_pad=count_include_pad, **POOL_CASES[case]), {"x": x})


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op):
    x = randn(2, 5, 7, 6)
    check(one(op, x), {"x": x})


# ------------------------------------------------------------- normalisation
def test_batch_normalization():
    x = randn(2, 4, 5, 5)
    inits = {"s": randn(4), "b": randn(4), "m": randn(4), "v": RNG.uniform(0.5, 2, 4).astype(np.float32)}
    check(one("BatchNormalization", x, inits, extra_inputs=list(inits), epsilon=1e-3), {"x": x})


def test_batch_normalization_2d_input():
    x = randn(3, 4)
    inits = {"s": randn(4), "b": randn(4), "m": randn(4), "v": RNG.uniform(0.5, 2, 4).astype(np.float32)}
    check(one("BatchNormalization", x, inits, extra_inputs=list(inits)), {"x": x})


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_layer_normalization(axis):
    x = randn(2, 3, 4, 5)
    shape = x.shape[axis:]
    inits = {"s": randn(*shape), "b": randn(*shape)}
    check(one("LayerNormalization", x, inits, extra_inputs=["s", "b"], axis=axis, epsilon=1e-4), {"x": x})


# ---------------------------------------------------------------- activations
UNARY = {
    "Relu": ({}, 17), "LeakyRelu": ({"alpha": 0.1}, 17), "Sigmoid": ({}, 17),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, 17), "HardSigmoid_default": ({}, 17),
    "HardSwish": ({}, 17), "Erf": ({}, 17), "Tanh": ({}, 17),
    "Gelu": ({}, 20), "Gelu_tanh": ({"approximate": "tanh"}, 20),
    "Identity": ({}, 17),
}


@pytest.mark.parametrize("name", UNARY, ids=list(UNARY))
def test_unary(name):
    attrs, opset = UNARY[name]
    x = randn(2, 3, 4, 5) * 4
    check(one(name.split("_")[0], x, opset=opset, **attrs), {"x": x})


@pytest.mark.parametrize("bounds", [(-1.0, 2.0), (None, 0.5), (0.0, None), (None, None), (0.0, 6.0)])
def test_clip_inputs(bounds):
    x = randn(2, 3, 4, 4) * 4
    inits, names = {}, []
    for name, v in zip(("lo", "hi"), bounds):
        if v is not None:
            inits[name] = np.array(v, np.float32)
        names.append(name if v is not None else "")
    while names and not names[-1]:
        names.pop()
    check(one("Clip", x, inits, extra_inputs=names), {"x": x})


def test_clip_attributes_opset_10():
    x = randn(2, 3, 4, 4) * 4
    check(one("Clip", x, opset=10, min=-0.5, max=1.5), {"x": x})


# ---------------------------------------------------------- broadcasting math
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 1, 1), (1,), (5,), (2, 1, 4, 1)])
def test_binary_broadcasting(op, shape):
    x = np.abs(randn(2, 3, 4, 5)) + 0.5 if op == "Pow" else randn(2, 3, 4, 5)
    b = randn(*shape) + (3.0 if op == "Div" else 0.0)
    check(one(op, x, {"b": b}, extra_inputs=["b"]), {"x": x})


def test_binary_two_graph_inputs():
    a, b = randn(2, 3, 4, 4), randn(2, 1, 4, 1)
    m = model([helper.make_node("Mul", ["a", "b"], ["y0"])], {"a": a, "b": b}, ["y0"])
    check(m, {"a": a, "b": b})


# --------------------------------------------------------------- shape ops
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat(axis):
    x = randn(2, 3, 4, 5)
    other = list(x.shape)
    other[axis] = 2
    check(one("Concat", x, {"c": randn(*other)}, extra_inputs=["c"], axis=axis), {"x": x})


@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1])
def test_flatten(axis):
    x = randn(2, 3, 4, 5)
    check(one("Flatten", x, axis=axis), {"x": x})


@pytest.mark.parametrize("shape", [[0, -1], [2, 0, -1], [-1, 5], [0, 0, 20], [6, -1, 5]])
def test_reshape(shape):
    x = randn(2, 3, 4, 5)
    check(one("Reshape", x, {"s": np.array(shape, np.int64)}, extra_inputs=["s"]), {"x": x})


def test_reshape_allowzero():
    x = randn(2, 0, 3)
    m = one("Reshape", x, {"s": np.array([0, 2, 3], np.int64)}, extra_inputs=["s"], opset=14, allowzero=1)
    check(m, {"x": x})


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [1, 0, 3, 2]])
def test_transpose(perm):
    x = randn(2, 3, 4, 5)
    attrs = {} if perm is None else {"perm": perm}
    check(one("Transpose", x, **attrs), {"x": x})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[1], [1, -1], None])
def test_squeeze(opset, axes):
    x = randn(2, 1, 4, 1)
    if axes is None:
        m = one("Squeeze", x, opset=opset)
    elif opset < 13:
        m = one("Squeeze", x, opset=opset, axes=axes)
    else:
        m = one("Squeeze", x, {"a": np.array(axes, np.int64)}, opset=opset, extra_inputs=["a"])
    check(m, {"x": x})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [1, -1], [0, 4]])
def test_unsqueeze(opset, axes):
    x = randn(2, 3, 4)
    if opset < 13:
        m = one("Unsqueeze", x, opset=opset, axes=axes)
    else:
        m = one("Unsqueeze", x, {"a": np.array(axes, np.int64)}, opset=opset, extra_inputs=["a"])
    check(m, {"x": x})


def test_slice():
    x = randn(2, 6, 5, 5)
    inits = {"st": np.array([1, -4], np.int64), "en": np.array([2**63 - 1, -1], np.int64),
             "ax": np.array([1, 3], np.int64), "sp": np.array([2, 1], np.int64)}
    check(one("Slice", x, inits, extra_inputs=list(inits)), {"x": x})


@pytest.mark.parametrize("opset,how", [(11, "attr"), (13, "input"), (13, "equal"), (18, "num_outputs")])
def test_split(opset, how):
    x = randn(2, 6, 3, 3)
    if how == "attr":
        m = one("Split", x, opset=opset, n_out=2, axis=1, split=[2, 4])
    elif how == "input":
        m = one("Split", x, {"s": np.array([1, 5], np.int64)}, opset=opset, n_out=2,
                extra_inputs=["s"], axis=1)
    elif how == "equal":
        m = one("Split", x, opset=opset, n_out=3, axis=1)
    else:
        m = one("Split", x, opset=opset, n_out=3, axis=1, num_outputs=3)
    check(m, {"x": x})


def test_gather_runtime():
    x = randn(2, 5, 3)
    check(one("Gather", x, {"i": np.array([4, 0, -1], np.int64)}, extra_inputs=["i"], axis=1), {"x": x})


def test_cast():
    x = randn(2, 3) * 10
    m = model([helper.make_node("Cast", ["x"], ["c"], to=TensorProto.INT64),
               helper.make_node("Cast", ["c"], ["y0"], to=TensorProto.FLOAT)], {"x": x}, ["y0"])
    check(m, {"x": x})


def test_shape_gather_concat_reshape_chain_is_folded():
    """The chain exporters put before Reshape (x.view(x.size(0), -1)) folds into a
    constant once the input shape is known: only the Conv and the Reshape run."""
    x = randn(2, 3, 6, 6)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["nu"]),
             helper.make_node("Concat", ["nu", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["c", "shape"], ["y0"])]
    inits = {"W": randn(4, 3, 3, 3), "zero": np.array(0, np.int64), "ax": np.array([0], np.int64),
             "m1": np.array([-1], np.int64)}
    g = check(model(nodes, {"x": x}, ["y0"], inits), {"x": x})
    assert [s.node.op for s in g.plan([x.shape]).steps] == ["Conv", "Reshape"]


def test_shape_start_end():
    x = randn(2, 3, 4, 5)
    m = model([helper.make_node("Shape", ["x"], ["s"], start=1, end=-1),
               helper.make_node("Cast", ["s"], ["y0"], to=TensorProto.FLOAT)], {"x": x}, ["y0"], opset=15)
    check(m, {"x": x})


def test_constant_node():
    x = randn(2, 3)
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(randn(3), "cv"))
    f = helper.make_node("Constant", [], ["f"], value_float=2.5)
    m = model([c, f, helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "f"], ["y0"])],
              {"x": x}, ["y0"])
    check(m, {"x": x})


# ------------------------------------------------------------- dense layers
GEMM_CASES = {
    "linear": dict(a=(3, 4), b=(5, 4), c=(5,), attrs=dict(transB=1)),
    "no_c": dict(a=(3, 4), b=(4, 5), c=None, attrs={}),
    "alpha_beta": dict(a=(3, 4), b=(4, 5), c=(5,), attrs=dict(alpha=0.5, beta=2.0)),
    "transA": dict(a=(4, 3), b=(4, 5), c=(3, 5), attrs=dict(transA=1)),
    "transA_transB": dict(a=(4, 3), b=(5, 4), c=(1, 5), attrs=dict(transA=1, transB=1)),
    "c_scalar": dict(a=(3, 4), b=(4, 5), c=(1,), attrs=dict(beta=0.5)),
    "c_column": dict(a=(3, 4), b=(5, 4), c=(3, 1), attrs=dict(transB=1)),
}


@pytest.mark.parametrize("case", GEMM_CASES, ids=list(GEMM_CASES))
def test_gemm(case):
    c = GEMM_CASES[case]
    x = randn(*c["a"])
    inits = {"B": randn(*c["b"])}
    names = ["B"]
    if c["c"] is not None:
        inits["C"] = randn(*c["c"])
        names.append("C")
    g = check(one("Gemm", x, inits, extra_inputs=names, **c["attrs"]), {"x": x})
    if case == "linear":       # x @ W.T + b runs as an engine Linear layer
        assert isinstance(g.get_submodule(g.nodes[0].layer), engine.Linear)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 2)), ((4,), (4, 3))])
def test_matmul(shapes):
    x = randn(*shapes[0])
    check(one("MatMul", x, {"b": randn(*shapes[1])}, extra_inputs=["b"]), {"x": x})


@pytest.mark.parametrize("opset,axis", [(11, None), (11, 2), (13, None), (13, 1), (13, -2)])
def test_softmax(opset, axis):
    x = randn(2, 3, 4, 5) * 3
    attrs = {} if axis is None else {"axis": axis}
    # Before opset 13 Softmax normalises over the input flattened to 2-D at ``axis``;
    # onnx 1.23's reference applies opset 13's per-axis rule there, ORT the specified one.
    check(one("Softmax", x, opset=opset, **attrs), {"x": x},
          against="ort" if opset < 13 else "reference")


def test_softmax_opset_11_by_formula():
    """The opset-11 rule written out in numpy: exp over x.reshape(2, -1) per row."""
    x = randn(2, 3, 4) * 3
    y = engine.from_onnx(one("Softmax", x, opset=11))(x)
    flat = np.exp(x.reshape(2, -1).astype(np.float64))
    np.testing.assert_allclose(y, (flat / flat.sum(1, keepdims=True)).reshape(x.shape), atol=1e-6)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([2, 3], 0), ([-1], 1), (None, 0), ([1], 0)])
def test_reduce_mean(opset, axes, keepdims):
    x = randn(2, 3, 4, 5)
    if axes is None:
        m = one("ReduceMean", x, opset=opset, keepdims=keepdims)
    elif opset < 18:
        m = one("ReduceMean", x, opset=opset, axes=axes, keepdims=keepdims)
    else:
        m = one("ReduceMean", x, {"a": np.array(axes, np.int64)}, opset=opset,
                extra_inputs=["a"], keepdims=keepdims)
    check(m, {"x": x})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[0, 0, 1, 2, 0, 0, 2, 1], [0, 1, 0, 0, 0, 0, 0, 1], [0, 0, -1, 1, 0, 0, 1, -1]])
def test_pad(mode, pads):
    # Negative pads crop: the reference's np.pad cannot, ORT can.
    against = "ort" if min(pads) < 0 else "reference"
    x = randn(2, 3, 5, 5)
    inits = {"p": np.array(pads, np.int64)}
    names = ["p"]
    if mode == "constant":
        inits["v"] = np.array(1.5, np.float32)
        names.append("v")
    check(one("Pad", x, inits, extra_inputs=names, mode=mode), {"x": x}, against=against)


def test_pad_attributes_opset_10():
    x = randn(1, 2, 4, 4)
    check(one("Pad", x, opset=10, pads=[0, 0, 1, 1, 0, 0, 2, 0], value=-1.0), {"x": x})


@pytest.mark.parametrize("opset", [11, 13])
def test_dropout_is_identity(opset):
    x = randn(2, 3, 4)
    attrs = {"ratio": 0.3} if opset < 12 else {}
    check(one("Dropout", x, opset=opset, **attrs), {"x": x})


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_small_cnn_across_opsets(opset):
    """Conv -> BN -> Relu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm, in each
    opset: the same numbers as the reference."""
    x = randn(2, 3, 12, 12)
    inits = {"W": randn(8, 3, 3, 3), "s": randn(8), "b": randn(8), "m": randn(8),
             "v": RNG.uniform(0.5, 2, 8).astype(np.float32), "F": randn(10, 8), "FB": randn(10)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["p"], ["gp"]),
             helper.make_node("Flatten", ["gp"], ["f"]),
             helper.make_node("Gemm", ["f", "F", "FB"], ["y0"], transB=1)]
    # onnx 1.23's reference BatchNormalization-9 (opsets 9-13) computes something else
    # (errors of 6 on unit-scale data); ONNX Runtime follows the specification there.
    check(model(nodes, {"x": x}, ["y0"], inits, opset=opset), {"x": x},
          against="ort" if opset < 14 else "reference")


def test_batch_normalization_by_formula():
    x = randn(2, 4, 3, 3)
    s, b, mu = randn(4), randn(4), randn(4)
    v = RNG.uniform(0.5, 2, 4).astype(np.float32)
    m = one("BatchNormalization", x, {"s": s, "b": b, "m": mu, "v": v}, opset=11,
            extra_inputs=list("sbmv"), epsilon=1e-3)
    want = (x - mu[:, None, None]) / np.sqrt(v[:, None, None] + 1e-3) * s[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(engine.from_onnx(m)(x), want, atol=1e-5)


# ------------------------------------------------------------------ loading
def test_path_bytes_and_model_proto_agree(tmp_path):
    x = randn(1, 3, 5, 5)
    m = one("Conv", x, {"W": randn(2, 3, 3, 3)}, extra_inputs=["W"])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    for src in (m, str(path), path, m.SerializeToString()):
        np.testing.assert_allclose(engine.from_onnx(src)(x), ref, atol=1e-5)


def test_dynamic_batch_and_input_shape():
    w = randn(4, 3, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Flatten", ["c"], ["y0"])]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 5])
    y = helper.make_tensor_value_info("y0", TensorProto.FLOAT, ["batch", 36])
    m = helper.make_model(helper.make_graph(nodes, "t", [x_info], [y], [numpy_helper.from_array(w, "W")]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    g = engine.from_onnx(m)
    for n in (1, 3):
        x = randn(n, 3, 5, 5)
        np.testing.assert_allclose(g(x), ReferenceEvaluator(m).run(None, {"x": x})[0], atol=1e-5)
    fixed = engine.from_onnx(m, input_shape=(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"must have shape \(2, 3, 5, 5\)"):
        fixed(randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        engine.from_onnx(m, input_shape=(2, 4, 5, 5))


def test_layers_named_after_their_weights_and_state_dict():
    x = randn(1, 3, 5, 5)
    w = randn(2, 3, 3, 3)
    m = one("Conv", x, {"features.0.weight": w, "features.0.bias": randn(2)},
            extra_inputs=["features.0.weight", "features.0.bias"])
    g = engine.from_onnx(m)
    sd = g.state_dict()
    assert list(sd) == ["features.0.weight", "features.0.bias"]
    np.testing.assert_array_equal(sd["features.0.weight"], w)
    new = {k: v * 2 for k, v in sd.items()}
    g.load_state_dict(new)
    np.testing.assert_allclose(g(x), 2 * ReferenceEvaluator(m).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- errors
def test_unsupported_op_names_node_and_supported_ops():
    x = randn(1, 3, 4, 4)
    m = model([helper.make_node("Resize", ["x", "", "sc"], ["y0"], name="up1")], {"x": x}, ["y0"],
              {"sc": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(ValueError, match=r"node 'up1' \(Resize\): unsupported op type; supported: .*Conv"):
        engine.from_onnx(m)


def test_unsupported_attributes():
    x = randn(1, 3, 4, 4)
    bad = one("LeakyRelu", x, alpha=0.1)
    bad.graph.node[0].attribute.append(helper.make_attribute("gamma", 1.0))
    with pytest.raises(ValueError, match="gamma"):       # onnx.checker knows this one
        engine.from_onnx(bad)
    m = one("AveragePool", x, kernel_shape=[2, 2], dilations=[2, 2], opset=19)
    m.graph.node[0].name = "ap"
    with pytest.raises(ValueError, match=r"node 'ap' \(AveragePool\): dilations=\[2, 2\]"):
        engine.from_onnx(m)
    m = one("Gelu", x, opset=20, approximate="erf")
    with pytest.raises(ValueError, match=r"\(Gelu\): approximate='erf' \(supported: none, tanh\)"):
        engine.from_onnx(m)


def test_conv_3d_is_rejected():
    x = randn(1, 2, 4, 4, 4)
    m = one("Conv", x, {"W": randn(2, 2, 3, 3, 3)}, extra_inputs=["W"])
    with pytest.raises(ValueError, match="only 2-D convolutions"):
        engine.from_onnx(m)


def test_conv_weight_must_be_constant():
    x, w = randn(1, 3, 4, 4), randn(2, 3, 3, 3)
    m = model([helper.make_node("Conv", ["x", "w"], ["y0"], name="c")], {"x": x, "w": w}, ["y0"])
    with pytest.raises(ValueError, match=r"node 'c' \(Conv\): its weight \('w'\) must be a constant"):
        engine.from_onnx(m)


def test_max_pool_indices_output_is_rejected():
    x = randn(1, 3, 4, 4)
    m = one("MaxPool", x, n_out=2, kernel_shape=[2, 2])
    with pytest.raises(ValueError, match="not Indices"):
        engine.from_onnx(m)


def test_batch_norm_training_mode_is_rejected():
    x = randn(1, 2, 3, 3)
    inits = {k: np.ones(2, np.float32) for k in "sbmv"}
    m = one("BatchNormalization", x, inits, extra_inputs=list("sbmv"), opset=15, training_mode=1)
    with pytest.raises(ValueError, match="training_mode"):
        engine.from_onnx(m)


@pytest.mark.parametrize("opset", [9, 22])
def test_opset_outside_the_supported_range(opset):
    x = randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"opset %d .* supported: 10 to 21" % opset):
        engine.from_onnx(one("Relu", x, opset=opset))


def test_custom_domain_is_rejected():
    x = randn(1, 3)
    m = model([helper.make_node("Relu", ["x"], ["y0"], domain="com.example", name="r")], {"x": x}, ["y0"])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ValueError, match="domain 'com.example' is not supported"):
        engine.from_onnx(m)


def test_damaged_files(tmp_path):
    x = randn(1, 3, 5, 5)
    data = one("Conv", x, {"W": randn(2, 3, 3, 3)}, extra_inputs=["W"]).SerializeToString()
    for name, blob in (("garbage", b"\x00\xff not onnx at all \x13" * 7), ("truncated", data[:len(data) // 2]),
                       ("empty", b"")):
        p = tmp_path / f"{name}.onnx"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match="from_onnx"):
            engine.from_onnx(str(p))
    with pytest.raises(FileNotFoundError):
        engine.from_onnx(str(tmp_path / "missing.onnx"))
    with pytest.raises(TypeError, match="expects a path, bytes or an onnx.ModelProto"):
        engine.from_onnx(12)


def test_checker_rejects_an_undefined_input():
    x = randn(1, 3)
    m = model([helper.make_node("Add", ["x", "nowhere"], ["y0"])], {"x": x}, ["y0"])
    with pytest.raises(ValueError, match="onnx.checker"):
        engine.from_onnx(m)


def test_wrong_input_dtype_and_shape():
    x = randn(1, 3, 5, 5)
    g = engine.from_onnx(one("Relu", x))
    with pytest.raises(TypeError, match="must be float32, got float64"):
        g(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"must have shape \(1, 3, 5, 5\)"):
        g(randn(1, 3, 5, 4))
    with pytest.raises(TypeError, match="expected 1 input"):
        g(x, x)


def test_reshape_that_cannot_fit_names_the_node():
    x = randn(2, 3, 4)
    m = one("Reshape", x, {"s": np.array([5, -1], np.int64)}, extra_inputs=["s"])
    m.graph.node[0].name = "rs"
    g = engine.from_onnx(m)
    with pytest.raises(ValueError, match=r"node 'rs' \(Reshape\).*cannot reshape"):
        g(x)


# ------------------------------------------------------------------- the CLI
def cli(*args):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "CONVTUNE_PLAN": "none"}
    return subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def cnn_file(tmp_path, batch="n"):
    """A small CNN (conv 3x3/2 + BN + relu, depthwise 3x3, max pool, global pool,
    Gemm) saved as an ONNX file with a free batch dimension."""
    x = randn(1, 3, 16, 16)
    inits = {"W": randn(8, 3, 3, 3), "s": randn(8), "b": randn(8), "m": randn(8),
             "v": RNG.uniform(0.5, 2, 8).astype(np.float32), "D": randn(8, 1, 3, 3),
             "F": randn(10, 8), "FB": randn(10)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "D"], ["d"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["gp"]),
             helper.make_node("Flatten", ["gp"], ["f"]),
             helper.make_node("Gemm", ["f", "F", "FB"], ["y0"], transB=1)]
    m = model(nodes, {"x": x}, ["y0"], inits)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = batch
    path = tmp_path / "cnn.onnx"
    onnx.save(m, str(path))
    return path


def test_cli_tune_onnx_tunes_the_models_shapes(tmp_path):
    import json
    plan = tmp_path / "plan.json"
    r = cli("tune", "--onnx", cnn_file(tmp_path), "--input", "2,3,16,16", "--level", "estimate",
            "--plan", plan, "--threads", 1, "--no-progress")
    assert r.returncode == 0, r.stderr
    keys = [e["key"] for e in json.loads(plan.read_text())["entries"]]
    convs = sorted((k["C"], k["out_channels"], k["groups"], k["H"], k["N"]) for k in keys if k["op"] == "conv2d")
    assert convs == [(3, 8, 1, 16, 2), (8, 8, 8, 8, 2)]
    assert any(k["op"] == "max_pool2d" and k["H"] == 8 for k in keys)


def test_cli_bench_onnx_against_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime", reason="bench --onnx compares with ONNX Runtime")
    r = cli("bench", "--onnx", cnn_file(tmp_path), "--input", "1,3,16,16", "--reps", 3, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime/convtune" in r.stdout
    diff = float(r.stdout.split("outputs differ by ")[1].split()[0])
    assert diff < 1e-5


@pytest.mark.parametrize("args,needle", [
    (["--input", "1,4,16,16"], "does not fit the model's input"),
    (["--input", "1,x"], "expected integers"),
])
def test_cli_onnx_input_errors(tmp_path, args, needle):
    r = cli("tune", "--onnx", cnn_file(tmp_path), *args, "--level", "estimate", "--plan", tmp_path / "p.json")
    assert r.returncode == 2
    assert needle in r.stderr


def test_cli_damaged_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    for cmd in ("tune", "bench"):
        r = cli(cmd, "--onnx", bad, "--plan", tmp_path / "p.json")
        assert r.returncode == 2
        assert "--onnx" in r.stderr and "Traceback" not in r.stderr


def test_weights_passed_through_identity_fold_at_import():
    """torch.onnx.export deduplicates equal initializers and hands the copies out through
    Identity nodes: the Conv still gets constant weights."""
    x = randn(1, 3, 5, 5)
    w = randn(2, 3, 3, 3)
    nodes = [helper.make_node("Identity", ["W"], ["w2"]),
             helper.make_node("Cast", ["w2"], ["w3"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w3"], ["y0"])]
    g = check(model(nodes, {"x": x}, ["y0"], {"W": w}), {"x": x})
    assert [n.op for n in g.nodes] == ["Conv"]
