"""``from_torch``: a PyTorch module tree as engine layers with the same weights.

PyTorch is imported here only, and only when ``from_torch`` is called.
"""
from collections import OrderedDict

import numpy as np

from . import layers as L
from . import models as _models
from .module import Module, Sequential

# torchvision-style classes rebuilt as the engine's own, matched by class name. Each
# names the children its engine forward uses (None: optional, may be absent/None).
_STRUCTURES = {
    "BasicBlock": (_models.BasicBlock, {"conv1", "bn1", "relu", "conv2", "bn2"}, {"downsample"}),
    "Bottleneck": (_models.Bottleneck, {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"},
                   {"downsample"}),
    "ResNet": (_models.ResNet, {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                "layer4", "avgpool", "fc"}, set()),
    "VGG": (_models.VGG, {"features", "avgpool", "classifier"}, set()),
    "MobileNetV1": (_models.MobileNetV1, {"features", "avgpool", "fc"}, set()),
}


def _unsupported(path, m, why=""):
    cls = type(m)
    where = path or "<root>"
    return TypeError(f"from_torch: unsupported module {where!r} ({cls.__module__}.{cls.__qualname__})"
                     + (f": {why}" if why else ""))


def _leaf(nn, m, dtype):
    """The engine layer for a supported torch leaf, parameters zero-filled; or None."""
    def plain(cls):   # an instance of cls whose forward is cls's own
        return isinstance(m, cls) and type(m).forward is cls.forward

    if plain(nn.Conv2d):
        return L.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, m.bias is not None, m.padding_mode, dtype=dtype,
                        init=False)
    if plain(nn.Linear):
        return L.Linear(m.in_features, m.out_features, m.bias is not None, dtype=dtype, init=False)
    if plain(nn.BatchNorm2d):
        return L.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine,
                             m.track_running_stats and m.running_mean is not None, dtype=dtype)
    if plain(nn.ReLU):
        return L.ReLU(m.inplace)
    if plain(nn.MaxPool2d):
        return L.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                           m.ceil_mode)
    if plain(nn.AvgPool2d):
        return L.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                           m.divisor_override)
    if plain(nn.AdaptiveAvgPool2d):
        return L.AdaptiveAvgPool2d(m.output_size)
    if plain(nn.Flatten):
        return L.Flatten(m.start_dim, m.end_dim)
    if plain(nn.Dropout):
        return L.Dropout(m.p, m.inplace)
    if plain(nn.Identity):
        return L.Identity()
    return None


def _convert(nn, m, path, dtype):
    try:
        layer = _leaf(nn, m, dtype)
    except (TypeError, ValueError) as e:
        raise _unsupported(path, m, str(e)) from None
    if layer is not None:
        return layer
    kids = list(m.named_children())

    def sub(name, child):
        return None if child is None else _convert(nn, child, f"{path}.{name}" if path else name, dtype)

    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
        return Sequential(OrderedDict((name, sub(name, c)) for name, c in kids))
    structure = _STRUCTURES.get(type(m).__name__)
    if structure is not None:
        cls, required, optional = structure
        names = {n for n, _ in kids}
        if required <= names and names <= required | optional:
            out = cls.__new__(cls)
            Module.__init__(out)
            for name in sorted(optional):
                setattr(out, name, None)
            for name, child in kids:
                setattr(out, name, sub(name, child))
            return out
        raise _unsupported(path, m, f"its children {sorted(names)} are not those of the "
                                    f"engine's {cls.__name__} ({sorted(required)})")
    raise _unsupported(path, m)


def from_torch(module, dtype=None):
    """Convert a ``torch.nn.Module`` tree into engine layers holding the same weights.

    Supported: Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d, Flatten, Dropout, Identity; Sequential (nested, with its child
    names); and modules whose class is named BasicBlock, Bottleneck, ResNet, VGG or
    MobileNetV1 with the children of torchvision's (or ``engine.models``') structure,
    rebuilt as the ``engine.models`` class. Any other model is traced with torch.fx
    into an ``engine.nn.graph.Graph`` (``engine.nn.fx_trace``: the same layers plus the
    functions and tensor methods CNNs call); what cannot be traced or uses something
    unsupported is a TypeError naming the node and suggesting ONNX export. The result
    computes what ``module`` does in eval mode (BatchNorm with running statistics,
    Dropout off) and has the same state_dict keys. ``dtype`` (float32 or float64)
    defaults to that of the module's first floating-point parameter, float64 staying
    float64 and the rest float32.
    """
    import torch
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    if dtype is None:
        dtype = np.float32
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                dtype = np.float64 if t.dtype == torch.float64 else np.float32
                break
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"from_torch: dtype must be float32 or float64, got {dtype}")
    try:
        out = _convert(nn, module, "", dtype)
    except TypeError:
        # Classes the engine does not rebuild by name: trace the model into a Graph.
        from .fx_trace import trace
        return trace(module, dtype)
    with torch.no_grad():
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    # numpy has no bfloat16: such tensors go through float32 (layers cast to dtype).
    out.load_state_dict({k: v.float() if v.is_floating_point() and v.dtype not in
                         (torch.float32, torch.float64) else v for k, v in state.items()})
    return out.eval()
