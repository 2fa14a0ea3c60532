/* sgemm_8x48__avx512f: float32 GEMM register tile for AVX-512F, and its blocked driver.
 *
 *   C[mr][nr] (ldc) = A[mr][k] (lda) @ B[k][nr] (ldb)  (+ C when acc)
 *   IN  A row-major (rows contiguous in k), B row-major (a packed [k][nr] panel)
 *   OUT C row-major; only the mr x nr block is touched.
 * Tile: 8 rows x 48 columns = 8 x 3 zmm accumulators (24) + 3 B vectors + 1 broadcast
 * of A = 28 of the 32 zmm registers; 24 independent FMA chains cover 2 FMA units x
 * 4 cycles of latency three times over. Per k: 3 loads of B, 8 broadcasts, 24 FMAs.
 * Columns past nr are masked (loads read 0, stores skip), so any nr in 1..48 works.
 * The driver blocks K by 128: the 128 x 48 B slice (24 KiB) stays in L1.
 * sgemm_8x48_pa__avx512f is the same tile with A packed as a panel Ap[k][8] (rows past
 * mr ignored): what the igemm driver's packed weights hold. sgemm_8x48_pa_ib__avx512f
 * also reads B indirectly, row p at B + boff[p] (the igemm driver's padded mode: rows
 * of the padded input read in place).
 */
#include <immintrin.h>
#include "ukernels.h"
#include "sgemm_driver.h"

/* The accumulators are named variables, not an array: GCC keeps an array indexed in
   loops on the stack (24 stores per k), named ones stay in registers. R rows (<= 8) and
   NV vectors (1..3) are constants once inlined, so unused ones vanish. The last vector
   is masked (mask all-ones when nr is a multiple of 16): masked loads cost nothing. */
#define MK(v) ((v) == NV - 1 ? last : (__mmask16)0xFFFF)
#define ROW_INIT(r) if (R > r && acc_in) {                                                      \
    c##r##0 = _mm512_maskz_loadu_ps(MK(0), C + (ptrdiff_t)(r) * ldc);                            \
    if (NV > 1) c##r##1 = _mm512_maskz_loadu_ps(MK(1), C + (ptrdiff_t)(r) * ldc + 16);           \
    if (NV > 2) c##r##2 = _mm512_maskz_loadu_ps(MK(2), C + (ptrdiff_t)(r) * ldc + 32); }
#define ROW_FMA(r) if (R > r) { const __m512 a_ = _mm512_set1_ps(A[(ptrdiff_t)(r) * lda + (ptrdiff_t)p * AK]); \
    c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);                                                  \
    if (NV > 1) c##r##1 = _mm512_fmadd_ps(a_, b1, c##r##1);                                      \
    if (NV > 2) c##r##2 = _mm512_fmadd_ps(a_, b2, c##r##2); }
