"""engine.nn.graph.Graph, built by hand: execution against numpy formulas, the per-shape
plans (shape folding, freeing after the last user, in-place writes that never clobber
a live value), fusion, state, and the errors for malformed graphs. No torch or onnx."""
import copy
import pickle
import warnings

import numpy as np
import pytest

import engine
from engine.nn.graph import Graph, GraphError, Node
from reference import conv2d as conv2d_ref
from tuner.model_shapes import collect_shapes

RNG = np.random.default_rng(7)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conv_layer(cin, cout, k=3, padding=1, bias=True):
    layer = engine.Conv2d(cin, cout, k, padding=padding, bias=bias, init=False)
    layer.weight = randn(cout, cin, k, k)
    if bias:
        layer.bias = randn(cout)
    return layer


def bn_layer(c):
    bn = engine.BatchNorm2d(c)
    bn.load_state_dict({"weight": RNG.uniform(0.5, 1.5, c), "bias": randn(c),
                        "running_mean": randn(c), "running_var": RNG.uniform(0.5, 2, c),
                        "num_batches_tracked": np.zeros((), np.int64)})
    return bn


def bn_ref(bn, x):
    s = bn.weight / np.sqrt(bn.running_var + bn.eps)
    return x * s[:, None, None] + (bn.bias - bn.running_mean * s)[:, None, None]


def conv_ref(layer, x):
    return conv2d_ref(x.astype(np.float64), layer.weight.astype(np.float64),
                      None if layer.bias is None else layer.bias.astype(np.float64),
                      padding=layer.padding)


def residual_graph():
    """x -> conv1 -> bn -> relu -> conv2 -> + x -> relu (a ResNet basic block)."""
    layers = {"block.conv1": conv_layer(4, 4), "block.bn1": bn_layer(4), "block.conv2": conv_layer(4, 4)}
    nodes = [Node("c1", "Conv", ["x"], ["a"], layer="block.conv1"),
             Node("bn", "BatchNormalization", ["a"], ["b"], layer="block.bn1"),
             Node("r1", "Relu", ["b"], ["c"]),
             Node("c2", "Conv", ["c"], ["d"], layer="block.conv2"),
             Node("add", "Add", ["d", "x"], ["e"]),
             Node("r2", "Relu", ["e"], ["y"])]
    return Graph([("x", (None, 4, None, None), np.float32)], ["y"], nodes, layers=layers), layers


def residual_ref(layers, x):
    a = conv_ref(layers["block.conv1"], x)
    c = np.maximum(bn_ref(layers["block.bn1"], a), 0)
    return np.maximum(conv_ref(layers["block.conv2"], c) + x, 0)


def test_runs_a_residual_block_and_names_its_layers():
    g, layers = residual_graph()
    x = randn(2, 4, 6, 6)
    np.testing.assert_allclose(g(x), residual_ref(layers, x), atol=1e-4)
    assert list(g.state_dict())[:2] == ["block.conv1.weight", "block.conv1.bias"]
    assert g.get_submodule("block.bn1") is layers["block.bn1"]


def test_frees_each_intermediate_after_its_last_user():
    g, _ = residual_graph()
    steps = g.plan([(1, 4, 5, 5)]).steps
    frees = {s.node.name: s.frees for s in steps}
    # "x" is a graph input (the caller's), "y" the output: neither is freed.
    assert frees == {"c1": [], "bn": ["a"], "r1": ["b"], "c2": ["c"], "add": ["d"], "r2": ["e"]}


def test_in_place_writes_only_into_dying_values():
    g, _ = residual_graph()
    steps = {s.node.name: s for s in g.plan([(1, 4, 5, 5)]).steps}
    assert steps["r1"].donate == 0          # b dies at r1: relu writes into it
    assert steps["add"].donate == 0         # d (the conv's output) takes the residual sum
    x = randn(1, 4, 5, 5)
    before = x.copy()
    g(x)
    np.testing.assert_array_equal(x, before)     # the graph input is never written


