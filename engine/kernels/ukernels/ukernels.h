/* convtune micro-kernels: one C function per (kernel, register tile, instruction set).
 *
 * Names follow XNNPACK / NNPACK: what it computes, its register tile, its ISA, e.g.
 * sgemm_6x16__avx2_fma is a float32 GEMM whose register tile is 6 rows x 16 columns,
 * written for AVX2 + FMA. Each ISA's functions live in their own object file, compiled
 * with that ISA's flags only (setup.py, UKERNEL_ISAS): the baseline object with the
 * portable flags, so `baseline` is correct on every x86-64 (and any other) CPU.
 *
 * Which ISA runs is decided once in Python (engine.isa: cpuid via uk_cpu_isa(), capped
 * by CONVTUNE_ISA) and passed to the kernels as an int; uk_kernels(isa) returns that
 * ISA's function table. Nothing here keeps global state.
 *
 * Conventions shared by all kernels:
 *   - float32, row-major, leading dimensions in elements;
 *   - Winograd kernels work on chunks of UK_WG_LANES = 16 tiles side by side (one
 *     16-float vector per element of the alpha x alpha tile), whatever the ISA; their
 *     B^T and A^T are the compile-time constants of winograd_matrices.h, generated
 *     from engine/winograd_transforms.py (a test checks the two agree).
 */
#ifndef CONVTUNE_UKERNELS_H
#define CONVTUNE_UKERNELS_H
#include <stddef.h>

#define UK_API __attribute__((visibility("hidden")))

enum { UK_ISA_BASELINE = 0, UK_ISA_AVX2 = 1, UK_ISA_AVX512 = 2, UK_ISA_COUNT = 3 };
#define UK_WG_LANES 16

/* GEMM register tile: C[mr][nr] (ldc) = A[mr][k] (lda) @ B[k][nr] (ldb) (+ C if acc),
   1 <= mr <= MR, 1 <= nr <= NR, k >= 0 (k == 0 and !acc writes zeros). */
typedef void (*uk_sgemm_tile_fn)(int mr, int nr, int k, const float* A, int lda,
                                  const float* B, int ldb, float* C, int ldc, int acc);
/* Whole GEMM: C[M][N] = A[M][K] @ B[K][N] (+ C if acc), any M, N, K >= 0, tiled with
   the ISA's register tile and cache blocks (sgemm_driver.h). B is read in place: for
   Winograd it is already the packed [K][tiles] panel. */
typedef void (*uk_sgemm_fn)(int M, int N, int K, const float* A, int lda,
                            const float* B, int ldb, float* C, int ldc, int acc);

/* Winograd input transform of one chunk of nl <= 16 tiles of one channel:
     V[(xi*alpha + nu) * plane + lane] = (B^T d_lane B)[xi][nu],  lanes >= nl are 0,
   where d_lane is the alpha x alpha input tile whose top-left input pixel is
   (iy[lane], ix[lane]) (padding already subtracted, may be negative) of image
   tn[lane]; x is channel c of image 0, images are img_stride elements apart; pixels
   outside [0,H) x [0,W) read as 0. iy/ix/tn always hold 16 entries. */
typedef void (*uk_wg_input_fn)(const float* x, ptrdiff_t img_stride, const int* tn,
                               const int* iy, const int* ix, int nl, int H, int W,
                               float* V, ptrdiff_t plane);
/* Winograd output transform of one chunk for one output channel:
     out tile (m x m) of lane = A^T M_lane A + bias (then max(0, .) if relu),
   M_lane[xi*alpha + nu] = M[(xi*alpha + nu) * plane + lane]; the tile's top-left
   output pixel is (oy[lane], ox[lane]) of image tn[lane]; out is this channel of
   image 0 with images img_stride apart; only pixels inside OH x OW are written. */
typedef void (*uk_wg_output_fn)(const float* M, ptrdiff_t plane, float bias, int relu, float* out, ptrdiff_t img_stride,
                                const int* tn, const int* oy, const int* ox, int nl,
                                int OH, int OW);

typedef struct {
    const char* isa;              /* "baseline", "avx2", "avx512" */
    int sgemm_mr, sgemm_nr;       /* the register tile of sgemm_tile */
    const char* sgemm_name;       /* e.g. "sgemm_6x16__avx2_fma" */
    uk_sgemm_tile_fn sgemm_tile;
    uk_sgemm_fn sgemm;
    const char* wg_name;          /* e.g. "winograd_f4x3_input__avx2" without the m */
    uk_wg_input_fn wg_input[3];   /* index m/2 - 1: F(2x2), F(4x4), F(6x6) */
    uk_wg_output_fn wg_output[3];
} uk_kernels_t;

/* Highest ISA this CPU (and its OS, for the AVX register state) supports. */
UK_API int uk_cpu_isa(void);
/* The function table of `isa` (0 <= isa < UK_ISA_COUNT), or NULL when this build did
   not compile that ISA (a non-x86 machine: only baseline). */
UK_API const uk_kernels_t* uk_kernels(int isa);

/* Per-ISA definitions (each in its own object). */
#define UK_DECLARE(SUFFIX, MR, NR)                                                          \
    UK_API void sgemm_##MR##x##NR##__##SUFFIX(int, int, int, const float*, int, const float*, \
                                              int, float*, int, int);                       \
    UK_API void sgemm__##SUFFIX(int, int, int, const float*, int, const float*, int, float*, \
                                int, int);                                                  \
    UK_API void winograd_f2x3_input__##SUFFIX(const float*, ptrdiff_t, const int*, const int*, \
        const int*, int, int, int, float*, ptrdiff_t);                       \
    UK_API void winograd_f4x3_input__##SUFFIX(const float*, ptrdiff_t, const int*, const int*, \
        const int*, int, int, int, float*, ptrdiff_t);                       \
    UK_API void winograd_f6x3_input__##SUFFIX(const float*, ptrdiff_t, const int*, const int*, \
        const int*, int, int, int, float*, ptrdiff_t);                       \
    UK_API void winograd_f2x3_output__##SUFFIX(const float*, ptrdiff_t, float, \
        int, float*, ptrdiff_t, const int*, const int*, const int*, int, int, int);          \
    UK_API void winograd_f4x3_output__##SUFFIX(const float*, ptrdiff_t, float, \
        int, float*, ptrdiff_t, const int*, const int*, const int*, int, int, int);          \
    UK_API void winograd_f6x3_output__##SUFFIX(const float*, ptrdiff_t, float, \
        int, float*, ptrdiff_t, const int*, const int*, const int*, int, int, int);

UK_DECLARE(scalar, 4, 16)
#if defined(__x86_64__) || defined(__i386__)
UK_DECLARE(avx2_fma, 6, 16)
UK_DECLARE(avx512f, 8, 48)
#define UK_HAVE_X86 1
#else
#define UK_HAVE_X86 0
#endif

#endif
