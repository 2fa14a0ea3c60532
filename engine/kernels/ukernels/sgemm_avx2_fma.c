/* sgemm_6x16__avx2_fma: float32 GEMM register tile for AVX2 + FMA, and its driver.
 *
 *   C[mr][nr] (ldc) = A[mr][k] (lda) @ B[k][nr] (ldb)  (+ C when acc)
 *   IN  A row-major (rows contiguous in k), B row-major (a packed [k][nr] panel)
 *   OUT C row-major; only the mr x nr block is touched.
 * Tile: 6 rows x 16 columns = 6 x 2 ymm accumulators (12) + 2 B vectors + 1 broadcast
 * of A = 15 of the 16 ymm registers (the tile XNNPACK and MLAS use on AVX2); 12
 * independent FMA chains cover 2 FMA units x 4 cycles of latency. Per k: 2 loads of
 * B, 6 broadcasts, 12 FMAs. Columns past nr are read with masked loads and never
 * stored (nr in 1..16).
 * The driver blocks K by 256: the 256 x 16 B slice (16 KiB) stays in L1.
 * sgemm_6x16_pa__avx2_fma is the same tile with A packed as a panel Ap[k][6] (rows past
 * mr ignored): what the igemm driver's packed weights hold. sgemm_6x16_pa_ib__avx2_fma
 * also reads B indirectly, row p at B + boff[p] (the igemm driver's padded mode: rows
 * of the padded input read in place).
 */
#include <immintrin.h>
#include "ukernels.h"
#include "sgemm_driver.h"

/* The accumulators are named variables, not an array: GCC keeps an array indexed in
   loops on the stack (12 stores per k), named ones stay in registers. R rows (<= 6) and
   NV vectors (1 or 2) are constants once inlined, so unused rows vanish. */
#define LOADC(r, v) (masked && (v) == NV - 1 ? _mm256_maskload_ps(C + (ptrdiff_t)(r) * ldc + 8 * (v), last) \
                                             : _mm256_loadu_ps(C + (ptrdiff_t)(r) * ldc + 8 * (v)))
#define ROW_INIT(r) if (R > r && acc_in) { c##r##0 = LOADC(r, 0); if (NV > 1) c##r##1 = LOADC(r, 1); }
#define ROW_FMA(r) if (R > r) { const __m256 a_ = _mm256_broadcast_ss(A + (ptrdiff_t)(r) * lda + (ptrdiff_t)p * AK); \
    c##r##0 = _mm256_fmadd_ps(a_, b0, c##r##0); if (NV > 1) c##r##1 = _mm256_fmadd_ps(a_, b1, c##r##1); }
