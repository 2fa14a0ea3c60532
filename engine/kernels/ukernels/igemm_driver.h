/* Implicit-GEMM convolution around a register tile, one definition for every ISA.
 *
 * Included by each sgemm_<isa>.c after its tile function, with
 *     IG_SUFFIX  the ISA suffix (avx512f, avx2_fma, scalar)
 *     IG_TILE    that file's packed-A sgemm tile (uk_sgemm_tile_pa_fn, ukernels.h)
 *     IG_TILE_IB the same tile reading B indirectly (uk_sgemm_tile_pa_ib_fn)
 *     IG_TILE_EP the packed-A tile with the epilogue below fused into its store (a static
 *                function of that file: the tile's signature plus bias and relu)
 *     IG_TILE_IB_EP the same for the indirect-B tile (the padded mode's)
 *     IG_MR, IG_NR, IG_KC   its register tile and K block (the sgemm driver's)
 * and defines igemm_pack__<suffix>, igemm__<suffix> and igemm_padded__<suffix>
 * (uk_igemm_pack_fn, uk_igemm_fn, uk_igemm_padded_fn).
 * Compiled with the ISA's own flags, so the gathers and the epilogue vectorise for it.
 *
 * The convolution (uk_conv_t, ukernels.h: x[N][C][H][W], out[N][M][OH][OW], G groups of
 * Cg input and Mg output channels, K = Cg*kh*kw) is, per group g, one product
 *
 *     out_g[Mg][N*P] = A_g[Mg][K] @ col_g[K][N*P]  (+ bias, then relu)     P = OH*OW
 *
 *     col_g[(i*kw + j)*Cg + ic][c] = x[n][g*Cg + ic][oh*sh - pt + i*dh][ow*sw - pl + j*dw]
 *                                    (0 outside the image),   c = n*P + oh*OW + ow
 *
 * with the columns c running over the whole batch, so small images (7x7 at batch 8)
 * still fill whole register tiles. A_g is the packed weight, MR rows at a time as the
 * panels Ap[g][b][K][MR] the tile reads (one 32-byte stream per k on AVX-512, where
 * MR row-major rows would be 8 streams whose lines can fall in one L1 set; ukernels.h,
 * uk_conv_t). col is never built: each
 * thread gathers one KC x NR slice of it at a time straight into the packed B panel
 * the tile reads,
 *
 *     Bp[kk][j] = col_g[k0 + kk][c0 + j]     kk < kc, j < NR  (ldb = NR; j >= nc: 0)
 *
 * (src = x[n][c][h][w], dst = NR-kc: one panel, rows of NR consecutive columns).
 * Loop order of one work item (group g, output channels m0 .. m0+mb, columns c0 ..
 * c0+nc): NR-column panel > K block of KC rows (gathered once, its 24 KiB / 16 KiB stay
 * in L1) > MR-row panels of A (streaming from L2 or L3, prefetched by the tile; the
 * caller bounds mb x K, igemm.pyx A_BLOCK_BYTES) -> C tile in the per-thread buffer
 * Cb[mb][NR], accumulated over the K blocks. An item of several panels (nc > NR: the
 * caller's choice, igemm.pyx wide_panels) gathers all K rows of all its panels first,
 * row by row across the panels (ig_pack_wide): a row's sources for consecutive panels
 * are then consecutive in x, one long run the prefetchers follow, where a panel at a
 * time reads K runs of NR floats from K planes. It then finishes one MR x NR tile at a
 * time, MR-row panel of A > NR-column panel > all K rows: A's panel stays in L1, B streams
 * from L2, and the epilogue writes MR output rows as runs across all the panels
 * instead of mb rows a panel at a time. For a 1x1 layer it also fetches the next
 * item's rows into L2 while it computes (ig_prefetch_1x1). ResNet-50's 1x1 layers at
 * batch 8, whose input is in L3: 1.3-1.5x faster at 2 threads. After the last K block
 * each tile gets the epilogue
 *
 *     out[n][g*Mg + m][p] = relu?(Cb[m][j] + bias[g*Mg + m])     (relu: v < 0 ? 0 : v,
 *                                                                 NaN passes)
 *
 * while it is still in L1, stored as runs of columns that lie in one image. In a wide
 * item, a panel whose columns all lie in one image is one run of out per row: its tile
 * accumulates in out itself (ldc = OH*OW) and adds the bias and relu in registers
 * before its last store (IG_TILE_EP), no round trip through Cb; the same sums in the
 * same order, so bitwise the Cb path's results. Measured on an AMD EPYC Zen 4, one
 * thread: ResNet-50's 64->256 1x1 at 56x56 (K = 64, where the round trip was a tenth
 * of each tile's time) 0.90 of the time at batch 1 and 8, its 1x1 stride 2 0.96, the
 * other 1x1 and strided 3x3 layers level.
 * A 1x1 stride-1 unpadded layer is gathered too (the caller views each plane as one
 * row, so a panel row is one copy): reading x's rows in place (ldb = H*W) measured
 * slower, the tile stalling on rows more than 2 KiB apart that no prefetcher follows
 * (AVX2, ResNet-50 512->128 at 28x28: 35% of the cycles on the first B load).
 * Workspace (the caller's, per thread): Bb[IG_KC * IG_NR] (several panels: Bb[np * K *
 * IG_NR]) and Cb[mb * IG_NR] floats.
 *
 * Padded mode (igemm_padded__<suffix>): no gather at all. The caller zero-pads group g
 * of image n into planes of rows W' floats long (xg; plane PS floats apart per input
 * channel), numbers the image's columns by their flat position q = oh*W' + ow in such a
 * plane (an item's panel is any run q0 .. q0+nq of them: the caller's panels either run
 * on across rows or start at each row, igemm.pyx _panel_start), and gives each row k of
 * col its offset,
 *
 *     col_g[k][q] = xg[boff[k] + q]
 *
 * (stride 1: boff[k] = ic*PS + i*dh*W' + j*dw for k = (i*kw + j)*Cg + ic; a strided
 * layer is split into polyphase planes, igemm.pyx, and boff picks the plane).
 * The B rows of NR consecutive columns are then nr floats of xg read in place by the
 * indirect tile IG_TILE_IB (B row p at B + boff[p]). Positions with ow >= OW (the
 * padded row's tail, (W' - OW)/W' of the columns) are computed and dropped by the
 * epilogue; a panel whose columns are all outputs of one row accumulates in out itself
 * with the epilogue fused (IG_TILE_IB_EP), as the gather's wide items do. It pays one
 * copy of the input instead of a gather per channel block, and
 * its B rows come from L1/L2 wherever a group's padded planes fit there (grouped and
 * small layers, where the gather's many short runs cost more than the tile's FMAs).
 */
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define IG_CAT_(a, b) a##b
#define IG_CAT(a, b) IG_CAT_(a, b)
#define IG_PACK IG_CAT(igemm_pack__, IG_SUFFIX)
#define IG_RUN IG_CAT(igemm__, IG_SUFFIX)
#define IG_RUN_PADDED IG_CAT(igemm_padded__, IG_SUFFIX)