def test_a_live_view_blocks_in_place_writes():
    """a = x + 1; v = a reshaped (a view); b = relu(a) must not write into a while v is
    still to be read; y = b + v reshaped back."""
    shape = (2, 3, 4)
    nodes = [Node("inc", "Add", ["x", "one"], ["a"]),
             Node("view", "Reshape", ["a", "flat"], ["v"]),
             Node("relu", "Relu", ["a"], ["b"]),
             Node("back", "Reshape", ["v", "orig"], ["w"]),
             Node("sum", "Add", ["b", "w"], ["y"])]
    consts = {"one": np.float32(1), "flat": np.array([-1], np.int64), "orig": np.array(shape, np.int64)}
    g = Graph([("x", shape, np.float32)], ["y"], nodes, consts)
    x = randn(*shape)
    np.testing.assert_allclose(g(x), np.maximum(x + 1, 0) + (x + 1), rtol=1e-6)
    steps = {s.node.name: s for s in g.plan([shape]).steps}
    assert steps["relu"].donate is None


def test_shape_chain_folds_per_input_shape():
    """y = reshape(x, [shape(x)[0], -1]): folded to a constant per batch size."""
    nodes = [Node("s", "Shape", ["x"], ["s"]), Node("g", "Gather", ["s", "zero"], ["n"]),
             Node("u", "Unsqueeze", ["n", "ax"], ["nu"]), Node("c", "Concat", ["nu", "m1"], ["t"], {"axis": 0}),
             Node("r", "Reshape", ["x", "t"], ["y"])]
    consts = {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)}
    g = Graph([("x", None, np.float32)], ["y"], nodes, consts)
    for n in (1, 3):
        x = randn(n, 2, 3)
        np.testing.assert_array_equal(g(x), x.reshape(n, 6))
        assert [s.node.name for s in g.plan([x.shape]).steps] == ["r"]
        np.testing.assert_array_equal(g.plan([x.shape]).constants["t"], [n, -1])


def test_value_info_gives_static_shapes():
    g, _ = residual_graph()
    info = g.value_info((2, 4, 7, 7))
    assert info["a"] == ((2, 4, 7, 7), np.dtype(np.float32))
    assert info["y"][0] == (2, 4, 7, 7)


def test_several_outputs_and_a_constant_output():
    nodes = [Node("n", "Mul", ["x", "two"], ["a"]), Node("m", "Relu", ["x"], ["b"])]
    g = Graph([("x", (3,), np.float32)], ["a", "b", "two"], nodes, {"two": np.array([2.0], np.float32)})
    x = np.array([-1, 0, 2], np.float32)
    a, b, two = g(x)
    np.testing.assert_array_equal(a, [-2, 0, 4])
    np.testing.assert_array_equal(b, [0, 0, 2])
    two[0] = 5                              # a copy: the graph's constant is unchanged
    np.testing.assert_array_equal(g(x)[2], [2.0])


def test_fuse_folds_batchnorm_and_relu_and_agrees():
    g, layers = residual_graph()
    fused = engine.fuse(g)
    assert [n.op for n in fused.nodes] == ["Conv", "Conv", "AddRelu"]
    assert fused.get_submodule("block.conv1").fused_relu
    assert "block.bn1.weight" not in fused.state_dict()
    x = randn(2, 4, 6, 6)
    np.testing.assert_allclose(fused(x), residual_ref(layers, x), atol=1e-4)
    np.testing.assert_allclose(fused(x), g(x), atol=1e-4)
    assert [n.op for n in g.nodes][:2] == ["Conv", "BatchNormalization"]    # g untouched


