"""``from_onnx``: an ONNX model as an ``engine.nn.graph.Graph`` (needs the ``onnx`` package).

A model file is untrusted input: it is parsed as a protobuf (nothing in it is run),
checked with ``onnx.checker``, and every node is translated by ``_TRANSLATE``, the
table of supported op types; anything else (an op, an attribute value, a second
output the engine does not compute, a non-constant weight) is a ``ValueError`` that
names the node, its op type and what is supported. Opsets 10 to 21 of the default
domain are read (the forms of Clip, Pad, Squeeze, Unsqueeze, Split, ReduceMean and
Softmax that changed between them included).

Convolutions, pooling, BatchNormalization and Gemm-as-Linear become engine layers,
named after their weights when the exporter named them like a module path
(``features.0.0.weight`` -> layer ``features.0.0``), else after the node.
"""
import os
import re

import numpy as np

from . import graph as G
from .layers import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Linear, MaxPool2d

OPSET_MIN, OPSET_MAX = 10, 21
_FLOATS = {1: np.float32, 11: np.float64}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("engine.from_onnx needs the onnx package: pip install 'convtune[onnx]' "
                          "(or pip install onnx)") from None
    return onnx


def load_model(model):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto, checked; ValueError
    (saying what is wrong) for anything that is not a valid ONNX model."""
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"from_onnx: no such file: {path}")
        try:
            proto = onnx.load(path)
        except Exception as e:   # DecodeError, bad external data: the file is damaged
            raise ValueError(f"from_onnx: {path} is not a readable ONNX model ({type(e).__name__}: "
                             f"{e})") from None
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as e:
            raise ValueError(f"from_onnx: the bytes are not an ONNX model ({e})") from None
    else:
        raise TypeError(f"from_onnx expects a path, bytes or an onnx.ModelProto, "
                        f"got {type(model).__name__}")
    if not proto.graph.node:
        raise ValueError("from_onnx: the model has no nodes (an empty or damaged file?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ValueError(f"from_onnx: the model fails onnx.checker: {e}") from None
    return proto


class _Context:
    """What translating one model accumulates: constants, layers, nodes."""

    def __init__(self, onnx, opset, dtype):
        self.onnx, self.opset, self.dtype = onnx, opset, dtype
        self.constants, self.params, self.layers, self.nodes = {}, [], {}, []
        self.used_layer_names = set()

    def const(self, node, i, what):
        """Input ``i`` of ``node`` as a constant array; ValueError if it is computed."""
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            return None
        if name not in self.constants:
            raise _error(node, f"its {what} ({name!r}) must be a constant (an initializer), "
                               f"not computed by the graph")
        return self.constants[name]

    def layer_name(self, node, weight_name):
        """A dotted module path for the layer of ``node``: its weight's name without
        ".weight" when that reads like one, else the node's name made safe."""
        candidates = []
        if weight_name and weight_name.endswith(".weight"):
            candidates.append(weight_name[:-len(".weight")])
        candidates.append(re.sub(r"[^A-Za-z0-9_]+", "_", node.name or node.op_type).strip("_")
                          or node.op_type)
        for c in candidates:
            if re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", c) and not self._clash(c):
                self.used_layer_names.add(c)
                return c
        base, i = candidates[-1], 1
        while self._clash(f"{base}_{i}"):
            i += 1
        self.used_layer_names.add(f"{base}_{i}")
        return f"{base}_{i}"

    def _clash(self, path):
        # A path may not be another's prefix: both would be modules at one place.
        return any(path == u or u.startswith(path + ".") or path.startswith(u + ".")
                   for u in self.used_layer_names)

    def add(self, node, op, inputs, outputs=None, attrs=None, layer=None, layer_path=None):
        if layer is not None:
            self.layers[layer_path] = layer
        self.nodes.append(G.Node(node.name or f"{node.op_type}_{len(self.nodes)}", op,
                                 list(inputs), list(outputs if outputs is not None else node.output),
                                 attrs or {}, layer_path if layer is not None else None))


def _error(node, what):
    return ValueError(f"from_onnx: node {node.name!r} ({node.op_type}): {what}")


