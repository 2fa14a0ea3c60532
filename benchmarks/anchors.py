"""The other engines a benchmark compares with, each on one layer: ONNX Runtime and ncnn.

``runners(shape, x, w, b, threads, workdir)`` returns ({name: zero-argument callable},
{name: note}) for the anchors that are installed and can compute the layer; each
callable's output is checked against PyTorch (or the float64 reference) by the caller
before it is timed. A missing package or an unsupported layer gives a note instead of
a runner, never an error:

    ort    onnxruntime (``pip install onnxruntime onnx``): a one-node ONNX model (Conv,
           MaxPool or AveragePool) built with onnx.helper, intra-op threads = threads,
           sequential execution, all graph optimisations on, no thread spinning
    ncnn   ncnn (``pip install ncnn``): a one-layer net written as a .param text and a
           .bin file (Convolution / ConvolutionDepthWise weights after a 4-byte zero
           flag, bias raw; Pooling), fp16/bf16 storage and arithmetic off so it computes
           in float32; ncnn runs one image at a time, so a batch is a loop over images

``CONVTUNE_NCNN_LIB=/path/to/libncnn.so`` runs the same .param/.bin through that
library's C API (ctypes; built with -DNCNN_C_API=ON -DNCNN_SHARED_LIB=ON) instead of the
``ncnn`` module, e.g. a build with the AVX-512 options off to time ncnn's AVX2 kernels on
an AVX-512 machine (the pip wheel picks the CPU's best at run time and has no switch).
``ncnn_description()`` says which ncnn runs, for a benchmark's header. An AVX2-only
build from ncnn's source (``objdump -d build/src/libncnn.so | grep -c zmm`` then gives 0):

    cmake -S ncnn -B build -DCMAKE_BUILD_TYPE=Release -DNCNN_SHARED_LIB=ON -DNCNN_C_API=ON \
          -DNCNN_VULKAN=OFF -DNCNN_PYTHON=OFF -DNCNN_BUILD_TOOLS=OFF -DNCNN_BUILD_EXAMPLES=OFF \
          -DNCNN_BUILD_BENCHMARK=OFF -DNCNN_BUILD_TESTS=OFF -DNCNN_AVX512=OFF \
          -DNCNN_AVX512VNNI=OFF -DNCNN_AVX512BF16=OFF -DNCNN_AVX512FP16=OFF
    cmake --build build -j2
"""
import ctypes
import os
import struct
import sys

import numpy as np

from engine import shapes
from tuner.onnx_cli import ort_session


# What ``--isa`` caps PyTorch at, through the libraries' own switches, read when torch
# loads: oneDNN's convolutions (ONEDNN_MAX_CPU_ISA) and ATen's vectorised kernels, its
# depthwise and pooling among them (ATEN_CPU_CAPABILITY). ONNX Runtime (MLAS) and ncnn
# have no such switch and run the best kernels the CPU has (ncnn: the best its build has,
# see CONVTUNE_NCNN_LIB).
TORCH_ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
                  "baseline": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}}


def cap_torch_isa(isa):
    """Cap PyTorch (not yet imported) at ``isa`` as far as it allows; returns a note for
    the header. Variables the caller set already are kept."""
    caps = TORCH_ISA_CAPS.get(isa)
    if not caps:
        return ""
    if "torch" in sys.modules:
        return "; PyTorch was imported before --isa: not capped"
    for key, value in caps.items():
        os.environ.setdefault(key, value)
    return "; PyTorch capped too (" + ", ".join(f"{k}={os.environ[k]}" for k in caps) + ")"


def _conv_fields(p):
    t, bo, l, r = p.pads
    return t, bo, l, r