def test_fuse_joins_add_and_relu_with_add_broadcasting():
    """Relu(Add(a, b)) becomes one AddRelu node, in place into a dying input or fresh, with
    ONNX broadcasting; an Add that another node reads too keeps its Relu apart."""
    c = np.array([[[[0.5]], [[-2.0]], [[0.0]]]], np.float32)               # (1, 3, 1, 1)
    nodes = [Node("m", "Mul", ["x", "two"], ["a"]), Node("s", "Add", ["a", "c"], ["b"]),
             Node("r", "Relu", ["b"], ["y"]),                              # a dies: in place
             Node("t", "Add", ["x", "c"], ["d"]), Node("q", "Relu", ["d"], ["z"]),   # x lives
             Node("u", "Add", ["x", "x"], ["e"]), Node("v", "Relu", ["e"], ["w"]),
             Node("h", "Mul", ["x", "half"], ["f"]),                       # f lives on (output)
             Node("i", "Add", ["f", "x"], ["k"]), Node("j", "Relu", ["k"], ["o"])]   # fresh
    g = Graph([("x", (2, 3, 4, 5), np.float32)], ["y", "z", "w", "e", "f", "o"], nodes,
              {"two": np.array([2.0], np.float32), "half": np.array([-1.5], np.float32), "c": c})
    fused = engine.fuse(g)
    assert [n.op for n in fused.nodes] == ["Mul", "AddRelu", "AddRelu", "Add", "Relu", "Mul",
                                           "AddRelu"]
    x = randn(2, 3, 4, 5)
    x[0, 0, 0, :3] = [np.nan, -0.0, np.inf]
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    relu = lambda v: np.where(v < 0, 0, v)                                  # NaN passes
    f64 = (-1.5 * x64).astype(np.float32).astype(np.float64)                # f, rounded once
    with np.errstate(invalid="ignore"):                                     # inf - inf: NaN
        expect = [relu(2 * x64 + c64), relu(x64 + c64), relu(2 * x64), 2 * x64, f64,
                  relu(f64 + x64)]
        unfused = g(x)
    for got, want in zip(fused(x), expect):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    for got, want in zip(fused(x), unfused):                                # bitwise the pair
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x[0, 0, 0, :3], [np.nan, -0.0, np.inf])   # input untouched


def test_fuse_leaves_a_conv_read_twice():
    """BatchNorm cannot fold into a convolution whose output another node reads too."""
    layers = {"conv": conv_layer(3, 3), "bn": bn_layer(3)}
    nodes = [Node("c", "Conv", ["x"], ["a"], layer="conv"), Node("b", "BatchNormalization", ["a"], ["b"], layer="bn"),
             Node("s", "Add", ["a", "b"], ["y"])]
    g = Graph([("x", (1, 3, 5, 5), np.float32)], ["y"], nodes, layers=layers)
    fused = engine.fuse(g)
    assert [n.op for n in fused.nodes] == ["Conv", "BatchNormalization", "Add"]
    x = randn(1, 3, 5, 5)
    a = conv_ref(layers["conv"], x)
    np.testing.assert_allclose(fused(x), a + bn_ref(layers["bn"], a), atol=1e-4)


def test_load_state_dict_replans():
    g, layers = residual_graph()
    x = randn(1, 4, 5, 5)
    g(x)
    sd = {k: np.array(v) for k, v in g.state_dict().items()}
    sd["block.conv2.weight"] = sd["block.conv2.weight"] * 0
    g.load_state_dict(sd)
    # conv2 now outputs its bias alone: y = relu(bias + x)
    np.testing.assert_allclose(g(x), np.maximum(layers["block.conv2"].bias[:, None, None] + x, 0), atol=1e-5)


def test_copy_and_pickle():
    g, layers = residual_graph()
    x = randn(1, 4, 5, 5)
    want = g(x)
    for other in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
        np.testing.assert_allclose(other(x), want, atol=1e-6)


def test_engine_explain_takes_a_graph():
    g, layers = residual_graph()
    report = engine.explain(g, (1, 4, 6, 6))
    assert [r["layer"] for r in report] == ["block.conv1", "block.conv2"]
    assert report[0]["algorithm"] == engine.explain(layers["block.conv1"], (1, 4, 6, 6))["algorithm"]


