/* sgemm_4x16__scalar: the portable float32 GEMM tile (plain C), and its driver.
 *
 *   C[mr][nr] (ldc) = A[mr][k] (lda) @ B[k][nr] (ldb)  (+ C when acc)
 * Correct on every CPU: compiled with the build's portable flags only; GCC vector
 * extensions map each 16-column row onto whatever the baseline has (4 xmm with SSE on
 * x86-64, 4 q registers with NEON). 4 x 16 accumulators = 16 xmm registers.
 */
#include "ukernels.h"
#include "sgemm_driver.h"

typedef float uk_v16 __attribute__((vector_size(64)));

/* R rows (a compile-time constant once inlined) x 16 columns, one 16-float vector per
   row (4 xmm with SSE2): the compiler keeps the accumulators in registers. Columns
   past nr are staged through a zero-padded copy, so the vector loads stay in bounds. */
static inline __attribute__((always_inline)) void tile_4x16(
        int nr, int k, const float* A, int lda, const int AK, const float* B, int ldb, const int IB,
        const int* boff, float* C, int ldc, int acc, const int R, const int EP, const float* bias,
        int relu) {
    uk_v16 t[4];
    for (int r = 0; r < R; r++) {
        float row[16] = {0};
        if (acc) for (int c = 0; c < nr; c++) row[c] = C[(ptrdiff_t)r * ldc + c];
        __builtin_memcpy(&t[r], row, sizeof(uk_v16));
    }
    for (int p = 0; p < k; p++) {
        uk_v16 b;
        const float* bp = IB ? B + boff[p] : B + (ptrdiff_t)p * ldb;
        if (nr == 16) {
            __builtin_memcpy(&b, bp, sizeof(uk_v16));
        } else {
            float row[16] = {0};
            for (int c = 0; c < nr; c++) row[c] = bp[c];
            __builtin_memcpy(&b, row, sizeof(uk_v16));
        }
        for (int r = 0; r < R; r++) t[r] += A[(ptrdiff_t)r * lda + (ptrdiff_t)p * AK] * b;
    }
    for (int r = 0; r < R; r++) {
        float row[16];
        __builtin_memcpy(row, &t[r], sizeof(uk_v16));
        if (EP) {
            /* the driver's epilogue (ig_store_run): + bias (0 without), then v < 0 ? 0 : v */
            const float b = bias ? bias[r] : 0.0f;
            for (int c = 0; c < nr; c++) {
                const float v = row[c] + b;
                row[c] = relu && v < 0.0f ? 0.0f : v;
            }
        }
        for (int c = 0; c < nr; c++) C[(ptrdiff_t)r * ldc + c] = row[c];
    }
}

/* A(r, p) = A[r*LDA + p*AK]: row-major (LDA = lda, AK = 1) or packed Ap[k][4] (1, 4);
   B row p at B + p*ldb, or at B + boff[p] when IB. */
#define TILE_MR(LDA, AK, IB, EP)                                                                \
    switch (mr) {                                                                           \
        case 1: tile_4x16(nr, k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, 1, EP, bias, relu); break;  \
        case 2: tile_4x16(nr, k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, 2, EP, bias, relu); break;  \
        case 3: tile_4x16(nr, k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, 3, EP, bias, relu); break;  \
        default: tile_4x16(nr, k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, 4, EP, bias, relu); break; \
    }

UK_API UK_TILE void sgemm_4x16__scalar(int mr, int nr, int k, const float* A, int lda,
                                       const float* B, int ldb, float* C, int ldc, int acc) {
    const int* boff = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(lda, 1, 0, 0)
}

/* the same tile with A packed as a panel Ap[k][4] (the igemm driver's packed weights) */
UK_API UK_TILE void sgemm_4x16_pa__scalar(int mr, int nr, int k, const float* A,
                                          const float* B, int ldb, float* C, int ldc, int acc) {
    const int* boff = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(1, 4, 0, 0)
}

/* ... with the convolution's epilogue fused into its store (the igemm driver's, for C
   tiles that are runs of the output): C = relu?(A @ B (+ C when acc) + bias[r]) */
static UK_TILE void sgemm_4x16_pa_ep__scalar(int mr, int nr, int k, const float* A, const float* B,
                                             int ldb, float* C, int ldc, int acc, const float* bias,
                                             int relu) {
    const int* boff = 0;
    TILE_MR(1, 4, 0, 1)
}

/* ... and B read indirectly, row p at B + boff[p] (the igemm driver's padded mode) */
UK_API UK_TILE void sgemm_4x16_pa_ib__scalar(int mr, int nr, int k, const float* A, const float* B,
                                             const int* boff, float* C, int ldc, int acc) {
    const int ldb = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(1, 4, 1, 0)
}

/* The indirect-B tile with the epilogue fused into its store (the padded mode's, for
   panels whose columns are one run of the output): C = relu?(A @ B (+ C when acc) +
   bias[r]), B row p at B + boff[p]. */
static UK_TILE void sgemm_4x16_pa_ib_ep__scalar(int mr, int nr, int k, const float* A,
        const float* B, const int* boff, float* C, int ldc, int acc, const float* bias, int relu) {
    const int ldb = 0;
    TILE_MR(1, 4, 1, 1)
}

UK_SGEMM_DRIVER(sgemm__scalar, sgemm_4x16__scalar, 4, 16, UK_KC_scalar)

/* the implicit-GEMM convolution on this tile (igemm_driver.h) */
#define IG_SUFFIX scalar
#define IG_TILE sgemm_4x16_pa__scalar
#define IG_TILE_IB sgemm_4x16_pa_ib__scalar
#define IG_TILE_EP sgemm_4x16_pa_ep__scalar
#define IG_TILE_IB_EP sgemm_4x16_pa_ib_ep__scalar
#define IG_MR 4
#define IG_NR 16
#define IG_KC UK_KC_scalar
#include "igemm_driver.h"
