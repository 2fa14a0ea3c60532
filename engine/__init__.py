"""convtune's runtime: PyTorch-exact convolution and pooling on numpy arrays.

Architecture, in the order a call travels:

    module      Module / Sequential: containers, state_dict, .npz save and load
    weights     load_weights: .pth (zip/legacy), .safetensors, .npz -> {name: ndarray},
                with an allow-list unpickler (nothing in a file is ever executed)
    models      whole networks (VGG, ResNet, MobileNet-V1) and collect_shapes
    fusion      fuse: BatchNorm folded into convolutions, ReLU into their kernels
    convert     from_torch: a PyTorch module tree as engine layers (imports torch lazily)
    layers      Conv2d / MaxPool2d / AvgPool2d hold parameters and per-shape caches;
                ReLU, BatchNorm2d, Linear, ... are what networks need around them
    functional  conv2d / max_pool2d / avg_pool2d: validate once (with ``shapes``)
    dispatch    pick the algorithm: forced > plan entry (``plan``) > heuristic
    registry    the table of algorithms: what each handles, how to run its kernel
    kernels/    Cython + OpenMP: direct, im2col (+ BLAS via _blas.pxd), winograd, pool;
                kernels/ukernels/ the per-ISA C micro-kernels (GEMM tiles, Winograd tiles)
    isa         which micro-kernel ISA runs (cpuid, capped by CONVTUNE_ISA)
    threads     one thread count for the OpenMP team and BLAS

The tuner (package ``tuner``) measures algorithms and writes plans; it talks to the
runtime only through ``engine.plan`` and the public ``algorithm=`` override.
"""
from . import functional, isa
from .registry import algorithms
from .build import build_info
from .explain import explain
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     Identity, Linear, MaxPool2d, ReLU, manual_seed)
from .module import Module, Sequential
from .weights import load_weights
from .fusion import fuse
from .convert import from_torch
from . import models
from .plan import use_plan
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "Conv2d", "MaxPool2d", "AvgPool2d", "functional", "algorithms", "build_info", "explain",
    "get_num_threads", "set_num_threads", "use_plan", "manual_seed", "__version__",
    "Module", "Sequential", "ReLU", "Flatten", "Linear", "BatchNorm2d", "AdaptiveAvgPool2d",
    "Dropout", "Identity", "fuse", "from_torch", "models", "load_weights",
]
