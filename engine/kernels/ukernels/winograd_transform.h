/* Winograd F(m x m, 3 x 3) tile transforms on 16 tiles at once, for any element type.
 *
 * WG_TRANSFORMS(P, T, VT) defines, with VT a GCC vector of 16 T (one lane per tile):
 *   P##_in_a(d, V, plane, alpha)   V[(k*alpha+q)*plane + lane] = (B^T d B)[k][q]
 *        d[(i*alpha + j)*16 + lane]: the alpha x alpha input tiles, lane-interleaved
 *   P##_out_a(M, plane, b, o, m)   o[(i*m + j)*16 + lane] = (A^T M A)[i][j] + b
 *        M[(k*alpha + q)*plane + lane]: the transformed output tiles
 * B^T (alpha x alpha) and A^T (m x alpha) are the constants of winograd_matrices.h
 * (generated from engine/winograd_transforms.py). Both functions are always inlined
 * with alpha / m constant, so the loops unroll completely, the coefficients fold in
 * and zero entries vanish: straight-line FMAs on vectors of the including file's
 * width (1 zmm, 2 ymm or 4 xmm per 16-lane operation).
 */
#ifndef CONVTUNE_WINOGRAD_TRANSFORM_H
#define CONVTUNE_WINOGRAD_TRANSFORM_H
#include <stddef.h>
#include "winograd_matrices.h"
/* B^T and A^T for tile size alpha (constant after inlining) */
#define WG_BT_OF(alpha) ((alpha) == 4 ? WG_BT2 : (alpha) == 6 ? WG_BT4 : WG_BT6)
#define WG_AT_OF(m) ((m) == 2 ? WG_AT2 : (m) == 4 ? WG_AT4 : WG_AT6)
#define WG_UNROLL _Pragma("GCC unroll 8")
#define WG_TRANSFORMS(P, T, VT)                                                        \
static inline __attribute__((always_inline)) void P##_in_a(                          \
        const T* d, T* V, ptrdiff_t plane, const int alpha) {                        \
    const double* BT = WG_BT_OF(alpha);                                              \
    VT t[64];                                                                        \
    WG_UNROLL for (int k = 0; k < alpha; k++)                                                  \
        WG_UNROLL for (int j = 0; j < alpha; j++) {                                            \
            VT acc = {0};                                                            \
            WG_UNROLL for (int i = 0; i < alpha; i++) {                                        \
                T c = (T)BT[k * alpha + i];                                          \
                if (c != 0) { VT v; __builtin_memcpy(&v, d + (i * alpha + j) * 16, sizeof(VT)); acc += c * v; } \
            }                                                                        \
            t[k * alpha + j] = acc;                                                  \
        }                                                                            \
    WG_UNROLL for (int k = 0; k < alpha; k++)                                                  \
        WG_UNROLL for (int q = 0; q < alpha; q++) {                                            \
            VT acc = {0};                                                            \
            WG_UNROLL for (int j = 0; j < alpha; j++) {                                        \
                T c = (T)BT[q * alpha + j];                                          \
                if (c != 0) acc += c * t[k * alpha + j];                             \
            }                                                                        \
            __builtin_memcpy(V + (k * alpha + q) * plane, &acc, sizeof(VT));         \
        }                                                                            \
}                                                                                    \
static inline __attribute__((always_inline)) void P##_out_a(                         \
        const T* M, ptrdiff_t plane, T b, T* o, const int m) {                       \
    const int alpha = m + 2;                                                         \
    const double* AT = WG_AT_OF(m);                                                  \
    VT mm[64], t[48];                                                                \
    WG_UNROLL for (int k = 0; k < alpha * alpha; k++)                                          \
        __builtin_memcpy(&mm[k], M + k * plane, sizeof(VT));                         \
    WG_UNROLL for (int i = 0; i < m; i++)                                                      \
        WG_UNROLL for (int q = 0; q < alpha; q++) {                                            \
            VT acc = {0};                                                            \
            WG_UNROLL for (int k = 0; k < alpha; k++) {                                        \
                T c = (T)AT[i * alpha + k];                                          \
                if (c != 0) acc += c * mm[k * alpha + q];                            \
            }                                                                        \
            t[i * alpha + q] = acc;                                                  \
        }                                                                            \
    WG_UNROLL for (int i = 0; i < m; i++)                                                      \
        WG_UNROLL for (int j = 0; j < m; j++) {                                                \
            VT acc = {0};                                                            \
            acc += b;                                                                \
            WG_UNROLL for (int q = 0; q < alpha; q++) {                                        \
                T c = (T)AT[j * alpha + q];                                          \
                if (c != 0) acc += c * t[i * alpha + q];                             \
            }                                                                        \
            __builtin_memcpy(o + (i * m + j) * 16, &acc, sizeof(VT));               \
        }                                                                            \
}

/* The public entry points of one ISA's tile kernels (ukernels.h), for a file that
   defines static wg_input(..., alpha) and wg_output(..., m) (alpha, m constant once
   inlined): winograd_f{2,4,6}x3_{input,output}__SUFFIX. */
#define WG_CAT_(a, b) a##b
#define WG_CAT(a, b) WG_CAT_(a, b)
#define WG_ENTRY_POINTS_M(M, SUFFIX)                                                        \
UK_API void WG_CAT(winograd_f##M##x3_input__, SUFFIX)(                                      \
        const float* x, ptrdiff_t img_stride, const int* tn, const int* iy, const int* ix,  \
        int nl, int H, int W, float* V, ptrdiff_t plane) {                                  \
    wg_input(x, img_stride, tn, iy, ix, nl, H, W, V, plane, M + 2);                         \
}                                                                                           \
UK_API void WG_CAT(winograd_f##M##x3_output__, SUFFIX)(                                     \
        const float* Mw, ptrdiff_t plane, float bias, int relu, float* out,                 \
        ptrdiff_t img_stride, const int* tn, const int* oy, const int* ox, int nl, int OH,  \
        int OW) {                                                                           \
    wg_output(Mw, plane, bias, relu, out, img_stride, tn, oy, ox, nl, OH, OW, M);           \
}
#define WG_ENTRY_POINTS(SUFFIX) \
    WG_ENTRY_POINTS_M(2, SUFFIX) WG_ENTRY_POINTS_M(4, SUFFIX) WG_ENTRY_POINTS_M(6, SUFFIX)
#endif
