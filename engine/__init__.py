"""convtune's runtime: PyTorch-exact convolution and pooling on numpy arrays.

Architecture, in the order a call travels:

    module      Module / Sequential: containers, state_dict, .npz save and load
    weights     load_weights: .pth (zip/legacy), .safetensors, .npz -> {name: ndarray},
                with an allow-list unpickler (nothing in a file is ever executed)
    models      whole networks (VGG, ResNet, MobileNet-V1) and collect_shapes
    fusion      fuse: BatchNorm folded into convolutions, ReLU into their kernels
    convert     from_torch: a PyTorch module tree as engine layers (imports torch lazily)
    graph       Graph: a network as nodes on named values, specialised per input shape;
                built by onnx_import (from_onnx) and fx_trace (from_torch's fallback)
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
import logging as _logging
import os as _os

# Diagnostics go to this logger (warnings about plans stay ``warnings``); silent unless
# the application configures logging (the ``convtune`` command prints them to stderr).
_logging.getLogger("convtune").addHandler(_logging.NullHandler())


def _kernels_missing(e):
    """The one ImportError raised when the compiled kernels cannot be imported (a source
    checkout that was never built, or a build for another Python), saying what to do."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    checkout = _os.path.exists(_os.path.join(root, "setup.py"))
    msg = (f"convtune's compiled kernels could not be imported from {here}/kernels ({e}). ")
    if checkout:
        msg += (f"You are importing engine from its source checkout ({root}), whose Cython "
                f"kernels are not built for this Python. Either build them in place "
                f"(`pip install -e .` or `python setup.py build_ext --inplace` in {root}), "
                f"or, to use the installed package, run Python from another directory.")
    else:
        msg += ("The installation looks incomplete or was built for another Python: "
                "reinstall it (`pip install --force-reinstall convtune`).")
    return ImportError(msg)


try:
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
    from .onnx_import import from_onnx
    from .graph import Graph
    from . import models
    from .plan import use_plan
    from .threads import get_num_threads, set_num_threads
except ImportError as _e:
    # "cannot import name 'direct' from 'engine.kernels'" (not built), "No module named
    # 'engine.kernels.pool'", or an extension built for another Python: say what to do.
    # Any other ImportError (a missing dependency) is raised as it is.
    if (getattr(_e, "name", None) or "").startswith(__name__ + ".kernels"):
        raise _kernels_missing(_e) from None
    raise

__version__ = "0.1.0"

__all__ = [
    "Conv2d", "MaxPool2d", "AvgPool2d", "functional", "algorithms", "build_info", "explain",
    "get_num_threads", "set_num_threads", "use_plan", "manual_seed", "__version__",
    "Module", "Sequential", "ReLU", "Flatten", "Linear", "BatchNorm2d", "AdaptiveAvgPool2d",
    "Dropout", "Identity", "fuse", "from_torch", "from_onnx", "Graph", "models", "load_weights",
]
