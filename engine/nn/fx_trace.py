"""A PyTorch model as an ``engine.nn.graph.Graph``, through ``torch.fx`` symbolic tracing.

``engine.from_torch`` comes here for models whose classes it does not rebuild by name.
The tracer keeps the supported ``torch.nn`` layers (``_MODULES``) as leaves and traces
through everything else, so the result has call_module nodes for those layers and
call_function / call_method nodes for the rest, each mapped by ``_FUNCTIONS`` /
``_METHODS`` to a graph op (ONNX semantics). Layers are registered under their
module paths, so the graph's ``state_dict`` has PyTorch's key names. Shape arithmetic
(``x.size(0)``, channel shuffle's ``num_channels // groups``) becomes graph values
that the graph folds once it knows the input shape.

A model fx cannot trace (data-dependent control flow) or that calls something
outside the tables is a TypeError that names the node and suggests ONNX export.
"""
import operator

import numpy as np

from . import graph as G
from . import layers as L

_ONNX_HINT = ("; export the model with torch.onnx.export(model, x, 'model.onnx', dynamo=False) "
              "and load it with engine.from_onnx")


class _Converter:
    """One traced model's translation: nodes, constants, layers."""

    def __init__(self, torch, dtype):
        self.torch, self.nn = torch, torch.nn
        self.dtype = dtype
        self.nodes, self.constants, self.params, self.layers = [], {}, [], {}
        self.inputs, self.counter = [], 0

    # ------------------------------------------------------------------ helpers
    def error(self, node, what):
        return TypeError(f"from_torch: node {node.name!r} ({node.op} {_target_name(node)}): "
                         f"{what}{_ONNX_HINT}")

    def value(self, node, arg):
        """A graph value name for ``arg``: a traced node's (a stored tensor is named by its
        module path, as in state_dict), or a new constant."""
        fx = self.torch.fx
        if isinstance(arg, fx.Node):
            return arg.target if arg.op == "get_attr" else arg.name
        if isinstance(arg, (bool, int, float)) or arg is None:
            self.counter += 1
            name = f"_const{self.counter}"
            self.constants[name] = arg
            return name
        if isinstance(arg, (list, tuple)) and all(isinstance(a, (int, fx.Node)) for a in arg):
            return self.pack(node, arg)
        raise self.error(node, f"argument {arg!r} ({type(arg).__name__}) is not supported")

    def pack(self, node, items):
        """A 1-D int64 value from ints and traced ints (a view's target shape)."""
        fx = self.torch.fx
        items = list(items)
        if all(not isinstance(i, fx.Node) for i in items):
            self.counter += 1
            name = f"_const{self.counter}"
            self.constants[name] = np.array(items, np.int64)
            return name
        name = f"{node.name}_shape"
        self.add(name, "Pack", [i.name for i in items if isinstance(i, fx.Node)], name,
                 items=[None if isinstance(i, fx.Node) else int(i) for i in items])
        return name

    def static(self, node, arg, what):
        """``arg`` as a static Python value: it may not be computed by the graph."""
        fx = self.torch.fx
        flat = []
        for a in (arg if isinstance(arg, (list, tuple)) else [arg]):
            flat += [a.start, a.stop, a.step] if isinstance(a, slice) else [a]
        if any(isinstance(a, fx.Node) for a in flat):
            raise self.error(node, f"{what} must be a constant, not computed by the model")
        return tuple(arg) if isinstance(arg, list) else arg

    def add(self, name, op, inputs, output, layer=None, path=None, **attrs):
        if layer is not None:
            self.layers[path] = layer
        self.nodes.append(G.Node(name, op, list(inputs), [output], attrs,
                                 path if layer is not None else None))

    def layer_path(self, node):
        """A child name for a layer a function call needs (F.adaptive_avg_pool2d)."""
        return f"_{node.name}"

    # ---------------------------------------------------------------- the nodes
    def convert(self, gm):
        fx = self.torch.fx
        outputs = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if node.args or node.kwargs:   # a default value: an optional argument
                    raise self.error(node, "inputs with default values are not supported")
                self.inputs.append((node.name, None, self.dtype))
            elif node.op == "get_attr":
                value = _fetch(gm, node.target)
                if isinstance(value, self.torch.Tensor):
                    self.constants[node.target] = _numpy(self.torch, value, self.dtype)
                    self.params.append(node.target)
                else:
                    self.constants[node.target] = value
            elif node.op == "call_module":
                self.call_module(node, gm.get_submodule(node.target))
            elif node.op == "call_function":
                self.call_function(node)
            elif node.op == "call_method":
                self.call_method(node)
            elif node.op == "output":
                out = node.args[0]
                outs = list(out) if isinstance(out, (list, tuple)) else [out]
                if not all(isinstance(o, fx.Node) for o in outs):
                    raise self.error(node, "the model must return a tensor or a tuple of tensors")
                outputs = [o.name for o in outs]
        return outputs

    def call_module(self, node, m):
        nn, dtype = self.nn, self.dtype
        x = [self.value(node, a) for a in node.args]
        path = node.target
        if node.kwargs:
            raise self.error(node, f"keyword arguments {sorted(node.kwargs)} are not supported")
        t = type(m)
        if t is nn.Conv2d:
            layer = L.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                             m.dilation, m.groups, m.bias is not None, m.padding_mode,
                             dtype=dtype, init=False)
            _load(self.torch, layer, m)
            return self.add(node.name, "Conv", x, node.name, layer, path)
        if t is nn.BatchNorm2d:
            layer = L.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine,
                                  m.track_running_stats and m.running_mean is not None, dtype=dtype)
            if not layer.track_running_stats:
                raise self.error(node, "BatchNorm2d without running statistics is not supported")
            _load(self.torch, layer, m)
            return self.add(node.name, "BatchNormalization", x, node.name, layer, path)
        if t is nn.Linear:
            layer = L.Linear(m.in_features, m.out_features, m.bias is not None, dtype=dtype, init=False)
            _load(self.torch, layer, m)
            return self.add(node.name, "Linear", x, node.name, layer, path)
        if t is nn.MaxPool2d:
            if m.return_indices:
                raise self.error(node, "MaxPool2d(return_indices=True) is not supported")
            layer = L.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, False, m.ceil_mode)
            return self.add(node.name, "MaxPool", x, node.name, layer, path)
        if t is nn.AvgPool2d:
            layer = L.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                m.count_include_pad, m.divisor_override)
            return self.add(node.name, "AveragePool", x, node.name, layer, path)
        if t is nn.AdaptiveAvgPool2d:
            return self.add(node.name, "AdaptiveAvgPool", x, node.name,
                            L.AdaptiveAvgPool2d(m.output_size), path)
        if t is nn.AdaptiveMaxPool2d and m.output_size in (1, (1, 1)) and not m.return_indices:
            return self.add(node.name, "GlobalMaxPool", x, node.name)
        if t is nn.LayerNorm:
            axis = -len(m.normalized_shape)
            extra = []
            if m.elementwise_affine:
                for k in ("weight", "bias"):
                    v = getattr(m, k)
                    if v is not None:
                        name = f"{path}.{k}"
                        self.constants[name] = _numpy(self.torch, v, dtype)
                        self.params.append(name)
                        extra.append(name)
            if not extra:
                name = f"{node.name}_ones"
                self.constants[name] = np.ones(tuple(m.normalized_shape), dtype)
                extra.append(name)
            return self.add(node.name, "LayerNormalization", x + extra, node.name,
                            axis=axis, epsilon=m.eps)
        simple = _simple_module(nn, m)
        if simple is not None:
            op, attrs = simple
            return self.add(node.name, op, x, node.name, **attrs)
        raise self.error(node, f"module {type(m).__module__}.{type(m).__qualname__} is not supported")

    def call_function(self, node):
        fn = node.target
        handler = _FUNCTIONS.get(fn) or _FUNCTIONS.get(
            f"{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}")
        if handler is None:
            raise self.error(node, "this function is not supported")
        handler(self, node, *node.args, **node.kwargs)

    def call_method(self, node):
        handler = _METHODS.get(node.target)
        if handler is None:
            raise self.error(node, f"the tensor method .{node.target}() is not supported")
        handler(self, node, *node.args, **node.kwargs)


