"""Operators: one prepared convolution or pooling call, run as ``op(x, out=None)``.

In the spirit of XNNPACK's create / setup / run: an operator is built once from the
resolved parameters (``shapes.ConvParams`` / ``PoolParams``) and a ``dispatch.Choice``,
and holds everything a call needs that does not depend on the input's values: the
weights as the algorithm consumes them (``Algorithm.prepare_weight``: e.g.
Winograd-transformed), the bias, the fused activation, the checked kernel parameters
and the thread count. Running it only checks the arrays against what it was built for,
applies a non-zero padding mode (one compiled pass; the kernels see zero padding only)
and calls the registry's kernel into ``out``.

``functional``, the layers (which keep one operator per input shape), the tuner's
candidates, ``convtune bench`` and the benchmarks all build operators; nothing else
calls a kernel. ``add_relu_`` is the one elementwise operation with a kernel of its
own (a residual block's end), a function since it holds nothing.
"""
import numpy as np

from . import plan as _plan
from ._memory import allocator_for, empty_aligned
from . import registry as _registry
from . import shapes as _shapes
from .kernels import elementwise as _elementwise
from .kernels import padding as _padding
from .threads import get_num_threads

_PAD_MODE_CODES = {"zeros": _padding.PAD_ZEROS, "reflect": _padding.PAD_REFLECT,
                   "replicate": _padding.PAD_REPLICATE, "circular": _padding.PAD_CIRCULAR}


