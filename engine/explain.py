"""``engine.explain``: which algorithm a convolution uses, and why."""
import numbers

from . import shapes as _shapes
from .graph import Graph
from .layers import AvgPool2d, Conv2d, MaxPool2d

_CONV_DEFAULTS = dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                      dtype="float32", algorithm=None)


def explain(layer_or_params, input_shape):
    """Say which algorithm computes a layer on ``input_shape`` and where that came from.

    ``layer_or_params`` is a Conv2d/MaxPool2d/AvgPool2d layer, a ``Graph`` (a list of
    such dicts, one per convolution node, see ``Graph.explain``), or a dict with
    Conv2d's arguments (in_channels, out_channels, kernel_size and optionally stride,
    padding, dilation, groups, padding_mode, dtype, algorithm). Returns a dict with
    "algorithm", "source" ("forced", "plan" or "heuristic"), "reason", "params" (the
    resolved shape key) and "applicable" (every algorithm that could compute it).
    """
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape):
        raise TypeError(f"explain: input_shape must be a tuple of ints, got {input_shape!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"explain: input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    if len(shape) == 3:
        shape = (1, *shape)
    if isinstance(layer_or_params, Conv2d):
        return layer_or_params.explain(shape)
    if isinstance(layer_or_params, Graph):     # one entry per convolution it runs
        return layer_or_params.explain(shape)
    if isinstance(layer_or_params, (MaxPool2d, AvgPool2d)):
        op = "max_pool2d" if isinstance(layer_or_params, MaxPool2d) else "avg_pool2d"
        l = layer_or_params
        p = _shapes.pool_params(op, shape, l.kernel_size, l.stride, l.padding,
                                getattr(l, "dilation", 1), l.ceil_mode, "float32")
        return {"algorithm": "pool", "source": "heuristic",
                "reason": "pooling has one kernel", "params": p.key(), "applicable": ["pool"]}
    if isinstance(layer_or_params, dict):
        args = {**_CONV_DEFAULTS, **layer_or_params}
        unknown = set(args) - set(_CONV_DEFAULTS) - {"in_channels", "out_channels", "kernel_size"}
        if unknown:
            raise ValueError(f"explain: unknown convolution parameter(s) {sorted(unknown)}")
        missing = {"in_channels", "out_channels", "kernel_size"} - set(args)
        if missing:
            raise ValueError(f"explain: the parameter dict needs {sorted(missing)}")
        # The layer itself validates the parameters and resolves the choice, so a dict
        # is explained exactly as the layer it describes (no weights are drawn).
        return Conv2d(**args, bias=False, init=False).explain(shape)
    raise TypeError(f"explain: expected a layer or a dict of Conv2d parameters, "
                    f"got {type(layer_or_params).__name__}")
