"""Side-by-side layer benchmark: every applicable convtune algorithm and the default
dispatch vs PyTorch, ONNX Runtime and ncnn, in one process.

For each layer of the suite (configs/layers.json by default: VGG-16, ResNet-18,
ResNet-50 1x1, MobileNet-V1 depthwise, dilated and grouped layers, the seed CNN, max
pool 64x112x112 k3 s2 p1, ...) at each batch size, at one thread count for every
engine, times

    torch    torch.nn.functional.conv2d / max_pool2d / avg_pool2d
    ort      ONNX Runtime on a one-node ONNX model (benchmarks/anchors.py)
    ncnn     ncnn on a one-layer net (benchmarks/anchors.py): the ``ncnn`` module, or
             with CONVTUNE_NCNN_LIB=/path/to/libncnn.so that library through its C API
             (e.g. a build with the AVX-512 options off); the header says which
    each     engine algorithm forced: its operator (engine.operator) built once, weights
             prepared once as a layer keeps them, with --cached-weights; else built per
             call, weights prepared per call, as functional.conv2d does
    default  the operator the dispatch builds: the plan (--plan, default none) or the
             heuristic, i.e. what a user's layer runs

interleaved (tuner/timing.py: warm-up, calls per sample grown to --min-sample, rounds
with rotated order, medians). Each anchor's output is checked against PyTorch (or the
engine's direct algorithm without torch) first and left out, with a note, if it
differs. Per layer it prints every median in ms, the fastest engine algorithm, the
default's time over the best forced one (default/best: 1.00 = the heuristic chose the
fastest), and other/default ratios (> 1: convtune is faster); then geometric means per
category, of the non-Winograd categories together (NON_WINOGRAD: the layers the GEMM
paths serve), and the layers where PyTorch is faster than the default. Anchors that are
not installed are skipped with a note.

    python benchmarks/bench_layers.py [--threads 2] [--batch 1,8] [--filter vgg] [--isa avx2]
                                      [--plan none|FILE] [--reps 7] [--quick]
                                      [--cached-weights] [--suite FILE]

``--isa`` caps the micro-kernels (engine.isa.set_cap: baseline, avx2, avx512), e.g. to
measure the AVX2 path on an AVX-512 machine, and PyTorch with them where it has a switch
(``anchors.cap_torch_isa``: oneDNN and ATen); ONNX Runtime and ncnn keep the CPU's best
(ncnn: the best its build has, so CONVTUNE_NCNN_LIB with an AVX2-only build for ncnn's AVX2).
"""
import argparse
import math
import os
import shutil
import sys
import tempfile
from collections import defaultdict

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402
from engine import dispatch, operator, shapes  # noqa: E402
from tuner import configs, search, timing  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import anchors  # noqa: E402


def engine_runners(shape, x, w, b, cached, threads):
    """Every applicable algorithm forced (pooling's one included), as operators: built
    once with ``cached`` (as a layer keeps them), else per call (as functional does)."""
    p = shape.params
    kw = ({"count_include_pad": shape.count_include_pad} if isinstance(p, shapes.PoolParams)
          else {"weight": w, "bias": b})

    def runner(name):
        if cached or isinstance(p, shapes.PoolParams):
            op = operator.create(p, name, num_threads=threads, **kw)
            return lambda: op(x)
        return lambda: operator.create(p, name, num_threads=threads, **kw)(x)
    return {name: runner(name) for name in engine.registry.applicable(p)}


# The categories of the layers the GEMM paths serve (everything but Winograd's 3x3,
# depthwise, pooling and the seed CNN), summarised together as one more row.
NON_WINOGRAD = ("1x1", "1x1s2", "3x3s2", "7x7", "dilated", "grouped")
NON_WINOGRAD_ROW = "non-Winograd"
ANCHORS = ["torch", "ort", "ncnn"]


def _default_runner(shape, x, w, b, threads):
    """What a user's layer runs: the operator of the dispatch's choice (plan or heuristic)."""
    p = shape.params
    kw = ({"count_include_pad": shape.count_include_pad} if isinstance(p, shapes.PoolParams)
          else {"weight": w, "bias": b})
    op = operator.create(p, dispatch.choose(p, None, threads), num_threads=threads, **kw)
    return lambda: op(x)


def _checked_anchors(shape, x, w, b, threads, workdir, reference):
    """ONNX Runtime and ncnn runners whose output agrees with ``reference``."""
    fns, notes = anchors.runners(shape, x, w, b, threads, workdir)
    scale = 1 + float(np.abs(reference).max())
    for name in list(fns):
        try:
            out = np.asarray(fns[name]()).reshape(reference.shape)
            err = float(np.abs(out - reference).max()) / scale
        except Exception as e:
            err, notes[name] = math.inf, f"{type(e).__name__}: {e}"
        if not err <= 1e-3:
            notes.setdefault(name, f"output differs from the reference (rel. error {err:.1e})")
            del fns[name]
    return fns, notes


