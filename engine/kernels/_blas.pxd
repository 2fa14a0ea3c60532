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
