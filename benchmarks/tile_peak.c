/* What one sgemm register tile reaches with its operands in L1 (the FMA peak the GEMM
 * figures of bench_ukernels.py are compared with), one thread:
 *
 *   U=engine/kernels/ukernels
 *   gcc -O3 -I$U -c $U/sgemm_avx512f.c -mavx512f -mavx2 -mfma -o /tmp/a.o
 *   gcc -O3 -I$U -c $U/sgemm_avx2_fma.c -mavx2 -mfma -o /tmp/b.o
 *   gcc -O3 -I$U benchmarks/tile_peak.c /tmp/a.o /tmp/b.o -o /tmp/tile_peak && /tmp/tile_peak
 *
 * (the AVX-512 lines run where the CPU has AVX-512F, the AVX2 lines where it has AVX2 +
 * FMA; the others are left out with a note).
 * Each call: C[MR][NR] = Ap[K][MR]^T @ B[K][NR], K = 128.
 * The indirect-B tile (igemm's padded mode) is timed twice: on packed rows, and on rows
 * laid out as the 7x7 stride-2 stem's padded planes give them (3 channels x 4 phases,
 * taps one float apart: most rows start off a cache line, so their loads split).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "ukernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef void (*tile_fn)(int, int, int, const float*, const float*, int, float*, int, int);
typedef void (*tile_ib_fn)(int, int, int, const float*, const float*, const int*, float*, int, int);

/* Best of 5 runs of 0.3 s calling the packed-A tile f, or (f NULL) the indirect-B tile
   fi with B rows at off[k]: packed rows k*nr, or with stem_rows the 7x7 stem's (12
   planes 880 floats apart, column shifts 0..3, row shifts of 115). */
static void run(const char* name, tile_fn f, tile_ib_fn fi, int mr, int nr, int K, int stem_rows) {
    float* A = aligned_alloc(64, sizeof(float) * K * mr);
    float* B = aligned_alloc(64, sizeof(float) * 64 * 1024);
    float* C = aligned_alloc(64, sizeof(float) * 64 * 64);
    int* off = malloc(sizeof(int) * K);
    for (int i = 0; i < K * mr; i++) A[i] = 1e-3f * (float)(i % 7);
    for (int i = 0; i < 64 * 1024; i++) B[i] = 1e-3f * (float)(i % 5);
    for (int k = 0; k < K; k++)
        off[k] = stem_rows ? (k % 12) * 880 + (k / 12) % 4 + (k / 48) * 115 : k * nr;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        long n = 0;
        const double t0 = now();
        while (now() - t0 < 0.3) {
            for (int r = 0; r < 1000; r++) {
                if (f) f(mr, nr, K, A, B, nr, C, nr, 0);
                else fi(mr, nr, K, A, B, off, C, nr, 0);
            }
            n += 1000;
        }
        const double gf = 2.0 * mr * nr * K * n / (now() - t0) / 1e9;
        if (gf > best) best = gf;
    }
    printf("%-26s %6.1f GFLOP/s (best of 5, K = %d%s)\n", name, best, K,
           f ? "" : stem_rows ? ", the stem's rows" : ", packed rows");
    free(A); free(B); free(C); free(off);
}

int main(void) {
    if (__builtin_cpu_supports("avx512f")) {
        run("sgemm_8x48_pa__avx512f", sgemm_8x48_pa__avx512f, 0, 8, 48, 128, 0);
        run("sgemm_8x48_pa_ib__avx512f", 0, sgemm_8x48_pa_ib__avx512f, 8, 48, 128, 0);
        run("sgemm_8x48_pa_ib__avx512f", 0, sgemm_8x48_pa_ib__avx512f, 8, 48, 147, 1);
    } else {
        printf("(no AVX-512F on this CPU: its tiles left out)\n");
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        run("sgemm_6x16_pa__avx2_fma", sgemm_6x16_pa__avx2_fma, 0, 6, 16, 128, 0);
        run("sgemm_6x16_pa_ib__avx2_fma", 0, sgemm_6x16_pa_ib__avx2_fma, 6, 16, 128, 0);
        run("sgemm_6x16_pa_ib__avx2_fma", 0, sgemm_6x16_pa_ib__avx2_fma, 6, 16, 147, 1);
    } else {
        printf("(no AVX2 + FMA on this CPU: its tile left out)\n");
    }
    return 0;
}
