/* sgemm_6x16__avx2_fma: float32 GEMM register tile for AVX2 + FMA, and its driver.
 *
 *   C[mr][nr] (ldc) = A[mr][k] (lda) @ B[k][nr] (ldb)  (+ C when acc)
 *   IN  A row-major (rows contiguous in k), B row-major (a packed [k][nr] panel)
 *   OUT C row-major; only the mr x nr block is touched.
 * Tile: 6 rows x 16 columns = 6 x 2 ymm accumulators (12) + 2 B vectors + 1 broadcast
 * of A = 15 of the 16 ymm registers (the tile XNNPACK and MLAS use on AVX2); 12
 * independent FMA chains cover 2 FMA units x 4 cycles of latency. Per k: 2 loads of
 * B, 6 broadcasts, 12 FMAs. Columns past nr go through vmaskmov (nr in 1..16).
 * The driver blocks K by 256: the 256 x 16 B slice (16 KiB) stays in L1.
 */
#include <immintrin.h>
#include "ukernels.h"
#include "sgemm_driver.h"

static inline __attribute__((always_inline)) void tile_6x16(
        int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
        int acc_in, const int R, const int NV, const int masked, __m256i last) {
    __m256 acc[6][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            const float* c = C + (ptrdiff_t)r * ldc + 8 * v;
            if (!acc_in) acc[r][v] = _mm256_setzero_ps();
            else if (masked && v == NV - 1) acc[r][v] = _mm256_maskload_ps(c, last);
            else acc[r][v] = _mm256_loadu_ps(c);
        }
    for (int p = 0; p < k; p++) {
        __m256 b[2];
        for (int v = 0; v < NV; v++) {
            const float* bp = B + (ptrdiff_t)p * ldb + 8 * v;
            b[v] = masked && v == NV - 1 ? _mm256_maskload_ps(bp, last) : _mm256_loadu_ps(bp);
        }
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(A + (ptrdiff_t)r * lda + p);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            float* c = C + (ptrdiff_t)r * ldc + 8 * v;
            if (masked && v == NV - 1) _mm256_maskstore_ps(c, last, acc[r][v]);
            else _mm256_storeu_ps(c, acc[r][v]);
        }
}

#define TILE_NV(R)                                                                          \
    if (nr == 16) tile_6x16(k, A, lda, B, ldb, C, ldc, acc, R, 2, 0, last);                 \
    else if (nr > 8) tile_6x16(k, A, lda, B, ldb, C, ldc, acc, R, 2, 1, last);              \
    else if (nr == 8) tile_6x16(k, A, lda, B, ldb, C, ldc, acc, R, 1, 0, last);             \
    else tile_6x16(k, A, lda, B, ldb, C, ldc, acc, R, 1, 1, last);

UK_API void sgemm_6x16__avx2_fma(int mr, int nr, int k, const float* A, int lda,
                                 const float* B, int ldb, float* C, int ldc, int acc) {
    const int tail = nr > 8 ? nr - 8 : nr;       /* lanes used in the last vector */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);
    switch (mr) {
        case 1: TILE_NV(1) break;
        case 2: TILE_NV(2) break;
        case 3: TILE_NV(3) break;
        case 4: TILE_NV(4) break;
        case 5: TILE_NV(5) break;
        default: TILE_NV(6) break;
    }
}

UK_SGEMM_DRIVER(sgemm__avx2_fma, sgemm_6x16__avx2_fma, 6, 16, 256)
