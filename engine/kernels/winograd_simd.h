/* Winograd F(m x m, 3 x 3) hot loops in C with GCC vector extensions and AVX-512
 * intrinsics, included by winograd.pyx (which documents the algorithm and layouts).
 *
 * wg_f_in / wg_d_in     B^T d B for 16 tiles side by side (one vector per tile element)
 * wg_f_out / wg_d_out   A^T M A + bias for 16 tiles (relu is the caller's, at the store)
 * wg_f_in_g             float32 + AVX-512: masked gather of 16 tiles, then wg_f_in
 * wg_f_out_s            float32 + AVX-512: wg_f_out, then masked scatter into out
 * wg_sgemm              float32 + AVX-512: C = U @ V on the packed [K][tiles] panel
 * WG_SIMD               1 when the AVX-512 paths are compiled in
 */
#ifndef CONVTUNE_WINOGRAD_SIMD_H
#define CONVTUNE_WINOGRAD_SIMD_H
#include <Python.h>   /* Py_ssize_t */
typedef float wg_vf __attribute__((vector_size(64)));
typedef double wg_vd __attribute__((vector_size(128)));
#define WG_DEF(NAME, T, VT)                                                        \
static inline __attribute__((always_inline)) void NAME##_in_a(                       \
        const T* d, const double* BT, T* V, Py_ssize_t plane, const int alpha) {     \
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
static void NAME##_in(const T* d, const double* BT, T* V, Py_ssize_t plane, int alpha) { \
    switch (alpha) {                                                                 \
        case 4: NAME##_in_a(d, BT, V, plane, 4); break;                              \
        case 6: NAME##_in_a(d, BT, V, plane, 6); break;                              \
        default: NAME##_in_a(d, BT, V, plane, 8); break;                             \
    }                                                                                \
}                                                                                    \
static inline __attribute__((always_inline)) void NAME##_out_a(                      \
        const T* M, Py_ssize_t plane, const double* AT, T b, T* o,                   \
        const int m) {                                                               \
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
}                                                                                    \
static void NAME##_out(const T* M, Py_ssize_t plane, const double* AT, T b,          \
                       T* o, int m) {                                                \
    switch (m) {                                                                     \
        case 2: NAME##_out_a(M, plane, AT, b, o, 2); break;                          \
        case 4: NAME##_out_a(M, plane, AT, b, o, 4); break;                          \
        default: NAME##_out_a(M, plane, AT, b, o, 6); break;                         \
    }                                                                                \
}
WG_DEF(wg_f, float, wg_vf)
WG_DEF(wg_d, double, wg_vd)