def main(argv=None):

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default=os.path.join(ROOT, "configs", "layers.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default=None, help="comma list of batch sizes (default 1,8; --quick: 1)")
    ap.add_argument("--filter", default=None, help="only layers whose name or category contains this")
    ap.add_argument("--reps", type=int, default=None, help="samples per candidate (default 7; --quick: 3)")
    ap.add_argument("--min-sample", type=float, default=None, help="seconds per sample (default 0.02)")
    ap.add_argument("--quick", action="store_true", help="batch 1, 3 samples of >= 5 ms")
    ap.add_argument("--isa", default=None, choices=list(engine.isa.NAMES),
                    help="cap the micro-kernels at this ISA (default: the best the CPU has)")
    ap.add_argument("--plan", default="none",
                    help="plan for the default dispatch: 'none' (heuristic, the default) or a file")
    ap.add_argument("--cached-weights", action="store_true",
                    help="time forced algorithms with their weights prepared once (as a layer "
                    "keeps them) instead of per call (as functional.conv2d(algorithm=name))")
    args = ap.parse_args(argv)
    batches = [int(v) for v in (args.batch or ("1" if args.quick else "1,8")).split(",")]
    reps = args.reps or (3 if args.quick else 7)
    min_sample = args.min_sample or (0.005 if args.quick else 0.02)

    engine.set_num_threads(args.threads)
    if args.isa:
        engine.isa.set_cap(args.isa)
    anchor_cap = anchors.cap_torch_isa(args.isa)
    if anchor_cap:
        anchor_cap += (", ONNX Runtime not (no switch), ncnn as its build"
                       if os.environ.get(anchors.NCNN_LIB_ENV) else ", ONNX Runtime and ncnn not (no switch)")
    engine.use_plan(None if args.plan.lower() == "none" else args.plan)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    algos = engine.algorithms() + ["pool"]
    print(f"bench_layers: {os.path.relpath(args.suite)}; {engine.plan.hardware_fingerprint()['cpu']}; micro-kernels "
          f"{engine.isa.active()}{' (capped with --isa)' if args.isa else ''}; threads {args.threads}; "
          f"batches {batches}; {reps} samples >= {min_sample * 1e3:g} ms; plan {args.plan}; forced "
          f"algorithms with weights prepared {'once' if args.cached_weights else 'per call'}; "
          f"PyTorch {torch.__version__ if torch else 'not installed'}{anchor_cap}; "
          f"{anchors.ncnn_description()}")
    cols = ANCHORS + algos + ["default"]
    header = ["layer", "N"] + cols + ["best", "dflt/best"] + [f"{a}/dflt" for a in ANCHORS]
    print(" ".join(f"{h:>9s}" if i else f"{h:28s}" for i, h in enumerate(header)))
    ratios = defaultdict(lambda: defaultdict(list))
    behind_torch = []
    notes_seen = {}
    workdir = tempfile.mkdtemp(prefix="convtune-bench-")
    for batch in batches:
        cfg = configs.load(args.suite, batch=batch)
        for s in cfg.shapes:
            if args.filter and args.filter not in s.name and args.filter not in s.category:
                continue
            if isinstance(s.params, shapes.ConvParams):
                x, w, b = search.make_conv_data(s.params, 0, s.bias)
            else:
                x, w, b = search.make_pool_data(s.params, 0), None, None
            fns = engine_runners(s, x, w, b, args.cached_weights, args.threads)
            fns["default"] = _default_runner(s, x, w, b, args.threads)
            if torch is not None:
                fns["torch"] = search.torch_runner(torch, s, x, w, b)
                reference = np.asarray(fns["torch"]())
            else:
                reference = np.asarray(next(iter(fns.values()))())
            extra, notes = _checked_anchors(s, x, w, b, args.threads, workdir, reference)
            fns.update(extra)
            for name, note in notes.items():
                if notes_seen.get(name) != note:
                    print(f"  note: {name}: {note}")
                    notes_seen[name] = note
            stats = timing.measure(fns, reps=reps, min_sample_s=min_sample, warmup=1)
            med = {k: v.median for k, v in stats.items()}
            forced = {k: v for k, v in med.items() if k not in ANCHORS and k != "default"}
            best = min(forced, key=forced.get)
            mine = med["default"]
            cells = [f"{med[c] * 1e3:9.3f}" if c in med else f"{'-':>9s}" for c in cols]
            cells += [f"{best[:9]:>9s}", f"{mine / forced[best]:9.2f}"]
            ratios[s.category]["dflt/best"].append(mine / forced[best])
            for a in ANCHORS:
                r = med[a] / mine if a in med else math.nan
                cells.append(f"{r:9.2f}")
                if a in med:
                    ratios[s.category][a].append(r)
                    ratios["all"][a].append(r)
                    if s.category in NON_WINOGRAD:
                        ratios[NON_WINOGRAD_ROW][a].append(r)
                    if a == "torch" and r < 1.0:
                        behind_torch.append(f"{s.name} N={batch} {r:.2f}")
            ratios["all"]["dflt/best"].append(mine / forced[best])
            if s.category in NON_WINOGRAD:
                ratios[NON_WINOGRAD_ROW]["dflt/best"].append(mine / forced[best])
            print(f"{s.name[:28]:28s} {batch:>9d} " + " ".join(cells), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    print("\ngeometric means of other_time / convtune default time per category (> 1: convtune "
          "faster), and the worst default/best-forced ratio:")
    for cat, by in sorted(ratios.items(), key=lambda kv: (kv[0] in ("all", NON_WINOGRAD_ROW),
                                                           kv[0] == "all", kv[0])):
        parts = [f"{a} {timing.geomean(by[a]):5.2f}" for a in ANCHORS if by.get(a)]
        worst = max(by["dflt/best"]) if by.get("dflt/best") else math.nan
        print(f"  {cat:12s} {'  '.join(parts)}   worst dflt/best {worst:4.2f}  "
              f"({len(by['dflt/best'])} layer(s))")
    if NON_WINOGRAD_ROW in ratios:
        print(f"  ({NON_WINOGRAD_ROW}: the categories {', '.join(NON_WINOGRAD)} together)")
    print("layers where PyTorch is faster than the default: "
          + ("; ".join(behind_torch) if behind_torch else "none"))


if __name__ == "__main__":
    main()
