"""Arrays the engine allocates for kernels to write: outputs and scratch of at least
ALIGN_MIN_BYTES start on a 64-byte cache line.

The kernels store a register tile's row as one 64-byte run (16 floats); in a block
from glibc's malloc, 16 bytes past a line for large sizes, each such run straddles two
lines, so every store touches two (the 7x7 stem at two threads on a Zen 3: 0.93-0.97
of the time with aligned outputs, in-process A/B; other layers level). Small arrays
are left to np.empty: aligning costs a few microseconds a call (the ctypes address,
the slicing), which the seed CNN's 20-50 us layers would feel and their few stores
would not repay."""
import numpy as np

ALIGNMENT = 64
ALIGN_MIN_BYTES = 64 * 1024


def _shape_and_bytes(shape, dtype):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = dtype.itemsize
    for s in shape:
        n *= int(s)
    return shape, n


def empty_aligned(shape, dtype):
    """np.empty(shape, dtype), ALIGNMENT-byte aligned when it holds at least
    ALIGN_MIN_BYTES (then a view of a slightly larger uint8 block, kept alive by it)."""
    dtype = np.dtype(dtype)
    shape, nbytes = _shape_and_bytes(shape, dtype)
    if nbytes < ALIGN_MIN_BYTES:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def allocator_for(shape, dtype):
    """The allocation empty_aligned would make for arrays of this shape and dtype,
    decided once (np.empty below ALIGN_MIN_BYTES, else empty_aligned): for a caller that
    allocates the same shape on every call (an operator's output), where the size check
    itself would cost a microsecond a call."""
    _, nbytes = _shape_and_bytes(shape, np.dtype(dtype))
    return empty_aligned if nbytes >= ALIGN_MIN_BYTES else np.empty
