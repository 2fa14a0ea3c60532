/* Winograd F(m x m, 3 x 3) float32 input/output kernels for AVX2 + FMA:
 * winograd_f{2,4,6}x3_{input,output}__avx2_fma. Contracts: ukernels.h.
 *
 * AVX2 has no masked scatter and its gathers are slow on AMD, so tiles move through
 * 8 x 8 register transposes instead, 8 lanes (tiles) at a time:
 *   input:  for each tile row i, each lane's 8 pixels row[ix .. ix+8) are one load
 *           (vmaskmov where the tile crosses an image edge or alpha < 8: masked
 *           pixels read 0 and are never touched), the 8 x 8 transpose turns them into
 *           d[i][j][lanes], then B^T d B on 16 lanes (winograd_transform.h, 2 ymm
 *           per 16-lane op);
 *   output: A^T M A + bias on 16 lanes, then per output row i the 8 x 8 transpose
 *           turns o[i][j][lanes] back into each lane's m pixels, stored with 128-bit
 *           (+ 64-bit) stores when the tile is inside the output, else pixel by pixel;
 *           relu as max(0, v) (NaN and -0.0 pass, as v < 0 ? 0 : v).
 */
#include <immintrin.h>
#include "ukernels.h"
#include "winograd_transform.h"

typedef float wg_v16 __attribute__((vector_size(64)));
WG_TRANSFORMS(wgt, float, wg_v16)

/* r[j][l] <- r[l][j] for an 8 x 8 block of floats. */
static inline __attribute__((always_inline)) void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int q = 0; q < 4; q++) {
        t[2 * q] = _mm256_unpacklo_ps(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm256_unpackhi_ps(r[2 * q], r[2 * q + 1]);
    }
    for (int h = 0; h < 2; h++) {          /* rows 0-3 (h = 0) and 4-7 (h = 1) */
        s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int q = 0; q < 4; q++) {
        r[q] = _mm256_permute2f128_ps(s[q], s[4 + q], 0x20);
        r[q + 4] = _mm256_permute2f128_ps(s[q], s[4 + q], 0x31);
    }
}

static inline __attribute__((always_inline)) void wg_input(
        const float* x, ptrdiff_t img_stride, const int* tn, const int* iy, const int* ix,
        int nl, int H, int W, float* V, ptrdiff_t plane, const int alpha) {
    float d[64 * 16] __attribute__((aligned(32)));
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 zero = _mm256_setzero_ps();
    /* per lane: first valid column j0 and end j1 (pixels j in [j0, j1) are inside the row) */
    int j0[16], j1[16], full[16];
    for (int l = 0; l < 16; l++) {
        int a = -ix[l] > 0 ? -ix[l] : 0, b = W - ix[l] < alpha ? W - ix[l] : alpha;
        if (l >= nl || b < a) { a = 0; b = 0; }
        j0[l] = a; j1[l] = b;
        full[l] = l < nl && ix[l] >= 0 && ix[l] + 8 <= W;
    }
    for (int i = 0; i < alpha; i++) {
        for (int h = 0; h < 2; h++) {        /* lanes 8h .. 8h+7 */
            __m256 r[8];
            for (int q = 0; q < 8; q++) {
                const int l = 8 * h + q, y = iy[l] + i;
                if (l >= nl || y < 0 || y >= H) { r[q] = zero; continue; }
                const float* row = x + (ptrdiff_t)tn[l] * img_stride + (ptrdiff_t)y * W + ix[l];
                if (full[l]) {
                    r[q] = _mm256_loadu_ps(row);
                } else {
                    const __m256i m = _mm256_and_si256(
                        _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(j0[l] - 1)),
                        _mm256_cmpgt_epi32(_mm256_set1_epi32(j1[l]), lane));
                    r[q] = _mm256_maskload_ps(row, m);   /* masked pixels: 0, never read */
                }
            }
            transpose8(r);
            for (int j = 0; j < alpha; j++) _mm256_store_ps(d + (i * alpha + j) * 16 + 8 * h, r[j]);
        }
    }
    wgt_in_a(d, V, plane, alpha);
}

static inline __attribute__((always_inline)) void wg_output(
        const float* M, ptrdiff_t plane, float bias, int relu, float* out,
        ptrdiff_t img_stride, const int* tn, const int* oy, const int* ox, int nl, int OH,
        int OW, const int m) {
    float o[36 * 16] __attribute__((aligned(32)));
    wgt_out_a(M, plane, bias, o, m);
    const __m256 zero = _mm256_setzero_ps();
    for (int i = 0; i < m; i++) {
        for (int h = 0; h < 2 && 8 * h < nl; h++) {
            __m256 r[8];
            for (int j = 0; j < 8; j++)
                r[j] = j < m ? _mm256_load_ps(o + (i * m + j) * 16 + 8 * h) : zero;
            if (relu)
                for (int j = 0; j < m; j++) r[j] = _mm256_max_ps(zero, r[j]);
            transpose8(r);                 /* r[q]: lane 8h+q's m pixels of row i */
            for (int q = 0; q < 8; q++) {
                const int l = 8 * h + q, y = oy[l] + i;
                if (l >= nl || y >= OH) continue;
                float* dst = out + (ptrdiff_t)tn[l] * img_stride + (ptrdiff_t)y * OW + ox[l];
                if (ox[l] + m <= OW) {
                    const __m128 lo = _mm256_castps256_ps128(r[q]);
                    if (m == 2) {
                        _mm_storel_pi((__m64*)dst, lo);
                    } else {
                        _mm_storeu_ps(dst, lo);
                        if (m == 6) _mm_storel_pi((__m64*)(dst + 4), _mm256_extractf128_ps(r[q], 1));
                    }
                } else {
                    float px[8] __attribute__((aligned(32)));
                    _mm256_store_ps(px, r[q]);
                    for (int j = 0; j < OW - ox[l]; j++) dst[j] = px[j];
                }
            }
        }
    }
}

WG_ENTRY_POINTS(avx2_fma)
