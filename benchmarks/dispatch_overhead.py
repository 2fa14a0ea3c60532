"""Per-call overhead of dispatch, in microseconds.

Times, on a tiny convolution (default 1x4x8x8 -> 4, 3x3, padding 1) where the kernel
itself costs little:

    kernel        the operator (engine.operator) into a preallocated output: the kernel
                  and the operator's array checks
    operator      the operator allocating its output
    choose        dispatch.choose(p) alone (plan look-up + heuristic), no plan / with a plan
    layer         Conv2d(x): shape check, cached operator (plan generation check)
    pool layer    MaxPool2d(2)(x): shape check, cached operator (no weights, no plan)
    functional    functional.conv2d(x, w, b): full validation + choose + weight prep

and prints each, and layer - kernel and functional - kernel: the overhead a call pays.

    python benchmarks/dispatch_overhead.py [--threads 1] [--shape 1,4,8,8] [--reps 15]
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
import engine.functional as F  # noqa: E402
from engine import dispatch, operator, plan  # noqa: E402
from tuner import timing  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", default="1,4,8,8", help="N,C,H,W of the input")
    ap.add_argument("--out-channels", type=int, default=4)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    n, c, h, w = (int(v) for v in args.shape.split(","))
    engine.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    layer = engine.Conv2d(c, args.out_channels, 3, padding=1, seed=0)
    pool = engine.MaxPool2d(2)
    wt, b = layer.weight, layer.bias
    p = F.conv_setup(x, wt, b, 1, 1, 1, 1, "zeros")[3]
    algo_name = dispatch.heuristic(p)[0]
    t = args.threads
    op = operator.ConvOperator(p, algo_name, wt, b, num_threads=t)
    out = np.empty(p.output_shape, np.float32)

    engine.use_plan(None)
    layer(x)
    fns = {
        "kernel": lambda: op(x, out),
        "operator": lambda: op(x),
        "choose (no plan)": lambda: dispatch.choose(p, None, t),
        "layer (no plan)": lambda: layer(x),
        "pool layer": lambda: pool(x),
        "functional (no plan)": lambda: F.conv2d(x, wt, b, padding=1),
    }
    stats = timing.measure(fns, reps=args.reps, min_sample_s=0.005, warmup=3)

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "plan.json")
        plan.write_entries(path, [{"key": plan.params_key(p, t), "algorithm": algo_name, "params": {},
                                   "level": "measure", "tuned_at": "now", "candidates": []}])
        engine.use_plan(path)
        assert dispatch.choose(p, None, t).source == "plan"
        layer2 = engine.Conv2d(c, args.out_channels, 3, padding=1, seed=0)
        layer2(x)
        fns2 = {
            "choose (plan)": lambda: dispatch.choose(p, None, t),
            "layer (plan)": lambda: layer2(x),
            "functional (plan)": lambda: F.conv2d(x, wt, b, padding=1),
        }
        stats.update(timing.measure(fns2, reps=args.reps, min_sample_s=0.005, warmup=3))
        engine.use_plan(None)

    print(f"dispatch overhead: input {n}x{c}x{h}x{w} -> {args.out_channels}, 3x3, padding 1, "
          f"{algo_name}, {t} thread(s); {args.reps} samples each")
    print(f"  {'':22s} {'median':>9s}    {'min':>9s}  spread")
    for k, s in stats.items():
        print(f"  {k:22s} {s.median * 1e6:9.2f} us {s.min * 1e6:9.2f} us  {s.spread:5.0%}")
    # The minimum is the better estimate of a CPU-bound overhead on a busy machine (noise
    # only ever adds); both are shown.
    for label, pick in (("median", lambda s: s.median), ("min", lambda s: s.min)):
        us = {k: pick(s) * 1e6 for k, s in stats.items()}
        k = us["kernel"]
        print(f"  overhead per call ({label}s): layer {us['layer (no plan)'] - k:.2f} us (no plan), "
              f"{us['layer (plan)'] - k:.2f} us (plan); functional {us['functional (no plan)'] - k:.2f} us "
              f"(no plan), {us['functional (plan)'] - k:.2f} us (plan); dispatch.choose "
              f"{us['choose (no plan)']:.2f} / {us['choose (plan)']:.2f} us; output allocation "
              f"{us['operator'] - k:.2f} us")

if __name__ == "__main__":
    main()
