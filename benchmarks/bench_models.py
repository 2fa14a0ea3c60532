"""Whole-network latency: convtune against PyTorch eager at the same thread count.

Each network is built in PyTorch with torchvision's structure and random weights
(tests/torch_reference.py), converted with ``engine.from_torch`` and, by default,
fused (``engine.fuse``: BatchNorm folded, ReLU in the kernels). Engine and torch runs
are interleaved and each side's median is reported, with torch_ms / engine_ms (> 1
means the engine is faster); the minimum of each side's runs and their ratio follow,
the steadier estimate when other work shares the machine. The engine uses the plan given
with ``--plan FILE``; without it, its heuristic (the default plan file is never read).
``--isa`` caps the micro-kernels (baseline, avx2, avx512), and PyTorch where it has a
switch (``anchors.cap_torch_isa``).

    python benchmarks/bench_models.py                       # resnet18 vgg16 mobilenet_v1, batch 1 and 8
    python benchmarks/bench_models.py --models resnet18 --batch 1 --profile
    python benchmarks/bench_models.py --plan plan.json --threads 2 --repeat 20

``--clock cpu`` times with this process's CPU time instead of wall time: on a
machine shared with other work it is far less disturbed (use it with --threads 1).
``--profile`` adds a per-layer table for each (model, batch): every leaf layer's
median time in the engine, its algorithm and where that came from, and for each
convolution the time of torch's conv2d on the same shape and weights (+ its ReLU when
the engine layer has it fused), so the gap is visible layer by layer.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import engine  # noqa: E402
from tuner.profile import format_table, profile_model  # noqa: E402

import anchors  # noqa: E402


CLOCK = time.perf_counter     # --clock cpu: time.process_time (this process's CPU time)
PAUSE = 0.0                   # --pause: seconds of sleep before each timed run


def _timed(fn):
    if PAUSE:
        time.sleep(PAUSE)
    t0 = CLOCK()
    fn()
    return (CLOCK() - t0) * 1e3


def interleaved(fns, repeat, warmup, stat=statistics.median):
    """Medians (ms; or ``stat`` of each list of times, e.g. ``min`` or ``list``) of
    ``fns`` run alternately ``repeat`` times after ``warmup`` rounds, the order rotated
    round by round as in tuner/timing.py (whole-network runs are long enough to time
    one call each, and need this module's --pause/--clock, which timing.py lacks)."""
    for _ in range(warmup):
        for f in fns:
            f()
    times = [[] for _ in fns]
    for r in range(repeat):
        for k in range(len(fns)):
            i = (r + k) % len(fns)
            times[i].append(_timed(fns[i]))
    return [stat(t) for t in times]


def build(name, torch):
    """(torch model in eval mode, engine model converted from it)."""
    import torch_reference as ref
    torch.manual_seed(0)
    tm = ref.BUILDERS[name]()
    ref.randomize_bn(tm)
    tm.eval()
    return tm, engine.from_torch(tm)


def profile(model, x, repeat, torch, stat):
    """Per-leaf-layer engine times (ms, ``stat`` over ``repeat`` runs of the whole
    model) on ``x``, with torch's time for each convolution and pool on the same shape:
    ``tuner.profile`` (what ``convtune profile`` runs), on this module's clock."""
    return profile_model(model, x, repeat=repeat, warmup=0, torch=torch, clock=CLOCK, stat=stat,
                         latency=False)["layers"]


def print_profile(rows, total_ms):
    print("  " + format_table(rows, total_ms).replace("\n", "\n  "))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg16", "mobilenet_v1"],
                    choices=["resnet18", "resnet50", "vgg16", "mobilenet_v1", "seed_cnn"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=11, help="timed runs per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--plan", default="none",
                    help="a tuned plan (JSON) for the engine, or 'none' (the heuristic; default)")
    ap.add_argument("--isa", default=None, choices=list(engine.isa.NAMES),
                    help="cap the micro-kernels at this ISA (default: the best the CPU has)")
    ap.add_argument("--no-fuse", action="store_true", help="run the unfused model")
    ap.add_argument("--pause", type=float, default=0.02,
                    help="seconds to sleep before each timed run (default 0.02), so the other "
                         "side's OpenMP threads have stopped spinning: torch and the engine "
                         "each bring an OpenMP runtime, and on 2 cores their spinning "
                         "teams would otherwise slow each other down")
    ap.add_argument("--profile", action="store_true", help="per-layer table for each run")
    ap.add_argument("--profile-stat", choices=["median", "min"], default="median",
                    help="per-layer statistic (min is steadier on a busy machine)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time (default), or this process's CPU time, which a loaded "
                         "machine disturbs less (at 1 thread it is the work done)")
    args = ap.parse_args(argv)
    global CLOCK, PAUSE
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    PAUSE = args.pause

    torch_cap = anchors.cap_torch_isa(args.isa)
    import torch
    torch.set_num_threads(args.threads)
    engine.set_num_threads(args.threads)
    if args.isa:
        engine.isa.set_cap(args.isa)
    engine.use_plan(None if args.plan.lower() == "none" else args.plan)
    print(f"{engine.plan.hardware_fingerprint()['cpu']}, micro-kernels {engine.isa.active()}"
          f"{' (capped with --isa)' if args.isa else ''}{torch_cap}")
    print(f"{args.clock} clock, threads {args.threads}, input {args.size}x{args.size}, plan "
          f"{args.plan if args.plan.lower() != 'none' else 'none (heuristic)'}, "
          f"{'unfused' if args.no_fuse else 'fused'}, medians of {args.repeat} interleaved runs")
    print(f"{'model':<14}{'batch':>6}{'torch ms':>11}{'engine ms':>11}{'torch/engine':>14}"
          f"{'| min: torch':>13}{'engine':>9}{'ratio':>7}")
    for name in args.models:
        tm, em = build(name, torch)
        if not args.no_fuse:
            em = engine.fuse(em)
        for n in args.batch:
            x = np.random.default_rng(1).standard_normal((n, 3, args.size, args.size)).astype(np.float32)
            tx = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode():
                    tm(tx)

            def run_engine():
                em(x)

            times = interleaved([run_torch, run_engine], args.repeat, args.warmup, list)
            t_torch, t_engine = (statistics.median(t) for t in times)
            m_torch, m_engine = (min(t) for t in times)
            print(f"{name:<14}{n:>6}{t_torch:>11.2f}{t_engine:>11.2f}{t_torch / t_engine:>14.2f}"
                  f"{m_torch:>13.2f}{m_engine:>9.2f}{m_torch / m_engine:>7.2f}", flush=True)
            if args.profile:
                stat = min if args.profile_stat == "min" else statistics.median
                print(f"  per layer: {args.profile_stat} of {args.repeat} runs")
                print_profile(profile(em, x, args.repeat, torch, stat), t_engine)
        del tm, em


if __name__ == "__main__":
    main()
