"""``Graph``: a whole network as a list of operations on named values, run on numpy.

What ``engine.from_onnx`` and ``engine.from_torch`` (through torch.fx) build, and what
``engine.fuse`` optimises:

- values are named; a ``Node`` reads values by name and writes new ones, and the nodes
  are kept in topological order (checked when the graph is built);
- weights are constants: convolution, pooling, BatchNorm and Linear nodes own an
  engine layer (``Conv2d``, ``MaxPool2d``, ...), registered as a child module under a
  dotted name, so plans, ``explain``, ``collect_shapes``, ``convtune tune --model``,
  fusion and ``state_dict`` all see them; the other constants (a Mul's scale, a
  Reshape's target) are the graph's own state;
- the first call with a given input shape *specialises* the graph (``_Plan``): every
  value's static shape and dtype is inferred once from the input shapes, values that
  depend only on shapes or constants (ONNX's Shape -> Gather -> Concat -> Reshape
  chains, torch's ``x.size(0)``) are folded into constants, each intermediate is
  freed as soon as its last user has run, and an elementwise node may write into an
  input that dies there (the residual ``Add`` adds into its convolution's output).

Operations follow ONNX semantics (``OPS`` is the table, one entry per op type). The
importers map their formats onto them and reject anything the table cannot compute.
"""
import collections
import dataclasses
import math

import numpy as np

from .. import shapes as _shapes
from .._lru import LRU
from ..operator import add_relu_
from .layers import BatchNorm2d, Conv2d
from .module import Module

# Input shapes whose specialised plans a graph keeps (least recently used dropped).
PLAN_CACHE_SIZE = 8


class GraphError(ValueError):
    """A graph that cannot be built or run: names the node, its op and what is wrong."""


@dataclasses.dataclass
class Node:
    """One operation: ``op`` (a key of ``OPS``) reads the values ``inputs`` ("" for an
    omitted optional input) and writes ``outputs``; ``attrs`` are static Python
    values; ``layer`` is the dotted name of the engine layer the node runs, if any."""
    name: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = dataclasses.field(default_factory=dict)
    layer: str = None

    def where(self):
        return f"node {self.name!r} ({self.op})"


class _Scope(Module):
    """A container for layers whose dotted names nest (``features.0.0``); never called."""

    def forward(self, *args):
        raise TypeError("a graph scope holds layers and is not callable")


# ------------------------------------------------------------------------ helpers
def _axis(axis, ndim, node):
    a = int(axis)
    if not -ndim <= a < max(ndim, 1):
        raise GraphError(f"{node.where()}: axis {a} is out of range for a {ndim}-D input")
    return a + ndim if a < 0 else a


