# cython: language_level=3
"""Row moves shared by the kernels that re-lay planes out (polyphase split and scatter,
igemm's padded planes): one place for the strided copy and its fast cases."""
from cython cimport floating
from libc.string cimport memcpy

cdef extern from "_short_rows.h" nogil:
    void short_copy_f32(float* d, const float* s, Py_ssize_t n)
    void short_copy_f64(double* d, const double* s, Py_ssize_t n)


cdef inline void _copy_strided(floating* dst, Py_ssize_t dst_step, const floating* src,
                               Py_ssize_t src_step, Py_ssize_t n) noexcept nogil:
    """dst[i*dst_step] = src[i*src_step] for i < n. Both steps 1 is one memcpy, or for
    short rows (up to 64 elements: a small plane's) whole vectors with a masked tail
    (_short_rows.h), cheaper than the call; a gather of step 2 into a contiguous row is
    written with the constant, which the compiler vectorises (even-lane shuffles) where
    it cannot for a variable step."""
    cdef Py_ssize_t i
    if n <= 0:
        return
    if dst_step == 1 and src_step == 1:
        if n <= 64:
            if floating is float:
                short_copy_f32(dst, src, n)
            else:
                short_copy_f64(dst, src, n)
        else:
            memcpy(dst, src, <size_t>n * sizeof(floating))
    elif dst_step == 1 and src_step == 2:
        for i in range(n):
            dst[i] = src[2 * i]
    else:
        for i in range(n):
            dst[i * dst_step] = src[i * src_step]
