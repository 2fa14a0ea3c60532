# cython: language_level=3
"""Python face of the micro-kernel layer (ukernels/): what the CPU supports, each ISA's
kernel names and register tiles, and the GEMM kernels callable on numpy arrays (for
their tests, tests/test_ukernels.py, and for benchmarks).

Which ISA the engine runs is decided in ``engine.isa``; this module only reports and
runs what it is told to.
"""
import numpy as np

from ._ukernels cimport (uk_cpu_isa, uk_cpu_vendor, uk_kernels, uk_kernels_t, UK_ISA_COUNT,
                        UK_VENDOR_AMD, UK_VENDOR_INTEL)

ISA_NAMES = ("baseline", "avx2", "avx512")
assert len(ISA_NAMES) == UK_ISA_COUNT


def cpu_isa():
    """Index into ISA_NAMES of the best ISA this CPU and OS support (cpuid)."""
    return uk_cpu_isa()


def cpu_vendor():
    """"amd", "intel" or "other" (cpuid's vendor string)."""
    v = uk_cpu_vendor()
    return "amd" if v == UK_VENDOR_AMD else "intel" if v == UK_VENDOR_INTEL else "other"


def compiled():
    """Indices of the ISAs this build has kernels for (all three on x86-64)."""
    return [i for i in range(UK_ISA_COUNT) if uk_kernels(i) != NULL]


def kernel_info(int isa):
    """Names and register tile of ISA ``isa``'s kernels (a dict)."""
    cdef const uk_kernels_t* t = _table(isa)
    return {"isa": t.isa.decode(), "sgemm": t.sgemm_name.decode(),
            "sgemm_tile": (t.sgemm_mr, t.sgemm_nr), "sgemm_vec": t.sgemm_vec,
            "winograd": t.wg_name.decode(), "igemm": t.igemm_name.decode(), "igemm_kc": t.igemm_kc}


cdef const uk_kernels_t* _table(int isa) except NULL:
    if not 0 <= isa < UK_ISA_COUNT or uk_kernels(isa) == NULL:
        raise ValueError(f"no micro-kernels for ISA index {isa} in this build "
                         f"(compiled: {[ISA_NAMES[i] for i in compiled()]})")
    if isa > uk_cpu_isa():
        raise ValueError(f"this CPU cannot run {ISA_NAMES[isa]} kernels "
                         f"(it supports up to {ISA_NAMES[uk_cpu_isa()]})")
    return uk_kernels(isa)


def sgemm(int isa, A, B, C, bint accumulate=False, bint tile=False):
    """C = A @ B (+ C when ``accumulate``) on ISA ``isa``'s float32 GEMM, in place.

    A[M][K], B[K][N], C[M][N]: float32, rows contiguous (any row stride). With ``tile``
    the register-tile kernel is called directly, so M <= MR and N <= NR of that ISA's
    tile; otherwise the blocked driver (any sizes).
    """
    cdef const uk_kernels_t* t = _table(isa)
    cdef const float[:, :] a = _rows(A, "A")
    cdef const float[:, :] b = _rows(B, "B")
    cdef float[:, :] c = _rows(C, "C", writeable=True)
    cdef int M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N:
        raise ValueError(f"sgemm: shapes A{tuple(A.shape)} B{tuple(B.shape)} C{tuple(C.shape)} "
                         f"do not form C[M][N] = A[M][K] @ B[K][N]")
    if tile and not (1 <= M <= t.sgemm_mr and 1 <= N <= t.sgemm_nr):
        raise ValueError(f"sgemm tile {t.sgemm_name.decode()} takes 1..{t.sgemm_mr} rows and "
                         f"1..{t.sgemm_nr} columns, got {M}x{N}")
    if M == 0 or N == 0:
        return C
    cdef const float* pa = &a[0, 0] if K > 0 else NULL
    cdef const float* pb = &b[0, 0] if K > 0 else NULL
    cdef int lda = a.strides[0] // 4 if K > 0 else 1
    cdef int ldb = b.strides[0] // 4 if K > 0 else N
    cdef int ldc = c.strides[0] // 4
    with nogil:
        if tile:
            t.sgemm_tile(M, N, K, pa, lda, pb, ldb, &c[0, 0], ldc, accumulate)
        else:
            t.sgemm(M, N, K, pa, lda, pb, ldb, &c[0, 0], ldc, accumulate)
    return C