def ort_runner(shape, x, w, b, threads):
    try:
        from onnx import TensorProto, helper, numpy_helper
        import onnxruntime  # noqa: F401  (ort_session returns None without it)
    except ImportError:
        return None, "onnxruntime/onnx not installed (pip install onnxruntime onnx)"
    p = shape.params
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    inits = []
    if isinstance(p, shapes.ConvParams):
        if p.padding_mode != "zeros":
            return None, f"padding_mode {p.padding_mode!r}: no one-node ONNX Conv"
        t, bo, l, r = _conv_fields(p)
        inits.append(numpy_helper.from_array(w, "w"))
        names = ["x", "w"]
        if b is not None:
            inits.append(numpy_helper.from_array(b, "b"))
            names.append("b")
        node = helper.make_node("Conv", names, ["y"], kernel_shape=list(p.kernel),
                                strides=list(p.stride), pads=[t, l, bo, r],
                                dilations=list(p.dilation), group=p.groups)
    elif p.op == "max_pool2d":
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(p.kernel),
                                strides=list(p.stride), pads=[p.padding[0], p.padding[1]] * 2,
                                dilations=list(p.dilation), ceil_mode=int(p.ceil_mode))
    else:
        node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=list(p.kernel),
                                strides=list(p.stride), pads=[p.padding[0], p.padding[1]] * 2,
                                ceil_mode=int(p.ceil_mode),
                                count_include_pad=int(shape.count_include_pad))
    graph = helper.make_graph([node], "layer", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    sess = ort_session(model.SerializeToString(), threads)
    feed = {"x": x}
    return (lambda: sess.run(None, feed)[0]), None


NCNN_LIB_ENV = "CONVTUNE_NCNN_LIB"


def ncnn_description():
    """Which ncnn the "ncnn" anchor runs: the library CONVTUNE_NCNN_LIB names, or the
    ``ncnn`` module (the pip wheel)."""
    path = os.environ.get(NCNN_LIB_ENV)
    if path:
        try:
            return f"ncnn {_ncnn_capi(path).ncnn_version().decode()} from {path} (C API, {NCNN_LIB_ENV})"
        except OSError as e:
            return f"ncnn library {path} ({NCNN_LIB_ENV}) does not load: {e}"
    try:
        import ncnn
    except ImportError:
        return "ncnn not installed"
    return f"ncnn {getattr(ncnn, '__version__', '?')} Python module ({os.path.dirname(ncnn.__file__)})"


def _ncnn_net_files(shape, x, w, b, workdir):
    """The one-layer net for ``shape`` as ``workdir``/layer.param and layer.bin (input
    blob "data", output blob "out"); returns (path stem, None) or (None, why not)."""
    p = shape.params
    N, C, H, W = x.shape
    head = f"Input data 0 1 data 0={W} 1={H} 2={C}"
    blob = b""
    if isinstance(p, shapes.ConvParams):
        if p.padding_mode != "zeros":
            return None, f"padding_mode {p.padding_mode!r}"
        t, bo, l, r = _conv_fields(p)
        kind = "Convolution" if p.groups == 1 else "ConvolutionDepthWise"
        fields = (f"0={p.c_out} 1={p.kernel[1]} 11={p.kernel[0]} 2={p.dilation[1]} 12={p.dilation[0]} "
                  f"3={p.stride[1]} 13={p.stride[0]} 4={l} 14={t} 15={r} 16={bo} "
                  f"5={int(b is not None)} 6={w.size}")
        if p.groups > 1:
            fields += f" 7={p.groups}"
        layer = f"{kind} layer 1 1 data out {fields}"
        blob = struct.pack("<I", 0) + np.ascontiguousarray(w, np.float32).tobytes()
        if b is not None:
            blob += np.ascontiguousarray(b, np.float32).tobytes()
    else:
        (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
        if p.op == "max_pool2d" and p.dilation != (1, 1):
            return None, "dilated max pooling"
        kind = 0 if p.op == "max_pool2d" else 1
        pad_mode = 0 if p.ceil_mode else 1       # 0: full (ceil), 1: valid (floor)
        layer = (f"Pooling layer 1 1 data out 0={kind} 1={kw} 11={kh} 2={sw} 12={sh} "
                 f"3={pw} 13={ph} 14={pw} 15={ph} 5={pad_mode} "
                 f"6={int(getattr(shape, 'count_include_pad', True))}")
    stem = os.path.join(workdir, "layer")
    with open(stem + ".param", "w") as f:
        f.write(f"7767517\n2 2\n{head}\n{layer}\n")
    with open(stem + ".bin", "wb") as f:
        f.write(blob)
    return stem, None


# The float32 options off on the anchor's net, in both code paths.
_NCNN_LOW_PRECISION = ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                       "use_bf16_storage", "use_bf16_packed")


def ncnn_runner(shape, x, w, b, threads, workdir):
    lib = os.environ.get(NCNN_LIB_ENV)
    if not lib:
        try:
            import ncnn
        except ImportError:
            return None, "ncnn not installed (pip install ncnn)"
    stem, why = _ncnn_net_files(shape, x, w, b, workdir)
    if stem is None:
        return None, why
    if lib:
        return _ncnn_capi_runner(lib, stem, x, threads)
    N = x.shape[0]
    net = ncnn.Net()
    net.opt.num_threads = threads
    for opt in _NCNN_LOW_PRECISION:
        if hasattr(net.opt, opt):
            setattr(net.opt, opt, False)
    if net.load_param(stem + ".param") != 0 or net.load_model(stem + ".bin") != 0:
        return None, "ncnn could not load the layer"
    mats = [ncnn.Mat(np.ascontiguousarray(x[i])) for i in range(N)]

    def run():
        outs = []
        for m in mats:
            ex = net.create_extractor()
            ex.input("data", m)
            _, out = ex.extract("out")
            outs.append(np.array(out))
        return np.stack(outs)
    run.net = net        # keep the net (and its weights) alive with the runner
    return run, None


# ncnn's C API (c_api.h) as far as the anchor uses it: name -> (restype, argtypes);
# every handle (ncnn_net_t, ncnn_option_t, ncnn_mat_t, ...) is a void pointer.
_P, _I, _S = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
_NCNN_C_API = {
    "ncnn_version": (ctypes.c_char_p, []),
    "ncnn_option_create": (_P, []),
    "ncnn_option_destroy": (None, [_P]),
    "ncnn_option_set_num_threads": (None, [_P, _I]),
    **{f"ncnn_option_set_{opt}": (None, [_P, _I]) for opt in _NCNN_LOW_PRECISION},
    "ncnn_net_create": (_P, []),
    "ncnn_net_destroy": (None, [_P]),
    "ncnn_net_set_option": (None, [_P, _P]),
    "ncnn_net_load_param": (_I, [_P, ctypes.c_char_p]),
    "ncnn_net_load_model": (_I, [_P, ctypes.c_char_p]),
    "ncnn_extractor_create": (_P, [_P]),
    "ncnn_extractor_destroy": (None, [_P]),
    "ncnn_extractor_input": (_I, [_P, ctypes.c_char_p, _P]),
    "ncnn_extractor_extract": (_I, [_P, ctypes.c_char_p, ctypes.POINTER(_P)]),
    "ncnn_mat_create_3d": (_P, [_I, _I, _I, _P]),
    "ncnn_mat_destroy": (None, [_P]),
    "ncnn_mat_get_dims": (_I, [_P]),
    "ncnn_mat_get_w": (_I, [_P]),
    "ncnn_mat_get_h": (_I, [_P]),
    "ncnn_mat_get_c": (_I, [_P]),
    "ncnn_mat_get_elemsize": (_S, [_P]),
    "ncnn_mat_get_elempack": (_I, [_P]),
    "ncnn_mat_get_cstep": (_S, [_P]),
    "ncnn_mat_get_data": (_P, [_P]),
}
_ncnn_libs = {}


def _ncnn_capi(path):
    """The library at ``path`` (loaded once) with the C API's signatures declared."""
    if path not in _ncnn_libs:
        lib = ctypes.CDLL(path)
        for name, (restype, argtypes) in _NCNN_C_API.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _ncnn_libs[path] = lib
    return _ncnn_libs[path]


def _mat_view(lib, mat):
    """A float32 (c, h*w) view of an ncnn 3-D Mat's data, whose channels are cstep
    floats apart (each channel's start aligned to 16 bytes)."""
    w, h, c = lib.ncnn_mat_get_w(mat), lib.ncnn_mat_get_h(mat), lib.ncnn_mat_get_c(mat)
    cstep = lib.ncnn_mat_get_cstep(mat)
    data = lib.ncnn_mat_get_data(mat)
    buf = (ctypes.c_float * (c * cstep)).from_address(data)
    return np.frombuffer(buf, np.float32).reshape(c, cstep)[:, :h * w], (c, h, w)


class _NcnnCApiNet:
    """The one-layer net loaded through the C API, with one input Mat per image (made
    once, as the module path makes its ncnn.Mat once); calling it runs every image and
    returns (N, C', H', W') float32. Frees the net, option and Mats when collected."""

    def __init__(self, lib, stem, x, threads):
        self.lib, self.net, self.opt, self.mats = lib, None, None, []
        self.opt = lib.ncnn_option_create()
        lib.ncnn_option_set_num_threads(self.opt, threads)
        for opt in _NCNN_LOW_PRECISION:
            getattr(lib, f"ncnn_option_set_{opt}")(self.opt, 0)
        self.net = lib.ncnn_net_create()
        lib.ncnn_net_set_option(self.net, self.opt)      # copies the option
        self.loaded = (lib.ncnn_net_load_param(self.net, (stem + ".param").encode()) == 0
                       and lib.ncnn_net_load_model(self.net, (stem + ".bin").encode()) == 0)
        N, C, H, W = x.shape
        for i in range(N):
            mat = lib.ncnn_mat_create_3d(W, H, C, None)
            if not mat:
                raise MemoryError("ncnn_mat_create_3d")
            self.mats.append(mat)
            view, _ = _mat_view(lib, mat)
            view[...] = x[i].reshape(C, H * W)

    def __call__(self):
        lib, outs = self.lib, []
        for mat in self.mats:
            ex = lib.ncnn_extractor_create(self.net)
            out = ctypes.c_void_p()
            try:
                ret = lib.ncnn_extractor_input(ex, b"data", mat)
                if ret == 0:
                    ret = lib.ncnn_extractor_extract(ex, b"out", ctypes.byref(out))
                if ret != 0:
                    raise RuntimeError(f"ncnn extract failed ({ret})")
                if (lib.ncnn_mat_get_dims(out) != 3 or lib.ncnn_mat_get_elemsize(out) != 4
                        or lib.ncnn_mat_get_elempack(out) != 1):
                    raise RuntimeError("ncnn output is not a float32 unpacked 3-D Mat")
                view, chw = _mat_view(lib, out)
                outs.append(view.reshape(chw).copy())
            finally:
                if out:
                    lib.ncnn_mat_destroy(out)
                lib.ncnn_extractor_destroy(ex)
        return np.stack(outs)

    def __del__(self):
        lib = self.lib
        for mat in self.mats:
            lib.ncnn_mat_destroy(mat)
        self.mats = []
        if self.net:
            lib.ncnn_net_destroy(self.net)
            self.net = None
        if self.opt:
            lib.ncnn_option_destroy(self.opt)
            self.opt = None


def _ncnn_capi_runner(path, stem, x, threads):
    try:
        lib = _ncnn_capi(path)
    except (OSError, AttributeError) as e:
        return None, f"{NCNN_LIB_ENV}={path}: {e}"
    run = _NcnnCApiNet(lib, stem, np.ascontiguousarray(x, np.float32), threads)
    if not run.loaded:
        return None, f"ncnn ({path}) could not load the layer"
    return run, None


def runners(shape, x, w, b, threads, workdir):
    fns, notes = {}, {}
    for name, make in (("ort", lambda: ort_runner(shape, x, w, b, threads)),
                       ("ncnn", lambda: ncnn_runner(shape, x, w, b, threads, workdir))):
        try:
            fn, note = make()
        except Exception as e:       # an anchor's own failure must not stop the benchmark
            fn, note = None, f"{type(e).__name__}: {e}"
        if fn is not None:
            fns[name] = fn
        else:
            notes[name] = note
    return fns, notes
