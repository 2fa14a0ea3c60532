"""Layers, holding parameters like their PyTorch twins: Conv2d, MaxPool2d, AvgPool2d,
and what whole networks need around them: ReLU, BatchNorm2d, Linear, Flatten,
AdaptiveAvgPool2d, Dropout, Identity. Every layer is an ``engine.Module``.

A layer validates its hyper-parameters when built, and on each call only what depends
on the input. ``Conv2d`` resolves its algorithm once per input shape (forced > plan >
heuristic, see ``dispatch``) and keeps the ``engine.operator.ConvOperator`` for it,
with the weights in the form each algorithm wants (e.g. Winograd-transformed, shared by
every shape); assigning ``weight``, ``bias`` or ``fused_relu`` drops those operators.
The stored weight and bias are read-only copies, so a cache can never go stale behind
the layer's back: to change weights, assign a new array. The pooling layers keep one
``PoolOperator`` per input shape too.

``Conv2d.fused_relu`` (set by ``engine.fuse``) clamps the output at zero inside the
kernel's output stage, as the bias is added there: a fused Conv-BN-ReLU is one pass.
"""
import functools
import logging
import math
import numbers

import numpy as np

from .. import registry as _registry
from .. import dispatch as _dispatch
from .. import functional as F
from .. import plan as _plan
from .. import shapes as _shapes
from ..explain import describe_choice
from ..operator import ConvOperator
from .._lru import LRU
from ..threads import blas_single_threaded, get_num_threads
from .module import Module, read_only

_log = logging.getLogger("convtune")
_default_rng = np.random.default_rng()
# Input shapes whose operator a layer keeps; the least recently used is dropped.
RESOLVED_CACHE_SIZE = 256


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


def _frozen(array, dtype, shape, name, op="Conv2d"):
    """A private read-only C-contiguous copy of ``array`` with the expected shape (a
    view whose WRITEABLE flag cannot be set again, ``module.read_only``), in
    the layer's dtype (float32 weights load into a float64 layer and back, as
    ``load_state_dict`` does in PyTorch)."""
    _shapes.float_dtype(array, name, op)
    if array.shape != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {array.shape}")
    return read_only(np.array(array, dtype=dtype, order="C", copy=True))


def _check_init(init, op):
    if not isinstance(init, (bool, np.bool_)):
        raise TypeError(f"{op}: init must be a bool, got {init!r}")
    return bool(init)


class _WeightAndBias(Module):
    """A layer with ``weight`` and an optional ``bias``: private read-only copies in the
    layer's dtype (``_frozen``), state-dict keys "weight" and "bias". Subclasses give
    ``_weight_shape`` (the bias has its first dimension) and may drop derived forms of
    the weight in ``_weight_changed``."""

    @property
    def weight(self):
        return self._weight

    @weight.setter
    def weight(self, value):
        self._weight = _frozen(value, self.dtype, self._weight_shape, "weight", type(self).__name__)
        self._weight_changed()

    @property
    def bias(self):
        return self._bias

    @bias.setter
    def bias(self, value):
        self._bias = None if value is None else _frozen(
            value, self.dtype, self._weight_shape[:1], "bias", type(self).__name__)
        self._bias_changed()

    def _weight_changed(self):
        pass

    def _bias_changed(self):
        pass

    def _own_state(self):
        state = {"weight": self._weight}
        if self._bias is not None:
            state["bias"] = self._bias
        return state

    def _convert_own(self, name, value):
        if name not in ("weight", "bias"):
            raise KeyError(name)
        shape = self._weight_shape if name == "weight" else self._weight_shape[:1]
        return _frozen(np.asarray(value, dtype=self.dtype), self.dtype, shape, name,
                       type(self).__name__)

    def _load_own(self, name, value):
        if name == "weight":
            self._weight = value        # already frozen by _convert_own
            self._weight_changed()
        else:
            self._bias = value
            self._bias_changed()