def _target_name(node):
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _fetch(gm, target):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _numpy(torch, t, dtype):
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.to(torch.float64).numpy().astype(dtype)
    return t.numpy().copy()


def _load(torch, layer, m):
    state = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    layer.load_state_dict({k: v.to(torch.float64) if v.is_floating_point() else v
                           for k, v in state.items()})


def _simple_module(nn, m):
    """(op, attrs) for parameter-free torch.nn modules, or None."""
    t = type(m)
    table = {nn.ReLU: ("Relu", {}), nn.SiLU: ("SiLU", {}), nn.Sigmoid: ("Sigmoid", {}),
             nn.Hardswish: ("HardSwish", {}), nn.Tanh: ("Tanh", {}),
             nn.Hardsigmoid: ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
             nn.ReLU6: ("Clip", {"min": 0.0, "max": 6.0}),
             nn.Dropout: ("Identity", {}), nn.Dropout2d: ("Identity", {}),
             nn.Identity: ("Identity", {})}
    if t in table:
        return table[t]
    if t is nn.Hardtanh:
        return "Clip", {"min": m.min_val, "max": m.max_val}
    if t is nn.LeakyReLU:
        return "LeakyRelu", {"alpha": m.negative_slope}
    if t is nn.GELU:
        return "Gelu", {"approximate": m.approximate}
    if t is nn.Flatten:
        return "Flatten", {"start": m.start_dim, "end": m.end_dim}
    if t is nn.Softmax:
        if m.dim is None:
            return None
        return "Softmax", {"axis": m.dim}
    return None


