/* Depthwise convolution, one output line, float32: dwconv_line__SUFFIX (ukernels.h,
 * uk_dwconv_line_fn). One definition, compiled once per ISA with that ISA's flags
 * (setup.py passes -DUK_SUFFIX=scalar | avx2_fma | avx512f with the baseline,
 * AVX2 + FMA or AVX-512F flags): the loops are plain C over i, written so the compiler
 * vectorises them at the width of the ISA it is compiled for (4, 8 or 16 floats, with
 * FMA contraction on the two x86 ISAs that have it).
 *
 * IN   src  a zero-padded block, row stride PW (in floats): every tap of every output
 *           is inside it, so the loops have no bounds checks and no branches;
 *      w    w[kh][kw], the channel's kh x kw filter (row-major);
 *      b    the channel's bias (0 when there is none).
 * OUT  dst[i], i < n:
 *           dst[i] = b + sum_{r < kh, c < kw} w[r][c] * src[i*sw + r*dh*PW + c*dw]
 *      then, when relu, dst[i] = dst[i] < 0 ? 0 : dst[i] (max(0, v): NaN and -0.0 pass
 *      unchanged, as torch's relu). Only dst[0 .. n) is written.
 *
 * Summation order (so that results are those of engine/kernels/direct.pyx's _dw_line,
 * the float64 path, bit for bit when compiled with the same contraction):
 *   3x3, any stride: one pass, s = b + w0*r0[.] + w1*r0[.+dw] + w2*r0[.+2dw] + w3*r1[.]
 *                    + ... + w8*r2[.+2dw], left to right (9 weights in registers;
 *                    stride 1 and 2 unrolled so the loads are contiguous / a fixed
 *                    shuffle), relu applied in the same pass;
 *   any other kernel: dst = b, then one multiply-add pass over the line per tap in
 *                    row-major tap order (dst stays in L1).
 * The caller (conv2d_depthwise) walks a padded band flattened into one long "wide" line
 * and rounds n up to whole vectors, so the vector loop rarely has a remainder.
 */
#include "ukernels.h"

#define DW_CAT_(a, b) a##b
#define DW_CAT(a, b) DW_CAT_(a, b)

/* The 3x3 one-pass sum at output i with input stride S (a constant in the unrolled
   loops, so the compiler sees contiguous or stride-2 loads). */
#define DW_SUM9(S)                                                                     \
    (b + w0 * r0[(S) * i] + w1 * r0[(S) * i + d1] + w2 * r0[(S) * i + d2]             \
       + w3 * r1[(S) * i] + w4 * r1[(S) * i + d1] + w5 * r1[(S) * i + d2]             \
       + w6 * r2[(S) * i] + w7 * r2[(S) * i + d1] + w8 * r2[(S) * i + d2])

/* The 3x3 line, relu in the same pass (the value clamped is the whole sum, so the
   result is that of a separate pass; the line is stored once instead of twice). */
#define DW_LINE9(S)                                                                    \
    do {                                                                               \
        if (relu) {                                                                    \
            for (ptrdiff_t i = 0; i < n; i++) {                                        \
                const float v = DW_SUM9(S);                                            \
                dst[i] = v < 0 ? 0.0f : v;                                             \
            }                                                                          \
        } else {                                                                       \
            for (ptrdiff_t i = 0; i < n; i++) dst[i] = DW_SUM9(S);                    \
        }                                                                              \
    } while (0)

UK_API void DW_CAT(dwconv_line__, UK_SUFFIX)(
        float* restrict dst, const float* restrict src, ptrdiff_t n, ptrdiff_t sw,
        ptrdiff_t PW, ptrdiff_t dh, ptrdiff_t dw, const float* restrict w, int kh, int kw,
        float b, int relu) {
    if (kh == 3 && kw == 3) {
        const float* restrict r0 = src;
        const float* restrict r1 = src + dh * PW;
        const float* restrict r2 = src + 2 * dh * PW;
        const ptrdiff_t d1 = dw, d2 = 2 * dw;
        const float w0 = w[0], w1 = w[1], w2 = w[2];
        const float w3 = w[3], w4 = w[4], w5 = w[5];
        const float w6 = w[6], w7 = w[7], w8 = w[8];
        if (sw == 1) {
            DW_LINE9(1);
        } else if (sw == 2) {
            DW_LINE9(2);
        } else {
            DW_LINE9(sw);
        }
        return;
    }
    /* any other kernel: dst = b, then one multiply-add pass per tap */
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = b;
    for (int r = 0; r < kh; r++)
        for (int c = 0; c < kw; c++) {
            const float* restrict s = src + r * dh * PW + c * dw;
            const float wv = w[r * kw + c];
            if (sw == 1) {
                for (ptrdiff_t i = 0; i < n; i++) dst[i] += wv * s[i];
            } else {
                for (ptrdiff_t i = 0; i < n; i++) dst[i] += wv * s[i * sw];
            }
        }
    if (relu)
        for (ptrdiff_t i = 0; i < n; i++) {
            const float v = dst[i];
            dst[i] = v < 0 ? 0.0f : v;
        }
}