#define ROW_EP(r) if (R > r && EP) {                                                            \
    const __m512 b_ = _mm512_set1_ps(bias ? bias[r] : 0.0f);                                     \
    c##r##0 = _mm512_add_ps(c##r##0, b_);                                                        \
    if (NV > 1) c##r##1 = _mm512_add_ps(c##r##1, b_);                                            \
    if (NV > 2) c##r##2 = _mm512_add_ps(c##r##2, b_);                                            \
    if (relu) {                                                                                  \
        c##r##0 = _mm512_max_ps(z, c##r##0);                                                     \
        if (NV > 1) c##r##1 = _mm512_max_ps(z, c##r##1);                                         \
        if (NV > 2) c##r##2 = _mm512_max_ps(z, c##r##2); } }
#define ROW_STORE(r) if (R > r) {                                                               \
    _mm512_mask_storeu_ps(C + (ptrdiff_t)(r) * ldc, MK(0), c##r##0);                             \
    if (NV > 1) _mm512_mask_storeu_ps(C + (ptrdiff_t)(r) * ldc + 16, MK(1), c##r##1);            \
    if (NV > 2) _mm512_mask_storeu_ps(C + (ptrdiff_t)(r) * ldc + 32, MK(2), c##r##2); }

static inline __attribute__((always_inline)) void tile_8x48(
        int k, const float* A, int lda, const int AK, const float* B, int ldb, const int IB,
        const int* boff, float* C, int ldc, int acc_in, const int R, const int NV, __mmask16 last,
        const int EP, const float* bias, int relu) {
    const __m512 z = _mm512_setzero_ps();
    __m512 c00 = z, c01 = z, c02 = z, c10 = z, c11 = z, c12 = z, c20 = z, c21 = z, c22 = z,
           c30 = z, c31 = z, c32 = z, c40 = z, c41 = z, c42 = z, c50 = z, c51 = z, c52 = z,
           c60 = z, c61 = z, c62 = z, c70 = z, c71 = z, c72 = z;
    ROW_INIT(0) ROW_INIT(1) ROW_INIT(2) ROW_INIT(3) ROW_INIT(4) ROW_INIT(5) ROW_INIT(6) ROW_INIT(7)
    for (int p = 0; p < k; p++) {
        /* a packed A (AK > 1) is one stream the tile outruns from L2: fetch it 32 k ahead */
        if (AK > 1) _mm_prefetch((const char*)(A + (ptrdiff_t)(p + 32) * AK), _MM_HINT_T0);
        const float* bp = IB ? B + boff[p] : B + (ptrdiff_t)p * ldb;
        const __m512 b0 = _mm512_maskz_loadu_ps(MK(0), bp);
        const __m512 b1 = NV > 1 ? _mm512_maskz_loadu_ps(MK(1), bp + 16) : z;
        const __m512 b2 = NV > 2 ? _mm512_maskz_loadu_ps(MK(2), bp + 32) : z;
        ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5) ROW_FMA(6) ROW_FMA(7)
    }
    ROW_EP(0) ROW_EP(1) ROW_EP(2) ROW_EP(3) ROW_EP(4) ROW_EP(5) ROW_EP(6) ROW_EP(7)
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5) ROW_STORE(6) ROW_STORE(7)
}

/* A(r, p) = A[r*LDA + p*AK]: row-major A (LDA = lda, AK = 1) or an MR-packed panel
   (LDA = 1, AK = 8: A[p][8], one contiguous stream of 32 bytes per k). B row p is at
   B + p*ldb, or at B + boff[p] when IB (a constant: the other path folds away). */
#define TILE_NV(R, LDA, AK, IB, EP)                                                       \
    switch (nv) {                                                                           \
        case 1: tile_8x48(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 1, last, EP, bias, relu); break; \
        case 2: tile_8x48(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 2, last, EP, bias, relu); break; \
        default: tile_8x48(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 3, last, EP, bias, relu); break; \
    }
#define TILE_MR(LDA, AK, IB, EP)                                                          \
    const int nv = (nr + 15) / 16;                                                          \
    const int tail = nr - 16 * (nv - 1);                                                    \
    const __mmask16 last = (__mmask16)(tail >= 16 ? 0xFFFFu : (1u << tail) - 1u);           \
    switch (mr) {                                                                           \
        case 1: TILE_NV(1, LDA, AK, IB, EP) break;                                                  \
        case 2: TILE_NV(2, LDA, AK, IB, EP) break;                                                  \
        case 3: TILE_NV(3, LDA, AK, IB, EP) break;                                                  \
        case 4: TILE_NV(4, LDA, AK, IB, EP) break;                                                  \
        case 5: TILE_NV(5, LDA, AK, IB, EP) break;                                                  \
        case 6: TILE_NV(6, LDA, AK, IB, EP) break;                                                  \
        case 7: TILE_NV(7, LDA, AK, IB, EP) break;                                                  \
        default: TILE_NV(8, LDA, AK, IB, EP) break;                                                 \
    }

UK_API UK_TILE void sgemm_8x48__avx512f(int mr, int nr, int k, const float* A, int lda,
                                        const float* B, int ldb, float* C, int ldc, int acc) {
    const int* boff = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(lda, 1, 0, 0)
}

UK_API UK_TILE void sgemm_8x48_pa__avx512f(int mr, int nr, int k, const float* A,
                                           const float* B, int ldb, float* C, int ldc, int acc) {
    const int* boff = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(1, 8, 0, 0)
}

/* The packed-A tile with the convolution's epilogue fused into its store (the igemm
   driver's, for C tiles that are runs of the output itself): C = relu?(A @ B (+ C when
   acc) + bias[r]) row by row, bias NULL adding 0 (as the driver's ig_store_run). */
static UK_TILE void sgemm_8x48_pa_ep__avx512f(int mr, int nr, int k, const float* A, const float* B,
                                              int ldb, float* C, int ldc, int acc, const float* bias,
                                              int relu) {
    const int* boff = 0;
    TILE_MR(1, 8, 0, 1)
}

UK_API UK_TILE void sgemm_8x48_pa_ib__avx512f(int mr, int nr, int k, const float* A, const float* B,
                                              const int* boff, float* C, int ldc, int acc) {
    const int ldb = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(1, 8, 1, 0)
}

/* The indirect-B tile with the epilogue fused into its store (the padded mode's, for
   panels whose columns are one run of the output): C = relu?(A @ B (+ C when acc) +
   bias[r]), B row p at B + boff[p]. */
static UK_TILE void sgemm_8x48_pa_ib_ep__avx512f(int mr, int nr, int k, const float* A,
        const float* B, const int* boff, float* C, int ldc, int acc, const float* bias, int relu) {
    const int ldb = 0;
    TILE_MR(1, 8, 1, 1)
}

UK_SGEMM_DRIVER(sgemm__avx512f, sgemm_8x48__avx512f, 8, 48, UK_KC_avx512f)

/* the implicit-GEMM convolution on this tile (igemm_driver.h) */
#define IG_SUFFIX avx512f
#define IG_TILE sgemm_8x48_pa__avx512f
#define IG_TILE_IB sgemm_8x48_pa_ib__avx512f
#define IG_TILE_EP sgemm_8x48_pa_ep__avx512f
#define IG_TILE_IB_EP sgemm_8x48_pa_ib_ep__avx512f
#define IG_MR 8
#define IG_NR 48
#define IG_KC UK_KC_avx512f
#include "igemm_driver.h"