class Conv2d(_WeightAndBias):
    """2-D convolution layer, as ``torch.nn.Conv2d`` (numpy arrays in and out).

    Weights are initialised as PyTorch does (Kaiming-uniform with a=sqrt(5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same bound for the bias), drawn from
    ``seed`` (an int or numpy Generator) or the generator ``engine.manual_seed`` sets;
    ``init=False`` zero-fills them instead (for layers whose weights are loaded next).
    ``algorithm`` forces an algorithm for every call; otherwise plan or heuristic.
    ``fused_relu`` (default False; ``engine.fuse`` sets it) makes the kernel clamp
    its output at zero as it writes it: the layer then computes relu(conv(x) + bias).
    State-dict keys: ``weight`` and, when there is a bias, ``bias``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, dtype=np.float32, seed=None,
                 algorithm=None, init=True):
        super().__init__()
        init = _check_init(init, "Conv2d")
        args = _shapes.conv_layer_args(in_channels, out_channels, kernel_size, stride, padding,
                                       dilation, groups, padding_mode, dtype, "Conv2d")
        self.in_channels, self.out_channels, self.groups = args.in_channels, args.out_channels, args.groups
        self.kernel_size, self.stride, self.dilation = args.kernel_size, args.stride, args.dilation
        self.padding, self.padding_mode, self.dtype = args.padding, args.padding_mode, args.dtype
        if algorithm is not None:
            _registry.get(algorithm, "conv")
        self.algorithm = algorithm
        self.fused_relu = False
        self._resolved = None          # set by _resolve (its generation check)
        self._plan_generation = None

        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._weight = self._bias = None
        if init:
            rng = _rng(seed)
            self.weight = rng.uniform(-bound, bound, size=shape)
            self.bias = rng.uniform(-bound, bound, size=(out_channels,)) if bias else None
        else:
            self.weight = np.zeros(shape, self.dtype)
            self.bias = np.zeros(out_channels, self.dtype) if bias else None

    # Caches of derived state, rebuilt on demand (a deep copy or an unpickled layer
    # starts them empty; an empty _plan_generation makes _resolve build a new cache).
    _CACHES = ("_prepared", "_resolved", "_plan_generation")

    @property
    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _weight_changed(self):
        self._prepared = {}            # every algorithm's prepared weights are stale now
        self._plan_generation = None   # and so is every operator

    def _bias_changed(self):
        self._plan_generation = None   # operators hold the bias

    def op_params(self, input_shape, dtype=None):
        """The ConvParams this layer computes on a 4-D ``input_shape`` (validated; the
        dtype is the layer's own, ``dtype`` is accepted for the pooling layers' sake)."""
        return _shapes.conv_params(input_shape, self._weight.shape, self.stride, self.padding,
                                   self.dilation, self.groups, self.padding_mode, str(self.dtype))

    def _resolve(self, input_shape, threads):
        """The ConvOperator for this input shape, built once and cached (the
        RESOLVED_CACHE_SIZE most recently used shapes: functools' C LRU, so a hit
        costs what a dict look-up does). A new plan, new weights, bias or fused_relu
        start a new cache."""
        generation = _plan.generation()
        if generation != self._plan_generation:
            self._resolved = functools.lru_cache(RESOLVED_CACHE_SIZE)(self._operator)
            self._plan_generation = generation
        return self._resolved(tuple(input_shape), threads, self.algorithm, self.fused_relu)

    def _operator(self, input_shape, threads, algorithm, relu):
        p = self.op_params(input_shape)
        choice = _dispatch.choose(p, algorithm, threads)
        _log.debug("Conv2d %s at %d thread(s): %s (%s: %s)", _plan.describe_key(p.key()), threads,
                   choice.algorithm, choice.source, choice.reason)
        return ConvOperator(p, choice, self._weight, self._bias, relu=relu, num_threads=threads,
                            prepared=self.prepared_weight(choice.algorithm, p))

    def prepared_weight(self, algorithm, p):
        """The weights as ``algorithm`` consumes them, computed once per weights."""
        prepared = self._prepared.get(algorithm)
        if prepared is None:
            prepared = _registry.REGISTRY[algorithm].prepare_weight(self._weight, p)
            self._prepared[algorithm] = prepared
        return prepared

    def forward(self, x):
        """Convolve ``x`` (N, C_in, H, W) or (C_in, H, W); relu too when fused_relu."""
        x4, dtype, unbatched = F.input_4d(x, "Conv2d")
        if dtype != self.dtype:
            raise TypeError(f"Conv2d: input dtype ({dtype}) and weight dtype ({self.dtype}) "
                            f"should be the same")
        out = self._resolve(x4.shape, get_num_threads())(x4)
        return out[0] if unbatched else out

    def explain(self, input_shape):
        """Which algorithm a call on ``input_shape`` uses, and why (see engine.explain)."""
        shape = tuple(input_shape)
        if len(shape) == 3:
            shape = (1, *shape)
        op = self._resolve(shape, get_num_threads())
        return describe_choice(op.params, op.choice)

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
        if self.fused_relu:
            s += ", fused_relu=True"
        return s


class _PoolLayer(Module):
    """What MaxPool2d and AvgPool2d share: one PoolOperator per input shape, in an LRU
    keyed by everything the operator depends on (the input's shape and dtype, the
    thread count and the layer's hyper-parameters, so assigning one is safe)."""
    _OP = None                         # "max_pool2d" | "avg_pool2d"
    _CACHES = ("_operators",)

    def _hyper(self):
        raise NotImplementedError

    def _options(self):
        """The PoolOperator's keyword arguments besides the params."""
        return {}

    def op_params(self, input_shape, dtype="float32"):
        """The PoolParams this layer computes on a 4-D ``input_shape`` (validated)."""
        kernel, stride, padding, dilation, ceil_mode = self._hyper()[:5]
        return _shapes.pool_params(self._OP, tuple(input_shape), kernel, stride, padding, dilation,
                                   ceil_mode, str(np.dtype(dtype)))

    def explain(self, input_shape):
        """Which algorithm a call on ``input_shape`` uses (see engine.explain)."""
        return _explain_pool(self, input_shape)

    def _operator(self, x4, threads):
        key = (x4.shape, x4.dtype.char, threads, self._hyper())
        op = self._operators.get(key)
        if op is None:
            op = F.pool_operator(self.op_params(x4.shape, x4.dtype), threads, **self._options())
            self._operators[key] = op
        return op

    def forward(self, x):
        """Pool ``x`` (N, C, H, W) or (C, H, W); (output, indices) for a max pool with
        return_indices."""
        x4, _, unbatched = F.input_4d(x, self._OP)
        out = self._operator(x4, get_num_threads())(x4)
        if not unbatched:
            return out
        return tuple(o[0] for o in out) if isinstance(out, tuple) else out[0]


class MaxPool2d(_PoolLayer):
    """2-D max pooling layer, as ``torch.nn.MaxPool2d``."""
    _OP = "max_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = _shapes.pool_window(
            "MaxPool2d", kernel_size, stride, padding, dilation)
        self.return_indices = F.check_bool(return_indices, "return_indices", "MaxPool2d")
        self.ceil_mode = F.check_bool(ceil_mode, "ceil_mode", "MaxPool2d")
        self._operators = LRU(RESOLVED_CACHE_SIZE)

    def _hyper(self):
        return (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                self.return_indices)

    def _options(self):
        return {"return_indices": F.check_bool(self.return_indices, "return_indices", "MaxPool2d")}

    def __repr__(self):
        return (f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode})")