/* float32 gather/scatter with AVX-512 (16 tiles = 16 lanes, one index per lane):
   the input tile elements come in with one masked vpgatherdps per (i, j) (lanes
   outside the image or past nl read 0), and the output goes out with one masked
   vpscatterdps per (i, j) (lanes outside out or past nl are not written). Offsets
   are int32 element offsets relative to the channel-plane base (caller checks the
   range). off/iy/ix arrays always hold 16 entries. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define WG_SIMD 1
static inline __attribute__((always_inline)) void wg_f_in_g_a(
        const float* xc, const int* off, const int* iy, const int* ix, int nl,
        int H, int W, const double* BT, float* V, Py_ssize_t plane, const int alpha) {
    float d[64 * 16] __attribute__((aligned(64)));
    __m512i voff = _mm512_loadu_si512((const void*)off);
    __m512i vy = _mm512_loadu_si512((const void*)iy), vx = _mm512_loadu_si512((const void*)ix);
    __m512i vH = _mm512_set1_epi32(H), vW = _mm512_set1_epi32(W), z = _mm512_setzero_si512();
    __mmask16 lm = nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1u);
    __mmask16 rm[8], cm[8];
    for (int i = 0; i < alpha; i++) {
        __m512i yy = _mm512_add_epi32(vy, _mm512_set1_epi32(i));
        rm[i] = lm & _mm512_cmpge_epi32_mask(yy, z) & _mm512_cmplt_epi32_mask(yy, vH);
        __m512i xx = _mm512_add_epi32(vx, _mm512_set1_epi32(i));
        cm[i] = _mm512_cmpge_epi32_mask(xx, z) & _mm512_cmplt_epi32_mask(xx, vW);
    }
    for (int i = 0; i < alpha; i++)
        for (int j = 0; j < alpha; j++)
            _mm512_store_ps(d + (i * alpha + j) * 16,
                _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rm[i] & cm[j], voff,
                                         xc + i * W + j, 4));
    wg_f_in_a(d, BT, V, plane, alpha);
}
static void wg_f_in_g(const float* xc, const int* off, const int* iy, const int* ix,
                      int nl, int H, int W, const double* BT, float* V, Py_ssize_t plane,
                      int alpha) {
    switch (alpha) {
        case 4: wg_f_in_g_a(xc, off, iy, ix, nl, H, W, BT, V, plane, 4); break;
        case 6: wg_f_in_g_a(xc, off, iy, ix, nl, H, W, BT, V, plane, 6); break;
        default: wg_f_in_g_a(xc, off, iy, ix, nl, H, W, BT, V, plane, 8); break;
    }
}
static inline __attribute__((always_inline)) void wg_f_out_s_a(
        const float* M, Py_ssize_t plane, const double* AT, float b, int relu,
        float* oc, const int* off, const int* oy, const int* ox, int nl,
        int OH, int OW, const int m) {
    float o[36 * 16] __attribute__((aligned(64)));
    wg_f_out_a(M, plane, AT, b, o, m);
    __m512i voff = _mm512_loadu_si512((const void*)off);
    __m512i vy = _mm512_loadu_si512((const void*)oy), vx = _mm512_loadu_si512((const void*)ox);
    __m512i vH = _mm512_set1_epi32(OH), vW = _mm512_set1_epi32(OW);
    __mmask16 lm = nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1u);
    __mmask16 rm[6], cm[6];
    for (int i = 0; i < m; i++) {
        rm[i] = lm & _mm512_cmplt_epi32_mask(_mm512_add_epi32(vy, _mm512_set1_epi32(i)), vH);
        cm[i] = _mm512_cmplt_epi32_mask(_mm512_add_epi32(vx, _mm512_set1_epi32(i)), vW);
    }
    __m512 zero = _mm512_setzero_ps();
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++) {
            __m512 v = _mm512_load_ps(o + (i * m + j) * 16);
            if (relu) v = _mm512_max_ps(zero, v);   /* NaN and -0.0 pass, as v < 0 ? 0 : v */
            _mm512_mask_i32scatter_ps(oc + i * OW + j, rm[i] & cm[j], voff, v, 4);
        }
}
static void wg_f_out_s(const float* M, Py_ssize_t plane, const double* AT, float b, int relu,
                       float* oc, const int* off, const int* oy, const int* ox, int nl,
                       int OH, int OW, int m) {
    switch (m) {
        case 2: wg_f_out_s_a(M, plane, AT, b, relu, oc, off, oy, ox, nl, OH, OW, 2); break;
        case 4: wg_f_out_s_a(M, plane, AT, b, relu, oc, off, oy, ox, nl, OH, OW, 4); break;
        default: wg_f_out_s_a(M, plane, AT, b, relu, oc, off, oy, ox, nl, OH, OW, 6); break;
    }
}
/* C[R][16*NV] (ldm) = U[R][K] (ldu) @ V[K][16*NV] (ldv): R x NV zmm accumulators,
   U broadcast from its rows, V rows loaded as vectors. V's layout [C_in][TB] is
   already the packed panel a BLAS would build, and U rows are contiguous in K. */
