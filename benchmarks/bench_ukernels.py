"""GEMM micro-kernel throughput per ISA, one thread, beside OpenBLAS's sgemm.

For each shape C[M][N] = A[M][K] @ B[K][N] (the Winograd GEMMs: M = output channels,
K = input channels, N = tiles in a block), times every ISA's blocked GEMM this CPU can
run (engine.kernels._ukernels.sgemm) and numpy's matmul with its BLAS held at one
thread, interleaved (tuner/timing.py), and prints GFLOP/s (2*M*N*K / median time).
Compare with the core's FMA peak: FMA units x lanes x 2 x clock (e.g. AVX-512 with
2 FMA units: 64 flop/cycle; AVX2: 32 flop/cycle).

    python benchmarks/bench_ukernels.py [--reps 7]
"""
import argparse
import os
import sys

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
from engine.kernels import _ukernels  # noqa: E402
from tuner import timing  # noqa: E402

SHAPES = [(64, 448, 64), (128, 256, 128), (256, 128, 256), (512, 48, 512), (512, 64, 512)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    names = engine.isa.available()
    print(f"{engine.plan.hardware_fingerprint()['cpu']}; 1 thread; GFLOP/s, medians of {args.reps}")
    print(f"{'M x N x K':>16s}" + "".join(f"{n:>10s}" for n in names) + f"{'OpenBLAS':>10s}")
    with threadpool_limits(limits=1, user_api="blas"):
        for M, N, K in SHAPES:
            A = rng.standard_normal((M, K)).astype(np.float32)
            B = rng.standard_normal((K, N)).astype(np.float32)
            C = np.empty((M, N), np.float32)
            fns = {n: (lambda i=engine.isa.NAMES.index(n): _ukernels.sgemm(i, A, B, C)) for n in names}
            fns["OpenBLAS"] = lambda: np.matmul(A, B, out=C)
            stats = timing.measure(fns, reps=args.reps, min_sample_s=0.02, warmup=1)
            flops = 2.0 * M * N * K
            print(f"{f'{M}x{N}x{K}':>16s}" + "".join(f"{flops / stats[k].median / 1e9:10.1f}" for k in fns))


if __name__ == "__main__":
    main()
