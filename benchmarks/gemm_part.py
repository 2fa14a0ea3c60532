"""The GEMM part of igemm's big 1x1 convolutions: GFLOP/s of the register tile alone.

igemm runs a 1x1 layer as gather (ig_pack_wide: x's rows copied into packed B panels)
plus GEMM (the sgemm register tile over those panels, epilogue fused), in one pass.
Timing the two apart would change what each finds in the caches, so this samples one
call loop per layer with ``perf record`` (cpu-clock, so it works without hardware
counters, in a VM too) and splits the convolution's time by the share of samples in
the tile's functions (``sgemm_*``) against all samples of the loop:

    GEMM part GFLOP/s = convolution GFLOP/s (median of the loop) x all / tile samples

One thread, batch 1, the ISA's micro-kernels (--isa, default the best the CPU runs);
compare with the tile's FMA peak in L1 (benchmarks/tile_peak.c), passed as --peak to
print the percentage. Needs ``perf`` (linux-perf) and permission to sample
(kernel.perf_event_paranoid <= 2 for one's own processes); says so and stops if not.

    python benchmarks/gemm_part.py [--isa avx2] [--seconds 6] [--peak 99]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, C_in, H, C_out): ResNet-50's big 1x1 layers, stride 1, batch 1
LAYERS = [
    ("resnet50.layer1.reduce", 256, 56, 64),
    ("resnet50.layer1.expand", 64, 56, 256),
    ("resnet50.layer2.reduce", 512, 28, 128),
    ("resnet50.layer3.reduce", 1024, 14, 256),
    ("resnet50.layer3.expand", 256, 14, 1024),
]
WARMUP_S = 1.5          # perf starts sampling after this (imports, packing, warm-up)


def loop(c_in, h, c_out, isa, seconds):
    """Child: run the convolution for WARMUP_S + seconds; print its median GFLOP/s."""
    import engine
    from engine import operator, shapes
    engine.isa.set_cap(isa)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c_in, h, h), dtype=np.float32)
    w = (rng.standard_normal((c_out, c_in, 1, 1)) / np.sqrt(c_in)).astype(np.float32)
    p = shapes.conv_params(x.shape, w.shape, 1, 0, 1, 1, "zeros", "float32")
    op = operator.ConvOperator(p, "igemm", w, None, num_threads=1)   # weights packed once
    out = np.empty(p.output_shape, np.float32)
    ref = w.reshape(c_out, c_in).astype(np.float64) @ x.reshape(c_in, -1).astype(np.float64)

    def call():
        op(x, out)

    call()
    err = np.abs(out.reshape(c_out, -1) - ref).max() / max(1.0, np.abs(ref).max())
    assert err < 1e-4, err
    end = time.perf_counter() + WARMUP_S
    while time.perf_counter() < end:
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(2.0 * c_out * c_in * h * h / np.median(times) / 1e9)


def shares(data):
    """(all samples, tile samples, gather samples) of a perf.data file."""
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "sym",
                          "--stdio", "-F", "sample,sym"], capture_output=True, text=True, check=True)
    total = tile = gather = 0
    for line in rep.stdout.splitlines():
        parts = line.split()
        if not parts or line.startswith("#") or not parts[0].isdigit():
            continue
        n, sym = int(parts[0]), parts[-1]
        total += n
        tile += n if sym.startswith("sgemm_") else 0
        gather += n if sym.startswith("ig_pack") else 0
    return total, tile, gather


def main(argv=None):
    import engine
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", default=engine.isa.available()[-1], choices=engine.isa.available())
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--peak", type=float, default=None, help="the tile's L1 GFLOP/s (tile_peak.c)")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        loop(*args.child, args.isa, args.seconds)
        return
    if shutil.which("perf") is None:
        print("gemm_part: perf is not installed (Debian: linux-perf); nothing measured")
        return
    print(f"{engine.plan.hardware_fingerprint()['cpu']}; {args.isa}; 1 thread; batch 1; "
          f"{args.seconds:g} s sampled per layer")
    print(f"{'layer':>24s} {'conv GF/s':>10s} {'tile %':>7s} {'gather %':>9s} {'GEMM part GF/s':>15s}"
          + (f" {'of peak':>8s}" if args.peak else ""))
    env = dict(os.environ, OMP_NUM_THREADS="1", CONVTUNE_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        for name, c_in, h, c_out in LAYERS:
            run = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000",
                                  "-D", str(int((WARMUP_S + 1.0) * 1000)), "-o", data,
                                  sys.executable, os.path.abspath(__file__), "--isa", args.isa,
                                  "--seconds", str(args.seconds), "--child", str(c_in), str(h), str(c_out)],
                                 capture_output=True, text=True, env=env)
            if run.returncode != 0:
                print(f"gemm_part: perf record failed ({run.stderr.strip().splitlines()[-1:]}); "
                      "sampling may need kernel.perf_event_paranoid <= 2")
                return
            gflops = float(run.stdout.split()[-1])
            total, tile, gather = shares(data)
            part = gflops * total / tile
            print(f"{name:>24s} {gflops:10.1f} {100 * tile / total:7.1f} {100 * gather / total:9.1f} "
                  f"{part:15.1f}" + (f" {100 * part / args.peak:7.0f}%" if args.peak else ""))


if __name__ == "__main__":
    main()