# ---------------------------------------------------------- function handlers
def _unary(op, **fixed):
    def handle(c, node, x, *args, **kwargs):
        c.add(node.name, op, [c.value(node, x)], node.name, **fixed)
    return handle


def _binary(op):
    def handle(c, node, a, b, *rest, **kwargs):
        if rest or kwargs.get("alpha", 1) != 1:
            raise c.error(node, "alpha/out arguments are not supported")
        c.add(node.name, op, [c.value(node, a), c.value(node, b)], node.name)
    return handle


def _relu6(c, node, x, inplace=False):
    c.add(node.name, "Clip", [c.value(node, x)], node.name, min=0.0, max=6.0)


def _hardtanh(c, node, x, min_val=-1.0, max_val=1.0, inplace=False):
    c.add(node.name, "Clip", [c.value(node, x)], node.name,
          min=c.static(node, min_val, "min_val"), max=c.static(node, max_val, "max_val"))


def _leaky(c, node, x, negative_slope=0.01, inplace=False):
    c.add(node.name, "LeakyRelu", [c.value(node, x)], node.name,
          alpha=c.static(node, negative_slope, "negative_slope"))


def _gelu(c, node, x, approximate="none"):
    c.add(node.name, "Gelu", [c.value(node, x)], node.name, approximate=approximate)


def _softmax(c, node, x, dim=None, _stacklevel=3, dtype=None):
    if dim is None or dtype is not None:
        raise c.error(node, "softmax needs an explicit dim (and no dtype)")
    c.add(node.name, "Softmax", [c.value(node, x)], node.name, axis=c.static(node, dim, "dim"))


def _flatten(c, node, x, start_dim=0, end_dim=-1):
    c.add(node.name, "Flatten", [c.value(node, x)], node.name,
          start=c.static(node, start_dim, "start_dim"), end=c.static(node, end_dim, "end_dim"))


def _cat(c, node, tensors, dim=0):
    c.add(node.name, "Concat", [c.value(node, t) for t in tensors], node.name,
          axis=c.static(node, dim, "dim"))


def _adaptive_avg(c, node, x, output_size):
    size = c.static(node, output_size, "output_size")
    c.add(node.name, "AdaptiveAvgPool", [c.value(node, x)], node.name,
          L.AdaptiveAvgPool2d(size), c.layer_path(node))


def _max_pool(c, node, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              return_indices=False):
    if return_indices:
        raise c.error(node, "return_indices=True is not supported")
    layer = L.MaxPool2d(*(c.static(node, v, "pooling parameters") for v in
                          (kernel_size, stride, padding, dilation)), False, ceil_mode)
    c.add(node.name, "MaxPool", [c.value(node, x)], node.name, layer, c.layer_path(node))


