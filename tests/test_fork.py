"""Processes: a child of fork() after multi-threaded kernels works (serially), and
spawn/forkserver children work with all their threads.

Each scenario runs in a fresh interpreter under a timeout, so a deadlock fails the test
instead of hanging the suite.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = """
import multiprocessing, os, sys
import numpy as np
import engine, engine.functional as F

def conv_all(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    outs = [F.conv2d(x, w, padding=1, algorithm=a)
            for a in ("direct", "im2col", "winograd_f4x3")]
    outs.append(F.max_pool2d(x, 3, 2, 1))
    return [float(o.sum()) for o in outs]

def child_job(seed):
    return conv_all(seed), engine.get_num_threads()
"""


def run(body, tmp_path, timeout=20):
    # a file, not -c: spawn and forkserver children import child_job from __main__
    script = tmp_path / "scenario.py"
    script.write_text(PRELUDE + "\nif __name__ == '__main__':\n"
                      + textwrap.indent(textwrap.dedent(body), "    "))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}   # (Dask sets it)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**env, "CONVTUNE_PLAN": "none"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")


@needs_fork
def test_os_fork_after_threaded_conv_runs_serially_in_child(tmp_path):
    out = run("""
        engine.set_num_threads(2)
        parent = conv_all()
        pid = os.fork()
        if pid == 0:
            ok = conv_all() == parent and engine.get_num_threads() == 1
            engine.set_num_threads(2)              # cannot re-enable the broken pool
            ok = ok and conv_all() == parent and engine.get_num_threads() == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent threads", engine.get_num_threads())
    """, tmp_path)
    assert "child 0" in out and "parent threads 2" in out


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool_after_threaded_conv(method, tmp_path):
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"start method {method} unavailable")
    out = run(f"""
        engine.set_num_threads(2)
        parent = conv_all()
        with multiprocessing.get_context({method!r}).Pool(2) as pool:
            results = pool.map(child_job, [0, 0])
        assert all(r == parent for r, _ in results), results
        print("threads", sorted(t for _, t in results))
    """, tmp_path)
    # fork children run serially; spawn/forkserver children are fresh processes
    assert ("threads [1, 1]" if method == "fork" else "threads [") in out


@needs_fork
def test_fork_before_any_kernel_keeps_threads(tmp_path):
    out = run("""
        pid = os.fork()
        if pid == 0:
            # no team existed in the parent: the child's own pool is sound
            full = engine.get_num_threads() == len(os.sched_getaffinity(0))
            os._exit(0 if full and conv_all() else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """, tmp_path)
    assert "child 0" in out