def sgemm_tile_pa(int isa, Ap, B, C, bint accumulate=False):
    """C = A @ B (+ C when ``accumulate``) on ISA ``isa``'s packed-A register tile
    (sgemm_<MR>x<NR>_pa__<isa>), in place: Ap[K][MR] holds A column by column
    (A[i][p] = Ap[p][i]; rows i >= M are ignored), B[K][N], C[M][N] with 1 <= M <= MR,
    1 <= N <= NR (rows contiguous, any row stride for B and C)."""
    cdef const uk_kernels_t* t = _table(isa)
    cdef const float[:, :] b = _rows(B, "B")
    cdef float[:, :] c = _rows(C, "C", writeable=True)
    if not isinstance(Ap, np.ndarray) or Ap.dtype != np.float32 or Ap.ndim != 2 \
            or not Ap.flags.c_contiguous:
        raise TypeError("sgemm_tile_pa: Ap must be a C-contiguous 2-D float32 ndarray")
    cdef const float[:, ::1] a = Ap
    cdef int M = c.shape[0], N = c.shape[1], K = a.shape[0]
    if a.shape[1] != t.sgemm_mr or b.shape[0] != K or b.shape[1] != N:
        raise ValueError(f"sgemm_tile_pa: shapes Ap{tuple(Ap.shape)} B{tuple(B.shape)} C{tuple(C.shape)} "
                         f"do not form C[M][N] = Ap[K][{t.sgemm_mr}]^T @ B[K][N]")
    if not (1 <= M <= t.sgemm_mr and 1 <= N <= t.sgemm_nr):
        raise ValueError(f"sgemm_tile_pa takes 1..{t.sgemm_mr} rows and 1..{t.sgemm_nr} columns, got {M}x{N}")
    cdef const float* pa = &a[0, 0] if K > 0 else NULL
    cdef const float* pb = &b[0, 0] if K > 0 else NULL
    cdef int ldb = b.strides[0] // 4 if K > 0 else N
    with nogil:
        t.sgemm_tile_pa(M, N, K, pa, pb, ldb, &c[0, 0], c.strides[0] // 4, accumulate)
    return C


def sgemm_tile_pa_ib(int isa, Ap, B, boff, C, bint accumulate=False):
    """C = A @ Bk (+ C when ``accumulate``) on ISA ``isa``'s packed-A tile with indirect
    B (sgemm_<MR>x<NR>_pa_ib__<isa>), in place: Ap[K][MR] as for sgemm_tile_pa, B a
    1-D float32 array, boff[K] int32 with Bk[p][j] = B[boff[p] + j] (each row inside B),
    C[M][N] with 1 <= M <= MR, 1 <= N <= NR (rows contiguous, any row stride)."""
    cdef const uk_kernels_t* t = _table(isa)
    cdef float[:, :] c = _rows(C, "C", writeable=True)
    for name, arr, dtype, ndim in (("Ap", Ap, np.float32, 2), ("B", B, np.float32, 1),
                                   ("boff", boff, np.intc, 1)):
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim \
                or not arr.flags.c_contiguous:
            raise TypeError(f"sgemm_tile_pa_ib: {name} must be a C-contiguous {ndim}-D "
                            f"{np.dtype(dtype).name} ndarray")
    cdef const float[:, ::1] a = Ap
    cdef const float[::1] b = B
    cdef const int[::1] off = boff
    cdef int M = c.shape[0], N = c.shape[1], K = a.shape[0]
    if a.shape[1] != t.sgemm_mr or off.shape[0] != K:
        raise ValueError(f"sgemm_tile_pa_ib: Ap{tuple(Ap.shape)} and boff{tuple(boff.shape)} must be "
                         f"[K][{t.sgemm_mr}] and [K]")
    if not (1 <= M <= t.sgemm_mr and 1 <= N <= t.sgemm_nr):
        raise ValueError(f"sgemm_tile_pa_ib takes 1..{t.sgemm_mr} rows and 1..{t.sgemm_nr} columns, got {M}x{N}")
    if K and (boff.min() < 0 or boff.max() + N > B.shape[0]):
        raise ValueError("sgemm_tile_pa_ib: every B row boff[p] .. boff[p] + N must lie inside B")
    cdef const float* pa = &a[0, 0] if K > 0 else NULL
    cdef const float* pb = &b[0] if K > 0 else NULL
    cdef const int* po = &off[0] if K > 0 else NULL
    with nogil:
        t.sgemm_tile_pa_ib(M, N, K, pa, pb, po, &c[0, 0], c.strides[0] // 4, accumulate)
    return C


def _rows(arr, name, writeable=False):
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 2:
        raise TypeError(f"sgemm: {name} must be a 2-D float32 ndarray")
    if arr.size and (arr.shape[1] > 1 and arr.strides[1] != 4 or arr.strides[0] % 4):
        raise ValueError(f"sgemm: {name}'s rows must be contiguous")
    if writeable and not arr.flags.writeable:
        raise ValueError(f"sgemm: {name} must be writeable")
    return arr