/* floor(a / b), b > 0 (C division truncates toward zero). Strides 1 and 2, nearly
   every layer's, skip the division (it is recomputed for every tap of every panel). */
static inline ptrdiff_t ig_floor_div(ptrdiff_t a, ptrdiff_t b) {
    if (b == 1) return a;
    if (b == 2) return a >= 0 ? a / 2 : -((1 - a) / 2);
    ptrdiff_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* One run of panel columns that lies in a single output row: columns j0 .. j0+len of
   the panel are (image n, row oh, ow0 .. ow0+len). */
typedef struct { int n, oh, ow0, len, j0; } ig_seg_t;

/* The runs of columns c0 .. c0+nc (nc <= NR), one per output row crossed. */
static inline int ig_segments(const uk_conv_t* cv, ptrdiff_t c0, int nc, ig_seg_t* seg) {
    const ptrdiff_t P = (ptrdiff_t)cv->OH * cv->OW;
    ptrdiff_t n = c0 / P, p = c0 - n * P;
    int oh = (int)(p / cv->OW), ow = (int)(p - (ptrdiff_t)oh * cv->OW);
    int ns = 0;
    for (int j = 0; j < nc;) {
        int len = cv->OW - ow;
        if (len > nc - j) len = nc - j;
        seg[ns].n = (int)n; seg[ns].oh = oh; seg[ns].ow0 = ow; seg[ns].len = len; seg[ns].j0 = j;
        ns++;
        j += len;
        ow += len;
        if (ow == cv->OW) {
            ow = 0;
            if (++oh == cv->OH) { oh = 0; n++; }
        }
    }
    return ns;
}

/* Short copies and zero fills of a panel row (runs of at most NR floats): fixed-size
   chunks, which the compiler turns into vector moves of the ISA, instead of a call to
   the C library per run. */
static inline void ig_zero(float* d, int len) {
    for (; len >= 16; len -= 16, d += 16) memset(d, 0, 64);
    if (len >= 8) { memset(d, 0, 32); d += 8; len -= 8; }
    if (len >= 4) { memset(d, 0, 16); d += 4; len -= 4; }
    for (; len > 0; len--) *d++ = 0.0f;
}

typedef float ig_v16 __attribute__((vector_size(64)));

static inline void ig_copy(float* restrict d, const float* restrict s, int len, int st) {
    if (st == 1) {
        for (; len >= 16; len -= 16, d += 16, s += 16) memcpy(d, s, 64);
        if (len >= 8) { memcpy(d, s, 32); d += 8; s += 8; len -= 8; }
        if (len >= 4) { memcpy(d, s, 16); d += 4; s += 4; len -= 4; }
        for (; len > 0; len--) *d++ = *s++;
    } else if (st == 2) {
        /* 16 outputs from two 16-float loads and one even-lane shuffle; the loads reach
           s[31], inside the run only while more than 16 outputs remain */
        for (; len > 16; len -= 16, d += 16, s += 32) {
            ig_v16 a, b;
            memcpy(&a, s, 64);
            memcpy(&b, s + 16, 64);
            const ig_v16 e = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                     20, 22, 24, 26, 28, 30);
            memcpy(d, &e, 64);
        }
        for (; len > 0; len--, s += 2) *d++ = *s;
    } else {
        for (; len > 0; len--, s += st) *d++ = *s;
    }
}