def _avg_pool(c, node, x, kernel_size, stride=None, padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
    layer = L.AvgPool2d(*(c.static(node, v, "pooling parameters") for v in
                          (kernel_size, stride, padding)), ceil_mode, count_include_pad,
                        divisor_override)
    c.add(node.name, "AveragePool", [c.value(node, x)], node.name, layer, c.layer_path(node))


def _dropout(c, node, x, p=0.5, training=True, inplace=False):
    # F.dropout's own default is training=True: only an explicit False is the identity.
    if c.static(node, training, "training"):
        raise c.error(node, "dropout in training mode is not supported (call model.eval())")
    c.add(node.name, "Identity", [c.value(node, x)], node.name)


def _stochastic_depth(c, node, x, p, mode, training=True):
    # torchvision's StochasticDepth (EfficientNet): the identity at inference.
    if c.static(node, training, "training"):
        raise c.error(node, "stochastic depth in training mode is not supported (call model.eval())")
    c.add(node.name, "Identity", [c.value(node, x)], node.name)


def _mean(c, node, x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        raise c.error(node, "mean(dtype=...) is not supported")
    axes = None if dim is None else c.static(node, dim, "dim")
    axes = None if axes is None else list(axes) if isinstance(axes, tuple) else [axes]
    c.add(node.name, "ReduceMean", [c.value(node, x)], node.name, axes=axes, keepdims=int(keepdim))


def _transpose(c, node, x, dim0, dim1):
    c.add(node.name, "SwapAxes", [c.value(node, x)], node.name,
          axes=(c.static(node, dim0, "dim0"), c.static(node, dim1, "dim1")))


def _permute(c, node, x, *dims):
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
    c.add(node.name, "Transpose", [c.value(node, x)], node.name,
          perm=list(c.static(node, tuple(dims), "dims")))


def _reshape(c, node, x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else shape
    # torch's -1 infers, and 0 is a real size: ONNX Reshape with allowzero=1.
    c.add(node.name, "Reshape", [c.value(node, x), c.pack(node, shape)], node.name, allowzero=1)


def _size(c, node, x, dim=None):
    c.add(node.name, "Size", [c.value(node, x)], node.name,
          dim=None if dim is None else c.static(node, dim, "dim"))


def _getattr(c, node, x, name):
    if name != "shape":
        raise c.error(node, f"attribute {name!r} is not supported (only .shape)")
    c.add(node.name, "Size", [c.value(node, x)], node.name, dim=None)


def _getitem(c, node, x, index):
    c.add(node.name, "GetItem", [c.value(node, x)], node.name,
          index=c.static(node, index, "the index"))


def _chunk(c, node, x, chunks, dim=0):
    c.add(node.name, "Chunk", [c.value(node, x)], node.name,
          chunks=c.static(node, chunks, "chunks"), axis=c.static(node, dim, "dim"))


def _split(c, node, x, split_size_or_sections, dim=0):
    s = c.static(node, split_size_or_sections, "split sizes")
    attrs = {"sizes": list(s)} if isinstance(s, tuple) else {"size": s}
    c.add(node.name, "Chunk", [c.value(node, x)], node.name, axis=c.static(node, dim, "dim"), **attrs)


def _unsqueeze(c, node, x, dim):
    c.add(node.name, "Unsqueeze", [c.value(node, x)], node.name, axes=[c.static(node, dim, "dim")])


def _squeeze(c, node, x, dim=None):
    dim = c.static(node, dim, "dim")
    axes = None if dim is None else list(dim) if isinstance(dim, tuple) else [dim]
    c.add(node.name, "Squeeze", [c.value(node, x)], node.name, axes=axes)


def _identity(c, node, x, *args, **kwargs):
    c.add(node.name, "Identity", [c.value(node, x)], node.name)


def _layer_norm(c, node, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = c.static(node, normalized_shape, "normalized_shape")
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if weight is None:
        weight = np.ones(shape, c.dtype)
        c.counter += 1
        c.constants[f"_const{c.counter}"] = weight
        w = f"_const{c.counter}"
    else:
        w = c.value(node, weight)
    inputs = [c.value(node, x), w] + ([c.value(node, bias)] if bias is not None else [])
    c.add(node.name, "LayerNormalization", inputs, node.name, axis=-len(shape), epsilon=eps)


def _conv2d(c, node, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """F.conv2d with stored weights (a Conv2d subclass's forward calls it): an engine
    Conv2d layer named after the weight's module path."""
    fx = c.torch.fx
    for name, v in (("weight", weight), ("bias", bias)):
        if isinstance(v, fx.Node) and v.op != "get_attr":
            raise c.error(node, f"conv2d's {name} must be a stored parameter, not computed")
    w = c.constants[c.value(node, weight)]
    b = None if bias is None else c.constants[c.value(node, bias)]
    try:
        layer = L.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2:],
                         *(c.static(node, v, "conv2d parameters") for v in (stride, padding, dilation)),
                         groups=c.static(node, groups, "groups"), bias=b is not None, dtype=c.dtype,
                         init=False)
        layer.weight = w
        if b is not None:
            layer.bias = b
    except (TypeError, ValueError) as e:
        raise c.error(node, str(e)) from None
    # The parameters move into the layer (its state_dict keys are the same names).
    for v in (weight, bias):
        if v is not None and v.target in c.params:
            c.params.remove(v.target)
    path = weight.target[:-len(".weight")] if weight.target.endswith(".weight") else c.layer_path(node)
    c.add(node.name, "Conv", [c.value(node, x)], node.name, layer, path)


def _linear(c, node, x, weight, bias=None):
    # F.linear(x, W, b) = x @ W.T + b: MatMul with a transposed constant, then Add.
    t = f"{node.name}_wt"
    c.add(t, "Transpose", [c.value(node, weight)], t, perm=[1, 0])
    if bias is None:
        return c.add(node.name, "MatMul", [c.value(node, x), t], node.name)
    mm = f"{node.name}_mm"
    c.add(mm, "MatMul", [c.value(node, x), t], mm)
    c.add(node.name, "Add", [mm, c.value(node, bias)], node.name)


def _build_tables():
    import torch
    F = torch.nn.functional
    funcs = {
        operator.add: _binary("Add"), operator.sub: _binary("Sub"), operator.mul: _binary("Mul"),
        operator.truediv: _binary("Div"), operator.floordiv: _binary("FloorDiv"),
        operator.getitem: _getitem, getattr: _getattr,
        torch.add: _binary("Add"), torch.sub: _binary("Sub"), torch.mul: _binary("Mul"),
        torch.div: _binary("Div"), torch.matmul: _binary("MatMul"),
        torch.flatten: _flatten, torch.cat: _cat, torch.concat: _cat,
        torch.relu: _unary("Relu"), F.relu: _unary("Relu"), F.relu6: _relu6,
        F.hardtanh: _hardtanh, F.leaky_relu: _leaky, F.gelu: _gelu,
        torch.sigmoid: _unary("Sigmoid"), F.sigmoid: _unary("Sigmoid"),
        F.silu: _unary("SiLU"), F.hardswish: _unary("HardSwish"),
        F.hardsigmoid: _unary("HardSigmoid", alpha=1 / 6, beta=0.5),
        torch.tanh: _unary("Tanh"), F.softmax: _softmax, torch.softmax: _softmax,
        F.adaptive_avg_pool2d: _adaptive_avg, F.max_pool2d: _max_pool,
        F.avg_pool2d: _avg_pool, F.dropout: _dropout, torch.mean: _mean,
        torch.transpose: _transpose, torch.permute: _permute, torch.reshape: _reshape,
        torch.chunk: _chunk, torch.split: _split, torch.unsqueeze: _unsqueeze,
        torch.squeeze: _squeeze, F.layer_norm: _layer_norm, F.linear: _linear,
        F.conv2d: _conv2d,
    }
    # Functions of other packages that torch.fx keeps as calls (torch.fx.wrap), matched
    # by module and name so that torchvision need not be imported.
    funcs.update({"torchvision.ops.stochastic_depth.stochastic_depth": _stochastic_depth})
    methods = {
        "size": _size, "view": _reshape, "reshape": _reshape, "flatten": _flatten,
        "mean": _mean, "transpose": _transpose, "permute": _permute,
        "contiguous": _identity, "clone": _identity, "chunk": _chunk, "split": _split,
        "unsqueeze": _unsqueeze, "squeeze": _squeeze, "relu": _unary("Relu"),
        "sigmoid": _unary("Sigmoid"), "add": _binary("Add"), "mul": _binary("Mul"),
        "sub": _binary("Sub"), "div": _binary("Div"), "softmax": _softmax,
        "__getitem__": _getitem,
    }
    return funcs, methods


_FUNCTIONS, _METHODS = {}, {}


def trace(module, dtype):
    """The ``Graph`` of ``module`` (a torch.nn.Module, eval semantics) in ``dtype``."""
    import torch
    import torch.fx as fx
    if not _FUNCTIONS:
        f, m = _build_tables()
        _FUNCTIONS.update(f)
        _METHODS.update(m)
    leaves = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.MaxPool2d,
              torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d,
              torch.nn.LayerNorm, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU, torch.nn.Sigmoid,
              torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.Hardtanh, torch.nn.Tanh,
              torch.nn.LeakyReLU, torch.nn.GELU, torch.nn.Flatten, torch.nn.Softmax,
              torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Identity)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return type(m) in leaves

    was_training = module.training
    module.eval()      # Python branches on self.training are taken as in inference
    try:
        graph = Tracer().trace(module)
    except Exception as e:
        raise TypeError(f"from_torch: torch.fx cannot trace {type(module).__name__} "
                        f"({type(e).__name__}: {e}){_ONNX_HINT}") from None
    finally:
        module.train(was_training)
    gm = fx.GraphModule(module, graph)
    c = _Converter(torch, dtype)
    outputs = c.convert(gm)
    try:
        return G.Graph(c.inputs, outputs, c.nodes, c.constants, c.layers, c.params,
                       name=type(module).__qualname__).eval()
    except G.GraphError as e:
        raise TypeError(f"from_torch: {e}") from None


__all__ = ["trace"]
