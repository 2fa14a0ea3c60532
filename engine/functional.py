"""conv2d, max_pool2d, avg_pool2d on numpy arrays, with PyTorch's semantics.

Each function validates once (types here, shapes and parameters in ``shapes``), picks
an algorithm (``dispatch``), builds its operator (``operator``: the weights prepared for
that algorithm) and runs it into a freshly allocated output. Kernels never see bad
input: everything that can be wrong is caught here first.
"""
import numbers

import numpy as np

from . import dispatch as _dispatch
from . import shapes as _shapes
from .operator import ConvOperator, PoolOperator
from .threads import get_num_threads

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
    op = ConvOperator(p, _dispatch.choose(p, algorithm, threads), weight, bias, num_threads=threads)
    return _batched_result(op(x), unbatched)


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


def pool_operator(p, num_threads, **options):
    """The PoolOperator for PoolParams ``p`` (its algorithm from ``dispatch``)."""
    return PoolOperator(p, _dispatch.choose(p, None, num_threads), num_threads=num_threads, **options)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf; NaN propagates; ``return_indices`` also returns int64
    indices into each flattened H*W input plane (the first maximum, or the last NaN).
    """
    op = "max_pool2d"
    return_indices = check_bool(return_indices, "return_indices", op)
    x, p, unbatched = pool_setup(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    result = pool_operator(p, get_num_threads(), return_indices=return_indices)(x)
    if return_indices:
        out, indices = result
        return _batched_result(out, unbatched), _batched_result(indices, unbatched)
    return _batched_result(result, unbatched)


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
    pool = pool_operator(p, get_num_threads(), count_include_pad=count_include_pad,
                         divisor_override=divisor)
    return _batched_result(pool(x), unbatched)
