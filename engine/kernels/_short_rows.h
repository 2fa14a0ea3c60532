/* Copies of short rows (a few to a few dozen elements: a small plane's rows, e.g. the
 * depthwise kernel's 14-float rows of a 14x14 image) as whole vectors of the build's
 * ISA with a masked tail, instead of a call to memcpy or an element loop per row: the
 * short-row case of _rows.pxd's _copy_strided.
 *
 *   short_copy_f32(d, s, n): d[i] = s[i] for i < n    (n >= 0; d and s do not overlap)
 *   short_copy_f64(d, s, n): the same for doubles
 *
 * Masked loads and stores touch no element past n (nor fault on one), so a row that
 * ends at the end of an array is copied safely. Without AVX2 it is a plain loop.
 */
#ifndef CONVTUNE_SHORT_ROWS_H
#define CONVTUNE_SHORT_ROWS_H
#include <stddef.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline void short_copy_f32(float* restrict d, const float* restrict s, ptrdiff_t n) {
#if defined(__AVX512F__)
    for (; n >= 16; n -= 16, d += 16, s += 16) _mm512_storeu_ps(d, _mm512_loadu_ps(s));
    if (n > 0) {
        const __mmask16 m = (__mmask16)((1u << n) - 1u);
        _mm512_mask_storeu_ps(d, m, _mm512_maskz_loadu_ps(m, s));
    }
#elif defined(__AVX2__)
    for (; n >= 8; n -= 8, d += 8, s += 8) _mm256_storeu_ps(d, _mm256_loadu_ps(s));
    if (n > 0) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(d, m, _mm256_maskload_ps(s, m));
    }
#else
    for (ptrdiff_t i = 0; i < n; i++) d[i] = s[i];
#endif
}

static inline void short_copy_f64(double* restrict d, const double* restrict s, ptrdiff_t n) {
#if defined(__AVX512F__)
    for (; n >= 8; n -= 8, d += 8, s += 8) _mm512_storeu_pd(d, _mm512_loadu_pd(s));
    if (n > 0) {
        const __mmask8 m = (__mmask8)((1u << n) - 1u);
        _mm512_mask_storeu_pd(d, m, _mm512_maskz_loadu_pd(m, s));
    }
#elif defined(__AVX2__)
    for (; n >= 4; n -= 4, d += 4, s += 4) _mm256_storeu_pd(d, _mm256_loadu_pd(s));
    if (n > 0) {
        const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)n),
                                             _mm256_setr_epi64x(0, 1, 2, 3));
        _mm256_maskstore_pd(d, m, _mm256_maskload_pd(s, m));
    }
#else
    for (ptrdiff_t i = 0; i < n; i++) d[i] = s[i];
#endif
}
#endif
