"""The algorithm registry: what each convolution and pooling algorithm can do, its
tolerance, its tunable kernel parameters, and how to run its kernel.

Each ``Algorithm`` knows one thing the others do not: which parameters it handles
(``why_not`` returns the reason it cannot, or None) and how to call its kernel. The
forced path, the plan, the heuristic, the operators (``engine.operator``, the only
callers of ``run``) and the tuner all go through this one table. ``kind`` says what an
algorithm computes: "conv" (ConvParams) or "pool" (PoolParams, max and average).

Every ``run`` receives an input that already carries any non-zero padding mode
(the ``ConvOperator`` applies reflect/replicate/circular with the compiled ``pad2d``),
so the kernels only ever see zero padding.
"""
import threading

import numpy as np

from .kernels import direct as _direct
from .kernels import im2col as _im2col
from .kernels import pool as _pool
from . import isa as _isa
from ._memory import empty_aligned
from .shapes import INT_LIMIT, ConvParams, PoolParams
from .threads import blas_single_threaded

try:  # the implicit GEMM is its own module; the engine works without it.
    from .kernels import igemm as _igemm
except ImportError:  # pragma: no cover - only when the module was not built
    _igemm = None
try:  # Winograd is its own module; the engine works without it.
    from .kernels import winograd as _winograd
    from .kernels import polyphase as _polyphase   # its dilated layers' split / scatter
except ImportError:  # pragma: no cover - only when the module was not built
    _winograd = None

# Relative error bound (max |out - ref| / max(1, max |ref|)) each algorithm is held
# to against a float64 reference, per dtype. Tests, the tuner's accuracy gate and the
# heuristic all read this one table. Winograd's figures come from the measured
# accuracy table in README.md.
TOLERANCE = {
    ("direct", "float32"): 1e-5, ("direct", "float64"): 1e-12,
    ("im2col", "float32"): 1e-5, ("im2col", "float64"): 1e-12,
    ("igemm", "float32"): 1e-5, ("igemm", "float64"): 1e-12,
    ("winograd_f2x3", "float32"): 5e-6, ("winograd_f2x3", "float64"): 1e-12,
    ("winograd_f4x3", "float32"): 2e-5, ("winograd_f4x3", "float64"): 1e-11,
    ("winograd_f6x3", "float32"): 1e-4, ("winograd_f6x3", "float64"): 1e-10,
    # max pooling is exact; the bound is average pooling's (a window sum in the input
    # dtype in PyTorch's order, then a divide: rounding only)
    ("pool", "float32"): 4e-6, ("pool", "float64"): 1e-13,
}
# What the engine accepts when it chooses on its own (heuristic, tuner default).
DEFAULT_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


class Algorithm:
    name = None
    kind = "conv"
    uses_blas = False
    # Kernel parameters the tuner searches at --level exhaustive: name -> the values it
    # tries. Empty params ({}) always mean the kernel's own automatic choice.
    tunables = {}

    def why_not(self, p):
        """None when this algorithm computes ``p`` (a ConvParams), else the reason.
        Callers pass parameters of the algorithm's ``kind`` (``applicable`` does)."""
        return None

    def prepare_weight(self, weight, p):
        """Weight in the form the kernel consumes; layers cache the result."""
        return weight

    def needs_blas(self, p):
        """Whether the kernel for ``p`` calls BLAS (then the BLAS pool is held at one
        thread around it)."""
        return self.uses_blas

    def kernels(self, p):
        """What runs for ``p``: kernel names (and their ISA), for explain and reports."""
        return {"kernel": self.kernel_name(p)}

    def kernel_name(self, p):
        return self.name

    def check_params(self, params):
        """``params`` (from a plan entry or the tuner) as a dict the kernel accepts;
        ValueError naming what is wrong for anything outside ``tunables``."""
        if not params:
            return {}
        if not isinstance(params, dict):
            raise ValueError(f"{self.name}: params must be a dict, got {params!r}")
        for k, v in params.items():
            if k not in self.tunables or v not in self.tunables[k]:
                raise ValueError(f"{self.name}: unsupported parameter {k}={v!r}; "
                                 f"tunable: {self.tunables or 'none'}")
        return dict(params)

    def param_variants(self, p=None):
        """The params the exhaustive tuner tries for ``p``: automatic ({}) and each
        tunable value (those ``variant_applies`` to ``p``)."""
        return [{}] + [{k: v} for k, values in self.tunables.items() for v in values
                       if p is None or self.variant_applies(k, v, p)]

    def variant_applies(self, name, value, p):
        """Whether tunable ``name`` = ``value`` can run ``p`` (all can, by default)."""
        return True

    def run(self, x, prepared_weight, bias, out, p, num_threads, relu=False, params=None):
        raise NotImplementedError

    def __call__(self, x, prepared_weight, bias, out, p, num_threads, relu=False, params=None):
        """Run the kernel into ``out`` with the BLAS pool held where needed. ``params``
        must have passed ``check_params``."""
        params = params or {}
        if self.needs_blas(p):
            with blas_single_threaded():
                self.run(x, prepared_weight, bias, out, p, num_threads, relu, params)
        else:
            self.run(x, prepared_weight, bias, out, p, num_threads, relu, params)
        return out

    def __repr__(self):
        return f"<algorithm {self.name}>"


