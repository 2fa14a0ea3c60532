"""What this build of the kernels was compiled with, read from the compiler itself."""

cdef extern from *:
    """
    #ifndef CONVTUNE_CFLAGS
    #define CONVTUNE_CFLAGS "unknown"
    #endif
    #ifdef _OPENMP
    static const int convtune_openmp = _OPENMP;
    #else
    static const int convtune_openmp = 0;
    #endif
    static const char* convtune_isa_list[] = {
    #ifdef __SSE4_2__
        "sse4.2",
    #endif
    #ifdef __AVX__
        "avx",
    #endif
    #ifdef __AVX2__
        "avx2",
    #endif
    #ifdef __FMA__
        "fma",
    #endif
    #ifdef __AVX512F__
        "avx512f",
    #endif
    #ifdef __AVX512BW__
        "avx512bw",
    #endif
    #ifdef __AVX512VL__
        "avx512vl",
    #endif
    #ifdef __AVX512DQ__
        "avx512dq",
    #endif
    #ifdef __ARM_NEON
        "neon",
    #endif
        0
    };
    #if defined(__clang__)
    #define CONVTUNE_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define CONVTUNE_COMPILER "gcc " __VERSION__
    #else
    #define CONVTUNE_COMPILER "unknown"
    #endif
    """
    const char* CONVTUNE_CFLAGS
    const char* CONVTUNE_COMPILER
    const int convtune_openmp
    const char** convtune_isa_list


def info():
    """Dict: openmp (the _OPENMP date, 0 when serial), compiler, cflags, isa (list)."""
    isa = []
    cdef int i = 0
    while convtune_isa_list[i] != NULL:
        isa.append(convtune_isa_list[i].decode())
        i += 1
    return {
        "openmp": bool(convtune_openmp),
        "openmp_version": int(convtune_openmp),
        "compiler": CONVTUNE_COMPILER.decode(),
        "cflags": CONVTUNE_CFLAGS.decode(),
        "isa": isa,
    }

