"""``engine.explain``: which algorithm a convolution or pooling uses, and why."""
import numbers

from . import dispatch as _dispatch
from . import registry as _registry
from . import shapes as _shapes
from .threads import get_num_threads

_CONV_DEFAULTS = dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                      dtype="float32", algorithm=None)
_REQUIRED = ("in_channels", "out_channels", "kernel_size")


def describe_choice(p, choice):
    """The explain dict of ``choice`` (a dispatch.Choice) for ConvParams/PoolParams ``p``."""
    return {**choice.as_dict(), "params": p.key(),
            "kernels": _registry.REGISTRY[choice.algorithm].kernels(p),
            "applicable": _registry.applicable(p)}


def _conv_dict_params(args, shape):
    """(ConvParams, forced algorithm) from a dict of Conv2d's arguments."""
    args = {**_CONV_DEFAULTS, **args}
    unknown = set(args) - set(_CONV_DEFAULTS) - set(_REQUIRED)
    if unknown:
        raise ValueError(f"explain: unknown convolution parameter(s) {sorted(unknown)}")
    missing = set(_REQUIRED) - set(args)
    if missing:
        raise ValueError(f"explain: the parameter dict needs {sorted(missing)}")
    a = _shapes.conv_layer_args(args["in_channels"], args["out_channels"], args["kernel_size"],
                                args["stride"], args["padding"], args["dilation"], args["groups"],
                                args["padding_mode"], args["dtype"], "Conv2d")
    if args["algorithm"] is not None:
        _registry.get(args["algorithm"], "conv")
    p = _shapes.conv_params(shape, a.weight_shape, a.stride, a.padding, a.dilation, a.groups,
                            a.padding_mode, str(a.dtype))
    return p, args["algorithm"]


def explain(layer_or_params, input_shape):
    """Say which algorithm computes a layer on ``input_shape`` and where that came from.

    ``layer_or_params`` is a layer with an ``explain`` method (Conv2d, MaxPool2d,
    AvgPool2d), or a dict with Conv2d's arguments (in_channels, out_channels,
    kernel_size and optionally stride, padding, dilation, groups, padding_mode, dtype,
    algorithm). Returns a dict with "algorithm", "source" ("forced", "plan" or
    "heuristic"), "reason", "kernel_params", "kernels" (what runs, and on which ISA),
    "params" (the resolved shape key) and "applicable" (every algorithm that could
    compute it).
    """
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape):
        raise TypeError(f"explain: input_shape must be a tuple of ints, got {input_shape!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"explain: input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    if len(shape) == 3:
        shape = (1, *shape)
    if isinstance(layer_or_params, dict):
        # Validated and resolved exactly as the layer it describes (no weights drawn).
        p, forced = _conv_dict_params(layer_or_params, shape)
        return describe_choice(p, _dispatch.choose(p, forced, get_num_threads()))
    if callable(getattr(layer_or_params, "explain", None)) and not isinstance(layer_or_params, type):
        return layer_or_params.explain(shape)
    raise TypeError(f"explain: expected a layer or a dict of Conv2d parameters, "
                    f"got {type(layer_or_params).__name__}")