/* How one kernel tap (i, j) fills a panel row: zero runs and copy runs, the copies'
   sources relative to the input channel's plane. The same for every input channel, so
   it is worked out once per tap and replayed for each channel. */
typedef struct { int j, len; ptrdiff_t off; } ig_run_t;

static int ig_tap_runs(const uk_conv_t* cv, int i, int j, const ig_seg_t* seg, int ns,
                       ig_run_t* cp, int* ncp, ig_run_t* zr) {
    const int off = j * cv->dw - cv->pl;                  /* iw = ow*sw + off */
    /* ow with 0 <= ow*sw + off < W: [lo, hi) */
    const ptrdiff_t lo = -ig_floor_div(off, cv->sw), hi = ig_floor_div(cv->W - 1 - off, cv->sw) + 1;
    int nz = 0, nc = 0;
    for (int s = 0; s < ns; s++) {
        const int ih = seg[s].oh * cv->sh - cv->pt + i * cv->dh;
        const int a0 = seg[s].ow0, b0 = seg[s].ow0 + seg[s].len;
        const int a = lo > a0 ? (lo < b0 ? (int)lo : b0) : a0;      /* max(a0, lo) */
        const int b = hi < b0 ? (hi > a0 ? (int)hi : a0) : b0;      /* min(b0, hi) */
        if (ih < 0 || ih >= cv->H || a >= b) {
            zr[nz].j = seg[s].j0; zr[nz++].len = seg[s].len;
            continue;
        }
        if (a > a0) { zr[nz].j = seg[s].j0; zr[nz++].len = a - a0; }
        cp[nc].j = seg[s].j0 + (a - a0);
        cp[nc].len = b - a;
        cp[nc++].off = (ptrdiff_t)seg[s].n * cv->C * cv->H * cv->W + (ptrdiff_t)ih * cv->W
                       + (ptrdiff_t)a * cv->sw + off;
        if (b < b0) { zr[nz].j = seg[s].j0 + (b - a0); zr[nz++].len = b0 - b; }
    }
    *ncp = nc;
    return nz;
}

/* Bp[kk][j] = col_g[k0 + kk][c0 + j] for kk < kc, j < nc; columns nc .. NR-1 zero.
   Row k of col is (tap t = k / Cg, input channel k % Cg) (the packed weights' order,
   pack_weight): consecutive rows share their tap, so each tap's runs are computed once
   and each row is a few short copies (no per-element bounds tests). */
