"""Thread counts: one number governs the OpenMP kernels and BLAS.

The kernels run their own OpenMP team of ``get_num_threads()`` threads. Kernels that
multiply matrices call BLAS from inside those threads, one GEMM per thread, so while
they run the BLAS pool is held at one thread (``blas_single_threaded``); otherwise
each of our threads would wake a full BLAS pool and the cores would be oversubscribed.

Bounds: a count above ``max_threads()`` (``THREADS_PER_CPU`` x the CPUs this process
may run on) is clamped to it with a warning, wherever it comes from
(``set_num_threads``, OMP_NUM_THREADS): thousands of OpenMP threads only oversubscribe
the cores, and a team the system cannot create makes libgomp abort the process.

Fork: libgomp's thread pool does not survive ``fork()`` (the child inherits the pool's
bookkeeping but not its threads, so its first parallel region waits forever). After a
fork from a process that has run kernels, the child runs every kernel serially (one thread, which never touches the
pool), as PyTorch does; ``get_num_threads()`` reports 1 there and ``set_num_threads``
cannot raise it. Processes started with "spawn" or "forkserver" are fresh interpreters
and use every core. See README "Threads".
"""
import numbers
import os
import threading
import warnings

from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_num_threads = None
_controller = None
_blas_users = 0
_blas_restore = None
_forked_child = False       # set in a child of fork() after a team ran: kernels run serially
_team_used = False          # a kernel may have started an OpenMP team in this process

# A team may hold at most this many threads per CPU (see max_threads).
THREADS_PER_CPU = 4


def usable_cores():
    """The CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads():
    """The largest thread count accepted: ``THREADS_PER_CPU`` x the CPUs this process
    may run on (larger counts are clamped to it, with a warning)."""
    return THREADS_PER_CPU * usable_cores()


def _bounded(n, source):
    cap = max_threads()
    if n > cap:
        warnings.warn(f"{source} asks for {n} threads; convtune uses at most {cap} "
                      f"({THREADS_PER_CPU} per CPU, {usable_cores()} CPU(s) here)", RuntimeWarning,
                      stacklevel=3)
        return cap
    return n


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n > 0:
                return _bounded(n, f"OMP_NUM_THREADS={env}")
        except ValueError:
            pass
    return usable_cores()


def get_num_threads():
    """Threads the kernels use: ``set_num_threads``'s value, else OMP_NUM_THREADS, else
    the cores this process may run on; at most ``max_threads()``; 1 in a forked child."""
    global _num_threads, _team_used
    if _forked_child:
        return 1
    if _num_threads is None:
        _num_threads = _default_threads()
    _team_used = True       # kernels ask here before they start a team
    return _num_threads


def set_num_threads(n):
    """Set the thread count for every kernel (OpenMP team and BLAS alike): the kernels'
    OpenMP teams use ``n`` threads, and the process's BLAS pool is limited to ``n``
    (what layers such as Linear use; inside the convolution kernels BLAS runs one
    single-threaded GEMM per OpenMP thread). ``n`` above ``max_threads()`` is clamped
    to it with a RuntimeWarning; in a forked child the kernels stay serial."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads expects a positive int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads expects a positive int, got {n}")
    _num_threads = _bounded(int(n), f"set_num_threads({n})")
    if _forked_child:
        return
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


def _after_fork_in_child():
    """os.register_at_fork hook: serial kernels, and fresh locks (another thread of the
    parent may have held one at the fork; it does not exist in the child)."""
    global _forked_child, _lock, _blas_users, _blas_restore
    _forked_child = _forked_child or _team_used
    _lock = threading.Lock()
    _blas_users, _blas_restore = 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def blas_info():
    """The BLAS libraries loaded in this process, as threadpoolctl reports them."""
    return [i for i in _blas_controller().info() if i.get("user_api") == "blas"]
