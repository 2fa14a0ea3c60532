"""Side-by-side layer benchmark: every applicable convtune algorithm vs PyTorch.

For each layer of the suite (configs/layers.json by default: VGG-16, ResNet-18,
ResNet-50 1x1, MobileNet-V1 depthwise, dilated and grouped layers, the seed CNN, max
pool 64x112x112 k3 s2 p1, ...) at each batch size, in one process and at one thread
count (engine.set_num_threads and torch.set_num_threads alike), times

    torch   torch.nn.functional.conv2d / max_pool2d / avg_pool2d
    each    engine.functional.conv2d(..., algorithm=name) for every applicable algorithm
            (or, with --cached-weights, a Conv2d(algorithm=name) layer, which keeps the
            transformed Winograd weights between calls as a model does)

interleaved (tuner/timing.py: warm-up, calls per sample grown to --min-sample, rounds
with rotated order, medians), and prints per layer torch ms, each algorithm's ms, the
fastest, and torch_time / engine_time for it (> 1: convtune is faster), then geometric
means of that ratio per category (1x1, 3x3, 7x7, depthwise, dilated, grouped, pool, ...).

    python benchmarks/bench_layers.py [--threads 2] [--batch 1,8] [--filter vgg]
                                      [--reps 7] [--quick] [--cached-weights] [--suite FILE]
"""
import argparse
import math
import os
import sys
from collections import defaultdict


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402
import engine.functional as F  # noqa: E402
from engine import shapes  # noqa: E402
from tuner import configs, search, timing  # noqa: E402


def engine_runners(shape, x, w, b, cached):
    p = shape.params
    if isinstance(p, shapes.ConvParams):
        pads = p.pads
        padding = (pads[0], pads[2])
        out = {}
        for name in engine.registry.applicable(p):
            if cached:
                layer = engine.Conv2d(p.c_in, p.c_out, p.kernel, p.stride, padding, p.dilation, p.groups,
                                      bias=b is not None, padding_mode=p.padding_mode, algorithm=name)
                layer.weight = w
                if b is not None:
                    layer.bias = b
                out[name] = (lambda layer=layer: layer(x))
            else:
                out[name] = (lambda name=name: F.conv2d(x, w, b, p.stride, padding, p.dilation, p.groups,
                                                        p.padding_mode, algorithm=name))
        return out
    if p.op == "max_pool2d":
        return {"pool": lambda: F.max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)}
    return {"pool": lambda: F.avg_pool2d(x, p.kernel, p.stride, p.padding, p.ceil_mode,
                                         shape.count_include_pad)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default=os.path.join(ROOT, "configs", "layers.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default=None, help="comma list of batch sizes (default 1,8; --quick: 1)")
    ap.add_argument("--filter", default=None, help="only layers whose name or category contains this")
    ap.add_argument("--reps", type=int, default=None, help="samples per candidate (default 7; --quick: 3)")
    ap.add_argument("--min-sample", type=float, default=None, help="seconds per sample (default 0.02)")
    ap.add_argument("--quick", action="store_true", help="batch 1, 3 samples of >= 5 ms")
    ap.add_argument("--cached-weights", action="store_true",
                    help="time Conv2d(algorithm=name) layers (weights prepared once) instead of "
                    "functional.conv2d(algorithm=name)")
    args = ap.parse_args(argv)
    batches = [int(v) for v in (args.batch or ("1" if args.quick else "1,8")).split(",")]
    reps = args.reps or (3 if args.quick else 7)
    min_sample = args.min_sample or (0.005 if args.quick else 0.02)

    engine.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    algos = engine.algorithms()
    print(f"bench_layers: {os.path.relpath(args.suite)}; threads {args.threads}; batches {batches}; "
          f"{reps} samples >= {min_sample * 1e3:g} ms; engine via "
          f"{'Conv2d(algorithm=...) layers' if args.cached_weights else 'functional.conv2d(algorithm=...)'}; "
          f"PyTorch {torch.__version__ if torch else 'not installed'}")
    header = ["layer", "N", "torch"] + algos + ["best", "torch/best"]
    print(" ".join(f"{h:>14s}" if i else f"{h:34s}" for i, h in enumerate(header)))
    ratios = defaultdict(list)
    for batch in batches:
        cfg = configs.load(args.suite, batch=batch)
        for s in cfg.shapes:
            if args.filter and args.filter not in s.name and args.filter not in s.category:
                continue
            if isinstance(s.params, shapes.ConvParams):
                x, w, b = search.make_conv_data(s.params, 0, s.bias)
            else:
                x, w, b = search.make_pool_data(s.params, 0), None, None
            fns = engine_runners(s, x, w, b, args.cached_weights)
            if torch is not None:
                fns["torch"] = search.torch_runner(torch, s, x, w, b)
            stats = timing.measure(fns, reps=reps, min_sample_s=min_sample, warmup=1)
            med = {k: v.median for k, v in stats.items()}
            mine = {k: v for k, v in med.items() if k != "torch"}
            best = min(mine, key=mine.get)
            ratio = med["torch"] / mine[best] if "torch" in med else math.nan
            ratios[s.category].append(ratio)
            ratios["all"].append(ratio)
            cells = [f"{med['torch'] * 1e3:14.3f}" if "torch" in med else f"{'-':>14s}"]
            cells += [f"{med[a] * 1e3:14.3f}" if a in med else f"{'-':>14s}"
                      for a in (algos if "pool" not in med else [])]
            if "pool" in med:
                cells += [f"{med['pool'] * 1e3:14.3f}"] + [f"{'':>14s}"] * (len(algos) - 1)
            print(f"{s.name[:34]:34s} {batch:>14d} " + " ".join(cells)
                  + f" {best:>14s} {ratio:14.2f}", flush=True)
    print("\ngeometric mean of torch_time / best convtune time per category (> 1: convtune faster):")
    for cat, vals in sorted(ratios.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        print(f"  {cat:12s} {timing.geomean(vals):6.2f}  ({len(vals)} layer(s))")


if __name__ == "__main__":
    main()