def _kernel_pads(p):
    """(top, left) zero padding the kernel applies: none once a mode pre-pass ran."""
    return (p.pads[0], p.pads[2]) if p.padding_mode == "zeros" else (0, 0)


class Direct(Algorithm):
    """Direct summation; any parameters. Depthwise convolutions (groups == C_in) take a
    specialised kernel whose inner loops vectorise along the output row."""
    name = "direct"

    def kernel_name(self, p):
        return "conv2d_depthwise" if p.is_depthwise else "conv2d_direct"

    def run(self, x, w, bias, out, p, num_threads, relu=False, params=None):
        top, left = _kernel_pads(p)
        if p.is_depthwise:
            _direct.conv2d_depthwise(x, w, bias, out, p.stride[0], p.stride[1], top, left,
                                     p.dilation[0], p.dilation[1], num_threads, relu)
        else:
            _direct.conv2d_direct(x, w, bias, out, p.stride[0], p.stride[1], top, left,
                                  p.dilation[0], p.dilation[1], p.groups, num_threads, relu)


class Im2col(Algorithm):
    """im2col + GEMM per group through BLAS; a 1x1 stride-1 unpadded convolution is a
    plain GEMM with no column buffer. Column slices keep the workspace bounded."""
    name = "im2col"
    uses_blas = True
    # The column-buffer bound (automatic: 16 MiB): wider slices amortise the GEMM's
    # packing, narrower ones stay in cache.
    tunables = {"max_workspace_bytes": [1 << 20, 4 << 20, 64 << 20]}

    def kernels(self, p):
        return {"kernel": "conv2d_im2col", "gemm": f"BLAS {'s' if p.dtype == 'float32' else 'd'}gemm"}

    def why_not(self, p):
        # BLAS takes C ints for its sizes and strides: GEMM K and the plane sizes
        # (leading dimensions) must fit, or the call would wrap around.
        dims = {"K = C_in/groups * kH * kW": p.c_in // p.groups * p.kernel[0] * p.kernel[1],
                "input plane H * W": p.h * p.w, "output plane OH * OW": p.out_h * p.out_w}
        for what, value in dims.items():
            if value > INT_LIMIT:
                return f"im2col's BLAS sizes are 32-bit: {what} = {value} is too large"
        return None

    def run(self, x, w, bias, out, p, num_threads, relu=False, params=None):
        top, left = _kernel_pads(p)
        _im2col.conv2d_im2col(x, w, bias, out, p.stride[0], p.stride[1], top, left,
                              p.dilation[0], p.dilation[1], p.groups, num_threads, relu,
                              **params)