/* (GCC would turn the chunked copies back into a memmove call per run) */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
static void ig_pack_segs(const uk_conv_t* cv, int g, int k0, int kc, int nc,
                         const ig_seg_t* seg, int ns, float* Bp) {
    ig_run_t cp[IG_NR + 1], zr[2 * IG_NR + 2];
    int ncp = 0, nz = 0;
    if (kc <= 0) return;                  /* (also: no input channels, Cg = 0) */
    const ptrdiff_t HW = (ptrdiff_t)cv->H * cv->W;
    const float* xg = cv->x + (ptrdiff_t)g * cv->Cg * HW;
    int t = k0 / cv->Cg, ic = k0 - t * cv->Cg;
    nz = ig_tap_runs(cv, t / cv->kw, t % cv->kw, seg, ns, cp, &ncp, zr);
    for (int kk = 0; kk < kc; kk++) {
        float* dst = Bp + (ptrdiff_t)kk * IG_NR;
        const float* plane = xg + (ptrdiff_t)ic * HW;
        for (int r = 0; r < nz; r++) ig_zero(dst + zr[r].j, zr[r].len);
        for (int r = 0; r < ncp; r++) ig_copy(dst + cp[r].j, plane + cp[r].off, cp[r].len, cv->sw);
        if (nc < IG_NR) ig_zero(dst + nc, IG_NR - nc);
        if (++ic == cv->Cg && kk + 1 < kc) {
            ic = 0;
            t++;
            nz = ig_tap_runs(cv, t / cv->kw, t % cv->kw, seg, ns, cp, &ncp, zr);
        }
    }
}

UK_API void IG_PACK(const uk_conv_t* cv, int g, int k0, int kc, ptrdiff_t c0, int nc, float* Bp) {
    ig_seg_t seg[IG_NR];
    ig_pack_segs(cv, g, k0, kc, nc, seg, ig_segments(cv, c0, nc, seg), Bp);
}

/* o[q] = relu?(c[q] + b) for q < len (relu: v < 0 ? 0 : v, NaN and -0 pass). The
   runs are short (at most NR, often an output row's remainder), so the tail is one
   masked vector where the ISA has masks instead of a scalar loop: the scalar tails
   were a fifth of a small grouped layer's time. max(0, v) returns v when v is NaN. */
static inline void ig_store_run(float* restrict o, const float* restrict c, int len, float b,
                                int relu) {
#if defined(__AVX512F__)
    const __m512 vb = _mm512_set1_ps(b), z = _mm512_setzero_ps();
    for (int q = 0; q < len; q += 16) {
        const __mmask16 k = len - q >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - q)) - 1u);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, c + q), vb);
        if (relu) v = _mm512_max_ps(z, v);
        _mm512_mask_storeu_ps(o + q, k, v);
    }
#elif defined(__AVX2__)
    /* whole vectors; the tail is one more vector ending at len, overlapping the one
       before (its values are recomputed from c, so the same values land twice), or two
       overlapping halves below 8 floats: no masked store, which is microcoded on AMD's
       Zen 2 and 3 (tens of cycles each; _short_rows.h) */
    const __m256 vb = _mm256_set1_ps(b), z = _mm256_setzero_ps();
    if (len >= 8) {
        for (int q = 0; q < len; q += 8) {
            const int at = q < len - 8 ? q : len - 8;      /* the last vector ends at len */
            __m256 v = _mm256_add_ps(_mm256_loadu_ps(c + at), vb);
            if (relu) v = _mm256_max_ps(z, v);
            _mm256_storeu_ps(o + at, v);
        }
    } else if (len >= 4) {
        const __m128 vb4 = _mm256_castps256_ps128(vb), z4 = _mm_setzero_ps();
        __m128 v = _mm_add_ps(_mm_loadu_ps(c), vb4), u = _mm_add_ps(_mm_loadu_ps(c + len - 4), vb4);
        if (relu) { v = _mm_max_ps(z4, v); u = _mm_max_ps(z4, u); }
        _mm_storeu_ps(o, v);
        _mm_storeu_ps(o + len - 4, u);
    } else {
        for (int q = 0; q < len; q++) { const float v = c[q] + b; o[q] = relu && v < 0.0f ? 0.0f : v; }
    }
#else
    if (relu) {
        for (int q = 0; q < len; q++) { const float v = c[q] + b; o[q] = v < 0.0f ? 0.0f : v; }
    } else {
        for (int q = 0; q < len; q++) o[q] = c[q] + b;
    }
#endif
}

/* out rows m0+i .. m0+i+mr of group g, columns of the runs, from the tile C[mr][NR].
   merge: consecutive runs of one image are consecutive tile columns (the gather's
   numbering), so they are stored as one run. */