def test_collect_shapes_sees_the_graph_layers():
    g, _ = residual_graph()
    shapes = collect_shapes(g, (2, 4, 8, 8), details=True)
    assert [d["names"] for d in shapes] == [["block.conv1", "block.conv2"]]
    assert shapes[0]["key"]["N"] == 2 and shapes[0]["key"]["kernel"] == [3, 3]


MALFORMED = {
    "unknown_op": ([Node("n", "Frobnicate", ["x"], ["y"])], "unknown op"),
    "undefined_input": ([Node("n", "Relu", ["z"], ["y"])], "input 'z' is not defined"),
    "out_of_order": ([Node("b", "Relu", ["a"], ["y"]), Node("a", "Relu", ["x"], ["a"])],
                     "topological order"),
    "defined_twice": ([Node("a", "Relu", ["x"], ["y"]), Node("b", "Relu", ["x"], ["y"])], "defined twice"),
    "missing_output": ([Node("a", "Relu", ["x"], ["z"])], "graph output 'y'"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_graphs_are_refused(case):
    nodes, msg = MALFORMED[case]
    with pytest.raises(GraphError, match=msg):
        Graph([("x", (2,), np.float32)], ["y"], nodes)


def test_a_layer_named_like_a_graph_attribute_is_refused():
    with pytest.raises(GraphError, match="collides with the Graph attribute 'nodes'"):
        Graph([("x", None, np.float32)], ["y"], [Node("c", "Conv", ["x"], ["y"], layer="nodes.0")],
              layers={"nodes.0": conv_layer(3, 3)})


def test_shape_errors_name_the_node():
    g, _ = residual_graph()
    with pytest.raises(ValueError, match=r"must have shape \(\?, 4, \?, \?\)"):
        g(randn(1, 3, 5, 5))
    nodes = [Node("mm", "MatMul", ["x", "w"], ["y"])]
    g = Graph([("x", None, np.float32)], ["y"], nodes, {"w": randn(4, 2)})
    with pytest.raises(GraphError, match=r"node 'mm' \(MatMul\): shapes \(3, 5\) and \(4, 2\)"):
        g(randn(3, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_silu_at_the_extremes(dtype):
    """1 / (1 + exp(-x)) overflows to inf for very negative x: the result is 0 (and
    x * 0 for SiLU), without warnings; NaN stays NaN. Against float64 (long double)
    formulas; below the smallest normal number the result may flush to 0."""
    x = np.array([-1e4, -100, -20, -1, -1e-8, 0, 1e-8, 1, 20, 100, 1e4, np.nan], dtype)
    nodes = [Node("s", "Sigmoid", ["x"], ["s"]), Node("u", "SiLU", ["x"], ["u"])]
    g = Graph([("x", x.shape, dtype)], ["s", "u"], nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # numpy's default: warn on overflow, invalid
        s, u = g(x)
    xl = x.astype(np.longdouble)
    want = 1 / (1 + np.exp(-xl))         # long double: exp(1e4) is still finite
    tol = dict(rtol=4 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(s, want.astype(dtype), **tol)
    np.testing.assert_allclose(u, (xl * want).astype(dtype), **tol)


def residual_model():
    """A Graph built by a zero-argument function, as ``convtune tune --model`` names one."""
    return residual_graph()[0]


def test_tune_model_takes_a_graph():
    """``convtune tune --model test_graph:residual_model``'s shape collection (the
    function tune calls) on a Graph: one conv shape used by both layers."""
    from tuner.configs import from_model
    cfg = from_model(f"{__name__}:residual_model", "2,4,8,8")
    assert [(s.params.c_in, s.params.c_out, s.params.n) for s in cfg.shapes] == [(4, 4, 2)]
    assert cfg.shapes[0].names == ["block.conv1", "block.conv2"]
