"""GEMM micro-kernel throughput per ISA, one thread, beside OpenBLAS's sgemm and BLIS.

Table 1: for each shape C[M][N] = A[M][K] @ B[K][N] (the Winograd GEMMs: M = output
channels, K = input channels, N = tiles in a block), times every ISA's blocked GEMM this
CPU can run (engine.kernels._ukernels.sgemm) and numpy's matmul with its BLAS held at
one thread, interleaved (tuner/timing.py), and prints GFLOP/s (2*M*N*K / median time).

Table 2: the convolutions igemm runs (ResNet-50's 1x1 layers, ResNet-18's strided 3x3,
a dilated 3x3, the 7x7 stem) as GEMMs M = C_out, N = OH*OW, K = C_in*kH*kW, batch 1:
the whole igemm convolution per ISA (packed weights made once; the gather of the B
panels included), and on the explicit im2col matrix (built once, outside the timing)
our blocked sgemm driver, OpenBLAS's sgemm through scipy (row-major as C^T = B^T A^T,
no copies) and BLIS (``blis.py.gemm``, when installed). So igemm's column is the
convolution, the others only its GEMM.

Compare with the core's FMA peak: FMA units x lanes x 2 x clock (e.g. AVX-512 with
2 FMA units: 64 flop/cycle; AVX2: 32 flop/cycle); benchmarks/tile_peak.c measures what
one register tile reaches with its operands in L1.

    python benchmarks/bench_ukernels.py [--reps 7] [--isa avx2]
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
# (name, C_in, H, C_out, kernel, stride, padding, dilation): batch 1
CONV_SHAPES = [
    ("resnet50.layer1.reduce", 256, 56, 64, 1, 1, 0, 1),
    ("resnet50.layer1.expand", 64, 56, 256, 1, 1, 0, 1),
    ("resnet50.layer2.reduce", 512, 28, 128, 1, 1, 0, 1),
    ("resnet50.layer3.expand", 256, 14, 1024, 1, 1, 0, 1),
    ("resnet50.layer3.reduce", 1024, 14, 256, 1, 1, 0, 1),
    ("resnet50.layer4.reduce", 2048, 7, 512, 1, 1, 0, 1),
    ("resnet50.downsample", 256, 56, 512, 1, 2, 0, 1),
    ("resnet18.layer2.s2", 64, 56, 128, 3, 2, 1, 1),
    ("dilated.d2", 256, 28, 256, 3, 1, 2, 2),
    ("resnet18.conv1", 3, 224, 64, 7, 2, 3, 1),
]


def im2col_matrix(x, k, s, p, d):
    """col[(ic*k + i)*k + j][oh*OW + ow] of one image x[C][H][W] (numpy, for the GEMMs)."""
    C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    OH = (H + 2 * p - d * (k - 1) - 1) // s + 1
    cols = [xp[:, i * d:i * d + s * (OH - 1) + 1:s, j * d:j * d + s * (OH - 1) + 1:s]
            for i in range(k) for j in range(k)]
    return np.ascontiguousarray(np.stack(cols, 1).reshape(C * k * k, OH * OH)), OH


def conv_table(names, reps, rng):
    from scipy.linalg import blas as sblas
    from engine.kernels import igemm
    try:
        import blis.py as blis_py
    except ImportError:
        blis_py = None
        print("  note: BLIS is not installed (pip install blis): its column is left out")
    cols = [f"igemm-{n}" for n in names] + [f"sgemm-{n}" for n in names] + ["OpenBLAS"] \
        + (["BLIS"] if blis_py else [])
    print(f"\n{'layer (M x N x K)':>36s}" + "".join(f"{c:>16s}" for c in cols))
    for name, C, H, M, k, s, p, d in CONV_SHAPES:
        x = rng.standard_normal((1, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((M, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
        col, OH = im2col_matrix(x[0], k, s, p, d)
        A = np.ascontiguousarray(w.reshape(M, -1))
        K, N = A.shape[1], col.shape[1]
        out = np.empty((1, M, OH, OH), np.float32)
        Cm = np.empty((M, N), np.float32)
        fns = {}
        for n in names:
            lv = engine.isa.NAMES.index(n)
            pw = igemm.PackedWeights(w, 1, lv)
            fns[f"igemm-{n}"] = (lambda pw=pw, lv=lv: igemm.conv2d_igemm(
                x, pw, None, out, k, k, s, s, p, p, d, d, 1, 1, isa=lv))
            fns[f"sgemm-{n}"] = (lambda lv=lv: _ukernels.sgemm(lv, A, col, Cm))
        fns["OpenBLAS"] = lambda: sblas.sgemm(1.0, col.T, A.T)       # C^T = col^T A^T, F-order views
        if blis_py:
            fns["BLIS"] = lambda: blis_py.gemm(A, col, out=Cm, beta=0.0)
        ref = A.astype(np.float64) @ col.astype(np.float64)
        for c, f in fns.items():      # every column computes the same product
            r = f()
            got = out.reshape(M, N) if c.startswith("igemm") else (r.T if c == "OpenBLAS" else Cm)
            err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
            assert err < 1e-4, (name, c, err)
        stats = timing.measure(fns, reps=reps, min_sample_s=0.02, warmup=1)
        flops = 2.0 * M * N * K
        label = f"{name} ({M}x{N}x{K})"
        print(f"{label:>36s}" + "".join(f"{flops / stats[c].median / 1e9:16.1f}" for c in cols))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--isa", default=None, choices=list(engine.isa.NAMES),
                    help="only this ISA's kernels (default: every ISA the CPU runs)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    names = [args.isa] if args.isa else engine.isa.available()
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
        conv_table(names, args.reps, rng)


if __name__ == "__main__":
    main()
