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
/* Every register tile is a function of its own that the drivers call, never inlined
   into them: inlined into igemm_driver.h's loops, GCC kept the driver's loop-invariant
   vectors (the epilogue's lane indices and masks) in registers through the tile's k
   loop and spilled two of the AVX2 6x16 tile's 12 accumulators instead (16 ymm
   registers, the tile needs 15), a stack store and reload on every k. The 7x7 stem's
   padded mode on a Zen 3 ran at 31 GFLOP/s of the tile's 85 (benchmarks/tile_peak.c). */
#define UK_TILE __attribute__((noinline))

enum { UK_ISA_BASELINE = 0, UK_ISA_AVX2 = 1, UK_ISA_AVX512 = 2, UK_ISA_COUNT = 3 };
#define UK_WG_LANES 16

/* GEMM register tile: C[mr][nr] (ldc) = A[mr][k] (lda) @ B[k][nr] (ldb) (+ C if acc),
   1 <= mr <= MR, 1 <= nr <= NR, k >= 0 (k == 0 and !acc writes zeros). */
typedef void (*uk_sgemm_tile_fn)(int mr, int nr, int k, const float* A, int lda,
                                  const float* B, int ldb, float* C, int ldc, int acc);
/* The same tile with A packed as a panel: A(r, p) = Ap[p*MR + r] (Ap[k][MR], rows past
   mr ignored), so the tile reads A as one contiguous stream. */
typedef void (*uk_sgemm_tile_pa_fn)(int mr, int nr, int k, const float* Ap, const float* B,
                                     int ldb, float* C, int ldc, int acc);
/* The packed-A tile reading B indirectly: B row p (nr floats) at B + boff[p]. */
typedef void (*uk_sgemm_tile_pa_ib_fn)(int mr, int nr, int k, const float* Ap, const float* B,
                                        const int* boff, float* C, int ldc, int acc);
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

/* A float32 convolution for the implicit-GEMM kernels (igemm_driver.h), zero padding:
     x[N][C][H][W] -> out[N][M][OH][OW] (+ bias[M], then relu), G groups of Cg = C/G
     input and Mg = M/G output channels, kernel kh x kw, strides, top/left padding and
     dilations as PyTorch's; OH, OW given (they fix the bottom/right padding).
     w: the packed weights Ap[G][ceil(Mg/MR)][K][MR] of the ISA's register tile (MR rows),
     K = Cg*kh*kw in tap-major order:
         Ap[g][b][(i*kw + j)*Cg + ic][r] = weight[g*Mg + b*MR + r][ic][i][j]
     (0 for rows past Mg). bias may be NULL. */
typedef struct {
    const float* x;
    const float* w;
    const float* bias;
    float* out;
    int N, C, H, W, M, OH, OW;
    int kh, kw, sh, sw, pt, pl, dh, dw;
    int G, Cg, Mg, K, relu;
} uk_conv_t;
/* Gather one packed B panel: Bp[kk][j] (row stride NR of the ISA) = im2col row k0+kk of
   group g at batch-wide column c0+j (c = n*OH*OW + oh*OW + ow), 0 outside the image,
   for kk < kc, j < nc <= NR; columns nc .. NR-1 are zero. */
typedef void (*uk_igemm_pack_fn)(const uk_conv_t* cv, int g, int k0, int kc, ptrdiff_t c0,
                                 int nc, float* Bp);
/* One work item: out rows g*Mg + m0 .. + mb, batch-wide columns c0 .. c0+nc, every
   element written (+ bias, relu); m0 a multiple of MR. Workspace Cb[mb * NR] floats and
   Bb: igemm_kc * NR floats when nc <= NR; for nc > NR (up to IG_WIDE_MAX panels) all K
   rows of the item's ceil(nc / NR) panels are gathered at once, Bb[ceil(nc/NR) * K * NR]. */
typedef void (*uk_igemm_fn)(const uk_conv_t* cv, int g, int m0, int mb, ptrdiff_t c0,
                            ptrdiff_t nc, float* Bb, float* Cb);
/* The padded mode: xg holds group g of image n zero-padded into planes of W' = wq
   floats a row (W' >= OW + the largest column offset), whose rows the tile reads in
   place (the caller pads them, igemm.pyx). One work item: out rows g*Mg + m0 .. + mb of
   image n at the flat plane positions q0 .. q0+nq (q = oh*W' + ow; only ow < OW are
   outputs), every output there written; B row k of the item is xg + boff[k] + q
   (igemm_driver.h). cv is the convolution itself (cv->x unused). Workspace
   Cb[mb * NR]. */
typedef void (*uk_igemm_padded_fn)(const uk_conv_t* cv, int g, int m0, int mb, int n, int q0,
                                   int nq, int wq, const float* xg, const int* boff, float* Cb);

