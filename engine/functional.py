"""conv2d, max_pool2d, avg_pool2d on numpy arrays, with PyTorch's semantics.

Each function validates once (types here, shapes and parameters in ``shapes``), picks
an algorithm (``dispatch``) and runs a compiled kernel into a freshly allocated output.
Kernels never see bad input: everything that can be wrong is caught here first.
"""
import numbers

import numpy as np

from . import registry as _registry
from . import dispatch as _dispatch
from . import shapes as _shapes
from .kernels import padding as _padding
from .kernels import pool as _pool
from .threads import get_num_threads

_PAD_MODE_CODES = {"zeros": _padding.PAD_ZEROS, "reflect": _padding.PAD_REFLECT,
                   "replicate": _padding.PAD_REPLICATE, "circular": _padding.PAD_CIRCULAR}
_float_dtype = _shapes.float_dtype


# ------------------------------------------------------------------------ arrays


def as_kernel_array(a, dtype):
    """C-contiguous, native byte order, ``dtype``: what the kernels take. No copy when
    ``a`` already is (read-only arrays are fine: kernels take const views)."""
    return np.ascontiguousarray(a, dtype=dtype)


def input_4d(x, op):
    """(input as a 4-D kernel array, dtype, whether it was unbatched)."""
    dtype = _float_dtype(x, "input", op)
    if x.ndim == 3:
        return as_kernel_array(x, dtype)[None], dtype, True
    if x.ndim == 4:
        return as_kernel_array(x, dtype), dtype, False
    raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, "
                     f"got an array of shape {x.shape}")


def conv_weight_and_bias(weight, bias, dtype, op="conv2d"):
    """Check weight/bias types against the input dtype; return kernel arrays."""
    w_dtype = _float_dtype(weight, "weight", op)
    if w_dtype != dtype:
        raise TypeError(f"{op}: input dtype ({dtype}) and weight dtype ({w_dtype}) should be the same")
    if weight.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D weight (out_channels, in_channels/groups, kH, kW), "
                         f"got shape {weight.shape}")
    if bias is not None:
        b_dtype = _float_dtype(bias, "bias", op)
        if b_dtype != dtype:
            raise TypeError(f"{op}: input dtype ({dtype}) and bias dtype ({b_dtype}) should be the same")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: expected bias of shape ({weight.shape[0]},) for "
                             f"{weight.shape[0]} output channels, got {bias.shape}")
        bias = as_kernel_array(bias, dtype)
    return as_kernel_array(weight, dtype), bias


def _batched_result(out, unbatched):
    return out[0] if unbatched else out


