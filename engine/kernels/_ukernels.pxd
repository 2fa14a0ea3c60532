# cython: language_level=3
"""The micro-kernel table (ukernels/ukernels.h) as Cython sees it: cimported by every
kernel module that runs micro-kernels (setup.py links the per-ISA objects into it)."""

cdef extern from "ukernels/ukernels.h" nogil:
    enum:
        UK_ISA_BASELINE
        UK_ISA_AVX2
        UK_ISA_AVX512
        UK_ISA_COUNT
        UK_WG_LANES
        IG_WIDE_MAX
        IG_PADDED_RUN
        UK_KC_PADDED
        UK_VENDOR_OTHER
        UK_VENDOR_AMD
        UK_VENDOR_INTEL
    ctypedef void (*uk_sgemm_tile_fn)(int mr, int nr, int k, const float* A, int lda,
                                      const float* B, int ldb, float* C, int ldc, int acc) noexcept nogil
    ctypedef void (*uk_sgemm_tile_pa_fn)(int mr, int nr, int k, const float* Ap, const float* B,
                                         int ldb, float* C, int ldc, int acc) noexcept nogil
    ctypedef void (*uk_sgemm_tile_pa_ib_fn)(int mr, int nr, int k, const float* Ap, const float* B,
                                            const int* boff, float* C, int ldc, int acc) noexcept nogil
    ctypedef void (*uk_sgemm_fn)(int M, int N, int K, const float* A, int lda,
                                 const float* B, int ldb, float* C, int ldc, int acc) noexcept nogil
    ctypedef void (*uk_wg_input_fn)(const float* x, Py_ssize_t img_stride, const int* tn,
                                    const int* iy, const int* ix, int nl, int H, int W,
                                    float* V, Py_ssize_t plane) noexcept nogil
    ctypedef void (*uk_wg_output_fn)(const float* M, Py_ssize_t plane, float bias, int relu, float* out, Py_ssize_t img_stride,
                                     const int* tn, const int* oy, const int* ox, int nl,
                                     int OH, int OW) noexcept nogil
    ctypedef struct uk_conv_t:
        const float* x
        const float* w
        const float* bias
        float* out
        int N, C, H, W, M, OH, OW
        int kh, kw, sh, sw, pt, pl, dh, dw
        int G, Cg, Mg, K, relu
    ctypedef void (*uk_igemm_pack_fn)(const uk_conv_t* cv, int g, int k0, int kc, Py_ssize_t c0,
                                      int nc, float* Bp) noexcept nogil
    ctypedef void (*uk_igemm_fn)(const uk_conv_t* cv, int g, int m0, int mb, Py_ssize_t c0,
                                 Py_ssize_t nc, float* Bb, float* Cb) noexcept nogil
    ctypedef void (*uk_igemm_padded_fn)(const uk_conv_t* cv, int g, int m0, int mb, int n, int q0,
                                        int nq, int wq, const float* xg, const int* boff,
                                        float* Cb) noexcept nogil
    ctypedef struct uk_kernels_t:
        const char* isa
        int sgemm_mr
        int sgemm_nr
        int sgemm_vec
        const char* sgemm_name
        uk_sgemm_tile_fn sgemm_tile
        uk_sgemm_fn sgemm
        uk_sgemm_tile_pa_fn sgemm_tile_pa
        uk_sgemm_tile_pa_ib_fn sgemm_tile_pa_ib
        const char* wg_name
        uk_wg_input_fn wg_input[3]
        uk_wg_output_fn wg_output[3]
        const char* igemm_name
        int igemm_kc
        uk_igemm_pack_fn igemm_pack
        uk_igemm_fn igemm
        uk_igemm_padded_fn igemm_padded

    int uk_cpu_isa() noexcept
    int uk_cpu_vendor() noexcept
    const uk_kernels_t* uk_kernels(int isa) noexcept