static inline void ig_epilogue(const uk_conv_t* cv, int g, int m, int mr, const float* C,
                               const ig_seg_t* seg, int ns, const int merge) {
    const ptrdiff_t P = (ptrdiff_t)cv->OH * cv->OW;
    for (int r = 0; r < mr; r++) {
        const int oc = g * cv->Mg + m + r;
        const float b = cv->bias ? cv->bias[oc] : 0.0f;
        const float* c = C + (ptrdiff_t)r * IG_NR;
        for (int s = 0; s < ns;) {
            /* runs of one image are contiguous in out: merge them */
            int t = s + 1, len = seg[s].len;
            while (merge && t < ns && seg[t].n == seg[s].n) len += seg[t++].len;
            float* restrict o = cv->out + ((ptrdiff_t)seg[s].n * cv->M + oc) * P
                                + (ptrdiff_t)seg[s].oh * cv->OW + seg[s].ow0;
            ig_store_run(o, c + seg[s].j0, len, b, cv->relu);
            s = t;
        }
    }
}

/* A 1x1 stride-1 unpadded layer viewed as one row per plane (H = OH = 1, igemm.pyx
   _fill): its column c of image n is x[n][ic][c] itself. */
#define IG_IS_1X1_ROWS(cv) ((cv)->kh == 1 && (cv)->kw == 1 && (cv)->sh == 1 && (cv)->sw == 1 \
                            && (cv)->pt == 0 && (cv)->pl == 0 && (cv)->H == 1 && (cv)->OH == 1 \
                            && (cv)->OW == (cv)->W)

/* Bw[j][k][NR] = col_g[k][c0 + j*NR + jj] for every row k < K of the np panels that
   split columns c0 .. c0+nc into NR-wide pieces (zero past nc), gathered row by row
   across all the panels: row k's sources for consecutive panels are consecutive in x
   (one long run per output row for a 1x1 or stride-1 layer), which the hardware
   prefetchers follow; a panel at a time reads K short runs from K planes, as many
   streams as rows, which they do not. seg[j] / ns[j]: panel j's output segments
   (ig_segments), which the caller's epilogue uses too. */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
static void ig_pack_wide(const uk_conv_t* cv, int g, int np, ptrdiff_t nc,
                         ig_seg_t seg[][IG_NR], const int* ns, float* Bw) {
    ig_run_t cp[IG_WIDE_MAX][IG_NR + 1], zr[IG_WIDE_MAX][2 * IG_NR + 2];
    int ncp[IG_WIDE_MAX], nz[IG_WIDE_MAX], nrj[IG_WIDE_MAX];
    const int K = cv->K;
    if (K <= 0) return;
    const ptrdiff_t HW = (ptrdiff_t)cv->H * cv->W;
    const float* xg = cv->x + (ptrdiff_t)g * cv->Cg * HW;
    for (int j = 0; j < np; j++) {
        const ptrdiff_t left = nc - (ptrdiff_t)j * IG_NR;
        nrj[j] = left < IG_NR ? (int)left : IG_NR;
    }
    if (IG_IS_1X1_ROWS(cv) && seg[0][0].n == seg[np - 1][ns[np - 1] - 1].n) {
        /* a 1x1 layer's columns in one image: row k of the panels is one run of x,
           x[n][g*Cg + k][p0 .. p0+nc], cut into NR-float pieces (ig_copy's vector
           moves, without the general path's run bookkeeping per row and panel, which
           cost more than the copy itself: ResNet-50's 1x1 layers at one thread on a
           Zen 4, 0.93-0.97 of the time with the AVX2 tiles, 0.97-1.0 with AVX-512's) */
        const float* src = xg + (ptrdiff_t)seg[0][0].n * cv->C * HW + seg[0][0].ow0;
        for (int k = 0; k < K; k++, src += HW) {
            for (int j = 0; j < np; j++) {
                float* dst = Bw + ((ptrdiff_t)j * K + k) * IG_NR;
                const float* s = src + (ptrdiff_t)j * IG_NR;
                ig_copy(dst, s, nrj[j], 1);
                if (nrj[j] < IG_NR) ig_zero(dst + nrj[j], IG_NR - nrj[j]);
            }
        }
        return;
    }
    int t = 0, ic = 0;
    for (int k = 0; k < K; k++) {
        if (ic == 0)
            for (int j = 0; j < np; j++)
                nz[j] = ig_tap_runs(cv, t / cv->kw, t % cv->kw, seg[j], ns[j], cp[j], &ncp[j], zr[j]);
        const float* plane = xg + (ptrdiff_t)ic * HW;
        for (int j = 0; j < np; j++) {
            float* dst = Bw + ((ptrdiff_t)j * K + k) * IG_NR;
            for (int r = 0; r < nz[j]; r++) ig_zero(dst + zr[j][r].j, zr[j][r].len);
            for (int r = 0; r < ncp[j]; r++) ig_copy(dst + cp[j][r].j, plane + cp[j][r].off, cp[j][r].len, cv->sw);
            if (nrj[j] < IG_NR) ig_zero(dst + nrj[j], IG_NR - nrj[j]);
        }
        if (++ic == cv->Cg) { ic = 0; t++; }
    }
}