def _attrs(onnx, node, allowed):
    """The node's attributes as Python values; ValueError for one not in ``allowed``."""
    out = {}
    for a in node.attribute:
        if a.name not in allowed:
            raise _error(node, f"attribute {a.name!r} is not supported (supported: "
                               f"{', '.join(sorted(allowed)) or 'none'})")
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _only_outputs(node, n, what="the first output"):
    if any(node.output[n:]):
        raise _error(node, f"only {what} is supported, the graph reads "
                           f"{[o for o in node.output[n:] if o]}")


def _two_d(node, values, name, default):
    v = list(values) if values is not None else [default, default]
    if len(v) != 2:
        raise _error(node, f"{name}={v}: only 2-D (N, C, H, W) operations are supported")
    return v


def _pads(node, attrs):
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise _error(node, f"auto_pad={auto_pad!r} (supported: NOTSET, SAME_UPPER, SAME_LOWER, VALID)")
    pads = attrs.get("pads")
    if pads is not None and len(pads) != 4:
        raise _error(node, f"pads={list(pads)}: only 2-D operations are supported (4 pads)")
    if pads is not None and min(pads) < 0:
        raise _error(node, f"pads={list(pads)}: negative pads are not supported")
    return auto_pad, pads


# ------------------------------------------------------------------- translators
def _conv(ctx, node):
    a = _attrs(ctx.onnx, node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    w = ctx.const(node, 1, "weight")
    b = ctx.const(node, 2, "bias")
    if w.ndim != 4:
        raise _error(node, f"weight of shape {w.shape}: only 2-D convolutions (4-D weights) "
                           f"are supported")
    if a.get("kernel_shape") is not None and list(a["kernel_shape"]) != list(w.shape[2:]):
        raise _error(node, f"kernel_shape={a['kernel_shape']} but the weight is {w.shape}")
    strides = _two_d(node, a.get("strides"), "strides", 1)
    dilations = _two_d(node, a.get("dilations"), "dilations", 1)
    group = int(a.get("group", 1))
    auto_pad, pads = _pads(node, a)
    kw = dict(groups=group, bias=b is not None, dtype=ctx.dtype, init=False)
    args = (w.shape[1] * group, w.shape[0], tuple(w.shape[2:]), tuple(strides))
    try:
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            layer = G.PaddedConv2d(*args, 0, tuple(dilations), auto_pad=auto_pad, **kw)
        else:
            t, bo, l, r = G.resolve_pads(auto_pad, pads, None, None, None, None)
            if (t, l) == (bo, r):
                layer = Conv2d(*args, (t, l), tuple(dilations), **kw)
            else:
                layer = G.PaddedConv2d(*args, 0, tuple(dilations), pads=(t, bo, l, r), **kw)
        layer.weight = w
        if b is not None:
            layer.bias = b
    except (TypeError, ValueError) as e:
        raise _error(node, str(e)) from None
    ctx.add(node, "Conv", node.input[:1], layer=layer, layer_path=ctx.layer_name(node, node.input[1]))


def _pool_layer(ctx, node, a, kind):
    kernel = _two_d(node, a.get("kernel_shape"), "kernel_shape", None)
    if None in kernel:
        raise _error(node, "kernel_shape is required")
    strides = _two_d(node, a.get("strides"), "strides", 1)
    dilations = _two_d(node, a.get("dilations"), "dilations", 1)
    auto_pad, pads = _pads(node, a)
    ceil = bool(a.get("ceil_mode", 0))
    pre = None
    padding = (0, 0)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pre = auto_pad
    else:
        t, b, l, r = G.resolve_pads(auto_pad, pads, None, None, None, None)
        if (t, l) == (b, r) and t <= kernel[0] // 2 and l <= kernel[1] // 2:
            padding = (t, l)
        elif max(t, b, l, r) > 0:
            pre = (t, b, l, r)
    try:
        if kind == "max":
            layer = MaxPool2d(tuple(kernel), tuple(strides), padding, tuple(dilations), False, ceil)
        else:
            if dilations != [1, 1]:
                raise _error(node, f"dilations={dilations}: average pooling supports only 1")
            layer = AvgPool2d(tuple(kernel), tuple(strides), padding, ceil,
                              bool(a.get("count_include_pad", 0)))
    except (TypeError, ValueError) as e:
        raise _error(node, str(e)) from None
    attrs = {}
    if pre is not None:
        attrs["pre_pad"] = pre
        attrs["window"] = (tuple(kernel), tuple(strides), tuple(dilations))
    return layer, attrs


def _max_pool(ctx, node):
    a = _attrs(ctx.onnx, node, {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                                "storage_order", "strides"})
    _only_outputs(node, 1, "the first output (not Indices)")
    layer, attrs = _pool_layer(ctx, node, a, "max")
    ctx.add(node, "MaxPool", node.input[:1], attrs=attrs, layer=layer,
            layer_path=ctx.layer_name(node, None))


def _avg_pool(ctx, node):
    a = _attrs(ctx.onnx, node, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                "kernel_shape", "pads", "strides"})
    layer, attrs = _pool_layer(ctx, node, a, "avg")
    ctx.add(node, "AveragePool", node.input[:1], attrs=attrs, layer=layer,
            layer_path=ctx.layer_name(node, None))


