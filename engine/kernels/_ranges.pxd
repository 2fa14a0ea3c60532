# cython: language_level=3
"""Index arithmetic shared by the kernels: which output columns keep a tap inside the
input row. Division of negative numbers is where this goes wrong (C truncates toward
zero, the kernels are built with cdivision), so it is written once, here."""


cdef inline Py_ssize_t _floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """floor(a / b) for b > 0 (C division truncates toward zero)."""
    cdef Py_ssize_t q = a // b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0."""
    return -_floor_div(-a, b)


cdef inline void _tap_range(Py_ssize_t off, Py_ssize_t s, Py_ssize_t W, Py_ssize_t OW,
                            Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the output columns ow with 0 <= ow*s + off < W, clipped to [0, OW)
    (an empty range has lo == hi)."""
    cdef Py_ssize_t a = _ceil_div(-off, s)
    cdef Py_ssize_t b = _floor_div(W - 1 - off, s) + 1
    if a < 0:
        a = 0
    if a > OW:
        a = OW
    if b > OW:
        b = OW
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b