#define ROW_EP(r) if (R > r && EP) { const __m256 b_ = _mm256_set1_ps(bias ? bias[r] : 0.0f);      \
    c##r##0 = _mm256_add_ps(c##r##0, b_); if (NV > 1) c##r##1 = _mm256_add_ps(c##r##1, b_);        \
    if (relu) { c##r##0 = _mm256_max_ps(z, c##r##0); if (NV > 1) c##r##1 = _mm256_max_ps(z, c##r##1); } }
/* A row of C: whole vectors, and for a masked last vector only plain stores
   (store_tail_*): AVX2's masked store is microcoded on AMD's Zen 2 and 3, tens of
   cycles each (_short_rows.h). */
#define ROW_STORE(r) if (R > r) {                                                               \
    float* c_ = C + (ptrdiff_t)(r) * ldc;                                                        \
    if (!masked) { _mm256_storeu_ps(c_, c##r##0); if (NV > 1) _mm256_storeu_ps(c_ + 8, c##r##1); } \
    else if (NV > 1) { _mm256_storeu_ps(c_, c##r##0); store_tail_2v(c_, nr, c##r##0, c##r##1); }   \
    else store_tail_1v(c_, nr, c##r##0); }

/* Columns 8 .. nr-1 of a row whose columns 0-7 are c0 and 8-15 c1 (8 < nr < 16), given
   columns 0-7 are stored already: one vector of columns nr-8 .. nr-1 (lanes permuted
   out of c0 and c1) stored at C + nr - 8, over columns already holding these values. */
static inline __attribute__((always_inline)) void store_tail_2v(float* C, int nr, __m256 c0, __m256 c1) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i col = _mm256_add_epi32(lane, _mm256_set1_epi32(nr - 8));   /* 1 .. 14 */
    const __m256i idx = _mm256_and_si256(col, _mm256_set1_epi32(7));
    const __m256 from_c1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(col, _mm256_set1_epi32(7)));
    _mm256_storeu_ps(C + nr - 8, _mm256_blendv_ps(_mm256_permutevar8x32_ps(c0, idx),
                                                  _mm256_permutevar8x32_ps(c1, idx), from_c1));
}

/* Columns 0 .. nr-1 of c0 (1 <= nr < 8): two overlapping halves from 4 columns on,
   else 2- and 1-float stores. */
static inline __attribute__((always_inline)) void store_tail_1v(float* C, int nr, __m256 c0) {
    const __m128 lo = _mm256_castps256_ps128(c0);
    if (nr >= 4) {
        const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                             _mm256_set1_epi32(nr - 4));
        _mm_storeu_ps(C, lo);
        _mm_storeu_ps(C + nr - 4, _mm256_castps256_ps128(_mm256_permutevar8x32_ps(c0, idx)));
    } else if (nr >= 2) {
        _mm_storel_pi((__m64*)C, lo);
        if (nr == 3) _mm_store_ss(C + 2, _mm_movehl_ps(lo, lo));
    } else {
        _mm_store_ss(C, lo);
    }
}

static inline __attribute__((always_inline)) void tile_6x16(
        int k, const float* A, int lda, const int AK, const float* B, int ldb, const int IB,
        const int* boff, float* C, int ldc, int acc_in, const int R, const int NV, const int masked,
        int nr, __m256i last, const int EP, const float* bias, int relu) {
    const __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z,
           c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
    ROW_INIT(0) ROW_INIT(1) ROW_INIT(2) ROW_INIT(3) ROW_INIT(4) ROW_INIT(5)
    /* one k of the tile */
#define TILE_STEP                                                                                \
    {   /* a packed A (AK > 1) is one stream the tile outruns from L2: fetch it 32 k ahead */ \
        if (AK > 1) _mm_prefetch((const char*)(A + (ptrdiff_t)(p + 32) * AK), _MM_HINT_T0);     \
        const float* bp = IB ? B + boff[p] : B + (ptrdiff_t)p * ldb;                            \
        const __m256 b0 = masked && NV == 1 ? _mm256_maskload_ps(bp, last) : _mm256_loadu_ps(bp); \
        const __m256 b1 = NV < 2 ? z : masked ? _mm256_maskload_ps(bp + 8, last) : _mm256_loadu_ps(bp + 8); \
        ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5)                      \
    }
    if (!masked) {
        /* two k per iteration: GCC then folds the index arithmetic of A, B and the
           prefetch into the addresses (47 instructions per 24 FMAs instead of 56); on a
           Zen 3, one thread, igemm 0.91-0.97 of the time (the stem, 1x1, strided 3x3,
           grouped), bitwise the same. Not for a masked last vector: its mask takes the
           16th register and the unrolled loop then keeps an accumulator on the stack. */
#pragma GCC unroll 2
        for (int p = 0; p < k; p++) TILE_STEP
    } else {
        for (int p = 0; p < k; p++) TILE_STEP
    }
#undef TILE_STEP
    ROW_EP(0) ROW_EP(1) ROW_EP(2) ROW_EP(3) ROW_EP(4) ROW_EP(5)
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)
}

/* A(r, p) = A[r*LDA + p*AK]: row-major A (LDA = lda, AK = 1) or an MR-packed panel
   (LDA = 1, AK = 6: A[p][6], one contiguous stream of 24 bytes per k). B row p is at
   B + p*ldb, or at B + boff[p] when IB (a constant: the other path folds away). */
#define TILE_NV(R, LDA, AK, IB, EP)                                                             \
    if (nr == 16) tile_6x16(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 2, 0, nr, last, EP, bias, relu);    \
    else if (nr > 8) tile_6x16(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 2, 1, nr, last, EP, bias, relu); \
    else if (nr == 8) tile_6x16(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 1, 0, nr, last, EP, bias, relu); \
    else tile_6x16(k, A, LDA, AK, B, ldb, IB, boff, C, ldc, acc, R, 1, 1, nr, last, EP, bias, relu);
#define TILE_MR(LDA, AK, IB, EP)                                                                \
    const int tail = nr > 8 ? nr - 8 : nr;       /* lanes used in the last vector */        \
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                         \
    const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);                 \
    switch (mr) {                                                                           \
        case 1: TILE_NV(1, LDA, AK, IB, EP) break;                                                  \
        case 2: TILE_NV(2, LDA, AK, IB, EP) break;                                                  \
        case 3: TILE_NV(3, LDA, AK, IB, EP) break;                                                  \
        case 4: TILE_NV(4, LDA, AK, IB, EP) break;                                                  \
        case 5: TILE_NV(5, LDA, AK, IB, EP) break;                                                  \
        default: TILE_NV(6, LDA, AK, IB, EP) break;                                                 \
    }

