/* Winograd F(m x m, 3 x 3) float32 input/output kernels for AVX-512F:
 * winograd_f{2,4,6}x3_{input,output}__avx512f. Contracts: ukernels.h.
 *
 * 16 tiles = 16 lanes of one zmm. input: one masked vpgatherdps per tile element
 * (i, j), lanes whose pixel lies outside the image or past nl read 0, then B^T d B
 * (winograd_transform.h, one zmm per 16-lane op). output: A^T M A + bias, relu as
 * max(0, v) (NaN and -0.0 pass, as v < 0 ? 0 : v), one masked vpscatterdps per (i, j),
 * lanes outside OH x OW or past nl not written. Offsets are int32 element offsets
 * within one image's channel plane (the caller keeps (H+8) * (W+8) < 2^31); a chunk
 * whose lanes span several images takes one gather/scatter pass per image.
 */
#include <immintrin.h>
#include "ukernels.h"
#include "winograd_transform.h"

typedef float wg_v16 __attribute__((vector_size(64)));
WG_TRANSFORMS(wgt, float, wg_v16)

/* Lanes (within `live`) whose image is the lowest-numbered lane's; *n gets it. */
static inline __mmask16 same_image(__m512i vtn, __mmask16 live, const int* tn, int* n) {
    *n = tn[__builtin_ctz((unsigned)live)];
    return live & _mm512_cmpeq_epi32_mask(vtn, _mm512_set1_epi32(*n));
}

static inline __attribute__((always_inline)) void wg_input(
        const float* x, ptrdiff_t img_stride, const int* tn, const int* iy, const int* ix,
        int nl, int H, int W, float* V, ptrdiff_t plane, const int alpha) {
    float d[64 * 16] __attribute__((aligned(64)));
    const __m512i vy = _mm512_loadu_si512((const void*)iy), vx = _mm512_loadu_si512((const void*)ix);
    const __m512i vtn = _mm512_loadu_si512((const void*)tn);
    const __m512i vH = _mm512_set1_epi32(H), vW = _mm512_set1_epi32(W), z = _mm512_setzero_si512();
    const __m512i voff = _mm512_add_epi32(_mm512_mullo_epi32(vy, vW), vx);
    __mmask16 rm[8], cm[8];
    for (int i = 0; i < alpha; i++) {
        const __m512i yy = _mm512_add_epi32(vy, _mm512_set1_epi32(i));
        rm[i] = _mm512_cmpge_epi32_mask(yy, z) & _mm512_cmplt_epi32_mask(yy, vH);
        const __m512i xx = _mm512_add_epi32(vx, _mm512_set1_epi32(i));
        cm[i] = _mm512_cmpge_epi32_mask(xx, z) & _mm512_cmplt_epi32_mask(xx, vW);
    }
    for (int k = 0; k < alpha * alpha; k++) _mm512_store_ps(d + k * 16, _mm512_setzero_ps());
    __mmask16 live = nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1u);
    while (live) {
        int n;
        const __mmask16 lm = same_image(vtn, live, tn, &n);
        const float* base = x + (ptrdiff_t)n * img_stride;
        for (int i = 0; i < alpha; i++)
            for (int j = 0; j < alpha; j++) {
                float* dk = d + (i * alpha + j) * 16;
                _mm512_store_ps(dk, _mm512_mask_i32gather_ps(_mm512_load_ps(dk), lm & rm[i] & cm[j],
                                                             voff, base + i * W + j, 4));
            }
        live &= (__mmask16)~lm;
    }
    wgt_in_a(d, V, plane, alpha);
}

static inline __attribute__((always_inline)) void wg_output(
        const float* M, ptrdiff_t plane, float bias, int relu, float* out,
        ptrdiff_t img_stride, const int* tn, const int* oy, const int* ox, int nl, int OH,
        int OW, const int m) {
    float o[36 * 16] __attribute__((aligned(64)));
    wgt_out_a(M, plane, bias, o, m);
    const __m512i vy = _mm512_loadu_si512((const void*)oy), vx = _mm512_loadu_si512((const void*)ox);
    const __m512i vtn = _mm512_loadu_si512((const void*)tn);
    const __m512i vH = _mm512_set1_epi32(OH), vW = _mm512_set1_epi32(OW);
    const __m512i voff = _mm512_add_epi32(_mm512_mullo_epi32(vy, vW), vx);
    __mmask16 rm[6], cm[6];
    for (int i = 0; i < m; i++) {
        rm[i] = _mm512_cmplt_epi32_mask(_mm512_add_epi32(vy, _mm512_set1_epi32(i)), vH);
        cm[i] = _mm512_cmplt_epi32_mask(_mm512_add_epi32(vx, _mm512_set1_epi32(i)), vW);
    }
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 live = nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1u);
    while (live) {
        int n;
        const __mmask16 lm = same_image(vtn, live, tn, &n);
        float* base = out + (ptrdiff_t)n * img_stride;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
                __m512 v = _mm512_load_ps(o + (i * m + j) * 16);
                if (relu) v = _mm512_max_ps(zero, v);
                _mm512_mask_i32scatter_ps(base + i * OW + j, lm & rm[i] & cm[j], voff, v, 4);
            }
        live &= (__mmask16)~lm;
    }
}

WG_ENTRY_POINTS(avx512f)
