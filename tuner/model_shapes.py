"""The convolution and pooling shapes a model runs, for ``convtune tune --model``.

Runs the model once on zeros with a forward hook on every layer that computes a
registered operation: a layer says which through its public ``op_params(input_shape,
dtype)`` (Conv2d, MaxPool2d, AvgPool2d, and AdaptiveAvgPool2d where it reduces to an
average pool). Nothing here reaches into the runtime's internals.
"""
import importlib
import json

import numpy as np

import engine


def resolve_model(spec):
    """The model a "package.module:name" string names (``name`` is called with no
    arguments when it is not already a Module), e.g. "engine.models:resnet18"."""
    if isinstance(spec, engine.Module):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"a model is named as 'package.module:function', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot find model {spec!r}: {e}") from None
    model = obj if isinstance(obj, engine.Module) else obj()
    if not isinstance(model, engine.Module):
        raise TypeError(f"{spec!r} gave a {type(model).__name__}, not an engine Module")
    return model


def _extras(layer):
    """What besides the shape a tuner needs to reproduce the layer's call."""
    if isinstance(layer, engine.Conv2d):
        return {"bias": layer.bias is not None, "relu": layer.fused_relu}
    if isinstance(layer, engine.AvgPool2d):
        return {"count_include_pad": layer.count_include_pad}
    if isinstance(layer, engine.AdaptiveAvgPool2d):
        return {"count_include_pad": True}
    return {}


def collect_shapes(model, input_shape, dtype=np.float32, details=False):
    """The distinct convolution and pooling shapes ``model`` runs on ``input_shape``.

    ``model`` is an engine Module, a zero-argument callable building one (e.g.
    ``engine.models.resnet18``) or a "package.module:function" string
    (``resolve_model``). Runs it once on zeros of ``input_shape`` (N, C, H, W) and
    ``dtype`` and records every call of a layer with ``op_params``. Returns a list, in
    first-call order and without duplicates, of dicts that are exactly
    ``ConvParams.key()`` (op "conv2d") or ``PoolParams.key()`` (op "max_pool2d" /
    "avg_pool2d") of ``engine.shapes``.

    With ``details=True`` each item is instead a dict with "key" (that dict),
    "params" (the ConvParams / PoolParams record), "names" (the dotted names of every
    layer that ran this shape) and, for convolutions, "bias" and "relu" (whether the
    layer has a bias and a fused ReLU), for average pools "count_include_pad".
    """
    if isinstance(model, str):
        model = resolve_model(model)
    elif not isinstance(model, engine.Module) and callable(model):
        model = model()
    if not isinstance(model, engine.Module):
        raise TypeError(f"collect_shapes expects an engine Module (or a function building one), "
                        f"got {type(model).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (3, 4) or min(shape) <= 0:
        raise ValueError(f"collect_shapes: input_shape must be (N, C, H, W) with positive sizes, "
                         f"got {input_shape!r}")
    found, order = {}, []
    names = {id(m): n for n, m in model.named_modules()}

    def hook(m, args, out):
        x = args[0]
        p = m.op_params(x.shape if x.ndim == 4 else (1, *x.shape), x.dtype)
        if p is None:
            return
        key = p.key()
        tag = json.dumps(key, sort_keys=True)
        if tag not in found:
            found[tag] = {"key": key, "params": p, "names": [], **_extras(m)}
            order.append(tag)
        if names[id(m)] not in found[tag]["names"]:
            found[tag]["names"].append(names[id(m)])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if callable(getattr(m, "op_params", None))]
    try:
        model(np.zeros(shape, dtype))
    finally:
        for h in handles:
            h.remove()
    return [found[t] if details else found[t]["key"] for t in order]