class AvgPool2d(_PoolLayer):
    """2-D average pooling layer, as ``torch.nn.AvgPool2d``."""
    _OP = "avg_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding, _ = _shapes.pool_window(
            "AvgPool2d", kernel_size, stride, padding, 1)
        self.ceil_mode = F.check_bool(ceil_mode, "ceil_mode", "AvgPool2d")
        self.count_include_pad = F.check_bool(count_include_pad, "count_include_pad", "AvgPool2d")
        F.check_divisor_override(divisor_override, "AvgPool2d")
        self.divisor_override = divisor_override
        self._operators = LRU(RESOLVED_CACHE_SIZE)

    def _hyper(self):
        return (self.kernel_size, self.stride, self.padding, 1, self.ceil_mode,
                self.count_include_pad, self.divisor_override)

    def _options(self):
        return {"count_include_pad": F.check_bool(self.count_include_pad, "count_include_pad", "AvgPool2d"),
                "divisor_override": F.check_divisor_override(self.divisor_override, "AvgPool2d")}

    def __repr__(self):
        return (f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad})")


def _explain_pool(layer, input_shape):
    shape = tuple(input_shape)
    p = layer.op_params(shape if len(shape) == 4 else (1, *shape))
    return describe_choice(p, _dispatch.choose(p, None, get_num_threads()))


# ----------------------------------------------------------- what networks need around
def _check_dtype(dtype, op):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_array(x, op):
    """``x`` as a native-byte-order array (big-endian input is converted, as for
    convolutions); TypeError for anything but a float32/float64 ndarray."""
    return np.asarray(x, dtype=_shapes.float_dtype(x, "input", op))


