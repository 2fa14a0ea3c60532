/* Copies of short rows (a few to a few dozen elements: a small plane's rows, e.g. the
 * depthwise kernel's 14-float rows of a 14x14 image) as whole vectors of the build's
 * ISA, instead of a call to memcpy or an element loop per row: the
 * short-row case of _rows.pxd's _copy_strided.
 *
 *   short_copy_f32(d, s, n): d[i] = s[i] for i < n    (n >= 0; d and s do not overlap)
 *   short_copy_f64(d, s, n): the same for doubles
 *
 * No element past n is touched (nor faulted on), so a row that ends at the end of an
 * array is copied safely: AVX-512 masks its tail; AVX2 copies it as one more whole
 * vector ending at n, overlapping the one before (the same values written twice), or
 * as two overlapping halves when n is below a vector. AVX2's masked store
 * (vmaskmovps to memory) is microcoded on AMD's Zen 2 and 3, tens of cycles a store:
 * with it, the masked tails took 45-60% of a 7x7-plane depthwise layer's time on a
 * Zen 3. Without AVX2 it is a plain loop.
 */
#ifndef CONVTUNE_SHORT_ROWS_H
#define CONVTUNE_SHORT_ROWS_H
#include <stddef.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* GCC recognises a loop of whole-vector loads and stores as a copy and replaces it by
   a call to memmove (-ftree-loop-distribute-patterns, on at -O3), which costs more
   than the copy on these lengths (a 7x7-plane depthwise layer: 9% of its samples on a
   Zen 4). An empty asm that "changes" the pointer each iteration hides the pattern
   and costs nothing. */
#define SR_NO_MEMMOVE(p) __asm__("" : "+r"(p))

static inline void short_copy_f32(float* restrict d, const float* restrict s, ptrdiff_t n) {
#if defined(__AVX512F__)
    for (; n >= 16; n -= 16, d += 16, s += 16) {
        SR_NO_MEMMOVE(d);
        _mm512_storeu_ps(d, _mm512_loadu_ps(s));
    }
    if (n > 0) {
        const __mmask16 m = (__mmask16)((1u << n) - 1u);
        _mm512_mask_storeu_ps(d, m, _mm512_maskz_loadu_ps(m, s));
    }
#elif defined(__AVX2__)
    /* the tail: one more whole vector ending at n, overlapping (see above) */
    if (n >= 8) {
        const ptrdiff_t last = n - 8;
        for (ptrdiff_t i = 0; i < last; i += 8) {
            SR_NO_MEMMOVE(d);
            _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
        }
        _mm256_storeu_ps(d + last, _mm256_loadu_ps(s + last));
    } else if (n >= 4) {
        _mm_storeu_ps(d, _mm_loadu_ps(s));
        _mm_storeu_ps(d + n - 4, _mm_loadu_ps(s + n - 4));
    } else if (n >= 2) {
        memcpy(d, s, 8);
        memcpy(d + n - 2, s + n - 2, 8);
    } else if (n == 1) {
        d[0] = s[0];
    }
#else
    for (ptrdiff_t i = 0; i < n; i++) d[i] = s[i];
#endif
}

static inline void short_copy_f64(double* restrict d, const double* restrict s, ptrdiff_t n) {
#if defined(__AVX512F__)
    for (; n >= 8; n -= 8, d += 8, s += 8) {
        SR_NO_MEMMOVE(d);
        _mm512_storeu_pd(d, _mm512_loadu_pd(s));
    }
    if (n > 0) {
        const __mmask8 m = (__mmask8)((1u << n) - 1u);
        _mm512_mask_storeu_pd(d, m, _mm512_maskz_loadu_pd(m, s));
    }
#elif defined(__AVX2__)
    /* the tail: one more whole vector ending at n, overlapping (see above) */
    if (n >= 4) {
        const ptrdiff_t last = n - 4;
        for (ptrdiff_t i = 0; i < last; i += 4) {
            SR_NO_MEMMOVE(d);
            _mm256_storeu_pd(d + i, _mm256_loadu_pd(s + i));
        }
        _mm256_storeu_pd(d + last, _mm256_loadu_pd(s + last));
    } else if (n >= 2) {
        _mm_storeu_pd(d, _mm_loadu_pd(s));
        _mm_storeu_pd(d + n - 2, _mm_loadu_pd(s + n - 2));
    } else if (n == 1) {
        d[0] = s[0];
    }
#else
    for (ptrdiff_t i = 0; i < n; i++) d[i] = s[i];
#endif
}
#endif