# ------------------------------------------------------------------- convolution
def conv_setup(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    """Validate a convolution call: (x4d, weight, bias, ConvParams, unbatched)."""
    x, dtype, unbatched = input_4d(input, "conv2d")
    weight, bias = conv_weight_and_bias(weight, bias, dtype)
    p = _shapes.conv_params(x.shape, weight.shape, stride, padding, dilation, groups,
                            padding_mode, str(dtype))
    return x, weight, bias, p, unbatched


def apply_padding_mode(x, p, num_threads):
    """Reflect/replicate/circular padding as one compiled pass; zeros is left to the
    kernels, which skip the taps outside the input without any copy."""
    if p.padding_mode == "zeros" or max(p.pads) == 0:
        return x
    top, bottom, left, right = p.pads
    padded = np.empty((p.n, p.c_in, p.h + top + bottom, p.w + left + right), dtype=x.dtype)
    _padding.pad2d(x, padded, top, left, _PAD_MODE_CODES[p.padding_mode], num_threads)
    return padded


def run_conv(x, prepared_weight, bias, p, algorithm, num_threads, relu=False, params=None):
    """Compute ConvParams ``p`` with the named algorithm (and its checked kernel
    ``params``); ``prepared_weight`` is what that algorithm's ``prepare_weight``
    returned. Returns the 4-D output."""
    out = np.empty(p.output_shape, dtype=x.dtype)
    if p.n == 0:
        return out
    x = apply_padding_mode(x, p, num_threads)
    _registry.REGISTRY[algorithm](x, prepared_weight, bias, out, p, num_threads, relu, params)
    return out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros", *, algorithm=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` (plus ``padding_mode``
    as in ``nn.Conv2d``).

    input (N, C_in, H, W) or (C_in, H, W); weight (C_out, C_in/groups, kH, kW); bias
    (C_out,) or None; all float32 or all float64. ``algorithm`` forces one of
    ``engine.algorithms()``; otherwise a plan entry or the heuristic decides.
    Returns (N, C_out, OH, OW) (or (C_out, OH, OW)) with
    OH = floor((H + pad_top + pad_bottom - dilation*(kH-1) - 1) / stride) + 1.
    """
    x, weight, bias, p, unbatched = conv_setup(input, weight, bias, stride, padding,
                                               dilation, groups, padding_mode)
    threads = get_num_threads()
    choice = _dispatch.choose(p, algorithm, threads)
    algo = _registry.REGISTRY[choice.algorithm]
    prepared = algo.prepare_weight(weight, p)
    out = run_conv(x, prepared, bias, p, choice.algorithm, threads, params=choice.params)
    return _batched_result(out, unbatched)


# ------------------------------------------------------------------------ pooling
def check_bool(value, name, op):
    if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, numbers.Integral) and value in (0, 1)):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return bool(value)


def pool_setup(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    x, dtype, unbatched = input_4d(input, op)
    ceil_mode = check_bool(ceil_mode, "ceil_mode", op)
    p = _shapes.pool_params(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode, str(dtype))
    return x, p, unbatched


def run_max_pool(x, p, return_indices, num_threads):
    n, c, oh, ow = p.output_shape
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    indices = np.empty((n, c, oh, ow), dtype=np.int64) if return_indices else None
    if n > 0:
        _pool.max_pool2d(x.reshape(n * c, p.h, p.w), out.reshape(n * c, oh, ow),
                         None if indices is None else indices.reshape(n * c, oh, ow),
                         p.kernel[0], p.kernel[1], p.stride[0], p.stride[1],
                         p.padding[0], p.padding[1], p.dilation[0], p.dilation[1], num_threads)
    return out, indices


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf; NaN propagates; ``return_indices`` also returns int64
    indices into each flattened H*W input plane (the first maximum, or the last NaN).
    """
    op = "max_pool2d"
    return_indices = check_bool(return_indices, "return_indices", op)
    x, p, unbatched = pool_setup(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    out, indices = run_max_pool(x, p, return_indices, get_num_threads())
    if return_indices:
        return _batched_result(out, unbatched), _batched_result(indices, unbatched)
    return _batched_result(out, unbatched)


def check_divisor_override(divisor_override, op="avg_pool2d"):
    if divisor_override is None:
        return 0
    if isinstance(divisor_override, bool) or not isinstance(divisor_override, numbers.Integral):
        raise TypeError(f"{op}: divisor_override must be None or an int, got {divisor_override!r}")
    if divisor_override == 0:
        raise ValueError(f"{op}: divisor_override must not be zero")
    if abs(divisor_override) > _shapes.INT_LIMIT:
        raise ValueError(f"{op}: divisor_override={divisor_override} is out of range")
    return int(divisor_override)


def run_avg_pool(x, p, count_include_pad, divisor, num_threads):
    n, c, oh, ow = p.output_shape
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    if n > 0:
        _pool.avg_pool2d(x.reshape(n * c, p.h, p.w), out.reshape(n * c, oh, ow),
                         p.kernel[0], p.kernel[1], p.stride[0], p.stride[1],
                         p.padding[0], p.padding[1], count_include_pad, divisor, num_threads)
    return out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Each window is divided by ``divisor_override`` if given, else by its size counting
    the zero padding (``count_include_pad``) or only the input elements it covers.
    """
    op = "avg_pool2d"
    count_include_pad = check_bool(count_include_pad, "count_include_pad", op)
    divisor = check_divisor_override(divisor_override, op)
    x, p, unbatched = pool_setup(op, input, kernel_size, stride, padding, 1, ceil_mode)
    out = run_avg_pool(x, p, count_include_pad, divisor, get_num_threads())
    return _batched_result(out, unbatched)
