"""convtune's runtime: PyTorch-exact convolution and pooling on numpy arrays.

A call travels down this path (each step only calls the next):

    nn/         the network layer: Module, layers, fusion, models, from_torch,
                from_onnx and the Graph they build, load_weights,
                distributed.predict (engine.nn; re-exported here)
    functional  conv2d / max_pool2d / avg_pool2d: validate once (with ``shapes``)
    dispatch    pick the algorithm: forced > plan entry (``plan``) > heuristic
    operator    ConvOperator / PoolOperator: one call's prepared weights, bias,
                fused activation and kernel parameters, run as ``op(x, out=None)``
    registry    the table of algorithms: what each handles, its tolerance, its kernel
    kernels/    Cython + OpenMP: direct, im2col (+ BLAS via _blas.pxd), winograd, pool;
                kernels/ukernels/ the per-ISA C micro-kernels (GEMM tiles, Winograd tiles)

and beside it: ``isa`` (which micro-kernel ISA runs: cpuid, capped by CONVTUNE_ISA),
``threads`` (one thread count for the OpenMP team and BLAS), ``build`` (what the build
used), ``explain`` (which algorithm a layer uses, and why).

The core (everything outside ``nn``) never imports ``engine.nn``; nothing in ``engine``
imports the tuner. The tuner (package ``tuner``) measures algorithms and writes plans
through public names only: ``engine.plan``, ``engine.registry``'s candidates and
tolerances, ``engine.operator``, ``engine.shapes`` and ``algorithm=``.
"""
import logging as _logging
import os as _os
import sys as _sys

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
    from . import functional, isa, operator
    from .registry import algorithms
    from .build import build_info
    from .explain import explain
    from .plan import use_plan
    from .threads import get_num_threads, set_num_threads
    from . import nn
    from .nn.layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                            Identity, Linear, MaxPool2d, ReLU, manual_seed)
    from .nn.module import Module, Sequential
    from .nn.weights import load_weights
    from .nn.fusion import fuse
    from .nn.convert import from_torch
    from .nn.graph import Graph
    from .nn.onnx_import import from_onnx
    from .nn import distributed, models, weights
    # ``import engine.models`` (and .distributed, .weights: public module names) finds
    # the module that lives in engine.nn.
    for _m in (models, distributed, weights):
        _sys.modules[f"{__name__}.{_m.__name__.rpartition('.')[2]}"] = _m
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