/* An unpadded 1x1 layer, any stride (a stride-1 one viewed as one row per plane or not):
   its column (n, oh, ow) reads x[n][c][oh*sh][ow*sw] alone. */
#define IG_IS_1X1_UNPADDED(cv) ((cv)->kh == 1 && (cv)->kw == 1 && (cv)->pt == 0 && (cv)->pl == 0)

/* Prefetch into L2 rows k_from .. k_to of the input that the columns cn .. cn+len of an
   unpadded 1x1 layer read (IG_IS_1X1_UNPADDED): the rows the next wide item gathers,
   fetched while this one computes. Per output row crossed, one run of (len-1)*sw + 1
   floats of an input row (at stride 2 every line of it holds floats the gather reads).
   A stride-1 layer viewed as one row per plane (H = OH = 1, igemm.pyx
   _fill) is one run per image. */
static inline void ig_prefetch_1x1(const uk_conv_t* cv, int g, ptrdiff_t cn, ptrdiff_t len,
                                   int k_from, int k_to) {
    const ptrdiff_t HW = (ptrdiff_t)cv->H * cv->W, OW = cv->OW, P = (ptrdiff_t)cv->OH * OW;
    if (k_from >= k_to) return;
    /* the runs are the same for every row k: worked out once, rows inner */
    for (ptrdiff_t c = cn, left = len; left > 0;) {
        const ptrdiff_t n = c / P, p = c - n * P, oh = p / OW, ow = p - oh * OW;
        const ptrdiff_t run = OW - ow < left ? OW - ow : left, span = (run - 1) * cv->sw + 1;
        const float* src = cv->x + ((n * cv->C + (ptrdiff_t)g * cv->Cg + k_from) * HW
                                    + oh * cv->sh * cv->W + ow * cv->sw);
        for (int k = k_from; k < k_to; k++, src += HW) {
            for (ptrdiff_t q = 0; q < span; q += 16) __builtin_prefetch(src + q, 0, 2);
            __builtin_prefetch(src + span - 1, 0, 2);
        }
        c += run;
        left -= run;
    }
}

/* One MR x nr tile of output channels oc .. oc+mr accumulated in out itself (o: the
   first row's run, rows OH*OW apart) over K blocks of kc_max rows, bias and relu added
   in registers before the last block's store (IG_TILE_EP / IG_TILE_IB_EP): B is a packed
   panel B[K][ldb] or, with boff, rows read in place at B + boff[k]. Ai: the tile's A
   panel Ap[K][MR]. */
static inline void ig_tile_into_out(const uk_conv_t* cv, int oc, int mr, int nr, int kc_max,
                                    const float* Ai, const float* B, int ldb, const int* boff,
                                    float* o) {
    const int K = cv->K, P = cv->OH * cv->OW;
    const float* bias = cv->bias ? cv->bias + oc : NULL;
    for (int k0 = 0; k0 < K; k0 += kc_max) {
        const int kc = K - k0 < kc_max ? K - k0 : kc_max, last = k0 + kc >= K;
        const float* Ak = Ai + (ptrdiff_t)k0 * IG_MR;
        if (boff && last)
            IG_TILE_IB_EP(mr, nr, kc, Ak, B, boff + k0, o, P, k0 > 0, bias, cv->relu);
        else if (boff)
            IG_TILE_IB(mr, nr, kc, Ak, B, boff + k0, o, P, k0 > 0);
        else if (last)
            IG_TILE_EP(mr, nr, kc, Ak, B + (ptrdiff_t)k0 * ldb, ldb, o, P, k0 > 0, bias, cv->relu);
        else
            IG_TILE(mr, nr, kc, Ak, B + (ptrdiff_t)k0 * ldb, ldb, o, P, k0 > 0);
    }
}