def _ints(value):
    """A static list of ints from an attribute, a 1-D constant or a scalar."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _same_pads(auto_pad, size, kernel, stride, dilation):
    """ONNX auto_pad SAME_UPPER / SAME_LOWER: (before, after) for one axis, so that
    out = ceil(size / stride); SAME_UPPER puts the odd pixel at the end."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def resolve_pads(auto_pad, pads, in_hw, kernel, stride, dilation):
    """(top, bottom, left, right) for an ONNX ``auto_pad`` / ``pads`` pair on an input
    of spatial size ``in_hw``. ``pads`` is ONNX's [top, left, bottom, right]."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (l, r) = (_same_pads(auto_pad, in_hw[i], kernel[i], stride[i], dilation[i])
                          for i in range(2))
        return (t, b, l, r)
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    p = list(pads) if pads else [0, 0, 0, 0]
    return (p[0], p[2], p[1], p[3])


class PaddedConv2d(Conv2d):
    """A ``Conv2d`` whose zero padding is asymmetric or follows ONNX ``auto_pad``
    (SAME_UPPER / SAME_LOWER, resolved per input shape): ``pads`` is (top, bottom,
    left, right) or ``auto_pad`` names the rule. The kernels take per-side padding
    already (PyTorch's padding="same" with even kernels needs it)."""

    def __init__(self, *args, pads=(0, 0, 0, 0), auto_pad="NOTSET", **kwargs):
        super().__init__(*args, **kwargs)
        self.pads, self.auto_pad = tuple(int(p) for p in pads), auto_pad

    def op_params(self, input_shape, dtype=None):
        pads = self.pads if self.auto_pad == "NOTSET" else resolve_pads(
            self.auto_pad, None, input_shape[2:], self.kernel_size, self.stride, self.dilation)
        return _shapes.conv_params(input_shape, self._weight.shape, self.stride, 0, self.dilation,
                                   self.groups, self.padding_mode, str(self.dtype), pads=pads)

    def extra_repr(self):
        rule = self.auto_pad if self.auto_pad != "NOTSET" else f"pads={self.pads}"
        return super().extra_repr() + f", {rule}"


# ------------------------------------------------------------------ the op table
@dataclasses.dataclass(frozen=True)
class OpDef:
    """How the executor runs an op.

    ``run(node, layer, *inputs)`` returns the output (or a tuple when the op has
    several); ``shape(node, layer, *infos)`` (optional) gives the output (shape, dtype)
    from the inputs' for ops too costly to run on zeros at specialisation (the others
    are run once on zeros: one implementation decides both result and shape);
    ``view``: the output may share memory with input 0; ``inplace(node, layer, out,
    *inputs)`` is the variant that writes into ``out`` (a dying input of the same
    shape and dtype as the result)."""
    run: object
    shape: object = None
    view: bool = False
    inplace: object = None
    multi: bool = False


OPS = {}


def op(name, **kw):
    def register(fn):
        OPS[name] = OpDef(fn, **kw)
        return fn
    return register


def _layer_call(node, layer, x):
    return layer(x)


def _conv_shape(node, layer, x):
    shape, dtype = x
    if len(shape) != 4:
        raise GraphError(f"{node.where()}: expected a 4-D (N, C, H, W) input, got shape {shape}")
    return layer.op_params(shape).output_shape, dtype


def _pool_shape(node, layer, x):
    shape, dtype = x
    if len(shape) != 4:
        raise GraphError(f"{node.where()}: expected a 4-D (N, C, H, W) input, got shape {shape}")
    return layer.op_params(_pre_pad_shape(node, shape), dtype).output_shape, dtype


def _pool_pads(node, hw):
    """(top, bottom, left, right) of a pooling whose padding the engine's layer cannot
    take (asymmetric, more than half the kernel, or ONNX auto_pad SAME_*), or None."""
    pre = node.attrs.get("pre_pad")
    if isinstance(pre, str):
        kernel, stride, dilation = node.attrs["window"]
        return resolve_pads(pre, None, hw, kernel, stride, dilation)
    return pre


def _pre_pad_shape(node, shape):
    pads = _pool_pads(node, shape[2:])
    if not pads:
        return shape
    return (*shape[:2], shape[2] + pads[0] + pads[1], shape[3] + pads[2] + pads[3])


def _pre_pad(node, x, value):
    """Pooling windows that PyTorch's kernels cannot pad run on an explicitly padded
    copy."""
    t, b, l, r = _pool_pads(node, x.shape[2:])
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


op("Conv", shape=_conv_shape)(_layer_call)


@op("MaxPool", shape=_pool_shape)
def _max_pool(node, layer, x):
    if node.attrs.get("pre_pad"):
        x = _pre_pad(node, x, -np.inf)
    return layer(x)


@op("AveragePool", shape=_pool_shape)
def _avg_pool(node, layer, x):
    if not node.attrs.get("pre_pad"):
        return layer(x)
    if layer.count_include_pad:
        return layer(_pre_pad(node, x, 0))
    # Windows divided by the input elements they cover: pool the padded input and a
    # padded ones-mask alike; their ratio is sum / count.
    ones = np.ones((1, 1, *x.shape[2:]), x.dtype)
    return layer(_pre_pad(node, x, 0)) / layer(_pre_pad(node, ones, 0))


def _linear_shape(node, layer, x):
    shape, dtype = x
    if len(shape) < 1 or shape[-1] != layer.in_features:
        raise GraphError(f"{node.where()}: expected an input whose last dimension is "
                         f"{layer.in_features}, got shape {shape}")
    return (*shape[:-1], layer.out_features), dtype


op("Linear", shape=_linear_shape)(_layer_call)


def _channels_kept(node, layer, x):
    shape, dtype = x
    if len(shape) < 2 or shape[1] != layer.num_features:
        raise GraphError(f"{node.where()}: expected (N, {layer.num_features}, ...) input, "
                         f"got shape {shape}")
    return x


def _global_shape(node, layer, x):
    shape, dtype = x
    if len(shape) < 3:
        raise GraphError(f"{node.where()}: expected an (N, C, spatial...) input, got {shape}")
    return (*shape[:2], *(1,) * (len(shape) - 2)), dtype


@op("BatchNormalization", shape=_channels_kept)
def _batch_norm(node, layer, x):
    if x.ndim == 4:
        return layer(x)
    # BatchNorm on (N, C) or (N, C, L): the same per-channel affine map.
    scale, shift = layer.scale_shift()
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.astype(x.dtype).reshape(bshape) + shift.astype(x.dtype).reshape(bshape)


@op("GlobalAveragePool", shape=_global_shape)
def _global_avg(node, layer, x):
    if x.ndim == 4:
        return layer(x)            # AdaptiveAvgPool2d(1): the compiled pooling kernel
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(x.dtype)


@op("GlobalMaxPool", shape=_global_shape)
def _global_max(node, layer, x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@op("AdaptiveAvgPool")
def _adaptive_avg(node, layer, x):
    return layer(x)


# Elementwise ops: ``fn(x, out=None)`` so that one definition serves both forms.
def _unary(name, fn):
    op(name, inplace=lambda node, layer, out, x: fn(node, x, out))(
        lambda node, layer, x: fn(node, x, None))


def _relu(node, x, out):
    return np.maximum(x, x.dtype.type(0), out=out)


def _leaky_relu(node, x, out):
    # ``out`` is only a hint that the input may be overwritten: np.where makes its own.
    alpha = x.dtype.type(node.attrs.get("alpha", 0.01))
    return np.where(x >= 0, x, x * alpha)


def _sigmoid(node, x, out):
    # 1 / (1 + exp(-x)): three times faster than scipy's expit on float32, and exact to
    # an ulp or two (exp(-x) overflowing to inf gives 0, as it should).
    e = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1
    return np.reciprocal(e, out=e)


def _hard_sigmoid(node, x, out, alpha=None, beta=None):
    alpha = node.attrs.get("alpha", 0.2) if alpha is None else alpha
    beta = node.attrs.get("beta", 0.5) if beta is None else beta
    t = np.multiply(x, x.dtype.type(alpha), out=out)
    t += x.dtype.type(beta)
    return np.clip(t, 0, 1, out=t)


def _hard_swish(node, x, out):
    # x * hardsigmoid(x) with alpha 1/6, beta 1/2 (ONNX HardSwish = torch's hardswish).
    return np.multiply(x, _hard_sigmoid(node, x, None, 1 / 6, 0.5), out=out)


def _silu(node, x, out):
    # x / (1 + exp(-x)); x is read last, so ``out`` may be x itself.
    e = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1
    return np.divide(x, e, out=e if out is None else out)


def _erf(node, x, out):
    from scipy.special import erf
    return erf(x, out=out)


def _gelu(node, x, out):
    dt = x.dtype.type
    if node.attrs.get("approximate", "none") == "tanh":
        inner = (x + dt(0.044715) * x ** 3) * dt(math.sqrt(2 / math.pi))
        return np.multiply(dt(0.5) * x, 1 + np.tanh(inner), out=out)
    from scipy.special import erf
    return np.multiply(dt(0.5) * x, 1 + erf(x * dt(1 / math.sqrt(2))), out=out)


def _tanh(node, x, out):
    return np.tanh(x, out=out)


def _clip(node, x, out, lo=None, hi=None):
    lo = node.attrs.get("min") if lo is None else lo
    hi = node.attrs.get("max") if hi is None else hi
    if lo is None and hi is None:
        return x.copy()
    return np.clip(x, None if lo is None else x.dtype.type(lo),
                   None if hi is None else x.dtype.type(hi), out=out)


for _name, _fn in (("Relu", _relu), ("LeakyRelu", _leaky_relu), ("Sigmoid", _sigmoid),
                   ("HardSigmoid", _hard_sigmoid), ("HardSwish", _hard_swish), ("SiLU", _silu),
                   ("Erf", _erf), ("Gelu", _gelu), ("Tanh", _tanh)):
    _unary(_name, _fn)


def _clip_bounds(node, lo, hi):
    def scalar(v, which):
        if v is None:
            return None
        a = np.asarray(v)
        if a.size != 1:
            raise GraphError(f"{node.where()}: {which} must be a scalar, got shape {a.shape}")
        return a.reshape(()).item()
    return scalar(lo, "min"), scalar(hi, "max")


@op("Clip", inplace=lambda node, layer, out, x, lo=None, hi=None: _clip(
        node, x, out, *_clip_bounds(node, lo, hi)))
def _clip_op(node, layer, x, lo=None, hi=None):
    return _clip(node, x, None, *_clip_bounds(node, lo, hi))


# Binary elementwise ops with numpy broadcasting (ONNX's multidirectional rule).
def _int_div(a, b, out=None):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))   # C-style, as ONNX
    return np.true_divide(a, b, out=out)


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div,
           "Pow": np.power, "FloorDiv": np.floor_divide}


