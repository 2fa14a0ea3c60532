/* Which micro-kernels this CPU can run, and each ISA's function table (ukernels.h).
 * Compiled with the baseline flags: it runs before anything is known of the CPU. */
#include "ukernels.h"

UK_API int uk_cpu_isa(void) {
#if UK_HAVE_X86
    /* __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 state. */
    __builtin_cpu_init();
    /* AVX-512 also needs AVX2 + FMA: its objects are compiled with them, and Winograd
       can run the AVX2 tile transforms beside the AVX-512 GEMM (winograd.pyx) */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")
        && __builtin_cpu_supports("fma")) return UK_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return UK_ISA_AVX2;
#endif
    return UK_ISA_BASELINE;
}

UK_API int uk_cpu_vendor(void) {
#if UK_HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_is("amd")) return UK_VENDOR_AMD;
    if (__builtin_cpu_is("intel")) return UK_VENDOR_INTEL;
#endif
    return UK_VENDOR_OTHER;
}

#define UK_TABLE(ISA, SUFFIX, MR, NR, VEC)                                                  \
    {ISA, MR, NR, VEC, "sgemm_" #MR "x" #NR "__" #SUFFIX, sgemm_##MR##x##NR##__##SUFFIX,         \
     sgemm__##SUFFIX, sgemm_##MR##x##NR##_pa__##SUFFIX, sgemm_##MR##x##NR##_pa_ib__##SUFFIX, \
     "winograd_f{m}x3_{input,output}__" #SUFFIX,                                            \
     {winograd_f2x3_input__##SUFFIX, winograd_f4x3_input__##SUFFIX, winograd_f6x3_input__##SUFFIX}, \
     {winograd_f2x3_output__##SUFFIX, winograd_f4x3_output__##SUFFIX, winograd_f6x3_output__##SUFFIX}, \
     "igemm_" #MR "x" #NR "__" #SUFFIX, UK_KC_##SUFFIX, igemm_pack__##SUFFIX, igemm__##SUFFIX, \
     igemm_padded__##SUFFIX}

static const uk_kernels_t tables[UK_ISA_COUNT] = {
    UK_TABLE("baseline", scalar, 4, 16, 16),      /* (columns past nr computed as zeros) */
#if UK_HAVE_X86
    UK_TABLE("avx2", avx2_fma, 6, 16, 8),
    UK_TABLE("avx512", avx512f, 8, 48, 16),
#endif
};

UK_API const uk_kernels_t* uk_kernels(int isa) {
    if (isa < 0 || isa >= UK_ISA_COUNT || tables[isa].isa == 0) return 0;
    return &tables[isa];
}
