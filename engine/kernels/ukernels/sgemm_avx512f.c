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
 */
#include <immintrin.h>
#include "ukernels.h"
#include "sgemm_driver.h"

static inline __attribute__((always_inline)) void tile_8x48(
        int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
        int acc_in, const int R, const int NV, __mmask16 last) {
    __m512 acc[8][3];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            const __mmask16 mk = v == NV - 1 ? last : (__mmask16)0xFFFF;
            acc[r][v] = acc_in ? _mm512_maskz_loadu_ps(mk, C + (ptrdiff_t)r * ldc + 16 * v)
                               : _mm512_setzero_ps();
        }
    for (int p = 0; p < k; p++) {
        __m512 b[3];
        for (int v = 0; v < NV; v++) {
            const __mmask16 mk = v == NV - 1 ? last : (__mmask16)0xFFFF;
            b[v] = _mm512_maskz_loadu_ps(mk, B + (ptrdiff_t)p * ldb + 16 * v);
        }
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(A[(ptrdiff_t)r * lda + p]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            const __mmask16 mk = v == NV - 1 ? last : (__mmask16)0xFFFF;
            _mm512_mask_storeu_ps(C + (ptrdiff_t)r * ldc + 16 * v, mk, acc[r][v]);
        }
}

#define TILE_NV(R)                                                                          \
    switch (nv) {                                                                           \
        case 1: tile_8x48(k, A, lda, B, ldb, C, ldc, acc, R, 1, last); break;               \
        case 2: tile_8x48(k, A, lda, B, ldb, C, ldc, acc, R, 2, last); break;               \
        default: tile_8x48(k, A, lda, B, ldb, C, ldc, acc, R, 3, last); break;              \
    }

UK_API void sgemm_8x48__avx512f(int mr, int nr, int k, const float* A, int lda,
                                const float* B, int ldb, float* C, int ldc, int acc) {
    const int nv = (nr + 15) / 16;
    const int tail = nr - 16 * (nv - 1);
    const __mmask16 last = (__mmask16)(tail >= 16 ? 0xFFFFu : (1u << tail) - 1u);
    switch (mr) {
        case 1: TILE_NV(1) break;
        case 2: TILE_NV(2) break;
        case 3: TILE_NV(3) break;
        case 4: TILE_NV(4) break;
        case 5: TILE_NV(5) break;
        case 6: TILE_NV(6) break;
        case 7: TILE_NV(7) break;
        default: TILE_NV(8) break;
    }
}

UK_SGEMM_DRIVER(sgemm__avx512f, sgemm_8x48__avx512f, 8, 48, 128)
