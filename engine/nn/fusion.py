"""Inference fusion: BatchNorm folded into convolution weights, ReLU into the kernel.

``fuse(model)`` returns a copy of ``model`` in which

- every ``Conv2d`` directly followed by a ``BatchNorm2d`` with running statistics has
  the normalisation folded into its weights and bias,
      W'[o] = W[o] * s[o],  b'[o] = b[o] * s[o] + t[o],
      s = gamma / sqrt(running_var + eps),  t = beta - running_mean * s,
  and the BatchNorm is replaced by an ``Identity`` (so names and indices stay put);
- every ``Conv2d`` (after any folded BatchNorm) directly followed by a ``ReLU`` gets
  ``fused_relu = True``, so the kernel adds the bias and clamps in the same write
  that stores each output element, and the ReLU becomes an ``Identity``.

"Directly followed" is read off each container's forward: a ``Sequential`` runs its
children in order (Identity and Dropout between them are skipped, both are the
identity at inference); any other Module says what it allows by overriding
``Module._fuse`` with calls to ``fuse_conv`` (see ``engine.models``' blocks).
The fused model computes the same function up to float rounding, but its state_dict
has different keys (no BatchNorm entries, a conv bias): load weights before fusing.
"""
import copy

import numpy as np

from .layers import BatchNorm2d, Conv2d, Dropout, Identity, ReLU
from .module import Module, Sequential


def fold_batchnorm(conv, bn):
    """Fold ``bn`` (a BatchNorm2d with running statistics) into ``conv`` in place.

    Afterwards conv(x) equals bn(conv_before(x)) up to rounding (the arithmetic is
    done in float64, then stored in the conv's dtype). ValueError if they don't fit.
    """
    if not isinstance(conv, Conv2d) or not isinstance(bn, BatchNorm2d):
        raise TypeError(f"fold_batchnorm expects (Conv2d, BatchNorm2d), got "
                        f"({type(conv).__name__}, {type(bn).__name__})")
    if not bn.track_running_stats:
        raise ValueError("fold_batchnorm: a BatchNorm2d without running statistics "
                         "normalises with each batch's own and cannot be folded")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_batchnorm: BatchNorm2d has {bn.num_features} features, the "
                         f"convolution {conv.out_channels} output channels")
    if conv.fused_relu:
        raise ValueError("fold_batchnorm: the convolution already applies a ReLU; a BatchNorm "
                         "after it cannot be folded")
    scale, shift = bn.scale_shift()
    w = conv.weight.astype(np.float64) * scale[:, None, None, None]
    b = shift if conv.bias is None else conv.bias.astype(np.float64) * scale + shift
    conv.weight = w.astype(conv.dtype)
    conv.bias = b.astype(conv.dtype)
    return conv


def fuse_conv(parent, conv_name, bn_name=None, relu=False):
    """Fuse ``parent.<bn_name>`` (if given) and a following ReLU (if ``relu``) into
    ``parent.<conv_name>``; the BatchNorm child is replaced by ``Identity``.

    The caller vouches that its forward applies them consecutively. Returns True when
    everything asked for was fused (a BatchNorm that cannot be folded stops it: then
    nothing changes and the caller keeps applying its ReLU itself).
    """
    conv = getattr(parent, conv_name)
    if not isinstance(conv, Conv2d):
        return False
    if bn_name is not None:
        bn = getattr(parent, bn_name)
        if isinstance(bn, BatchNorm2d):
            if not bn.track_running_stats or bn.num_features != conv.out_channels or conv.fused_relu:
                return False
            fold_batchnorm(conv, bn)
            setattr(parent, bn_name, Identity())
        elif not isinstance(bn, Identity):
            return False
    if relu:
        conv.fused_relu = True
    return True


_PASS_THROUGH = (Identity, Dropout)


def fuse_chain(parent, names):
    """Fuse Conv2d [-> BatchNorm2d] [-> ReLU] runs among the children ``names`` of
    ``parent``, which its forward applies one after another in this order."""
    kids = parent.__dict__["_modules"]
    i = 0
    while i < len(names):
        conv = kids.get(names[i])
        i += 1
        if not isinstance(conv, Conv2d):
            continue

        def next_real(j):
            while j < len(names) and isinstance(kids.get(names[j]), _PASS_THROUGH):
                j += 1
            return j

        j = next_real(i)
        if j < len(names) and isinstance(kids.get(names[j]), BatchNorm2d):
            bn = kids[names[j]]
            if not bn.track_running_stats or bn.num_features != conv.out_channels or conv.fused_relu:
                continue
            fold_batchnorm(conv, bn)
            parent.add_module(names[j], Identity())
            j = next_real(j + 1)
        if j < len(names) and isinstance(kids.get(names[j]), ReLU) and not conv.fused_relu:
            conv.fused_relu = True
            parent.add_module(names[j], Identity())
            j += 1
        i = j


def _post_order(module, seen):
    for child in module.children():
        if id(child) not in seen:
            seen.add(id(child))
            yield from _post_order(child, seen)
    yield module


def fuse(model, inplace=False):
    """A fused inference version of ``model`` (a copy unless ``inplace``), in eval mode.

    See the module docstring for what is fused. The result computes the same outputs
    up to float rounding with fewer passes over memory. Fusing twice changes nothing.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fuse expects an engine Module, got {type(model).__name__}")
    m = model if inplace else copy.deepcopy(model)
    for sub in list(_post_order(m, {id(m)})):
        if isinstance(sub, Sequential):     # its forward is the chain of its children
            fuse_chain(sub, list(sub.__dict__["_modules"]))
        else:
            sub._fuse()
    return m.eval()
