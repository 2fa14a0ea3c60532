/* The cache-blocked GEMM around a register tile, one definition for every ISA.
 *
 * Included by each sgemm_<isa>.c after it defines its tile function; expands to
 *     void NAME(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
 *               float* C, int ldc, int acc)      C[M][N] = A[M][K] @ B[K][N] (+ C)
 * Loop order: NR-column panel of B, K slice of KC rows (the kc x NR slice of B stays
 * in L1 while every MR-row block of A streams past it from L2), MR-row blocks of A
 * (MR row streams the hardware prefetcher follows; software prefetching them measured
 * slower: 13% of an AVX2 Winograd layer's profile went to the prefetch loop). B is read in place: callers hand it over
 * already in panel order (Winograd's V[a] is [K][tiles], rows contiguous).
 */
#define UK_SGEMM_DRIVER(NAME, TILE, MR, NR, KC)                                             \
UK_API void NAME(int M, int N, int K, const float* A, int lda, const float* B, int ldb,    \
                 float* C, int ldc, int acc) {                                              \
    for (int j = 0; j < N; j += NR) {                                                       \
        const int nr = N - j < NR ? N - j : NR;                                             \
        int k0 = 0;                                                                         \
        do {                                                                                \
            const int kc = K - k0 < KC ? K - k0 : KC;                                       \
            for (int i = 0; i < M; i += MR) {                                               \
                const int mr = M - i < MR ? M - i : MR;                                     \
                TILE(mr, nr, kc, A + (ptrdiff_t)i * lda + k0, lda, B + (ptrdiff_t)k0 * ldb + j, \
                     ldb, C + (ptrdiff_t)i * ldc + j, ldc, acc || k0 > 0);                  \
            }                                                                               \
            k0 += KC;                                                                       \
        } while (k0 < K);                                                                   \
    }                                                                                       \
}
