# Work shares with stealing (_shares.h): nt contiguous shares of n items that the
# threads work through a chunk at a time and steal halves of once their own is done.
from libc.stdint cimport int64_t

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from "_shares.h" nogil:
    ctypedef struct ws_share_t:
        pass
    bint ws_fits(int64_t n)
    void ws_init(ws_share_t* sh, int nt, int64_t n)
    bint ws_next(ws_share_t* sh, int nt, int tid, int64_t want, int64_t* lo, int64_t* hi)
    int64_t ws_share_end(ws_share_t* sh, int tid)


cdef inline ws_share_t* shares_new(int nt, Py_ssize_t n) except NULL:
    """nt shares of items 0 .. n-1 (a static split), each on its own cache line; the
    caller frees them (libc free)."""
    cdef ws_share_t* sh = NULL
    if not ws_fits(n):
        raise ValueError(f"{n} work items, more than a work share holds (2**32)")
    if posix_memalign(<void**>&sh, 64, max(nt, 1) * sizeof(ws_share_t)) != 0:
        raise MemoryError("could not allocate the work shares")
    ws_init(sh, nt, n)
    return sh