def _global_avg(ctx, node):
    _attrs(ctx.onnx, node, set())
    ctx.add(node, "GlobalAveragePool", node.input, layer=AdaptiveAvgPool2d(1),
            layer_path=ctx.layer_name(node, None))


def _batch_norm(ctx, node):
    a = _attrs(ctx.onnx, node, {"epsilon", "momentum", "spatial", "training_mode"})
    if a.get("training_mode", 0):
        raise _error(node, "training_mode=1 (batch statistics) is not supported: export in eval mode")
    if a.get("spatial", 1) != 1:
        raise _error(node, "spatial=0 is not supported")
    _only_outputs(node, 1, "inference (one output)")
    scale, bias, mean, var = (ctx.const(node, i, w) for i, w in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
    c = scale.shape[0]
    if not all(v.shape == (c,) for v in (scale, bias, mean, var)):
        raise _error(node, f"scale, bias, mean and var must all have shape ({c},)")
    layer = BatchNorm2d(c, float(a.get("epsilon", 1e-5)), dtype=ctx.dtype)
    layer.load_state_dict({"weight": scale, "bias": bias, "running_mean": mean,
                           "running_var": var, "num_batches_tracked": np.zeros((), np.int64)})
    ctx.add(node, "BatchNormalization", node.input[:1], layer=layer,
            layer_path=ctx.layer_name(node, node.input[1]))


def _gemm(ctx, node):
    a = _attrs(ctx.onnx, node, {"alpha", "beta", "transA", "transB"})
    b = ctx.constants.get(node.input[1])
    c = ctx.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    plain = (a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0 and not a.get("transA", 0)
             and b is not None and b.ndim == 2 and node.input[0] not in ctx.constants
             and (len(node.input) < 3 or not node.input[2]
                  or (c is not None and c.shape == (b.shape[0] if a.get("transB") else b.shape[1],))))
    if plain:   # x @ W.T + b: an engine Linear (BLAS, threading rule of the layer)
        w = b if a.get("transB", 0) else b.T
        layer = Linear(w.shape[1], w.shape[0], c is not None, dtype=ctx.dtype, init=False)
        layer.weight = w
        if c is not None:
            layer.bias = c
        ctx.add(node, "Linear", node.input[:1], layer=layer,
                layer_path=ctx.layer_name(node, node.input[1]))
    else:
        ctx.add(node, "Gemm", node.input, attrs=a)


def _simple(op, allowed=(), n_outputs=1):
    """An op that maps 1:1 onto the graph op ``op``, with these attributes."""
    def translate(ctx, node):
        a = _attrs(ctx.onnx, node, set(allowed))
        _only_outputs(node, n_outputs)
        ctx.add(node, op, node.input, node.output[:n_outputs], attrs=a)
    return translate


def _gelu(ctx, node):
    a = _attrs(ctx.onnx, node, {"approximate"})
    if a.get("approximate", "none") not in ("none", "tanh"):
        raise _error(node, f"approximate={a['approximate']!r} (supported: none, tanh)")
    ctx.add(node, "Gelu", node.input, attrs=a)


def _clip(ctx, node):
    a = _attrs(ctx.onnx, node, {"min", "max"} if ctx.opset < 11 else set())
    ctx.add(node, "Clip", node.input, attrs=a)


def _squeeze_like(op):
    def translate(ctx, node):
        a = _attrs(ctx.onnx, node, {"axes"} if ctx.opset < 13 else set())
        ctx.add(node, op, node.input, attrs=a)
    return translate


def _softmax(ctx, node):
    a = _attrs(ctx.onnx, node, {"axis"})
    if ctx.opset < 13:
        a.setdefault("axis", 1)
        a["coerce_2d"] = True
    ctx.add(node, "Softmax", node.input, attrs=a)


def _reduce_mean(ctx, node):
    allowed = {"keepdims"} | ({"axes"} if ctx.opset < 18 else {"noop_with_empty_axes"})
    ctx.add(node, "ReduceMean", node.input, attrs=_attrs(ctx.onnx, node, allowed))


def _split(ctx, node):
    allowed = {"axis"} | ({"split"} if ctx.opset < 13 else set()) | (
        {"num_outputs"} if ctx.opset >= 18 else set())
    a = _attrs(ctx.onnx, node, allowed)
    a.pop("num_outputs", None)      # the outputs say how many
    ctx.add(node, "Split", node.input, attrs=a)


def _pad(ctx, node):
    a = _attrs(ctx.onnx, node, {"mode"} | ({"pads", "value"} if ctx.opset < 11 else set()))
    if a.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        raise _error(node, f"mode={a['mode']!r} (supported: constant, reflect, edge, wrap)")
    ctx.add(node, "Pad", node.input, attrs=a)


def _dropout(ctx, node):
    _attrs(ctx.onnx, node, {"seed"} | ({"ratio"} if ctx.opset < 12 else set()))
    _only_outputs(node, 1, "the output (not the mask)")
    if len(node.input) > 2 and node.input[2]:
        mode = ctx.const(node, 2, "training_mode")
        if bool(np.asarray(mode).reshape(-1)[0]):
            raise _error(node, "training_mode=True is not supported (inference only)")
    ctx.add(node, "Identity", node.input[:1])


def _cast(ctx, node):
    a = _attrs(ctx.onnx, node, {"to", "saturate"})
    try:
        dtype = np.dtype(ctx.onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
    except Exception:
        raise _error(node, f"to={a.get('to')}: not a numeric type numpy has") from None
    ctx.add(node, "Cast", node.input, attrs={"dtype": dtype})


def _constant(ctx, node):
    a = _attrs(ctx.onnx, node, {"value", "value_float", "value_floats", "value_int", "value_ints"})
    if len(a) != 1:
        raise _error(node, "needs exactly one of value, value_float(s), value_int(s)")
    (kind, v), = a.items()
    if kind == "value":
        v = _tensor(ctx.onnx, v, node)
    else:
        v = np.array(v, np.float32 if "float" in kind else np.int64)
    ctx.constants[node.output[0]] = v


def _tensor(onnx, t, node=None):
    try:
        return onnx.numpy_helper.to_array(t)
    except Exception as e:
        where = f"node {node.name!r}" if node is not None else f"initializer {t.name!r}"
        raise ValueError(f"from_onnx: {where}: unreadable tensor ({e})") from None


_TRANSLATE = {
    "Conv": _conv, "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_avg, "GlobalMaxPool": _simple("GlobalMaxPool"),
    "BatchNormalization": _batch_norm, "Gemm": _gemm, "Constant": _constant,
    "Relu": _simple("Relu"), "LeakyRelu": _simple("LeakyRelu", {"alpha"}),
    "Clip": _clip, "Sigmoid": _simple("Sigmoid"), "Tanh": _simple("Tanh"),
    "HardSigmoid": _simple("HardSigmoid", {"alpha", "beta"}), "HardSwish": _simple("HardSwish"),
    "Gelu": _gelu, "Erf": _simple("Erf"),
    "LayerNormalization": _simple("LayerNormalization", {"axis", "epsilon", "stash_type"}, 3),
    "Add": _simple("Add"), "Sub": _simple("Sub"), "Mul": _simple("Mul"), "Div": _simple("Div"),
    "Pow": _simple("Pow"),
    "Concat": _simple("Concat", {"axis"}), "Flatten": _simple("Flatten", {"axis"}),
    "Reshape": _simple("Reshape", {"allowzero"}), "Transpose": _simple("Transpose", {"perm"}),
    "Squeeze": _squeeze_like("Squeeze"), "Unsqueeze": _squeeze_like("Unsqueeze"),
    "MatMul": _simple("MatMul"), "Softmax": _softmax, "ReduceMean": _reduce_mean,
    "Pad": _pad, "Dropout": _dropout, "Identity": _simple("Identity"),
    "Shape": _simple("Shape", {"start", "end"}), "Gather": _simple("Gather", {"axis"}),
    "Slice": _simple("Slice"), "Split": _split, "Cast": _cast,
}
SUPPORTED_OPS = sorted(_TRANSLATE)


def from_onnx(model, input_shape=None):
    """Build an engine ``Graph`` from an ONNX model: a path, bytes or ``onnx.ModelProto``.

    ``input_shape`` (optional) fixes the input's free dimensions (e.g. a dynamic
    batch); otherwise they are taken from each call. The graph computes in the
    input's float type (float32 or float64). Raises ValueError, naming the node and
    its op type, for anything outside the supported ops (``SUPPORTED_OPS``),
    attributes and opsets (10-21); TypeError for a wrong argument type.
    """
    onnx = _onnx()
    proto = load_model(model)
    opset = None
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
    if opset is None or not OPSET_MIN <= opset <= OPSET_MAX:
        raise ValueError(f"from_onnx: the model imports opset {opset} of the default domain; "
                         f"supported: {OPSET_MIN} to {OPSET_MAX}")
    g = proto.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if not inputs:
        raise ValueError("from_onnx: the graph has no inputs")
    graph_inputs = []
    for i, vi in enumerate(inputs):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type not in _FLOATS:
            raise ValueError(f"from_onnx: input {vi.name!r} must be a float32 or float64 tensor")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim] if tt.HasField("shape") else None
        if input_shape is not None and i == 0:
            dims = _fix_shape(vi.name, dims, input_shape)
        graph_inputs.append((vi.name, dims, _FLOATS[tt.elem_type]))
    dtype = graph_inputs[0][2]
    ctx = _Context(onnx, opset, dtype)
    for t in g.initializer:
        ctx.constants[t.name] = _tensor(onnx, t)
        if ctx.constants[t.name].dtype.kind == "f":    # weights, not shape constants
            ctx.params.append(t.name)
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            raise _error(node, f"domain {node.domain!r} is not supported (only the default ONNX domain)")
        translate = _TRANSLATE.get(node.op_type)
        if translate is None:
            raise _error(node, f"unsupported op type; supported: {', '.join(SUPPORTED_OPS)}")
        translate(ctx, node)
        _fold(ctx, node)
    # Parameters now held by layers are theirs; the graph keeps the rest as its state.
    used = {n for node in ctx.nodes for n in node.inputs}
    constants = {k: v for k, v in ctx.constants.items() if k in used or k in
                 [o.name for o in g.output]}
    params = [p for p in ctx.params if p in constants]
    try:
        return G.Graph(graph_inputs, [o.name for o in g.output], ctx.nodes, constants,
                       ctx.layers, params, name=g.name or "onnx graph").eval()
    except G.GraphError as e:
        raise ValueError(f"from_onnx: {e}") from None


def _fold(ctx, node):
    """Evaluate the node just translated now if it reads only constants: exporters pass
    weights through Identity (torch deduplicates equal initializers that way) or
    Cast/Reshape, and layers need them as constants."""
    last = ctx.nodes[-1] if ctx.nodes else None
    if last is None or last.layer is not None or not all(
            n in ctx.constants for n in last.inputs if n):
        return
    args = [ctx.constants[n] if n else None for n in last.inputs]
    while args and args[-1] is None:
        args.pop()
    opdef = G.OPS[last.op]
    try:
        result = opdef.run(last, None, *args)
    except (ValueError, TypeError, IndexError) as e:
        raise _error(node, f"cannot be evaluated on its constant inputs: {e}") from None
    outs = result if opdef.multi else (result,)
    ctx.nodes.pop()
    for name, value in zip(last.outputs, outs):
        ctx.constants[name] = np.asarray(value)


def _fix_shape(name, dims, shape):
    shape = tuple(shape)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0 for s in shape):
        raise ValueError(f"from_onnx: input_shape must be positive ints, got {shape!r}")
    if dims is not None and (len(dims) != len(shape) or any(
            d is not None and d != s for d, s in zip(dims, shape))):
        raise ValueError(f"from_onnx: input_shape {shape} does not fit input {name!r} of shape "
                         f"{['?' if d is None else d for d in dims]}")
    return [int(s) for s in shape]


__all__ = ["from_onnx", "load_model", "SUPPORTED_OPS"]