UK_API UK_TILE void sgemm_6x16__avx2_fma(int mr, int nr, int k, const float* A, int lda,
                                         const float* B, int ldb, float* C, int ldc, int acc) {
    const int* boff = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(lda, 1, 0, 0)
}

UK_API UK_TILE void sgemm_6x16_pa__avx2_fma(int mr, int nr, int k, const float* A,
                                            const float* B, int ldb, float* C, int ldc, int acc) {
    const int* boff = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(1, 6, 0, 0)
}

/* The packed-A tile with the convolution's epilogue fused into its store (the igemm
   driver's, for C tiles that are runs of the output itself): C = relu?(A @ B (+ C when
   acc) + bias[r]) row by row, bias NULL adding 0 (as the driver's ig_store_run). */
static UK_TILE void sgemm_6x16_pa_ep__avx2_fma(int mr, int nr, int k, const float* A, const float* B,
                                               int ldb, float* C, int ldc, int acc, const float* bias,
                                               int relu) {
    const int* boff = 0;
    TILE_MR(1, 6, 0, 1)
}

UK_API UK_TILE void sgemm_6x16_pa_ib__avx2_fma(int mr, int nr, int k, const float* A, const float* B,
                                               const int* boff, float* C, int ldc, int acc) {
    const int ldb = 0;
    const float* bias = 0;
    const int relu = 0;
    TILE_MR(1, 6, 1, 0)
}

/* The indirect-B tile with the epilogue fused into its store (the padded mode's, for
   panels whose columns are one run of the output): C = relu?(A @ B (+ C when acc) +
   bias[r]), B row p at B + boff[p]. */
static UK_TILE void sgemm_6x16_pa_ib_ep__avx2_fma(int mr, int nr, int k, const float* A,
        const float* B, const int* boff, float* C, int ldc, int acc, const float* bias, int relu) {
    const int ldb = 0;
    TILE_MR(1, 6, 1, 1)
}

UK_SGEMM_DRIVER(sgemm__avx2_fma, sgemm_6x16__avx2_fma, 6, 16, UK_KC_avx2_fma)

/* the implicit-GEMM convolution on this tile (igemm_driver.h) */
#define IG_SUFFIX avx2_fma
#define IG_TILE sgemm_6x16_pa__avx2_fma
#define IG_TILE_IB sgemm_6x16_pa_ib__avx2_fma
#define IG_TILE_EP sgemm_6x16_pa_ep__avx2_fma
#define IG_TILE_IB_EP sgemm_6x16_pa_ib_ep__avx2_fma
#define IG_MR 6
#define IG_NR 16
#define IG_KC UK_KC_avx2_fma
#include "igemm_driver.h"