typedef struct {
    const char* isa;              /* "baseline", "avx2", "avx512" */
    int sgemm_mr, sgemm_nr;       /* the register tile of sgemm_tile */
    int sgemm_vec;                /* columns it computes at a time: nr columns cost
                                     ceil(nr / sgemm_vec) vectors' FMAs */
    const char* sgemm_name;       /* e.g. "sgemm_6x16__avx2_fma" */
    uk_sgemm_tile_fn sgemm_tile;
    uk_sgemm_fn sgemm;
    uk_sgemm_tile_pa_fn sgemm_tile_pa;   /* sgemm_<MR>x<NR>_pa__<isa> */
    uk_sgemm_tile_pa_ib_fn sgemm_tile_pa_ib;   /* sgemm_<MR>x<NR>_pa_ib__<isa> */
    const char* wg_name;          /* e.g. "winograd_f4x3_input__avx2" without the m */
    uk_wg_input_fn wg_input[3];   /* index m/2 - 1: F(2x2), F(4x4), F(6x6) */
    uk_wg_output_fn wg_output[3];
    const char* igemm_name;       /* e.g. "igemm_6x16__avx2_fma" */
    int igemm_kc;                 /* K block of the igemm driver (rows of its B panel) */
    uk_igemm_pack_fn igemm_pack;
    uk_igemm_fn igemm;
    uk_igemm_padded_fn igemm_padded;
} uk_kernels_t;

/* Highest ISA this CPU (and its OS, for the AVX register state) supports. */
UK_API int uk_cpu_isa(void);
/* The CPU's vendor (cpuid), for choices between kernels that are both correct but fast
   on different cores (engine.kernels.winograd.auto_transforms). */
enum { UK_VENDOR_OTHER = 0, UK_VENDOR_AMD = 1, UK_VENDOR_INTEL = 2 };
UK_API int uk_cpu_vendor(void);
/* The function table of `isa` (0 <= isa < UK_ISA_COUNT), or NULL when this build did
   not compile that ISA (a non-x86 machine: only baseline). */
UK_API const uk_kernels_t* uk_kernels(int isa);

/* K block of each ISA's GEMM drivers (sgemm and igemm): a KC x NR slice of B stays in L1
   (AVX-512: 128 x 48 floats = 24 KiB; AVX2 and baseline: 256 x 16 = 16 KiB). */
#define UK_KC_avx512f 128
#define UK_KC_avx2_fma 256
#define UK_KC_scalar 256
/* K block of the igemm driver's padded mode, every ISA: its B rows are not copied, so
   the block only bounds how many input rows one C tile pass touches; 256 measured
   faster than 128 (the stem's K = 147 in one pass, no C reload: 0.8x the time). */
#define UK_KC_PADDED 256
/* Most panels the padded mode finishes together, MR output channels at a time across
   them (igemm_driver.h): the caller's items hand it up to this many at once. */
#define IG_PADDED_RUN 8
/* Most panels one igemm gather item packs at once (igemm_driver.h, ig_pack_wide). */
#define IG_WIDE_MAX 8

/* Per-ISA definitions (each in its own object). */
#define UK_DECLARE(SUFFIX, MR, NR)                                                          \
    UK_API void sgemm_##MR##x##NR##__##SUFFIX(int, int, int, const float*, int, const float*, \
                                              int, float*, int, int);                       \
    UK_API void sgemm__##SUFFIX(int, int, int, const float*, int, const float*, int, float*, \
                                int, int);                                                  \
    UK_API void sgemm_##MR##x##NR##_pa__##SUFFIX(int, int, int, const float*, const float*, \
                                                 int, float*, int, int);                    \
    UK_API void sgemm_##MR##x##NR##_pa_ib__##SUFFIX(int, int, int, const float*, const float*, \
                                                    const int*, float*, int, int);          \
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
        int, float*, ptrdiff_t, const int*, const int*, const int*, int, int, int);          \
    UK_API void igemm_pack__##SUFFIX(const uk_conv_t*, int, int, int, ptrdiff_t, int, float*); \
    UK_API void igemm__##SUFFIX(const uk_conv_t*, int, int, int, ptrdiff_t, ptrdiff_t, float*, float*); \
    UK_API void igemm_padded__##SUFFIX(const uk_conv_t*, int, int, int, int, int, int, int, const float*, const int*, float*);

UK_DECLARE(scalar, 4, 16)
#if defined(__x86_64__) || defined(__i386__)
UK_DECLARE(avx2_fma, 6, 16)
UK_DECLARE(avx512f, 8, 48)
#define UK_HAVE_X86 1
#else
#define UK_HAVE_X86 0
#endif

#endif