def _binary(name, fn):
    def run(node, layer, a, b):
        return fn(a, b)

    def inplace(node, layer, out, a, b):
        return fn(a, b, out=out)
    op(name, inplace=inplace)(run)


for _name, _fn in _BINARY.items():
    _binary(_name, _fn)


# The residual block's end, Relu(Add(a, b)) (fuse_graph makes it of an Add read only by a
# Relu): one pass over the dying input on the kernel threads (add_relu_), where the pair
# was two numpy passes on one core. Broadcasting as Add's.
@op("AddRelu", inplace=lambda node, layer, out, a, b: add_relu_(out, b if out is a else a))
def _add_relu(node, layer, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape == b.shape and a.dtype == b.dtype:
        return add_relu_(a.copy(), b)
    out = np.add(a, b)
    return np.maximum(out, out.dtype.type(0), out=out)


# Shape manipulation: views where numpy gives them.
@op("Identity", view=True)
def _identity(node, layer, x):
    return x


@op("Flatten", view=True)
def _flatten(node, layer, x):
    if "start" in node.attrs:    # torch.flatten(x, start_dim, end_dim)
        nd = max(x.ndim, 1)
        s, e = (_axis(node.attrs[k], nd, node) for k in ("start", "end"))
        if s > e:
            raise GraphError(f"{node.where()}: start_dim {s} is after end_dim {e}")
        return x.reshape(*x.shape[:s], -1, *x.shape[e + 1:]) if x.ndim else x.reshape(1)
    axis = int(node.attrs.get("axis", 1))
    if not -x.ndim <= axis <= x.ndim:
        raise GraphError(f"{node.where()}: axis {axis} is out of range for a {x.ndim}-D input")
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


@op("Reshape", view=True)
def _reshape(node, layer, x, shape):
    target = _ints(shape)
    if not node.attrs.get("allowzero", 0):
        if any(t == 0 and i >= x.ndim for i, t in enumerate(target)):
            raise GraphError(f"{node.where()}: target {target} copies dimension "
                             f"{target.index(0)} of a {x.ndim}-D input")
        target = [x.shape[i] if t == 0 else t for i, t in enumerate(target)]
    try:
        return x.reshape(target)
    except ValueError:
        raise GraphError(f"{node.where()}: cannot reshape an input of shape {x.shape} "
                         f"to {target}") from None


@op("Transpose", view=True)
def _transpose(node, layer, x):
    perm = node.attrs.get("perm")
    return np.transpose(x, None if perm is None else [int(p) for p in perm])


@op("Squeeze", view=True)
def _squeeze(node, layer, x, axes=None):
    axes = _ints(node.attrs.get("axes") if axes is None else axes)
    if axes is None:
        return np.squeeze(x)
    axes = tuple(_axis(a, x.ndim, node) for a in axes)
    if any(x.shape[a] != 1 for a in axes):
        raise GraphError(f"{node.where()}: cannot squeeze axes {axes} of shape {x.shape}")
    return np.squeeze(x, axis=axes)


@op("Unsqueeze", view=True)
def _unsqueeze(node, layer, x, axes=None):
    axes = _ints(node.attrs.get("axes") if axes is None else axes)
    nd = x.ndim + len(axes)
    axes = sorted(_axis(a, nd, node) for a in axes)
    if len(set(axes)) != len(axes):
        raise GraphError(f"{node.where()}: repeated axes {axes}")
    return np.expand_dims(x, tuple(axes))


@op("SwapAxes", view=True)
def _swap_axes(node, layer, x):
    return np.swapaxes(x, *node.attrs["axes"])


@op("Size")
def _size(node, layer, x):
    """torch's ``x.size()`` / ``x.shape`` (a tuple) or ``x.size(dim)`` (an int)."""
    dim = node.attrs.get("dim")
    return tuple(x.shape) if dim is None else x.shape[_axis(dim, x.ndim, node)]


@op("GetItem", view=True)
def _get_item(node, layer, x):
    """``x[index]`` with a static index (ints, slices, None, Ellipsis); also picks
    an element of a tuple value (torch's size() or chunk())."""
    try:
        return x[node.attrs["index"]]
    except (IndexError, TypeError) as e:
        raise GraphError(f"{node.where()}: index {node.attrs['index']!r}: {e}") from None


@op("Chunk", view=True)
def _chunk(node, layer, x):
    """torch.chunk / torch.split: a tuple of views along ``axis``: ``chunks`` pieces
    of ceil(size / chunks) (the last smaller, maybe fewer pieces), or pieces of
    ``size`` each, or the listed ``sizes``."""
    axis = _axis(node.attrs.get("axis", 0), x.ndim, node)
    n = x.shape[axis]
    if "chunks" in node.attrs:
        each = -(-n // node.attrs["chunks"])
        sizes = [min(each, n - i) for i in range(0, n, each)] if n else [0]
    elif "size" in node.attrs:
        each = node.attrs["size"]
        sizes = [min(each, n - i) for i in range(0, n, each)] if n else [0]
    else:
        sizes = list(node.attrs["sizes"])
        if sum(sizes) != n:
            raise GraphError(f"{node.where()}: split sizes {sizes} do not sum to {n}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@op("Concat")
def _concat(node, layer, *xs):
    xs = [np.asarray(x) for x in xs]
    axis = _axis(node.attrs["axis"], xs[0].ndim, node)
    return np.concatenate(xs, axis=axis)


@op("Split", multi=True, view=True)
def _split(node, layer, x, split=None):
    axis = _axis(node.attrs.get("axis", 0), x.ndim, node)
    sizes = _ints(node.attrs.get("split") if split is None else split)
    n = len(node.outputs)
    if sizes is None:
        size = x.shape[axis]
        each = -(-size // n)      # the last part may be smaller (opset 18's num_outputs rule)
        sizes = [min(each, size - i * each) for i in range(n)]
    if len(sizes) != n or sum(sizes) != x.shape[axis] or min(sizes) < 0:
        raise GraphError(f"{node.where()}: split sizes {sizes} do not divide axis {axis} "
                         f"({x.shape[axis]}) into {n} outputs")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@op("Slice", view=True)
def _slice(node, layer, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise GraphError(f"{node.where()}: a step of 0")
        # ONNX clamps out-of-range bounds like Python slicing does (INT64_MAX = to the end).
        index[_axis(a, x.ndim, node)] = slice(s, None if (st > 0 and e >= 2**62) or
                                              (st < 0 and e <= -2**62) else e, st)
    return x[tuple(index)]


@op("Gather")
def _gather(node, layer, x, indices):
    x = np.asarray(x)
    axis = _axis(node.attrs.get("axis", 0), x.ndim, node)
    idx = np.asarray(indices)
    if idx.size and (idx.max() >= x.shape[axis] or idx.min() < -x.shape[axis]):
        raise GraphError(f"{node.where()}: indices {idx.tolist()} out of range for axis {axis} "
                         f"of size {x.shape[axis]}")
    return np.take(x, idx, axis=axis)


@op("Shape")
def _shape(node, layer, x):
    s = np.array(np.shape(x), np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return s[start:end]


@op("Cast")
def _cast(node, layer, x):
    return np.asarray(x).astype(node.attrs["dtype"])


@op("Pack")
def _pack(node, layer, *values):
    """torch.fx's ``x.view(n, -1)``: static items and traced ints as one int64 vector."""
    items, it = [], iter(values)
    for item in node.attrs["items"]:
        items.append(int(np.asarray(next(it)).reshape(())) if item is None else item)
    return np.array(items, np.int64)


@op("Pad")
def _pad(node, layer, x, pads=None, value=None, axes=None):
    pads = _ints(node.attrs.get("pads") if pads is None else pads)
    nd = x.ndim
    axes = list(range(nd)) if axes is None else [_axis(a, nd, node) for a in _ints(axes)]
    if len(pads) != 2 * len(axes):
        raise GraphError(f"{node.where()}: {len(pads)} pads for {len(axes)} axes")
    before, after = [0] * nd, [0] * nd
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    # Negative pads crop.
    x = x[tuple(slice(max(0, -b), x.shape[i] - max(0, -a)) for i, (b, a) in
                enumerate(zip(before, after)))]
    width = [(max(0, b), max(0, a)) for b, a in zip(before, after)]
    mode = node.attrs.get("mode", "constant")
    if mode == "constant":
        v = node.attrs.get("value", 0.0) if value is None else np.asarray(value).reshape(()).item()
        return np.pad(x, width, constant_values=x.dtype.type(v))
    return np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


def _gemm_shape(node, layer, a, b, c=None):
    (sa, dt), (sb, _) = a, b
    if len(sa) != 2 or len(sb) != 2:
        raise GraphError(f"{node.where()}: Gemm needs 2-D inputs, got {sa} and {sb}")
    m, k = sa[::-1] if node.attrs.get("transA") else sa
    k2, n = sb[::-1] if node.attrs.get("transB") else sb
    if k != k2:
        raise GraphError(f"{node.where()}: inner dimensions {k} and {k2} differ")
    if c is not None:
        try:
            np.broadcast_shapes(c[0], (m, n))
        except ValueError:
            raise GraphError(f"{node.where()}: C of shape {c[0]} does not broadcast to "
                             f"({m}, {n})") from None
    return (m, n), dt


@op("Gemm", shape=_gemm_shape)
def _gemm(node, layer, a, b, c=None):
    a = a.T if node.attrs.get("transA") else a
    b = b.T if node.attrs.get("transB") else b
    y = a @ b
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None and beta != 0.0:
        y += c if beta == 1.0 else c * c.dtype.type(beta)
    return y


def _matmul_shape(node, layer, a, b):
    try:
        shape = np.matmul(np.broadcast_to(np.zeros((), a[1]), a[0]),
                          np.broadcast_to(np.zeros((), b[1]), b[0])).shape
    except ValueError:
        raise GraphError(f"{node.where()}: shapes {a[0]} and {b[0]} do not multiply") from None
    return shape, np.result_type(a[1], b[1])


@op("MatMul", shape=_matmul_shape)
def _matmul(node, layer, a, b):
    return np.matmul(a, b)


@op("Softmax")
def _softmax(node, layer, x):
    axis = _axis(node.attrs.get("axis", -1), x.ndim, node)
    if node.attrs.get("coerce_2d"):       # opset < 13: softmax over the flattened tail
        flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return _softmax_axis(flat, 1).reshape(x.shape)
    return _softmax_axis(x, axis)


def _softmax_axis(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@op("ReduceMean")
def _reduce_mean(node, layer, x, axes=None):
    axes = _ints(node.attrs.get("axes") if axes is None else axes)
    keep = bool(node.attrs.get("keepdims", 1))
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.ndim))
    axes = tuple(sorted({_axis(a, x.ndim, node) for a in axes}))
    return x.mean(axis=axes, keepdims=keep, dtype=np.float64).astype(x.dtype)


@op("LayerNormalization", multi=True)
def _layer_norm(node, layer, x, scale, bias=None):
    axis = _axis(node.attrs.get("axis", -1), x.ndim, node)
    axes = tuple(range(axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(x64.var(axis=axes, keepdims=True) + node.attrs.get("epsilon", 1e-5))
    y = (x64 - mean) * inv * scale
    if bias is not None:
        y += bias
    return (y.astype(x.dtype), mean.astype(x.dtype), inv.astype(x.dtype))[:len(node.outputs)]


# --------------------------------------------------------------------- the graph
@dataclasses.dataclass
class _Step:
    node: Node
    run: object             # fn(*inputs) -> output(s)
    inputs: list            # value names ("" = omitted)
    frees: list             # names whose last user this is
    donate: int = None      # index of an input the op may overwrite


@dataclasses.dataclass
class _Plan:
    """A graph specialised for one tuple of input shapes: the steps left after
    folding, the folded constants, and every value's (shape, dtype)."""
    steps: list
    constants: dict
    infos: dict


class Graph(Module):
    """A network as nodes on named values (see the module docstring).

    ``inputs``: [(name, shape, dtype)] where shape entries may be None (free, e.g. a
    dynamic batch); ``outputs``: value names; ``nodes``: Node list in topological
    order; ``constants``: {name: ndarray} (``params`` names the ones that are the
    model's parameters, kept in ``state_dict``); ``layers``: {dotted name: engine
    layer} that the nodes' ``layer`` fields name. Calling the graph with one array
    per input returns the output (a tuple when there are several).
    """
    _CACHES = ("_plans",)

    def __init__(self, inputs, outputs, nodes, constants=None, layers=None, params=(),
                 name="graph"):
        super().__init__()
        self.name = name
        self.graph_inputs = [(str(n), None if s is None else tuple(s), np.dtype(d))
                             for n, s, d in inputs]
        self.graph_outputs = list(outputs)
        self.nodes = list(nodes)
        self.constants = dict(constants or {})
        self.params = [p for p in params if p in self.constants]
        self._plans = LRU(PLAN_CACHE_SIZE)
        for path, layer in (layers or {}).items():
            self._add_layer(path, layer)
        self._check()

    # ---------------------------------------------------------------- structure
    def _add_layer(self, path, layer):
        parent, parts = self, path.split(".")
        if parts[0] not in self.__dict__["_modules"] and hasattr(self, parts[0]):
            # Children are attributes: one named like the graph's own would replace it.
            raise GraphError(f"layer {path!r}: its first name collides with the Graph "
                             f"attribute {parts[0]!r}")
        for part in parts[:-1]:
            child = parent.__dict__["_modules"].get(part)
            if child is None:
                child = _Scope()
                parent.add_module(part, child)
            parent = child
        if parts[-1] in parent.__dict__["_modules"]:
            raise GraphError(f"two layers named {path!r}")
        parent.add_module(parts[-1], layer)

    def _check(self):
        """Every value defined once before it is read, every op known, every layer there."""
        defined = {n for n, _, _ in self.graph_inputs} | set(self.constants)
        if len(defined) != len(self.graph_inputs) + len(self.constants):
            raise GraphError("a graph input has the name of a constant")
        for node in self.nodes:
            if node.op not in OPS:
                raise GraphError(f"{node.where()}: unknown op (known: {', '.join(sorted(OPS))})")
            for name in node.inputs:
                if name and name not in defined:
                    raise GraphError(f"{node.where()}: input {name!r} is not defined before it "
                                     f"(the nodes must be in topological order)")
            if node.layer is not None:
                self.get_submodule(node.layer)
            for name in node.outputs:
                if name in defined:
                    raise GraphError(f"{node.where()}: output {name!r} is defined twice")
                defined.add(name)
        for name in self.graph_outputs:
            if name not in defined:
                raise GraphError(f"graph output {name!r} is not computed by any node")

    def _layer(self, node):
        return None if node.layer is None else self.get_submodule(node.layer)

    # -------------------------------------------------------------------- state
    def _own_state(self):
        return collections.OrderedDict((p, self.constants[p]) for p in self.params)

    def _convert_own(self, name, value):
        if name not in self.params:
            raise KeyError(name)
        return np.array(value, dtype=self.constants[name].dtype)

    def _load_own(self, name, value):
        self.constants[name] = value
        self._plans.clear()       # folded constants may derive from it

    # -------------------------------------------------------------- specialising
    def _input_arrays(self, xs):
        if len(xs) != len(self.graph_inputs):
            raise TypeError(f"{self.name}: expected {len(self.graph_inputs)} input(s) "
                            f"({', '.join(n for n, _, _ in self.graph_inputs)}), got {len(xs)}")
        out = []
        for x, (name, shape, dtype) in zip(xs, self.graph_inputs):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{self.name}: input {name!r} must be a numpy array, "
                                f"got {type(x).__name__}")
            if x.dtype != dtype:
                raise TypeError(f"{self.name}: input {name!r} must be {dtype}, got {x.dtype}")
            if shape is not None and (len(shape) != x.ndim or any(
                    s is not None and s != d for s, d in zip(shape, x.shape))):
                want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
                raise ValueError(f"{self.name}: input {name!r} must have shape {want}, "
                                 f"got {x.shape}")
            out.append(x)
        return out

    def plan(self, input_shapes):
        """The graph specialised for ``input_shapes`` (one shape per input), built once
        per shape: static shapes, folded constants, frees and in-place writes."""
        key = tuple(tuple(int(d) for d in s) for s in input_shapes)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._specialise(key)
            self._plans[key] = plan          # the LRU drops the least recently used
        elif len(self._plans) > 1:
            try:
                self._plans.move_to_end(key)     # a hit is recent
            except KeyError:                     # evicted meanwhile by another thread
                pass
        return plan

    def _specialise(self, shapes):
        consts = dict(self.constants)
        infos = {n: _info(v) for n, v in consts.items()}
        for (name, _, dtype), s in zip(self.graph_inputs, shapes):
            infos[name] = (s, dtype)
        dry = {}        # non-array values the dry run made (chunk tuples), for their readers
        kept = []
        for node in self.nodes:
            opdef, layer = OPS[node.op], self._layer(node)
            present = [n for n in node.inputs if n]
            foldable = layer is None and (all(n in consts for n in present)
                                          or node.op in ("Shape", "Size"))
            try:
                if foldable:
                    args = [None if not n else consts[n] if n in consts else
                            np.broadcast_to(np.zeros((), infos[n][1]), infos[n][0])
                            for n in node.inputs]
                    outs = self._outputs(node, opdef.run(node, layer, *_trim(args)))
                    for n, v in zip(node.outputs, outs):
                        consts[n] = v
                        infos[n] = _info(v)
                    continue
                if opdef.shape is not None:
                    outs = [opdef.shape(node, layer, *_trim(
                        [None if not n else infos[n] for n in node.inputs]))]
                else:   # run once on stand-ins (zeros, the constants): its result's shape
                    args = [None if not n else consts[n] if n in consts else dry[n] if n in dry
                            else np.zeros(infos[n][0], infos[n][1]) for n in node.inputs]
                    with np.errstate(all="ignore"):     # zeros ** -1 is no one's concern
                        values = self._outputs(node, opdef.run(node, layer, *_trim(args)))
                    outs = [_info(v) for v in values]
                    dry.update((n, v) for n, v in zip(node.outputs, values)
                               if not isinstance(v, np.ndarray))
            except GraphError:
                raise
            except (ValueError, TypeError, IndexError, KeyError) as e:
                shapes_in = ", ".join(str(infos[n][0]) if n else "-" for n in node.inputs)
                raise GraphError(f"{self.name}: {node.where()} cannot run on inputs of shape "
                                 f"{shapes_in}: {e}") from None
            for n, info in zip(node.outputs, outs):
                infos[n] = (tuple(info[0]), np.dtype(info[1]))
            kept.append(node)
        return _Plan(self._schedule(kept, consts, infos), consts, infos)

    def _outputs(self, node, result):
        outs = result if OPS[node.op].multi else (result,)
        if len(outs) < len(node.outputs):
            raise GraphError(f"{node.where()}: computes {len(outs)} output(s), the graph "
                             f"reads {len(node.outputs)}")
        return outs

    def _schedule(self, nodes, consts, infos):
        """Steps with the values each frees, and an input each may overwrite: one that
        dies there, is not a graph input or constant, has the result's shape and dtype,
        and shares no memory with a value still alive (views are tracked by root)."""
        last = {}
        for i, node in enumerate(nodes):
            for n in node.inputs:
                if n:
                    last[n] = i
        keep = set(self.graph_outputs) | set(consts) | {n for n, _, _ in self.graph_inputs}
        root = {n: n for n in infos}
        for node in nodes:
            if OPS[node.op].view and node.inputs and node.inputs[0]:
                for n in node.outputs:
                    root[n] = root[node.inputs[0]]
        # A root dies when its last alias (any value sharing its memory) has been read.
        root_last = {}
        for n, i in last.items():
            root_last[root[n]] = max(root_last.get(root[n], -1), i)
        for n in self.graph_outputs:
            root_last[root[n]] = len(nodes)       # outputs live on
        external = {root[n] for n in keep if n in root}
        steps = []
        for i, node in enumerate(nodes):
            opdef, layer = OPS[node.op], self._layer(node)
            frees = [n for n in dict.fromkeys(node.inputs) if n and last.get(n) == i and n not in keep]
            donate = None
            if opdef.inplace is not None and len(node.outputs) == 1:
                out_info = infos[node.outputs[0]]
                for k, n in enumerate(node.inputs):
                    if (n and root[n] not in external and root_last.get(root[n]) == i
                            and node.inputs.count(n) == 1 and infos[n] == out_info
                            and root[n] == n):
                        donate = k
                        break
            steps.append(_Step(node, _bind(opdef, node, layer, donate), list(node.inputs),
                               frees, donate))
        return steps

    # ------------------------------------------------------------------ running
    def forward(self, *xs):
        """Run the graph: one numpy array per input, the output (or a tuple)."""
        xs = self._input_arrays(xs)
        plan = self.plan([x.shape for x in xs])
        env = dict(plan.constants)
        for (name, _, _), x in zip(self.graph_inputs, xs):
            env[name] = x
        for step in plan.steps:
            args = _trim([env[n] if n else None for n in step.inputs])
            result = step.run(*args)
            node = step.node
            if OPS[node.op].multi:
                for n, v in zip(node.outputs, result):
                    env[n] = v
            else:
                env[node.outputs[0]] = result
            for n in step.frees:
                del env[n]
        outs = [env[n] for n in self.graph_outputs]
        # A constant output is handed out as a copy: the caller may write into it.
        outs = [np.array(v) if n in plan.constants else v for n, v in zip(self.graph_outputs, outs)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    # ------------------------------------------------------------ introspection
    def value_info(self, *input_shapes):
        """{value name: (shape, dtype)} for the given input shapes (default: the
        declared ones, when they are fully static)."""
        return dict(self.plan(input_shapes or self._declared_shapes()).infos)

    def _declared_shapes(self):
        shapes = [s for _, s, _ in self.graph_inputs]
        if any(s is None or None in s for s in shapes):
            raise ValueError(f"{self.name}: the input shapes are not all static; give them")
        return shapes

    def explain(self, *input_shapes):
        """For each convolution node that runs on ``input_shapes``: its name, layer,
        input shape and ``Conv2d.explain`` (algorithm, source, reason, ...)."""
        plan = self.plan(input_shapes or self._declared_shapes())
        out = []
        for step in plan.steps:
            layer = self._layer(step.node)
            if isinstance(layer, Conv2d):
                shape = plan.infos[step.node.inputs[0]][0]
                out.append({"node": step.node.name, "layer": step.node.layer,
                            "input_shape": shape, **layer.explain(shape)})
        return out

    def extra_repr(self):
        ops = collections.Counter(n.op for n in self.nodes)
        return f"{len(self.nodes)} nodes: " + ", ".join(f"{k} x{v}" for k, v in ops.items())

    # ------------------------------------------------------------------- fusion
    def _fuse(self):
        fuse_graph(self)


def _info(value):
    """(shape, dtype) of a value; a tuple (torch's chunk, size()) is ((len,), object)."""
    if isinstance(value, (tuple, list)):
        return (len(value),), np.dtype(object)
    return np.shape(value), np.asarray(value).dtype


def _trim(args):
    """Drop trailing omitted optional inputs (ONNX's "" names)."""
    while args and args[-1] is None:
        args = args[:-1]
    return args


def _bind(opdef, node, layer, donate):
    if donate is None:
        return lambda *a: opdef.run(node, layer, *a)
    return lambda *a: opdef.inplace(node, layer, a[donate], *a)


# ---------------------------------------------------------------------- fusion
def _consumers(graph):
    users = collections.defaultdict(list)
    for node in graph.nodes:
        for n in node.inputs:
            if n:
                users[n].append(node)
    for n in graph.graph_outputs:
        users[n].append(None)
    return users


def _remove_layer(graph, path):
    parent, _, leaf = path.rpartition(".")
    owner = graph.get_submodule(parent) if parent else graph
    delattr(owner, leaf)


def fuse_graph(graph):
    """Fuse in place, as ``engine.fuse`` does for module trees: a BatchNormalization
    whose input is a convolution read by nothing else is folded into its weights
    (``fusion.fold_batchnorm``), and a Relu that is a convolution's only reader moves
    into the kernel (``Conv2d.fused_relu``). Clip(0, 6) stays a node (the kernels
    clamp only at zero). A Relu that is an Add's only reader joins it (``AddRelu``, one
    pass on the kernel threads), which writes into the convolution's output in place
    (see ``_schedule``): the residual block's end costs one pass and no allocation.
    Returns ``graph``."""
    from .fusion import fold_batchnorm
    changed = True
    while changed:
        changed = False
        users = _consumers(graph)
        producer = {n: node for node in graph.nodes for n in node.outputs}
        for node in list(graph.nodes):
            if node.op not in ("BatchNormalization", "Relu"):
                continue
            src = producer.get(node.inputs[0])
            if src is None or len(users[node.inputs[0]]) != 1:
                continue
            if node.op == "Relu" and src.op == "Add":
                src.op = "AddRelu"         # the residual end: one pass (_add_relu)
                src.outputs = [node.outputs[0]]
                graph.nodes.remove(node)
                changed = True
                break
            if src.op != "Conv":
                continue
            conv = graph.get_submodule(src.layer)
            if node.op == "BatchNormalization":
                bn = graph._layer(node)
                if (conv.fused_relu or not isinstance(bn, BatchNorm2d) or not bn.track_running_stats
                        or bn.num_features != conv.out_channels):
                    continue
                fold_batchnorm(conv, bn)
                _remove_layer(graph, node.layer)
            elif conv.fused_relu:
                continue
            else:
                conv.fused_relu = True
            src.outputs = [node.outputs[0]]
            graph.nodes.remove(node)
            changed = True
            break
    graph._plans.clear()
    graph._check()
    return graph


__all__ = ["Graph", "Node", "GraphError", "OPS", "PaddedConv2d", "fuse_graph", "resolve_pads"]
