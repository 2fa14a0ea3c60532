"""Arrays the engine allocates for kernels to write: outputs and scratch start on a
64-byte cache line.

The kernels store a register tile's row as one 64-byte run (16 floats); in a block
from glibc's malloc, 16 bytes past a line for large sizes, each such run straddles two
lines, so every store touches two (the 7x7 stem at two threads on a Zen 3: 0.93-0.97
of the time with aligned outputs, in-process A/B; other layers level)."""
import numpy as np

ALIGNMENT = 64


def empty_aligned(shape, dtype):
    """np.empty(shape, dtype) whose first element is ALIGNMENT-byte aligned (a view of
    a slightly larger uint8 block, which it keeps alive)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)