class Igemm(Algorithm):
    """Implicit GEMM on the micro-kernels (kernels/igemm.pyx): weights packed once per
    layer, input patches gathered straight into the register tile's B panels or read in
    place from a padded polyphase copy of the input (``panels``), bias and relu in the
    tile's epilogue; any kernel, stride, dilation, padding and groups, 1x1
    included. float32 on the active ISA (engine.isa); float64 has no micro-kernels and
    runs im2col's BLAS path (needs_blas)."""
    name = "igemm"
    # Output channels per block (automatic: as many as keep the block's weights in L2,
    # fewer when the threads would otherwise idle); how B panels are made (automatic:
    # igemm.auto_panels; "padded" where its 32-bit plane offsets fit).
    tunables = {"m_block": [16, 48, 96, 256], "panels": ["gather", "padded"]}

    def why_not(self, p):
        # the kernel's sizes and plane offsets are 32-bit ints (as im2col's BLAS calls)
        h = p.h + p.pads[0] + p.pads[1] if p.padding_mode != "zeros" else p.h
        w = p.w + p.pads[2] + p.pads[3] if p.padding_mode != "zeros" else p.w
        dims = {"K = C_in/groups * kH * kW": p.c_in // p.groups * p.kernel[0] * p.kernel[1],
                "input plane H * W": h * w, "output plane OH * OW": p.out_h * p.out_w,
                "batch N": p.n, "C_in": p.c_in, "C_out": p.c_out,
                "input rows": (p.out_h + p.kernel[0]) * p.stride[0] + p.kernel[0] * p.dilation[0] + 2 * h,
                "input columns": (p.out_w + p.kernel[1]) * p.stride[1] + p.kernel[1] * p.dilation[1] + 2 * w}
        for what, value in dims.items():
            if value > INT_LIMIT:
                return f"igemm's sizes are 32-bit: {what} = {value} is too large"
        return None

    def variant_applies(self, name, value, p):
        return not (name == "panels" and value == "padded" and self._padded_why_not(p))

    @staticmethod
    def _panel_geometry(p):
        """The layer as igemm.auto_panels and igemm.padded_applies take it."""
        return (p.stride[0], p.stride[1], p.c_in // p.groups, p.out_h, p.out_w,
                p.kernel[0], p.kernel[1], p.dilation[0], p.dilation[1])

    def auto_panels(self, p):
        """How the kernel makes B panels for ``p`` by itself (igemm.auto_panels)."""
        return _igemm.auto_panels(*self._panel_geometry(p))

    def _padded_why_not(self, p):
        return _igemm.padded_applies(*self._panel_geometry(p))

    def prepare_weight(self, weight, p):
        if p.dtype != "float32":
            return weight
        return _igemm.PackedWeights(weight, p.groups, _isa.level())

    def needs_blas(self, p):
        return p.dtype != "float32"

    def kernels(self, p):
        if p.dtype != "float32":
            return {"kernel": "conv2d_im2col", "gemm": "BLAS dgemm"}
        uk = _isa.kernels()
        return {"kernel": "conv2d_igemm", "isa": uk["isa"], "gemm": uk["igemm"],
                "panels": self.auto_panels(p)}

    def run(self, x, w, bias, out, p, num_threads, relu=False, params=None):
        top, left = _kernel_pads(p)
        if p.dtype != "float32":
            _im2col.conv2d_im2col(x, w, bias, out, p.stride[0], p.stride[1], top, left,
                                  p.dilation[0], p.dilation[1], p.groups, num_threads, relu)
            return
        _igemm.conv2d_igemm(x, w, bias, out, p.kernel[0], p.kernel[1], p.stride[0], p.stride[1],
                            top, left, p.dilation[0], p.dilation[1], p.groups, num_threads,
                            relu, isa=_isa.level(), **(params or {}))