UK_API void IG_RUN(const uk_conv_t* cv, int g, int m0, int mb, ptrdiff_t c0, ptrdiff_t nc,
                   float* Bb, float* Cb) {
    const int K = cv->K;
    const ptrdiff_t nblk = (cv->Mg + IG_MR - 1) / IG_MR, blk = (ptrdiff_t)K * IG_MR;
    const float* Ag = cv->w + ((ptrdiff_t)g * nblk + m0 / IG_MR) * blk;   /* Ap[g][m0/MR] */
    if (nc <= 0) return;
    if (nc > IG_NR) {
        /* several panels: gather all their K rows at once (Bb holds np x K x NR), then
           finish one MR x NR tile at a time, MR rows across all the panels: A's MR
           panel stays in L1, B streams from L2, and each output row is written as one
           run across the panels. A tile takes the whole K in one call: B is all gathered
           already, so blocking K (IG_KC, for the narrow gather's L1 slice) would only
           store and reload the accumulators between blocks (Zen 4, ResNet-50's 1x1
           layers at one thread: 0.97-0.98 of the time on AVX-512, 0.98-1.0 on AVX2) */
        ig_seg_t seg[IG_WIDE_MAX][IG_NR];
        int ns[IG_WIDE_MAX];
        const int np = (int)((nc + IG_NR - 1) / IG_NR);
        for (int j = 0; j < np; j++) {
            const ptrdiff_t c = c0 + (ptrdiff_t)j * IG_NR;
            ns[j] = ig_segments(cv, c, c0 + nc - c < IG_NR ? (int)(c0 + nc - c) : IG_NR, seg[j]);
        }
        ig_pack_wide(cv, g, np, nc, seg, ns, Bb);
        /* a 1x1 layer's next item (the next nc columns, which the caller most often
           gives this thread next) is fetched into L2 a slice of rows per tile: its rows
           lie in K planes, too many streams for the hardware prefetchers (at stride 2
           too: ResNet-50's downsample at batch 8 spent 28% of its samples in the
           gather, most on the loads of x) */
        const ptrdiff_t P = (ptrdiff_t)cv->OH * cv->OW, total = cv->N * P, cn = c0 + nc;
        const ptrdiff_t pf_len = IG_IS_1X1_UNPADDED(cv) && cn < total
                                 ? (total - cn < nc ? total - cn : nc) : 0;
        const int n_tiles = (mb + IG_MR - 1) / IG_MR * np;
        int t = 0;
        for (int i = 0; i < mb; i += IG_MR) {
            const int mr = mb - i < IG_MR ? mb - i : IG_MR;
            const float* Ai = Ag + (i / IG_MR) * blk;
            for (int j = 0; j < np; j++, t++) {
                if (pf_len > 0)
                    ig_prefetch_1x1(cv, g, cn, pf_len, (int)((ptrdiff_t)t * K / n_tiles),
                                    (int)((ptrdiff_t)(t + 1) * K / n_tiles));
                const ptrdiff_t c = c0 + (ptrdiff_t)j * IG_NR;
                const int nr = c0 + nc - c < IG_NR ? (int)(c0 + nc - c) : IG_NR;
                const float* Bj = Bb + (ptrdiff_t)j * K * IG_NR;
                if (seg[j][0].n == seg[j][ns[j] - 1].n) {
                    /* the panel's columns lie in one image, so each of the tile's rows is
                       one run of out: the tile accumulates there and stores with the
                       epilogue fused (IG_TILE_EP), no round trip through Cb */
                    const int oc = g * cv->Mg + m0 + i;
                    ig_tile_into_out(cv, oc, mr, nr, K, Ai, Bj, IG_NR, NULL,
                                     cv->out + ((ptrdiff_t)seg[j][0].n * cv->M + oc) * P
                                     + (ptrdiff_t)seg[j][0].oh * cv->OW + seg[j][0].ow0);
                    continue;
                }
                IG_TILE(mr, nr, K, Ai, Bj, IG_NR, Cb, IG_NR, 0);
                ig_epilogue(cv, g, m0 + i, mr, Cb, seg[j], ns[j], 1);
            }
        }
        return;
    }
    ig_seg_t seg[IG_NR];
    const int nr = (int)nc, ns = ig_segments(cv, c0, nr, seg);
    int k0 = 0;
    do {
        const int kc = K - k0 < IG_KC ? K - k0 : IG_KC;
        const int last = k0 + kc >= K;
        ig_pack_segs(cv, g, k0, kc, nr, seg, ns, Bb);
        for (int i = 0; i < mb; i += IG_MR) {
            const int mr = mb - i < IG_MR ? mb - i : IG_MR;
            float* C = Cb + (ptrdiff_t)i * IG_NR;
            IG_TILE(mr, nr, kc, Ag + (i / IG_MR) * blk + (ptrdiff_t)k0 * IG_MR, Bb, IG_NR,
                    C, IG_NR, k0 > 0);
            if (last) ig_epilogue(cv, g, m0 + i, mr, C, seg, ns, 1);
        }
        k0 += IG_KC;
    } while (k0 < K);
}

