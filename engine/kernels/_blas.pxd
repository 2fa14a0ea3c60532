# cython: language_level=3
"""Row-major GEMM on top of scipy's Fortran BLAS: the one place kernels reach BLAS.

Every kernel that multiplies matrices cimports ``gemm`` from here. Arrays in convtune
are C-ordered (row-major); Fortran BLAS is column-major. A row-major product
C = op(A) @ op(B) is the column-major product C^T = op(B)^T @ op(A)^T, so we call
?gemm with the operands swapped and the leading dimensions unchanged.

The call runs on the calling thread's BLAS: kernels call it from inside their own
OpenMP threads, with the BLAS pool held at one thread by ``engine.threads`` so the
two thread pools never oversubscribe the cores.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm
from cython cimport floating

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int convtune_blas_serial_begin(void) {
        int saved = omp_get_max_threads();
        omp_set_num_threads(1);
        return saved;
    }
    static void convtune_blas_serial_end(int saved) { omp_set_num_threads(saved); }
    #else
    static int convtune_blas_serial_begin(void) { return 1; }
    static void convtune_blas_serial_end(int saved) { (void)saved; }
    #endif
    """
    int convtune_blas_serial_begin() noexcept nogil
    void convtune_blas_serial_end(int saved) noexcept nogil


cdef inline int blas_serial_begin() noexcept nogil:
    """Call in each kernel thread before its GEMMs; returns what ``blas_serial_end`` takes.

    Makes every GEMM single-threaded whichever Python thread started the team. An
    OpenMP-built BLAS sizes its own team from the calling thread's nthreads ICV, and
    ``threadpoolctl``'s limit (``omp_set_num_threads``) only reaches the thread that set
    it: a team started from another Python thread, or a team of one (not "in
    parallel"), would split each GEMM over several threads, a different partition and
    so different rounding. Setting this thread's ICV to 1 fixes that by construction; a
    pthreads BLAS ignores it (``engine.threads`` holds its global pool at one thread).
    """
    return convtune_blas_serial_begin()


cdef inline void blas_serial_end(int saved) noexcept nogil:
    convtune_blas_serial_end(saved)


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C[m][n] = alpha * op(A)[m][k] @ op(B)[k][n] + beta * C, all row-major.

    ``lda``/``ldb``/``ldc`` are row strides in elements (row-major leading dimensions).
    op(A) is A (A[m][k]) or, with ``trans_a``, A^T (A stored as A[k][m]); likewise B.
    """
    cdef char ta = b'T' if trans_b else b'N'   # swapped: we compute C^T = op(B)^T op(A)^T
    cdef char tb = b'T' if trans_a else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)
