"""Real torchvision architectures through the engine: accuracy and whole-model latency.

Needs torch and torchvision installed together (``pip install torch==2.14.1
torchvision==0.29.1``; torch 2.13 has no matching torchvision) and, for the ONNX
path and column, onnx and onnxruntime. Random weights (no downloads), eval mode.

    python benchmarks/bench_torchvision.py accuracy [--models a,b] [--size 224] [--via fx|onnx|both]
    python benchmarks/bench_torchvision.py latency [--models a,b] [--threads 2] [--reps 7]
    python benchmarks/bench_torchvision.py per-op [--models a,b] [--threads 2]

``accuracy``: each model through ``engine.from_torch`` (the class-matched path where it
applies, else torch.fx) and/or ``torch.onnx.export(dynamo=False)`` -> ``engine.from_onnx``,
fused, at batch 1 and 2: the max |engine - torch| relative to max |torch output|.
``latency``: batch 1, median ms of PyTorch eager, ONNX Runtime and the engine's fused
graph in one process at the same thread count; for resnet18 also the engine's
hand-written ResNet (the class-matched path), to show what the graph costs over it.
"""
import argparse
import io
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import engine  # noqa: E402
from engine.nn import fx_trace  # noqa: E402
from tuner import timing  # noqa: E402
from tuner.onnx_cli import ort_session  # noqa: E402

MODELS = ["resnet18", "resnet50", "vgg16_bn", "resnext50_32x4d", "wide_resnet50_2",
          "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "googlenet", "densenet121",
          "shufflenet_v2_x1_0", "efficientnet_b0", "regnet_y_400mf", "mnasnet0_5", "alexnet"]
LATENCY = ["resnet18", "mobilenet_v2", "squeezenet1_1", "googlenet", "densenet121", "efficientnet_b0"]


def build(name):
    import torch
    import torchvision
    torch.manual_seed(0)
    kwargs = {"init_weights": True} if name == "googlenet" else {}   # (silences a FutureWarning)
    m = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    # Random BatchNorm statistics, so folding them is exercised (torchvision starts them
    # at the identity).
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
    return m


def onnx_graph(m, size):
    import torch
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 3, size, size),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buf.getvalue()


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def accuracy(args):
    import torch
    print(f"{'model':<20} {'path':<6} {'batch':>5} {'max rel err':>12} {'convert s':>9}")
    for name in args.models:
        m = build(name)
        paths = ["fx", "onnx"] if args.via == "both" else [args.via]
        for path in paths:
            t0 = time.perf_counter()
            try:
                if path == "fx":
                    g = engine.from_torch(m)
                    label = "fx" if isinstance(g, engine.Graph) else "class"
                else:
                    g = engine.from_onnx(onnx_graph(m, args.size))
                    label = "onnx"
                g = engine.fuse(g)
            except Exception as e:          # report and go on with the next model
                print(f"{name:<20} {path:<6} {'-':>5} FAILED: {type(e).__name__}: {e}")
                continue
            conv_s = time.perf_counter() - t0
            for batch in (1, 2):
                x = np.random.default_rng(batch).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
                with torch.no_grad():
                    ref = m(torch.from_numpy(x)).numpy()
                print(f"{name:<20} {label:<6} {batch:>5} {rel_err(g(x), ref):>12.2e} {conv_s:>9.1f}",
                      flush=True)


def latency(args):
    import torch
    torch.set_num_threads(args.threads)
    engine.set_num_threads(args.threads)
    print(f"batch 1, 224x224, {args.threads} threads, median of {args.reps} interleaved runs; "
          f"plan: {os.environ.get('CONVTUNE_PLAN', 'default')}")
    print(f"{'model':<16} {'torch ms':>9} {'ORT ms':>8} {'convtune ms':>11} {'torch/ct':>8} {'ORT/ct':>7}")
    for name in args.models:
        m = build(name)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        graph = engine.fuse(fx_trace.trace(m, np.float32))

        def run_torch():
            with torch.no_grad():
                m(xt)
        fns = {"torch": run_torch, "convtune": lambda: graph(x)}
        s = ort_session(onnx_graph(m, 224), args.threads)
        if s is not None:
            fns["ort"] = lambda: s.run(None, {"x": x})
        if name == "resnet18":      # the same layers under the hand-written forward
            hand = engine.fuse(engine.from_torch(m))
            fns["hand"] = lambda: hand(x)
        t = {n: st.median * 1e3 for n, st in
             timing.measure(fns, reps=args.reps, min_sample_s=0.0, warmup=1).items()}
        ct = t["convtune"]
        ort_txt = f"{t['ort']:>8.1f}" if "ort" in t else f"{'-':>8}"
        ratio = f"{t['ort'] / ct:>7.2f}" if "ort" in t else f"{'-':>7}"
        print(f"{name:<16} {t['torch']:>9.1f} {ort_txt} {ct:>11.1f} {t['torch'] / ct:>8.2f} {ratio}", flush=True)
        if "hand" in t:
            print(f"  resnet18 graph / hand-written engine.models.ResNet: {ct / t['hand']:.3f} "
                  f"({ct:.1f} vs {t['hand']:.1f} ms)", flush=True)


def per_op(args):
    """Where a fused graph's time goes, by op type (each step timed alone, medians summed):
    e.g. what the residual Adds cost, the most that fusing them into the convolutions'
    output stage could save."""
    import collections
    engine.set_num_threads(args.threads)
    for name in args.models:
        graph = engine.fuse(fx_trace.trace(build(name), np.float32))
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        plan = graph.plan([x.shape])
        env = dict(plan.constants, **{graph.graph_inputs[0][0]: x})
        per = collections.defaultdict(float)
        for step in plan.steps:       # run once to have every input, then time the step
            args_ = [env[n] if n else None for n in step.inputs]
            while args_ and args_[-1] is None:
                args_.pop()
            # Time a step on copies, so an in-place step does not change its inputs.
            samples = []
            for _ in range(args.reps):
                fresh = [a.copy() if isinstance(a, np.ndarray) and step.donate is not None else a
                         for a in args_]
                t = time.perf_counter()
                out = step.run(*fresh)
                samples.append(time.perf_counter() - t)
            per[step.node.op] += float(np.median(samples)) * 1e3
            outs = out if engine.nn.graph.OPS[step.node.op].multi else (out,)
            for n, v in zip(step.node.outputs, outs):
                env[n] = v
        total = sum(per.values())
        print(f"{name}: {total:.1f} ms over {len(plan.steps)} steps at {args.threads} thread(s)")
        for op, ms in sorted(per.items(), key=lambda kv: -kv[1]):
            print(f"  {op:<20} {ms:>8.2f} ms  {100 * ms / total:5.1f}%")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("accuracy", "latency", "per-op"))
    ap.add_argument("--models", type=lambda s: s.split(","), default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--via", choices=("fx", "onnx", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    if args.models is None:
        args.models = MODELS if args.what == "accuracy" else LATENCY
    {"accuracy": accuracy, "latency": latency, "per-op": per_op}[args.what](args)


if __name__ == "__main__":
    main()
