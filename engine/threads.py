"""Thread counts: one number governs the OpenMP kernels and BLAS.

The kernels run their own OpenMP team of ``get_num_threads()`` threads. Kernels that
multiply matrices call BLAS from inside those threads, one GEMM per thread, so while
they run the BLAS pool is held at one thread (``blas_single_threaded``); otherwise
each of our threads would wake a full BLAS pool and the cores would be oversubscribed.
"""
import numbers
import os
import threading

from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_num_threads = None
_controller = None
_blas_users = 0
_blas_restore = None


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n > 0:
                return n
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """Threads the kernels use: ``set_num_threads``'s value, else OMP_NUM_THREADS, else
    the cores this process may run on."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads


def set_num_threads(n):
    """Set the thread count for every kernel (OpenMP team and BLAS alike): the kernels'
    OpenMP teams use ``n`` threads, and the process's BLAS pool is limited to ``n``
    (what layers such as Linear use; inside the convolution kernels BLAS runs one
    single-threaded GEMM per OpenMP thread)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads expects a positive int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads expects a positive int, got {n}")
    _num_threads = int(n)
    with _lock:
        if _blas_users == 0:     # inside a kernel call the pool is held at 1; leave it
            _blas_controller().limit(limits=_num_threads, user_api="blas")


def _blas_controller():
    global _controller
    if _controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS the kernels link to)
        _controller = ThreadpoolController()
    return _controller


class blas_single_threaded:
    """Context manager: hold the BLAS pool at one thread while kernels call it.

    Re-entrant and safe across Python threads: the limit is set by the first user
    and restored by the last, so concurrent layer calls never see it lifted early.
    """

    def __enter__(self):
        global _blas_users, _blas_restore
        with _lock:
            if _blas_users == 0:
                _blas_restore = _blas_controller().limit(limits=1, user_api="blas")
            _blas_users += 1
        return self

    def __exit__(self, *exc):
        global _blas_users, _blas_restore
        with _lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_restore is not None:
                _blas_restore.restore_original_limits()
                _blas_restore = None
        return False


def blas_info():
    """The BLAS libraries loaded in this process, as threadpoolctl reports them."""
    return [i for i in _blas_controller().info() if i.get("user_api") == "blas"]
