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
"""
import os
import struct
import sys

import numpy as np

from engine import shapes
from tuner.onnx_cli import ort_session


# What ``--isa`` caps PyTorch at, through the libraries' own switches, read when torch
# loads: oneDNN's convolutions (ONEDNN_MAX_CPU_ISA) and ATen's vectorised kernels, its
# depthwise and pooling among them (ATEN_CPU_CAPABILITY). ONNX Runtime (MLAS) and ncnn
# have no such switch and run the best kernels the CPU has.
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


def ncnn_runner(shape, x, w, b, threads, workdir):
    try:
        import ncnn
    except ImportError:
        return None, "ncnn not installed (pip install ncnn)"
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
    net = ncnn.Net()
    net.opt.num_threads = threads
    for opt in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                "use_bf16_storage", "use_bf16_packed"):
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