static inline __attribute__((always_inline)) void wg_gemm_rb(
        const float* U, int ldu, const float* V, int ldv, float* C, int ldm, int K,
        int acc_in, const int R, const int NV) {
    __m512 acc[8][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = acc_in ? _mm512_loadu_ps(C + (Py_ssize_t)r * ldm + 16 * v) : _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 b[4];
        for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(V + (Py_ssize_t)k * ldv + 16 * v);
        for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(U[(Py_ssize_t)r * ldu + k]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(C + (Py_ssize_t)r * ldm + 16 * v, acc[r][v]);
}
#define WG_GR(R) static void wg_gemm_r##R(const float* U, int ldu, const float* V, int ldv, \
        float* C, int ldm, int K, int acc_in, int nv) {                                   \
    switch (nv) {                                                                         \
        case 1: wg_gemm_rb(U, ldu, V, ldv, C, ldm, K, acc_in, R, 1); break;               \
        case 2: wg_gemm_rb(U, ldu, V, ldv, C, ldm, K, acc_in, R, 2); break;               \
        default: wg_gemm_rb(U, ldu, V, ldv, C, ldm, K, acc_in, R, 3); break;              \
    }                                                                                     \
}
WG_GR(1) WG_GR(2) WG_GR(3) WG_GR(4) WG_GR(5) WG_GR(6) WG_GR(7) WG_GR(8)
/* C[Mr][N] = U[Mr][K] @ V[K][N], N a multiple of 16 (beta = 0). Loop order: 48-column
   panel of V, K slice of WG_KC (the V panel slice, <= 24 KiB, stays in L1 across all
   row blocks), 8-row blocks of U (U[a] stays in L2 across the panels). */
#define WG_KC 128
static void wg_sgemm(int Mr, int N, int K, const float* U, int ldu, const float* V, int ldv,
                     float* C, int ldm) {
    typedef void (*fn)(const float*, int, const float*, int, float*, int, int, int, int);
    static const fn tab[9] = {0, wg_gemm_r1, wg_gemm_r2, wg_gemm_r3, wg_gemm_r4,
                              wg_gemm_r5, wg_gemm_r6, wg_gemm_r7, wg_gemm_r8};
    for (int j = 0; j < N; j += 48) {
        int nv = (N - j) / 16;
        if (nv > 3) nv = 3;
        for (int k0 = 0; k0 < K; k0 += WG_KC) {
            int kc = K - k0 < WG_KC ? K - k0 : WG_KC;
            for (int i = 0; i < Mr; i += 8) {
                int R = Mr - i < 8 ? Mr - i : 8;
                if (i + 8 < Mr) {     /* next row block's U slice (first panel: from L3/DRAM) */
                    int R2 = Mr - i - 8 < 8 ? Mr - i - 8 : 8;
                    for (int r = 0; r < R2; r++) {
                        const char* pu = (const char*)(U + (Py_ssize_t)(i + 8 + r) * ldu + k0);
                        for (int q = 0; q < kc * 4; q += 64) _mm_prefetch(pu + q, _MM_HINT_T0);
                    }
                }
                tab[R](U + (Py_ssize_t)i * ldu + k0, ldu, V + (Py_ssize_t)k0 * ldv + j, ldv,
                       C + (Py_ssize_t)i * ldm + j, ldm, kc, k0 > 0, nv);
            }
        }
    }
}
#else
#define WG_SIMD 0
static void wg_sgemm(int Mr, int N, int K, const float* U, int ldu, const float* V, int ldv,
                     float* C, int ldm) {}
static void wg_f_in_g(const float* xc, const int* off, const int* iy, const int* ix,
                      int nl, int H, int W, const double* BT, float* V, Py_ssize_t plane,
                      int alpha) {}
static void wg_f_out_s(const float* M, Py_ssize_t plane, const double* AT, float b, int relu,
                       float* oc, const int* off, const int* oy, const int* ox, int nl,
                       int OH, int OW, int m) {}
#endif
#endif