def _positive_int(v, name, op):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {v!r}")
    if v <= 0:
        raise ValueError(f"{op}: {name} must be positive, got {v}")
    return int(v)


class Identity(Module):
    """Returns its input unchanged, as ``torch.nn.Identity`` (fusion leaves these where
    a BatchNorm or ReLU was folded away, so child indices and key names stay put)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        """``x`` itself."""
        return x


class ReLU(Module):
    """max(x, 0) elementwise, as ``torch.nn.ReLU`` (NaN stays NaN). ``inplace`` is
    accepted for compatibility and ignored: the input array is never modified."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        """A new array max(x, 0)."""
        return np.maximum(_check_array(x, "ReLU"), 0)


class Dropout(Module):
    """``torch.nn.Dropout`` at inference: the identity (``p`` is kept for repr only)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p, self.inplace = float(p), bool(inplace)

    def forward(self, x):
        """``x`` itself (the engine only infers)."""
        return x

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """Flattens dimensions ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``
    (a view when the input is contiguous)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"Flatten: {name} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        """``x`` reshaped with dimensions start_dim..end_dim merged."""
        x = _check_array(x, "Flatten")
        nd = max(x.ndim, 1)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not "
                             f"fit an input of shape {x.shape}")
        return x.reshape(*x.shape[:s], -1, *x.shape[e + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Linear(_WeightAndBias):
    """y = x @ weight.T + bias, as ``torch.nn.Linear``; numpy's matmul (BLAS) computes it.

    ``weight`` is (out_features, in_features), ``bias`` (out_features,) or None, both
    read-only copies as in ``Conv2d``; initialised like PyTorch (U(-1/sqrt(in),
    1/sqrt(in))) from ``seed`` or ``engine.manual_seed``'s generator, or zero-filled
    with ``init=False``. State-dict keys: ``weight``, ``bias``.

    Fewer than ``THREADED_ROWS`` input rows make a matrix-vector-like product bound by
    reading the weights: threaded BLAS does not speed it up, and its threads collide
    with the convolutions' OpenMP team still spinning (measured: 512->1000 at batch 1
    0.2 ms on one BLAS thread, 11 ms threaded; VGG's 25088->4096 at batch 8 110 ms vs
    350 ms), so such products run with the BLAS pool held at one thread.
    """
    THREADED_ROWS = 32

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None,
                 init=True):
        super().__init__()
        op = "Linear"
        self.in_features = _positive_int(in_features, "in_features", op)
        self.out_features = _positive_int(out_features, "out_features", op)
        self.dtype = _check_dtype(dtype, op)
        shape = (self.out_features, self.in_features)
        self._weight = self._bias = None
        if _check_init(init, op):
            rng = _rng(seed)
            bound = 1.0 / math.sqrt(self.in_features)
            self.weight = rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            self.bias = rng.uniform(-bound, bound, size=shape[0]).astype(self.dtype) if bias else None
        else:
            self.weight = np.zeros(shape, self.dtype)
            self.bias = np.zeros(shape[0], self.dtype) if bias else None

    @property
    def _weight_shape(self):
        return (self.out_features, self.in_features)

    def forward(self, x):
        """x (..., in_features) -> (..., out_features)."""
        x = _check_array(x, "Linear")
        if x.dtype != self.dtype:
            raise TypeError(f"Linear: input dtype ({x.dtype}) and weight dtype ({self.dtype}) "
                            f"should be the same")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected an input whose last dimension is {self.in_features}, "
                             f"got shape {x.shape}")
        rows = x.size // self.in_features
        if rows < self.THREADED_ROWS:
            with blas_single_threaded():
                out = np.matmul(x, self._weight.T)
        else:
            out = np.matmul(x, self._weight.T)
        if self._bias is not None:
            out += self._bias
        return out


    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._bias is not None}")


class BatchNorm2d(Module):
    """``torch.nn.BatchNorm2d`` at inference: per channel c,
    y = (x - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c].

    With ``track_running_stats=False`` the statistics are the input's own (biased
    variance over N, H, W), as PyTorch does then even in eval mode. ``momentum`` is
    kept for compatibility (the engine does not train). State-dict keys: ``weight``,
    ``bias`` (if affine), ``running_mean``, ``running_var``, ``num_batches_tracked``
    (if track_running_stats). ``engine.fuse`` folds it into the preceding Conv2d.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 *, dtype=np.float32):
        super().__init__()
        op = "BatchNorm2d"
        self.num_features = _positive_int(num_features, "num_features", op)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or eps < 0:
            raise ValueError(f"{op}: eps must be a non-negative number, got {eps!r}")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.dtype = _check_dtype(dtype, op)
        c = self.num_features
        self.weight = np.ones(c, self.dtype) if self.affine else None
        self.bias = np.zeros(c, self.dtype) if self.affine else None
        if self.track_running_stats:
            self.running_mean = np.zeros(c, self.dtype)
            self.running_var = np.ones(c, self.dtype)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    _STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def _own_state(self):
        return {k: getattr(self, k) for k in self._STATE if getattr(self, k) is not None}

    def _convert_own(self, name, value):
        dtype = np.int64 if name == "num_batches_tracked" else self.dtype
        return np.array(value, dtype=dtype)

    def _load_own(self, name, value):
        setattr(self, name, value)

    def scale_shift(self, x=None):
        """(scale, shift), float64 per channel, so that BN(x) = x * scale + shift.

        Needs ``x`` only without running statistics (to take the batch's own)."""
        if self.track_running_stats:
            mean = self.running_mean.astype(np.float64)
            var = self.running_var.astype(np.float64)
        else:
            if x is None:
                raise ValueError("BatchNorm2d without running statistics needs the input")
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
            var = x.var(axis=(0, 2, 3), dtype=np.float64)
        scale = 1.0 / np.sqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        return scale, shift

    def forward(self, x):
        """Normalise x (N, C, H, W) per channel."""
        x = _check_array(x, "BatchNorm2d")
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected a 4-D (N, C, H, W) input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d: expected {self.num_features} channels, got input of "
                             f"shape {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"BatchNorm2d: input dtype ({x.dtype}) and parameter dtype "
                            f"({self.dtype}) should be the same")
        scale, shift = self.scale_shift(x)
        out = x * scale.astype(x.dtype)[:, None, None]
        out += shift.astype(x.dtype)[:, None, None]
        return out

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d``: output cell (i, j) averages input rows
    floor(i*H/OH) .. ceil((i+1)*H/OH) - 1 (and likewise columns). ``output_size`` is an
    int or a pair whose entries may be None (keep that input size). When the input
    divides evenly this is an AvgPool2d with kernel = stride = H/OH, run by the
    compiled pooling kernel."""

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, (list, tuple)):
            if len(output_size) != 2:
                raise ValueError(f"AdaptiveAvgPool2d: output_size must be an int or a pair, "
                                 f"got {output_size!r}")
            size = tuple(output_size)
        else:
            size = (output_size, output_size)
        for s in size:
            if s is not None:
                _positive_int(s, "output_size", "AdaptiveAvgPool2d")
        self.output_size = tuple(None if s is None else int(s) for s in size)

    def op_params(self, input_shape, dtype="float32"):
        """The PoolParams of the average pool this layer runs on a 4-D ``input_shape``
        when the output size divides the input (then it is one), else None (the
        uneven windows are averaged in numpy)."""
        n, c, h, w = input_shape
        oh = h if self.output_size[0] is None else self.output_size[0]
        ow = w if self.output_size[1] is None else self.output_size[1]
        if h % oh or w % ow:
            return None
        k = (h // oh, w // ow)
        return _shapes.pool_params("avg_pool2d", tuple(input_shape), k, k, 0, 1, False,
                                   str(np.dtype(dtype)))

    def forward(self, x):
        """Average-pool ``x`` (N, C, H, W) or (C, H, W) to output_size."""
        x4, dtype, unbatched = F.input_4d(x, "AdaptiveAvgPool2d")
        n, c, h, w = x4.shape
        oh = h if self.output_size[0] is None else self.output_size[0]
        ow = w if self.output_size[1] is None else self.output_size[1]
        if h % oh == 0 and w % ow == 0:
            out = F.avg_pool2d(x4, (h // oh, w // ow))
        else:
            out = np.empty((n, c, oh, ow), dtype)
            for i in range(oh):
                h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
                for j in range(ow):
                    w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                    out[:, :, i, j] = x4[:, :, h0:h1, w0:w1].mean(axis=(2, 3), dtype=np.float64)
        return out[0] if unbatched else out

    def extra_repr(self):
        size = self.output_size
        return f"output_size={size[0] if size[0] == size[1] else size}"
