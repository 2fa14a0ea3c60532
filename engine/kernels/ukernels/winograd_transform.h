/* Winograd F(m x m, 3 x 3) tile transforms on 16 tiles at once, for any element type.
 *
 * WG_TRANSFORMS(P, T, VT) defines, with VT a GCC vector of 16 T (one lane per tile):
 *   P##_in_a(d, BT, V, plane, alpha)   V[(k*alpha+q)*plane + lane] = (B^T d B)[k][q]
 *        d[(i*alpha + j)*16 + lane]: the alpha x alpha input tiles, lane-interleaved
 *   P##_out_a(M, plane, AT, b, o, m)   o[(i*m + j)*16 + lane] = (A^T M A)[i][j] + b
 *        M[(k*alpha + q)*plane + lane]: the transformed output tiles
 * B^T (alpha x alpha) and A^T (m x alpha) are float64, row-major, from
 * engine/winograd_transforms.py; zero coefficients are skipped. Both are always
 * inlined with alpha / m constant, so the loops unroll and the vector width is the
 * including file's: 1 zmm, 2 ymm or 4 xmm per 16-lane operation.
 */
#ifndef CONVTUNE_WINOGRAD_TRANSFORM_H
#define CONVTUNE_WINOGRAD_TRANSFORM_H
#include <stddef.h>
#define WG_TRANSFORMS(P, T, VT)                                                        \
static inline __attribute__((always_inline)) void P##_in_a(                          \
        const T* d, const double* BT, T* V, ptrdiff_t plane, const int alpha) {      \
    VT t[64];                                                                        \
    for (int k = 0; k < alpha; k++)                                                  \
        for (int j = 0; j < alpha; j++) {                                            \
            VT acc = {0};                                                            \
            for (int i = 0; i < alpha; i++) {                                        \
                T c = (T)BT[k * alpha + i];                                          \
                if (c != 0) { VT v; __builtin_memcpy(&v, d + (i * alpha + j) * 16, sizeof(VT)); acc += c * v; } \
            }                                                                        \
            t[k * alpha + j] = acc;                                                  \
        }                                                                            \
    for (int k = 0; k < alpha; k++)                                                  \
        for (int q = 0; q < alpha; q++) {                                            \
            VT acc = {0};                                                            \
            for (int j = 0; j < alpha; j++) {                                        \
                T c = (T)BT[q * alpha + j];                                          \
                if (c != 0) acc += c * t[k * alpha + j];                             \
            }                                                                        \
            __builtin_memcpy(V + (k * alpha + q) * plane, &acc, sizeof(VT));         \
        }                                                                            \
}                                                                                    \
static inline __attribute__((always_inline)) void P##_out_a(                         \
        const T* M, ptrdiff_t plane, const double* AT, T b, T* o, const int m) {     \
    const int alpha = m + 2;                                                         \
    VT mm[64], t[48];                                                                \
    for (int k = 0; k < alpha * alpha; k++)                                          \
        __builtin_memcpy(&mm[k], M + k * plane, sizeof(VT));                         \
    for (int i = 0; i < m; i++)                                                      \
        for (int q = 0; q < alpha; q++) {                                            \
            VT acc = {0};                                                            \
            for (int k = 0; k < alpha; k++) {                                        \
                T c = (T)AT[i * alpha + k];                                          \
                if (c != 0) acc += c * mm[k * alpha + q];                            \
            }                                                                        \
            t[i * alpha + q] = acc;                                                  \
        }                                                                            \
    for (int i = 0; i < m; i++)                                                      \
        for (int j = 0; j < m; j++) {                                                \
            VT acc = {0};                                                            \
            acc += b;                                                                \
            for (int q = 0; q < alpha; q++) {                                        \
                T c = (T)AT[j * alpha + q];                                          \
                if (c != 0) acc += c * t[i * alpha + q];                             \
            }                                                                        \
            __builtin_memcpy(o + (i * m + j) * 16, &acc, sizeof(VT));               \
        }                                                                            \
}
#endif
