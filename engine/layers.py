"""Layers: Conv2d, MaxPool2d, AvgPool2d, holding parameters like their PyTorch twins.

A layer validates its hyper-parameters when built, and on each call only what depends
on the input. ``Conv2d`` resolves its algorithm once per input shape (forced > plan >
heuristic, see ``dispatch``) and caches the weights in the form each algorithm wants
(e.g. Winograd-transformed); assigning ``weight`` or ``bias`` drops that cache. The
stored weight and bias are read-only copies, so the cache can never go stale behind
the layer's back: to change weights, assign a new array.
"""
import math
import numbers

import numpy as np

from . import registry as _registry
from . import dispatch as _dispatch
from . import functional as F
from . import plan as _plan
from . import shapes as _shapes
from .threads import get_num_threads

_default_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator that initialises layers built without ``seed=``."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def _rng(seed):
    if seed is None:
        return _default_rng
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _frozen(array, dtype, shape, name):
    """A private read-only C-contiguous copy of ``array`` with the expected shape."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"Conv2d: {name} must be a numpy.ndarray, got {type(array).__name__}")
    if array.dtype.kind != "f":
        raise TypeError(f"Conv2d: {name} has dtype {array.dtype}; expected float32 or float64")
    if array.shape != shape:
        raise ValueError(f"Conv2d: {name} must have shape {shape}, got {array.shape}")
    out = np.array(array, dtype=dtype, order="C", copy=True)
    out.flags.writeable = False
    return out


class Conv2d:
    """2-D convolution layer, as ``torch.nn.Conv2d`` (numpy arrays in and out).

    Weights are initialised as PyTorch does (Kaiming-uniform with a=sqrt(5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same bound for the bias), drawn from
    ``seed`` (an int or numpy Generator) or the generator ``engine.manual_seed`` sets.
    ``algorithm`` forces an algorithm for every call; otherwise plan or heuristic.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, dtype=np.float32, seed=None,
                 algorithm=None):
        op = "Conv2d"
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{op}: {name} must be an int, got {v!r}")
            if v <= 0:
                raise ValueError(f"{op}: {name} must be positive, got {v}")
        if in_channels % groups:
            raise ValueError(f"{op}: in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups:
            raise ValueError(f"{op}: out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"{op}: dtype must be float32 or float64, got {self.dtype}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _shapes.pair(kernel_size, "kernel_size", op)
        if min(self.kernel_size) <= 0:
            raise ValueError(f"{op}: kernel_size must be positive, got {self.kernel_size}")
        self.stride = _shapes.pair(stride, "stride", op)
        self.dilation = _shapes.pair(dilation, "dilation", op)
        if min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise ValueError(f"{op}: stride and dilation must be positive, got stride={self.stride}, "
                             f"dilation={self.dilation}")
        _shapes.conv_padding(padding, self.kernel_size, self.stride, self.dilation, op)  # check
        self.padding = padding if isinstance(padding, str) else _shapes.pair(padding, "padding", op)
        self.padding_mode = _shapes.check_padding_mode(padding_mode, op)
        if algorithm is not None:
            _registry.get(algorithm)
        self.algorithm = algorithm
        self._resolved = {}

        rng = _rng(seed)
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._weight = self._bias = None
        self.weight = rng.uniform(-bound, bound, size=shape)
        self.bias = rng.uniform(-bound, bound, size=(out_channels,)) if bias else None

    # Parameters: assigning either drops every cached form of the weights.
    @property
    def weight(self):
        return self._weight

    @weight.setter
    def weight(self, value):
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._weight = _frozen(value, self.dtype, shape, "weight")
        self._prepared = {}

    @property
    def bias(self):
        return self._bias

    @bias.setter
    def bias(self, value):
        self._bias = None if value is None else _frozen(value, self.dtype, (self.out_channels,), "bias")

    def _params(self, input_shape):
        """ConvParams for a 4-D ``input_shape`` (validated against this layer)."""
        return _shapes.conv_params(input_shape, self._weight.shape, self.stride, self.padding,
                                   self.dilation, self.groups, self.padding_mode, str(self.dtype))

    def _resolve(self, input_shape, threads):
        """(ConvParams, Choice) for this input shape, resolved once and cached."""
        key = (tuple(input_shape), threads, self.algorithm, _plan.generation())
        cached = self._resolved.get(key)
        if cached is None:
            p = self._params(input_shape)
            cached = (p, _dispatch.choose(p, self.algorithm, threads))
            self._resolved[key] = cached
        return cached

    def prepared_weight(self, algorithm, p):
        """The weights as ``algorithm`` consumes them, computed once per weights."""
        prepared = self._prepared.get(algorithm)
        if prepared is None:
            prepared = _registry.REGISTRY[algorithm].prepare_weight(self._weight, p)
            self._prepared[algorithm] = prepared
        return prepared

    def forward(self, x):
        x4, dtype, unbatched = F.input_4d(x, "Conv2d")
        if dtype != self.dtype:
            raise TypeError(f"Conv2d: input dtype ({dtype}) and weight dtype ({self.dtype}) "
                            f"should be the same")
        threads = get_num_threads()
        p, choice = self._resolve(x4.shape, threads)
        w = self.prepared_weight(choice.algorithm, p)
        out = F.run_conv(x4, w, self._bias, p, choice.algorithm, threads)
        return out[0] if unbatched else out

    __call__ = forward

    def explain(self, input_shape):
        """Which algorithm a call on ``input_shape`` uses, and why (see engine.explain)."""
        shape = tuple(input_shape)
        if len(shape) == 3:
            shape = (1, *shape)
        p, choice = self._resolve(shape, get_num_threads())
        return {**choice.as_dict(), "params": p.key(),
                "applicable": _registry.applicable(p)}

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in (0, (0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self._bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s

    def __repr__(self):
        return f"Conv2d({self.extra_repr()})"


class MaxPool2d:
    """2-D max pooling layer, as ``torch.nn.MaxPool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        self.kernel_size, self.stride, self.padding, self.dilation = _shapes.pool_window(
            "MaxPool2d", kernel_size, stride, padding, dilation)
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)

    __call__ = forward

    def __repr__(self):
        return (f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode})")


class AvgPool2d:
    """2-D average pooling layer, as ``torch.nn.AvgPool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        self.kernel_size, self.stride, self.padding, _ = _shapes.pool_window(
            "AvgPool2d", kernel_size, stride, padding, 1)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        F.check_divisor_override(divisor_override, "AvgPool2d")
        self.divisor_override = divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    __call__ = forward

    def __repr__(self):
        return (f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad})")
