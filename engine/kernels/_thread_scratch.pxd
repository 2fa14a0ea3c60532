# Per-thread scratch blocks that outlive the call (_thread_scratch.h).
cdef extern from "_thread_scratch.h" nogil:
    void* ts_get(int slot, size_t nbytes)
