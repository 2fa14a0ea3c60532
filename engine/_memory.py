"""Arrays the engine allocates for kernels to write: outputs and scratch of at least
ALIGN_MIN_BYTES start on a 64-byte cache line.

The kernels store a register tile's row as one 64-byte run (16 floats); in a block
from glibc's malloc, 16 bytes past a line for large sizes, each such run straddles two
lines, so every store touches two (the 7x7 stem at two threads on a Zen 3: 0.93-0.97
of the time with aligned outputs, in-process A/B; other layers level). Small arrays
are left to np.empty: aligning costs a few microseconds a call (the ctypes address,
the slicing), which the seed CNN's 20-50 us layers would feel and their few stores
would not repay.

Those large blocks come from a pool (_BlockPool) that hands a block out again once no
array uses it: glibc returns big freed blocks to the system, so a fresh output of many
MiB is page-faulted and zeroed by the kernel on every call. With the engine alone the
heap mostly keeps them, but any other allocation pattern in the process undoes that:
with PyTorch calls interleaved, the 7x7 stem at one thread, batch 1 (3.2 MB output)
faulted 752 pages a call and took 6.7 ms instead of 2.65 on a Zen 3."""
import sys
import threading

import numpy as np

ALIGNMENT = 64
ALIGN_MIN_BYTES = 64 * 1024
# Bytes of blocks the pool keeps (in use or free) at most, and blocks of one size at
# most: enough for a batch-8 VGG-16's largest activations twice over; beyond them
# blocks are plain allocations that go back to malloc when their arrays die.
POOL_MAX_BYTES = 512 * 1024 * 1024
POOL_PER_SIZE = 4


def _refs(blocks, i):
    return sys.getrefcount(blocks[i])


# What _refs reads for a block only the pool's list holds (measured, not assumed: the
# interpreter's own temporaries differ between Python versions).
_FREE_REFS = _refs([np.empty(1, np.uint8)], 0)


class _BlockPool:
    """Raw uint8 blocks by size. A block is free when nothing but the pool refers to it:
    every array made from it (the aligned view, and any view of that, which numpy
    bases on the block itself) holds a reference. A lock makes the check and the
    hand-out one step, for callers on several Python threads."""

    def __init__(self, max_bytes=POOL_MAX_BYTES, per_size=POOL_PER_SIZE):
        self.max_bytes, self.per_size = max_bytes, per_size
        self.blocks = {}              # nbytes -> [blocks]
        self.nbytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes):
        with self._lock:
            blocks = self.blocks.get(nbytes)
            if blocks is not None:
                for i in range(len(blocks)):
                    if _refs(blocks, i) == _FREE_REFS:
                        return blocks[i]
            raw = np.empty(nbytes, np.uint8)
            if (blocks is None or len(blocks) < self.per_size) and self.nbytes + nbytes <= self.max_bytes:
                self.blocks.setdefault(nbytes, []).append(raw)
                self.nbytes += nbytes
            return raw

    def clear(self):
        """Forget every block (those still in use live on with their arrays)."""
        with self._lock:
            self.blocks = {}
            self.nbytes = 0


_pool = _BlockPool()


def _shape_and_bytes(shape, dtype):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = dtype.itemsize
    for s in shape:
        n *= int(s)
    return shape, n


def empty_aligned(shape, dtype):
    """np.empty(shape, dtype), ALIGNMENT-byte aligned when it holds at least
    ALIGN_MIN_BYTES (then a view of a slightly larger uint8 block from the pool, kept
    alive by it; its contents are whatever the block last held, as np.empty's are)."""
    dtype = np.dtype(dtype)
    shape, nbytes = _shape_and_bytes(shape, dtype)
    if nbytes < ALIGN_MIN_BYTES:
        return np.empty(shape, dtype)
    raw = _pool.take(nbytes + ALIGNMENT)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def allocator_for(shape, dtype):
    """The allocation empty_aligned would make for arrays of this shape and dtype,
    decided once (np.empty below ALIGN_MIN_BYTES, else empty_aligned): for a caller that
    allocates the same shape on every call (an operator's output), where the size check
    itself would cost a microsecond a call."""
    _, nbytes = _shape_and_bytes(shape, np.dtype(dtype))
    return empty_aligned if nbytes >= ALIGN_MIN_BYTES else np.empty