class Winograd(Algorithm):
    """Winograd F(m x m, 3 x 3): transformed weights, alpha^2 GEMMs per tile block; float32
    on the active ISA's micro-kernels (engine.isa), float64 through BLAS (needs_blas).

    A dilated stride-1 layer (dilation (dh, dw)) is dh*dw ordinary 3x3 convolutions of
    the input's polyphase components (kernels/polyphase.pyx): ``run`` splits x into a
    batch of N*dh*dw sub-images, runs the same kernel on them with the same transformed
    weights, padding (top/dh, left/dw), bias and relu, and scatters the sub-outputs
    back. That needs the top/left zero padding to be multiples of the dilation."""
    # Tiles per block (automatic: sized from a per-thread workspace budget); how the
    # float32 tile transforms move tiles on AVX-512 (winograd.TRANSFORMS; automatic:
    # winograd.auto_transforms, by CPU vendor).
    tunables = {"tile_block": [16, 32, 64, 128, 256], "transforms": ["gather", "rows"]}

    def __init__(self, m):
        self.m = m
        self.name = f"winograd_f{m}x3"

    @staticmethod
    def sub_problem(p):
        """(batch, H, W, OH, OW, pad_top, pad_left) of the ordinary convolution the
        kernel runs for ``p``: ``p`` itself at dilation 1, else its N*dh*dw polyphase
        sub-images of ceil(H/dh) x ceil(W/dw) (H, W as the kernel sees them: padded
        already for a non-zero padding mode) and their ceil(OH/dh) x ceil(OW/dw)
        sub-outputs. The top/left padding must be multiples of the dilation."""
        dh, dw = p.dilation
        top, left = _kernel_pads(p)
        h = p.h if p.padding_mode == "zeros" else p.h + p.pads[0] + p.pads[1]
        w = p.w if p.padding_mode == "zeros" else p.w + p.pads[2] + p.pads[3]
        return (p.n * dh * dw, -(-h // dh), -(-w // dw), -(-p.out_h // dh), -(-p.out_w // dw),
                top // dh, left // dw)

    def why_not(self, p):
        if p.kernel != (3, 3):
            return f"{self.name} needs a 3x3 kernel, got {p.kernel[0]}x{p.kernel[1]}"
        if p.stride != (1, 1):
            return f"{self.name} needs stride 1, got stride {p.stride}"
        dh, dw = p.dilation
        top, left = _kernel_pads(p)
        if top % dh or left % dw:
            # output row dh*u + a reads input rows dh*(u + i) + a - top: one polyphase
            # component of the input per component of the output only when top % dh == 0
            return (f"{self.name} runs dilation {p.dilation} as {dh * dw} ordinary 3x3 "
                    f"convolutions of the input's polyphase components, which needs the "
                    f"top/left zero padding to be multiples of the dilation (each component "
                    f"is then padded by pad/dilation); got top {top}, left {left}")
        # the tile kernels address a plane with int32 offsets (a dilated layer's planes
        # are its sub-images': padded by (top/dh, bottom_s >= 0) one has oh + 2 rows)
        if p.dilation == (1, 1):
            planes = {"padded input plane": (p.h + p.pads[0] + p.pads[1] + 8) * (p.w + p.pads[2] + p.pads[3] + 8),
                      "output plane": (p.out_h + 8) * (p.out_w + 8)}
        else:
            n, _, _, oh, ow, _, _ = self.sub_problem(p)
            if n > INT_LIMIT:      # the tile kernels number the images with ints
                return f"{self.name}'s image numbers are 32-bit: N*dh*dw = {n} sub-images is too many"
            planes = {"padded sub-image plane": (oh + 2 + 8) * (ow + 2 + 8),
                      "sub-output plane": (oh + 8) * (ow + 8)}
        for what, value in planes.items():
            if value >= 1 << 31:
                return f"{self.name}'s tile offsets are 32-bit: the {what} is too large ({value} elements)"
        return None

    def variant_applies(self, name, value, p):
        # the two ways of moving tiles exist for float32 on AVX-512 only
        return name != "transforms" or (p.dtype == "float32" and _isa.active() == "avx512")

    def prepare_weight(self, weight, p):
        return _winograd.transform_weight(weight, self.m)

    def needs_blas(self, p):
        return p.dtype != "float32"    # float32 runs on the micro-kernels

    def kernels(self, p):
        if p.dtype != "float32":
            k = {"kernel": "conv2d_winograd", "gemm": "BLAS dgemm"}
        else:
            uk = _isa.kernels()
            tk = _isa.kernels(_isa.NAMES[_winograd.transforms_isa(_isa.level())])
            k = {"kernel": "conv2d_winograd", "isa": uk["isa"], "gemm": uk["sgemm"],
                 "transforms": tk["winograd"].replace("{m}", str(self.m))}
        if p.dilation != (1, 1):
            dh, dw = p.dilation
            k["polyphase"] = (f"polyphase.split / scatter: dilation {p.dilation} as "
                              f"{dh * dw} sub-images per image (space-to-batch)")
        return k

    def run(self, x, u, bias, out, p, num_threads, relu=False, params=None):
        top, left = _kernel_pads(p)
        params = params or {}
        if p.dilation == (1, 1):
            _winograd.conv2d_winograd(x, u, bias, out, self.m, top, left, p.groups, num_threads,
                                      relu, isa=_isa.level(), **params)
            return
        # polyphase split -> ordinary Winograd on N*dh*dw sub-images -> scatter
        dh, dw = p.dilation
        n, h, w, oh, ow, top_s, left_s = self.sub_problem(p)
        xs = _scratch.array("sub_images", (n, x.shape[1], h, w), x.dtype)
        outs = _scratch.array("sub_outputs", (n, out.shape[1], oh, ow), out.dtype)
        _polyphase.split(x, xs, dh, dw, num_threads)
        _winograd.conv2d_winograd(xs, u, bias, outs, self.m, top_s, left_s, p.groups,
                                  num_threads, relu, isa=_isa.level(), **params)
        _polyphase.scatter(outs, out, dh, dw, num_threads)


class Pool(Algorithm):
    """Max and average pooling (``PoolParams.op``): one compiled kernel each, parallel
    over the N*C planes. Max pooling counts padding as -inf, propagates NaN and can
    return PyTorch's indices; average pooling divides by ``divisor`` when non-zero,
    else by the window size with or without the padding (``count_include_pad``)."""
    name = "pool"
    kind = "pool"

    def why_not(self, p):
        if not isinstance(p, PoolParams):
            return f"{self.name} computes pooling, not {getattr(p, 'op', type(p).__name__)}"
        return None

    def kernel_name(self, p):
        return p.op

    def run(self, *args, **kwargs):
        raise TypeError("pooling runs through pool(), not run(): build a PoolOperator")

    def pool(self, x, out, indices, p, num_threads, count_include_pad=True, divisor=0):
        """Pool the 4-D ``x`` into ``out`` (and int64 ``indices`` for max pooling, or
        None); every N*C plane is pooled on its own."""
        planes = p.n * p.c
        x3 = x.reshape(planes, p.h, p.w)
        out3 = out.reshape(planes, p.out_h, p.out_w)
        if p.op == "max_pool2d":
            _pool.max_pool2d(x3, out3, None if indices is None else indices.reshape(planes, p.out_h, p.out_w),
                             p.kernel[0], p.kernel[1], p.stride[0], p.stride[1],
                             p.padding[0], p.padding[1], p.dilation[0], p.dilation[1], num_threads)
        else:
            _pool.avg_pool2d(x3, out3, p.kernel[0], p.kernel[1], p.stride[0], p.stride[1],
                             p.padding[0], p.padding[1], count_include_pad, divisor, num_threads)


class _Scratch(threading.local):
    """Per-thread scratch arrays an algorithm reuses from call to call: one flat buffer
    per name and dtype, grown to the largest size asked for, handed out as a view of its
    prefix. A fresh np.empty of many MiB is page-faulted in again on every call (glibc
    gives such blocks back to the system when they are freed): a dilated 3x3 layer's
    polyphase copies (128 channels, 56x56, batch 8) spent 15% of its time in the kernel
    zeroing new pages. Per thread, so concurrent calls from several Python threads never
    share one; a call does not re-enter itself, so one buffer per name suffices."""

    def __init__(self):
        self.buffers = {}

    def array(self, name, shape, dtype):
        dtype = np.dtype(dtype)
        size = int(np.prod(shape))
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.size < size:
            buf = empty_aligned(size, dtype)
            self.buffers[(name, dtype)] = buf
        return buf[:size].reshape(shape)


_scratch = _Scratch()

_ALGORITHMS = [Direct(), Im2col()]
if _igemm is not None:
    _ALGORITHMS.append(Igemm())
if _winograd is not None:
    _ALGORITHMS += [Winograd(2), Winograd(4), Winograd(6)]
_ALGORITHMS.append(Pool())
REGISTRY = {a.name: a for a in _ALGORITHMS}


def algorithms():
    """Names accepted by ``algorithm=`` (the convolution algorithms), in a stable order."""
    return [a.name for a in _ALGORITHMS if a.kind == "conv"]


def get(name, kind=None):
    """The Algorithm called ``name`` (of ``kind`` "conv" or "pool" when given);
    ValueError listing the known names otherwise."""
    algo = REGISTRY.get(name) if isinstance(name, str) else None
    if algo is not None and (kind is None or algo.kind == kind):
        return algo
    known = [a.name for a in _ALGORITHMS if kind is None or a.kind == kind]
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a str naming one of {known}, got {name!r}")
    raise ValueError(f"unknown algorithm {name!r}; expected one of {known}")


def kind_of(p):
    """"conv" for ConvParams, "pool" for PoolParams."""
    if isinstance(p, ConvParams):
        return "conv"
    if isinstance(p, PoolParams):
        return "pool"
    raise TypeError(f"expected ConvParams or PoolParams, got {type(p).__name__}")


def applicable(p):
    """Names of the algorithms that can compute ``p`` (ConvParams or PoolParams)."""
    kind = kind_of(p)
    return [a.name for a in _ALGORITHMS if a.kind == kind and a.why_not(p) is None]


def candidates(p, exhaustive=False):
    """What a tuner tries for ``p``: [(algorithm name, kernel params)], each applicable
    algorithm with automatic params ({}), and with ``exhaustive`` every value of each
    of its tunable parameters too (``Algorithm.param_variants``)."""
    return [(name, params) for name in applicable(p)
            for params in (REGISTRY[name].param_variants(p) if exhaustive else [{}])]


def tolerance(name, dtype):
    return TOLERANCE[(name, str(np.dtype(dtype)))]
