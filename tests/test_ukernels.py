"""Micro-kernels, tested like NNPACK's GemmMicroKernelTester: each ISA's GEMM register
tile over its edges (every mr from 1 to MR, n at and around the vector width, k around
the cache block, accumulate on and off, row strides wider than the rows) and the
blocked driver over odd sizes, against a plain float64 loop; plus the ISA selection
(engine.isa, CONVTUNE_ISA). ISAs this CPU lacks are skipped with the reason."""
import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from engine import isa
from engine.kernels import _ukernels

from conftest import ISAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_gemm(A, B, C0, accumulate):
    """C = A @ B (+ C0), one multiply-add at a time in float64."""
    M, K = A.shape
    N = B.shape[1]
    C = np.array(C0, np.float64) if accumulate else np.zeros((M, N))
    for i in range(M):
        for j in range(N):
            s = 0.0
            for p in range(K):
                s += float(A[i, p]) * float(B[p, j])
            C[i, j] += s
    return C


def operands(M, N, K, seed, pad=0):
    """A, B, C (NaN-filled when not accumulating would hide nothing: the caller picks),
    each a view with `pad` extra columns per row so strides differ from widths."""
    rng = np.random.default_rng(seed)
    def mat(r, c):
        full = rng.standard_normal((r, c + pad)).astype(np.float32)
        return full[:, :c]
    return mat(M, K), mat(K, N), mat(M, N)


def assert_gemm_close(C, expected, K):
    # float32 accumulation of K products of N(0,1) values: error grows like sqrt(K).
    tol = 1e-5 * max(1.0, np.sqrt(K)) * (1 + np.abs(expected).max())
    assert np.abs(C - expected).max() <= tol


def tile_of(name):
    return isa.kernels(name)["sgemm_tile"]