UK_API void IG_RUN_PADDED(const uk_conv_t* cv, int g, int m0, int mb, int n, int q0, int nq,
                          int wq, const float* xg, const int* boff, float* Cb) {
    ig_seg_t seg[IG_NR + 1];
    const int K = cv->K, W = wq;
    const ptrdiff_t nblk = (cv->Mg + IG_MR - 1) / IG_MR, blk = (ptrdiff_t)K * IG_MR;
    const float* Ag = cv->w + ((ptrdiff_t)g * nblk + m0 / IG_MR) * blk;   /* Ap[g][m0/MR] */
    const ptrdiff_t P = (ptrdiff_t)cv->OH * cv->OW;
    for (int q = q0; q < q0 + nq;) {
        /* a run of consecutive panels whose columns are each the outputs of one row:
           their tiles accumulate in out itself (ldc = OH*OW) and add the bias and relu
           in registers before their last store (IG_TILE_IB_EP), no round trip through
           Cb; MR rows at a time across the run, so A's MR panel stays in L1 while the
           run's B rows (one stretch of each plane row they read) stream from L2,
           instead of all of A passing through L1 for every panel (the stem's 64 x 147:
           37 KiB) */
        int run_q[IG_PADDED_RUN], run_nr[IG_PADDED_RUN], run_oh[IG_PADDED_RUN], run_ow[IG_PADDED_RUN];
        int nrun = 0;
        for (; q < q0 + nq && nrun < IG_PADDED_RUN; q += IG_NR) {
            const int nr = q0 + nq - q < IG_NR ? q0 + nq - q : IG_NR;
            const int oh = q / W, ow = q - oh * W;
            if (ow + nr > cv->OW) break;          /* not all one row's outputs */
            run_q[nrun] = q; run_nr[nrun] = nr; run_oh[nrun] = oh; run_ow[nrun++] = ow;
        }
        if (nrun > 0) {
            for (int i = 0; i < mb; i += IG_MR) {
                const int mr = mb - i < IG_MR ? mb - i : IG_MR, oc = g * cv->Mg + m0 + i;
                float* o = cv->out + ((ptrdiff_t)n * cv->M + oc) * P;
                for (int r = 0; r < nrun; r++)
                    ig_tile_into_out(cv, oc, mr, run_nr[r], UK_KC_PADDED, Ag + (i / IG_MR) * blk,
                                     xg + run_q[r], 0, boff,
                                     o + (ptrdiff_t)run_oh[r] * cv->OW + run_ow[r]);
            }
            continue;
        }
        /* one panel crossing into the next row (or into the row's dropped tail): its
           outputs, one run per padded row crossed, are stored from Cb */
        const int nr = q0 + nq - q < IG_NR ? q0 + nq - q : IG_NR;
        int ns = 0;
        for (int oh = q / W; oh * W < q + nr; oh++) {
            const int a = q > oh * W ? q - oh * W : 0;
            const int b = q + nr - oh * W < cv->OW ? q + nr - oh * W : cv->OW;
            if (a < b) {
                seg[ns].n = n; seg[ns].oh = oh; seg[ns].ow0 = a; seg[ns].len = b - a;
                seg[ns++].j0 = oh * W + a - q;
            }
        }
        int k0 = 0;
        do {
            const int kc = K - k0 < UK_KC_PADDED ? K - k0 : UK_KC_PADDED;
            const int last = k0 + kc >= K;
            for (int i = 0; i < mb; i += IG_MR) {
                const int mr = mb - i < IG_MR ? mb - i : IG_MR;
                float* C = Cb + (ptrdiff_t)i * IG_NR;
                IG_TILE_IB(mr, nr, kc, Ag + (i / IG_MR) * blk + (ptrdiff_t)k0 * IG_MR, xg + q,
                           boff + k0, C, IG_NR, k0 > 0);
                if (last) ig_epilogue(cv, g, m0 + i, mr, C, seg, ns, 0);
            }
            k0 += UK_KC_PADDED;
        } while (k0 < K);
        q += IG_NR;
    }
}

#undef IG_PACK
#undef IG_RUN
#undef IG_RUN_PADDED
