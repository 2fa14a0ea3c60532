"""Real-use robustness: bounded thread counts, calling-thread independence, prepared
weights that follow the weights, scratch sized by the data, atomic weight loads,
bounded caches. (Plan files: test_plan.py and test_cli.py; processes: test_fork.py;
README examples: test_readme.py.)"""
import copy
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import engine
import engine.functional as F
from engine import registry as algos
from engine import threads as T

import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ thread counts
@pytest.fixture
def restore_threads():
    before = engine.get_num_threads()
    yield
    engine.set_num_threads(before)


def test_set_num_threads_huge_is_clamped_with_warning(restore_threads):
    with pytest.warns(RuntimeWarning, match="at most"):
        engine.set_num_threads(2**40)
    assert engine.get_num_threads() == T.max_threads()
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((2, 2, 3, 3), np.float32)
    np.testing.assert_array_equal(F.conv2d(x, w, algorithm="direct"), np.full((1, 2, 3, 3), 18, np.float32))


def test_max_threads_is_relative_to_cpus():
    assert T.max_threads() == T.THREADS_PER_CPU * len(os.sched_getaffinity(0))


def test_omp_num_threads_huge_runs_with_warning():
    code = ("import warnings, numpy as np, engine, engine.functional as F\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    n = engine.get_num_threads()\n"
            "x = np.ones((1, 4, 9, 9), np.float32); k = np.ones((4, 4, 3, 3), np.float32)\n"
            "for a in engine.algorithms(): F.conv2d(x, k, padding=1, algorithm=a)\n"
            "print(n, any('at most' in str(m.message) for m in w))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "100000", "CONVTUNE_PLAN": "none"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(T.max_threads()), "True"]


def test_cli_threads_beyond_cap_is_a_usage_error(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"name": "c", "input": [4, 8, 8], "layers": [{"type": "conv", '
                   '"out_channels": 4, "kernel_size": 3}]}')
    proc = subprocess.run([sys.executable, "-m", "tuner", "tune", str(cfg), "--plan",
                           str(tmp_path / "p.json"), "--threads", "100000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--threads" in proc.stderr and "at most" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------- calling thread
def _in_thread(fn, *args):
    box = []
    t = threading.Thread(target=lambda: box.append(fn(*args)))
    t.start()
    t.join(60)
    return box[0]


@pytest.mark.parametrize("algorithm", engine.algorithms())
def test_result_does_not_depend_on_calling_thread(algorithm, restore_threads):
    """The issue's reproduction: the main thread vs a threading.Thread, at 1 and 2
    threads. Bitwise for algorithms without BLAS; within tolerance with it (a BLAS may
    round differently per thread; engine/kernels/im2col.pyx, "Calling thread"), and
    bitwise on repeated calls from one thread."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    tol = algos.TOLERANCE[(algorithm, "float32")]
    for nt in (1, 2):
        engine.set_num_threads(nt)
        main = F.conv2d(x, w, b, padding=1, algorithm=algorithm)
        np.testing.assert_array_equal(main, F.conv2d(x, w, b, padding=1, algorithm=algorithm))
        other = _in_thread(lambda: F.conv2d(x, w, b, padding=1, algorithm=algorithm))
        p = engine.shapes.conv_params(x.shape, w.shape, 1, 1, 1, 1, "zeros", "float32")
        if algos.REGISTRY[algorithm].needs_blas(p):
            ref.assert_close(other, main.astype(np.float64), tol)
        else:
            np.testing.assert_array_equal(other, main)
        ref.assert_close(main, ref.conv2d(x, w, b, padding=1), tol)


def test_pooling_does_not_depend_on_calling_thread():
    x = np.random.default_rng(8).standard_normal((2, 8, 17, 17)).astype(np.float32)
    for fn in (lambda: F.max_pool2d(x, 3, 2, 1), lambda: F.avg_pool2d(x, 3, 2, 1)):
        np.testing.assert_array_equal(_in_thread(fn), fn())


# ------------------------------------------- prepared weights follow the weights

WINO = [a for a in engine.algorithms() if a.startswith("winograd")][:1]


def _bias_only(layer, x):
    out = np.broadcast_to(layer.bias[None, :, None, None], layer(x).shape)
    return np.asarray(out)


@pytest.mark.parametrize("algorithm", WINO + ["im2col", "direct"])
@pytest.mark.parametrize("how", ["pickle", "deepcopy", "same"])
def test_prepared_weights_never_disagree_with_the_weights(algorithm, how):
    """The issue's reproduction: after pickle, zeroing the weights in place left the
    cached Winograd weights (and so the output) unchanged."""
    layer = engine.Conv2d(16, 16, 3, padding=1, seed=5, algorithm=algorithm)
    x = np.random.default_rng(5).standard_normal((1, 16, 12, 12)).astype(np.float32)
    before = layer(x)                                   # fills the prepared-weight cache
    other = {"pickle": lambda m: pickle.loads(pickle.dumps(m)), "deepcopy": copy.deepcopy,
             "same": lambda m: m}[how](layer)
    np.testing.assert_array_equal(other(x), before)
    for arr in (other.weight, other.bias):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[...] = 0                                # in place: refused, not ignored
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    other.weight = np.zeros_like(other.weight)         # assignment: the cache follows
    np.testing.assert_array_equal(other(x), _bias_only(other, x))
    other.load_state_dict({"weight": layer.weight * 2, "bias": layer.bias})
    ref.assert_close(other(x), ref.conv2d(x, layer.weight * 2, layer.bias, padding=1),
                     algos.TOLERANCE[(algorithm, "float32")])
    if how != "same":
        np.testing.assert_array_equal(layer(x), before)  # the original is untouched


def test_pickled_model_is_read_only_and_small():
    m = engine.models.resnet18() if hasattr(engine, "models") else None
    if m is None:
        pytest.skip("no model zoo")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = m(x)
    m2 = pickle.loads(pickle.dumps(m))
    assert all(not v.flags.writeable for v in m2.state_dict().values()
               if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim == 4)
    np.testing.assert_array_equal(m2(x), y)


# ------------------------------------------------- scratch sized by what is read
def _peak_rss_growth_mb(code):
    """Peak RSS growth (MB) of ``code`` in a fresh process, after numpy/engine load."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status (Linux)")
    # VmHWM, not ru_maxrss: the latter carries the parent's peak across fork + exec
    prog = ("import numpy as np, engine, engine.functional as F\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM'):\n"
            "            return int(line.split()[1])\n"
            "F.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2)\n"
            "before = hwm()\n"
            f"{code}\n"
            "print((hwm() - before) / 1024)\n")
    proc = subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CONVTUNE_PLAN": "none"})
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


def test_max_pool_huge_window_scratch_follows_the_data():
    """The issue's reproduction: a (1, 2**28) window padded by 2**27 on a 5x5 plane
    (a 5x6 output) touched 2.1 GB."""
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    out, idx = F.max_pool2d(x, (1, 2**28), 1, (0, 2**27), return_indices=True)
    assert out.shape == (1, 1, 5, 6)
    np.testing.assert_array_equal(out[0, 0], np.repeat(x[0, 0, :, 4:5], 6, axis=1))
    np.testing.assert_array_equal(idx[0, 0], np.repeat(np.arange(4, 25, 5)[:, None], 6, axis=1))
    assert _peak_rss_growth_mb(
        "F.max_pool2d(np.zeros((1,1,5,5), np.float32), (1, 2**28), 1, (0, 2**27))") < 64


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((1, 9), 1, (0, 4), (1, 2)), ((3, 7), (2, 1), (1, 3), (2, 2)), ((5, 5), 2, 2, 1),
    ((1, 2**10), (1, 3), (0, 2**9), 1), ((2**10, 1), 1, (2**9, 0), 1), ((1, 9), 4, (0, 4), 1)])
def test_max_pool_trimmed_window_matches_torch_semantics(kernel, stride, padding, dilation):
    x = np.random.default_rng(9).standard_normal((2, 3, 11, 13)).astype(np.float32)
    x[0, 0, 3, 4] = np.nan
    out, idx = F.max_pool2d(x, kernel, stride, padding, dilation, return_indices=True)
    want, want_idx = ref.max_pool2d(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(out, want.astype(np.float32))
    np.testing.assert_array_equal(idx, want_idx)


def test_depthwise_huge_dilation_and_padding_scratch_follows_the_data():
    """The issue's reproduction: dilation = padding = 2**14 on 1x2x4x4 took 256 MB."""
    x = np.random.default_rng(3).standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((2, 1, 3, 3)).astype(np.float32)
    d = 2**14
    out = F.conv2d(x, w, None, 1, d, d, 2, algorithm="direct")
    np.testing.assert_array_equal(out, w[None, :, 0, 1:2, 1:2] * x)     # only the centre tap is inside
    small = F.conv2d(x, w, None, 1, 3, 3, 2, algorithm="direct")           # the padded-band path
    ref.assert_close(small, ref.conv2d(x, w, None, 1, 3, 3, 2), algos.TOLERANCE[("direct", "float32")])
    assert _peak_rss_growth_mb(
        "x = np.ones((1, 2, 4, 4), np.float32); w = np.ones((2, 1, 3, 3), np.float32)\n"
        "F.conv2d(x, w, None, 1, 2**14, 2**14, 2, algorithm='direct')") < 64
    big = 2**30      # blk_elems' products would overflow; taps beyond the data are skipped
    x1 = np.ones((1, 1, 3, 3), np.float32)
    out = F.conv2d(x1, np.ones((1, 1, 3, 3), np.float32), None, 1, (big, big), (big, big), 1,
                   algorithm="direct")
    np.testing.assert_array_equal(out, np.ones((1, 1, 3, 3), np.float32))


# ------------------------------------------------------------ atomic weight loads
def _net():
    return engine.Sequential(engine.Conv2d(3, 4, 3, seed=1), engine.BatchNorm2d(4),
                             engine.Conv2d(4, 2, 1, seed=2))


def test_load_state_dict_is_all_or_nothing_and_names_the_key():
    """The issue's reproduction: a value that failed to convert left the earlier keys
    replaced, and the error did not name the key."""
    net = _net()
    before = {k: np.array(v) for k, v in net.state_dict().items()}
    sd = {k: np.zeros_like(v) for k, v in before.items()}
    sd["2.bias"] = np.array(["a", "b"])                       # cannot become float32
    with pytest.raises(ValueError, match=r"2\.bias.*nothing was loaded"):
        net.load_state_dict(sd)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_load_npz_checks_headers_before_decompressing(tmp_path):
    net = _net()
    good = tmp_path / "good.npz"
    net.save_npz(good)
    _net().load_npz(good)
    bomb = tmp_path / "bomb.npz"       # 256 MiB of zeros compress to about 256 KB
    sd = {k: np.asarray(v) for k, v in net.state_dict().items()}
    sd["0.weight"] = np.zeros((2**26,), np.float32)
    np.savez_compressed(bomb, **sd)
    assert bomb.stat().st_size < 1 << 20
    for method in ("load_npz", "load"):
        growth = _peak_rss_growth_mb(
            "import sys; sys.path.insert(0, 'tests'); from test_robustness import _net\n"
            f"try:\n    _net().{method}({str(bomb)!r})\n    raise SystemExit('loaded')\n"
            "except ValueError as e:\n"
            "    assert '0.weight: expected shape (4, 3, 3, 3), got (67108864,)' in str(e), e")
        assert growth < 100, method
    extra = tmp_path / "extra.npz"
    np.savez(extra, **{**{k: np.asarray(v) for k, v in net.state_dict().items()}, "spare": np.ones(3)})
    with pytest.raises(ValueError, match="unexpected keys: spare"):
        _net().load_npz(extra)
    _net().load_npz(extra, strict=False)
    lying = tmp_path / "lying.npz"     # a header that disagrees with the member's size
    import zipfile
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(lying, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-4] if info.filename == "0.weight.npy" else data)
    with pytest.raises(ValueError, match="0.weight: the header says"):
        _net().load_npz(lying)


# ----------------------------------------------------------------- bounded caches
def test_per_shape_caches_are_bounded():
    """20,000 distinct input sizes grew the plan's and a layer's caches by 21 MB."""
    from engine import plan
    from engine.nn import layers
    layer = engine.Conv2d(2, 2, 3, padding=1, seed=0)
    n = plan.LOOKUP_CACHE_SIZE + 500
    for i in range(n):
        layer._resolve((1, 2, 3 + i % 97, 3 + i // 97), 1)
    assert layer._resolved.cache_info().currsize == layers.RESOLVED_CACHE_SIZE
    assert len(plan._lookup_cache) <= plan.LOOKUP_CACHE_SIZE
    x = np.ones((1, 2, 5, 5), np.float32)
    out = layer(x)                                     # still right, and cached again
    np.testing.assert_array_equal(layer(x), out)
    assert layer._resolved.cache_info().currsize == layers.RESOLVED_CACHE_SIZE
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(other(x), out)
        assert other._resolved.cache_info().currsize == 1


def test_lru_drops_the_least_recently_used():
    from engine._lru import LRU
    c = LRU(2)
    c["a"], c["b"] = 1, 2
    c.move_to_end("a")                  # a hit, as plan.lookup marks it
    c["c"] = 3
    assert list(c) == ["a", "c"] and c.get("b") is None
    assert pickle.loads(pickle.dumps(c)) == {} and copy.deepcopy(c).maxsize == 2