@pytest.mark.parametrize("name", ISAS)
def test_kernel_names_say_tile_and_isa(name):
    info = isa.kernels(name)
    mr, nr = info["sgemm_tile"]
    assert info["sgemm"].startswith(f"sgemm_{mr}x{nr}__")
    assert info["isa"] == name
    if name != "baseline":
        # the register budget the tile was chosen by (DESIGN.md): accumulators + B
        # vectors + 1 broadcast within the vector registers, and enough independent
        # accumulators for 2 FMA units x 4 cycles of latency
        lanes, regs = {"avx2": (8, 16), "avx512": (16, 32)}[name]
        accumulators = mr * (nr // lanes)
        assert accumulators + nr // lanes + 1 <= regs
        assert accumulators >= 8


@pytest.mark.parametrize("accumulate", [False, True], ids=["beta0", "accumulate"])
@pytest.mark.parametrize("name", ISAS)
def test_gemm_tile_every_mr_and_n_edge(name, accumulate):
    MR, NR = tile_of(name)
    level = isa.NAMES.index(name)
    ns = range(1, NR + 1)      # every width: each tail (masked, or stored in pieces) has its own path
    for mr in range(1, MR + 1):
        for nr in ns:
            for k in (0, 1, 3, 17):
                A, B, C = operands(mr, nr, k, seed=mr * 1000 + nr * 10 + k, pad=3)
                C0 = C.copy()
                expected = plain_gemm(A, B, C0, accumulate)
                _ukernels.sgemm(level, A, B, C, accumulate, tile=True)
                assert_gemm_close(C, expected, k)


@pytest.mark.parametrize("name", ISAS)
def test_gemm_tile_leaves_the_rest_of_c_alone(name):
    """Only the mr x nr block is written: NaN sentinels around it survive."""
    MR, NR = tile_of(name)
    level = isa.NAMES.index(name)
    rng = np.random.default_rng(5)
    for mr, nr in [(1, 1), (max(1, MR - 1), NR - 1)] + [(MR, nr) for nr in range(1, NR + 1)]:
        A = rng.standard_normal((mr, 20)).astype(np.float32)
        B = rng.standard_normal((20, nr)).astype(np.float32)
        big = np.full((MR + 2, NR + 19), np.nan, np.float32)
        C = big[1:1 + mr, 2:2 + nr]
        _ukernels.sgemm(level, A, B, C, tile=True)
        assert_gemm_close(C, plain_gemm(A, B, None, False), 20)
        outside = np.ones(big.shape, bool)
        outside[1:1 + mr, 2:2 + nr] = False
        assert np.isnan(big[outside]).all()


# k around the drivers' K blocks (128 on AVX-512, 256 on AVX2 and baseline) and large
KS = [1, 127, 128, 129, 255, 256, 257, 600]


@pytest.mark.parametrize("accumulate", [False, True], ids=["beta0", "accumulate"])
@pytest.mark.parametrize("name", ISAS)
def test_gemm_driver_sizes(name, accumulate):
    MR, NR = tile_of(name)
    level = isa.NAMES.index(name)
    for M, N, K in [(MR + 1, NR + 1, 5), (2 * MR - 1, 3 * NR + 5, 9), (1, 1, 1), (37, 50, 3),
                    (13, 16, 0)] + [(MR + 3, 2 * NR - 3, k) for k in KS]:
        A, B, C = operands(M, N, K, seed=M * 7 + N * 3 + K, pad=5)
        C0 = C.copy()
        expected = (C0.astype(np.float64) if accumulate else 0) + A.astype(np.float64) @ B.astype(np.float64)
        _ukernels.sgemm(level, A, B, C, accumulate)
        assert_gemm_close(C, expected, K)


@pytest.mark.parametrize("name", ISAS)
def test_gemm_driver_matches_plain_loop_exactly_shaped(name):
    """The blocked driver against the plain loop on a size that crosses every block."""
    level = isa.NAMES.index(name)
    A, B, C = operands(11, 53, 130, seed=3)
    _ukernels.sgemm(level, A, B, C)
    assert_gemm_close(C, plain_gemm(A, B, None, False), 130)


def test_gemm_tile_refuses_sizes_beyond_the_tile():
    MR, NR = isa.kernels("baseline")["sgemm_tile"]
    A, B, C = operands(MR + 1, NR, 4, seed=0)
    with pytest.raises(ValueError, match="rows"):
        _ukernels.sgemm(0, A, B, C, tile=True)
    with pytest.raises(ValueError, match="C\\[M\\]\\[N\\]"):
        _ukernels.sgemm(0, A, B[:, :3], C)
    with pytest.raises(TypeError, match="float32"):
        _ukernels.sgemm(0, A.astype(np.float64), B, C)


def test_isa_selection():
    assert isa.cpu() in isa.NAMES
    assert isa.available() == list(isa.NAMES[:isa.NAMES.index(isa.cpu()) + 1])
    assert set(_ukernels.compiled()) >= {isa.NAMES.index(n) for n in isa.available()}
    with pytest.raises(ValueError, match="one of baseline, avx2, avx512"):
        isa.set_cap("sse9")


def test_set_cap_switches_the_kernels(use_isa):
    for name in isa.available():
        use_isa(name)
        assert isa.active() == name
        assert isa.kernels()["isa"] == name
    use_isa(None)
    assert isa.active() == isa.cpu()


@pytest.mark.skipif(isa.cpu() == "avx512", reason="this CPU runs every ISA; nothing to refuse")
def test_asking_for_an_isa_the_cpu_lacks_is_an_error():
    with pytest.raises(ValueError, match="this CPU cannot run"):
        isa.set_cap("avx512")


def _import_with_isa(value):
    env = dict(os.environ, CONVTUNE_ISA=value)
    code = "import engine, engine.isa as i; print(i.active(), engine.build_info()['ukernels']['active'])"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_convtune_isa_environment_caps_at_import():
    r = _import_with_isa("baseline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["baseline", "baseline"]
    r = _import_with_isa("bogus")
    assert r.returncode != 0
    assert "CONVTUNE_ISA must be one of baseline, avx2, avx512, got 'bogus'" in r.stderr
    if isa.cpu() != "avx512":
        r = _import_with_isa("avx512")
        assert r.returncode != 0 and "this CPU cannot run avx512 kernels" in r.stderr


def test_no_avx2_masked_stores_in_the_built_kernels():
    """No kernel stores through an AVX2 mask (vmaskmovps/pd, vpmaskmovd/q to memory):
    on AMD's Zen 2 and 3 it is microcoded, tens of cycles a store (README,
    Micro-kernels). A partial vector is stored whole over elements that already hold
    its values, or in pieces; a clamp is a select, not a conditional store GCC would
    mask. Scans the built modules' machine code (objdump)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed: the machine code cannot be scanned")
    libs = sorted(glob.glob(os.path.join(ROOT, "engine", "kernels", "*.so")))
    if not libs:
        pytest.skip("no built kernel modules in the source tree (not an in-place build)")
    store = re.compile(r"v(?:maskmovp[sd]|pmaskmov[dq])\s+%[xy]mm\d+,%[xy]mm\d+,\(")
    found = {}
    for lib in libs:
        text = subprocess.run([objdump, "-d", "--no-show-raw-insn", lib], capture_output=True,
                              text=True, check=True).stdout
        n = len(store.findall(text))
        if n:
            found[os.path.basename(lib)] = n
    assert not found, f"AVX2 masked stores in {found}"
