/* Winograd F(m x m, 3 x 3) float32 input/output kernels in portable C, compiled with
 * the baseline flags as winograd_f{2,4,6}x3_{input,output}__scalar (setup.py passes
 * -DUK_SUFFIX=scalar). Contracts: ukernels.h (uk_wg_input_fn, uk_wg_output_fn).
 *
 * input:  each lane's alpha x alpha tile is copied into d[i][j][lane] (a row copy when
 *         the tile lies inside the image, else element by element with zeros outside),
 *         then B^T d B runs on the 16 lanes as vectors (winograd_transform.h).
 * output: A^T M A + bias on 16 lanes as vectors, then each lane's m x m tile is stored
 *         row by row, clipped to OH x OW, relu as v < 0 ? 0 : v (NaN and -0.0 pass).
 */
#include "ukernels.h"
#include "winograd_transform.h"

typedef float wg_v16 __attribute__((vector_size(64)));
WG_TRANSFORMS(wgt, float, wg_v16)

static inline __attribute__((always_inline)) void wg_input(
        const float* x, ptrdiff_t img_stride, const int* tn, const int* iy, const int* ix,
        int nl, int H, int W, float* V, ptrdiff_t plane, const int alpha) {
    float d[64 * 16] __attribute__((aligned(64)));
    for (int l = 0; l < 16; l++) {
        float* dl = d + l;
        if (l >= nl) {
            for (int k = 0; k < alpha * alpha; k++) dl[k * 16] = 0.0f;
            continue;
        }
        const float* src = x + (ptrdiff_t)tn[l] * img_stride;
        const int y0 = iy[l], x0 = ix[l];
        if (y0 >= 0 && y0 + alpha <= H && x0 >= 0 && x0 + alpha <= W) {
            for (int i = 0; i < alpha; i++) {
                const float* row = src + (ptrdiff_t)(y0 + i) * W + x0;
                for (int j = 0; j < alpha; j++) dl[(i * alpha + j) * 16] = row[j];
            }
        } else {
            for (int i = 0; i < alpha; i++) {
                const int yy = y0 + i;
                for (int j = 0; j < alpha; j++) {
                    const int xx = x0 + j;
                    dl[(i * alpha + j) * 16] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                        ? src[(ptrdiff_t)yy * W + xx] : 0.0f;
                }
            }
        }
    }
    wgt_in_a(d, V, plane, alpha);
}

static inline __attribute__((always_inline)) void wg_output(
        const float* M, ptrdiff_t plane, float bias, int relu, float* out,
        ptrdiff_t img_stride, const int* tn, const int* oy, const int* ox, int nl, int OH,
        int OW, const int m) {
    float o[36 * 16] __attribute__((aligned(64)));
    wgt_out_a(M, plane, bias, o, m);
    for (int l = 0; l < nl; l++) {
        float* dst = out + (ptrdiff_t)tn[l] * img_stride + (ptrdiff_t)oy[l] * OW + ox[l];
        const int hh = OH - oy[l] < m ? OH - oy[l] : m;
        const int ww = OW - ox[l] < m ? OW - ox[l] : m;
        for (int i = 0; i < hh; i++)
            for (int j = 0; j < ww; j++) {
                float v = o[(i * m + j) * 16 + l];
                if (relu && v < 0) v = 0.0f;
                dst[(ptrdiff_t)i * OW + j] = v;
            }
    }
}

WG_ENTRY_POINTS(UK_SUFFIX)