def _check_array(a, shape, dtype, what, op):
    """``a`` must be exactly what the kernel was prepared for (C-contiguous, native)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {what} must be a numpy.ndarray, got {type(a).__name__}")
    if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"{op}: {what} must be a C-contiguous {dtype} array of shape {shape} "
                         f"(what this operator was built for), got {a.dtype} {a.shape}"
                         f"{'' if a.flags.c_contiguous else ', not C-contiguous'}")


def _check_out(out, shape, dtype, op):
    _check_array(out, shape, dtype, "out", op)
    if not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    return out


def _resolve_threads(num_threads):
    return get_num_threads() if num_threads is None else int(num_threads)


class ConvOperator:
    """One convolution: ConvParams ``p`` computed with ``choice`` (a dispatch.Choice or
    an algorithm name, then with automatic kernel parameters).

    ``weight`` (C_out, C_in/groups, kH, kW) and ``bias`` (C_out,) or None are kernel
    arrays of ``p.dtype`` (``functional.conv_weight_and_bias``); ``prepared`` is the
    algorithm's ``prepare_weight(weight, p)`` when the caller caches it (a layer does),
    else it is computed here. ``relu`` fuses max(0, .) into the kernel's output stage.
    ``op(x, out=None)`` takes the 4-D input of ``p.input_shape`` and returns the 4-D
    output (``out`` when given, else a new array).
    """
    __slots__ = ("params", "algorithm", "choice", "prepared_weight", "bias", "relu",
                 "kernel_params", "num_threads", "_run", "_input_shape", "_dtype", "_pad",
                 "_empty")

    def __init__(self, p, choice, weight, bias=None, *, relu=False, prepared=None, num_threads=None):
        if not isinstance(p, _shapes.ConvParams):
            raise TypeError(f"ConvOperator needs ConvParams, got {type(p).__name__}")
        name, kernel_params = (choice, {}) if isinstance(choice, str) else (choice.algorithm, choice.params)
        algo = _registry.get(name, "conv")
        reason = algo.why_not(p)
        if reason is not None:
            raise ValueError(f"algorithm {name!r} cannot compute this convolution: {reason}")
        self.params, self.algorithm, self.choice = p, name, choice
        self.kernel_params = algo.check_params(kernel_params)
        self.prepared_weight = algo.prepare_weight(weight, p) if prepared is None else prepared
        self.bias, self.relu = bias, bool(relu)
        self.num_threads = _resolve_threads(num_threads)
        self._run = algo
        self._input_shape = (p.n, p.c_in, p.h, p.w)
        self._dtype = np.dtype(p.dtype)
        self._pad = p.padding_mode != "zeros" and max(p.pads) > 0
        self._empty = allocator_for(p.output_shape, self._dtype)

    def _padded(self, x):
        """Reflect/replicate/circular padding as one compiled pass; zeros is left to the
        kernels, which skip the taps outside the input without any copy."""
        p = self.params
        top, bottom, left, right = p.pads
        padded = empty_aligned((p.n, p.c_in, p.h + top + bottom, p.w + left + right), x.dtype)
        _padding.pad2d(x, padded, top, left, _PAD_MODE_CODES[p.padding_mode], self.num_threads)
        return padded

    def __call__(self, x, out=None):
        """Compute the convolution of ``x`` into ``out`` (allocated when None)."""
        p = self.params
        _check_array(x, self._input_shape, self._dtype, "input", "conv2d")
        if out is None:
            out = self._empty(p.output_shape, self._dtype)
        else:
            _check_out(out, p.output_shape, self._dtype, "conv2d")
        if p.n == 0:
            return out
        if self._pad:
            x = self._padded(x)
        self._run(x, self.prepared_weight, self.bias, out, p, self.num_threads, self.relu,
                  self.kernel_params)
        return out

    def __repr__(self):
        return (f"<ConvOperator {self.algorithm} {_plan.describe_key(self.params.key())}"
                f"{' +relu' if self.relu else ''}, {self.num_threads} thread(s)>")


class PoolOperator:
    """One max or average pooling: PoolParams ``p`` (``p.op`` "max_pool2d" or
    "avg_pool2d") with ``choice`` (a dispatch.Choice or an algorithm name).

    Average pooling divides each window by ``divisor_override`` when non-zero, else by
    its size counting the zero padding (``count_include_pad``) or not. Max pooling
    with ``return_indices`` returns (output, int64 indices into each flattened H*W
    input plane). ``op(x, out=None)`` as ConvOperator.
    """
    __slots__ = ("params", "algorithm", "choice", "count_include_pad", "divisor",
                 "return_indices", "num_threads", "_run", "_input_shape", "_dtype", "_empty")

    def __init__(self, p, choice, *, count_include_pad=True, divisor_override=0,
                 return_indices=False, num_threads=None):
        if not isinstance(p, _shapes.PoolParams):
            raise TypeError(f"PoolOperator needs PoolParams, got {type(p).__name__}")
        name = choice if isinstance(choice, str) else choice.algorithm
        algo = _registry.get(name, "pool")
        reason = algo.why_not(p)
        if reason is not None:
            raise ValueError(f"algorithm {name!r} cannot compute this pooling: {reason}")
        if return_indices and p.op != "max_pool2d":
            raise ValueError(f"{p.op}: return_indices is for max pooling only")
        self.params, self.algorithm, self.choice = p, name, choice
        self.count_include_pad = bool(count_include_pad)
        self.divisor = int(divisor_override or 0)
        self.return_indices = bool(return_indices)
        self.num_threads = _resolve_threads(num_threads)
        self._run = algo
        self._input_shape = (p.n, p.c, p.h, p.w)
        self._dtype = np.dtype(p.dtype)
        self._empty = allocator_for(p.output_shape, self._dtype)

    def __call__(self, x, out=None):
        """Pool ``x`` into ``out`` (allocated when None); (out, indices) with indices."""
        p = self.params
        _check_array(x, self._input_shape, self._dtype, "input", p.op)
        if out is None:
            out = self._empty(p.output_shape, self._dtype)
        else:
            _check_out(out, p.output_shape, self._dtype, p.op)
        indices = np.empty(p.output_shape, dtype=np.int64) if self.return_indices else None
        if p.n > 0:
            self._run.pool(x, out, indices, p, self.num_threads, self.count_include_pad,
                           self.divisor)
        return (out, indices) if self.return_indices else out

    def __repr__(self):
        return f"<PoolOperator {self.algorithm} {_plan.describe_key(self.params.key())}, {self.num_threads} thread(s)>"


def create(p, choice, weight=None, bias=None, *, relu=False, prepared=None, num_threads=None,
           count_include_pad=True, divisor_override=0, return_indices=False):
    """The operator for ``p`` (ConvParams or PoolParams) with ``choice``: ConvOperator
    or PoolOperator with the arguments that kind takes."""
    if isinstance(p, _shapes.ConvParams):
        if weight is None:
            raise ValueError("a convolution operator needs its weight")
        return ConvOperator(p, choice, weight, bias, relu=relu, prepared=prepared,
                            num_threads=num_threads)
    if isinstance(p, _shapes.PoolParams):
        return PoolOperator(p, choice, count_include_pad=count_include_pad,
                            divisor_override=divisor_override, return_indices=return_indices,
                            num_threads=num_threads)
    raise TypeError(f"expected ConvParams or PoolParams, got {type(p).__name__}")


def add_relu_(out, other, relu=True):
    """``out = relu?(out + other)`` in place (relu: ``np.maximum(v, 0)``, NaN stays NaN);
    returns ``out``. Two C-contiguous float arrays of one shape and dtype go through one
    pass on the kernel threads (``kernels.elementwise.add_relu``); anything else (numpy
    broadcasting, integers, strided or partly overlapping views) through numpy's
    ``out += other`` and ``np.maximum``. Bitwise the same either way."""
    if (type(out) is np.ndarray and type(other) is np.ndarray and out.shape == other.shape
            and out.dtype == other.dtype and out.dtype in (np.float32, np.float64)
            and out.flags.c_contiguous and other.flags.c_contiguous and out.flags.writeable
            and (out.ctypes.data == other.ctypes.data or not np.may_share_memory(out, other))):
        _elementwise.add_relu(out.reshape(-1), other.reshape(-1), relu, get_num_threads())
        return out
    out += other
    if relu:
        np.maximum(out, out.dtype.type(0), out=out)
    return out
