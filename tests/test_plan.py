"""The plan file (engine.plan): round trip, merging under concurrency, untrusted files
(corrupt, foreign hardware, incompatible engine), strict mode, lazy reloading."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import engine
from engine import dispatch, plan, registry, shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def isolated_plan(tmp_path, monkeypatch):
    """Every test starts with no use_plan(), no strict mode, CONVTUNE_PLAN in tmp_path."""
    monkeypatch.delenv("CONVTUNE_STRICT", raising=False)
    monkeypatch.setenv("CONVTUNE_PLAN", "none")
    plan.reset()
    plan._warned.clear()
    yield
    plan.reset()


def conv_p(c=8, h=10, cout=8, k=3, pad=1, groups=1, dtype="float32", n=1):
    return shapes.conv_params((n, c, h, h), (cout, c // groups, k, k), 1, pad, 1, groups, "zeros", dtype)


def entry_for(p, threads, algorithm="direct", level="measure", time_s=1e-3, tuned_at="2025-01-01T00:00:00Z"):
    return {"key": plan.params_key(p, threads), "algorithm": algorithm, "params": {}, "level": level,
            "tolerance": 1e-4, "time_s": time_s, "tuned_at": tuned_at,
            "candidates": [{"algorithm": algorithm, "params": {}, "median_s": time_s, "spread": 0.01,
                            "error": 1e-7, "status": "ok"},
                           {"algorithm": "im2col", "params": {}, "median_s": 2 * time_s, "spread": 0.02,
                            "error": 2e-7, "status": "ok"}]}


def write_doc(path, **overrides):
    p = conv_p()
    plan.write_entries(path, [entry_for(p, 2)])
    with open(path) as f:
        doc = json.load(f)
    doc.update(overrides)
    with open(path, "w") as f:
        json.dump(doc, f)
    return p


# ------------------------------------------------------------------ round trip
def test_round_trip_and_dispatch(tmp_path):
    path = tmp_path / "plan.json"
    p1, p2 = conv_p(), conv_p(c=16, cout=32)
    n = plan.write_entries(path, [entry_for(p1, 2, "direct"), entry_for(p2, 1, "im2col")])
    assert n == 2
    doc = json.loads(path.read_text())
    assert doc["format"] == "convtune-plan" and doc["format_version"] == plan.FORMAT_VERSION
    assert doc["engine_version"] == engine.__version__
    hw = doc["hardware"]
    assert {"cpu", "isa", "cores", "caches"} <= set(hw)
    assert hw["isa"] == list(engine.build_info()["isa"])
    key = doc["entries"][0]["key"]
    for field in ("op", "dtype", "N", "C", "H", "W", "out_channels", "kernel", "stride", "padding",
                  "dilation", "groups", "padding_mode", "threads"):
        assert field in key

    engine.use_plan(path)
    e = plan.lookup(p1, 2)
    assert e.algorithm == "direct" and e.level == "measure"
    assert "measure" in e.describe() and str(path) in e.describe()
    assert plan.lookup(p1, 1) is None          # thread count is part of the key
    assert plan.lookup(p2, 1).algorithm == "im2col"
    assert plan.lookup(conv_p(dtype="float64"), 2) is None
    c = dispatch.choose(p1, None, 2)
    assert (c.algorithm, c.source) == ("direct", "plan")
    assert dispatch.choose(p1, "im2col", 2).source == "forced"


def test_layer_uses_plan_and_follows_use_plan(tmp_path):
    path = tmp_path / "plan.json"
    layer = engine.Conv2d(8, 8, 3, padding=1, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 8, 10, 10)).astype(np.float32)
    engine.set_num_threads(2)
    heuristic = layer.explain(x.shape)
    assert heuristic["source"] == "heuristic"
    other = "direct" if heuristic["algorithm"] != "direct" else "im2col"
    plan.write_entries(path, [entry_for(conv_p(), 2, other)])
    engine.use_plan(path)
    got = layer.explain(x.shape)
    assert (got["algorithm"], got["source"]) == (other, "plan")
    ref = engine.functional.conv2d(x, layer.weight, layer.bias, padding=1, algorithm="direct")
    np.testing.assert_allclose(layer(x), ref, rtol=1e-5, atol=1e-5)
    engine.use_plan(None)
    assert layer.explain(x.shape)["source"] == "heuristic"


def test_rewrite_is_seen_without_use_plan(tmp_path):
    path = tmp_path / "plan.json"
    engine.use_plan(path)
    p = conv_p()
    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert plan.lookup(p, 2) is None
    plan.write_entries(path, [entry_for(p, 2, "im2col")])   # same process: invalidates
    assert plan.lookup(p, 2).algorithm == "im2col"
    # another process rewrites it: noticed once the re-check interval has passed
    doc = json.loads(path.read_text())
    doc["entries"][0]["algorithm"] = "direct"
    path.write_text(json.dumps(doc) + "\n   ")
    gen = plan.generation()
    plan._last_check -= plan.RECHECK_SECONDS + 1
    assert plan.generation() > gen
    assert plan.lookup(p, 2).algorithm == "direct"


def test_merge_rules(tmp_path):
    path = tmp_path / "plan.json"
    p = conv_p()
    plan.write_entries(path, [entry_for(p, 2, "direct", "exhaustive", tuned_at="2025-01-01T00:00:00Z")])
    plan.write_entries(path, [entry_for(p, 2, "im2col", "measure", tuned_at="2025-06-01T00:00:00Z")])
    engine.use_plan(path)
    assert plan.lookup(p, 2).algorithm == "direct"      # higher level wins over newer
    plan.write_entries(path, [entry_for(p, 2, "im2col", "exhaustive", tuned_at="2025-06-01T00:00:00Z")])
    assert plan.lookup(p, 2).algorithm == "im2col"      # same level: newer wins
    plan.write_entries(path, [entry_for(p, 2, "direct", "estimate")], prefer_new=True)
    assert plan.lookup(p, 2).algorithm == "direct"      # a forced re-tune wins
    assert len(json.loads(path.read_text())["entries"]) == 1


WRITER = r"""
import sys
from engine import plan, shapes
path, start = sys.argv[1], int(sys.argv[2])
for c in range(start, start + 12):
    p = shapes.conv_params((1, c, 9, 9), (4, c, 3, 3), 1, 1, 1, 1, "zeros", "float32")
    plan.write_entries(path, [{"key": plan.params_key(p, 1), "algorithm": "direct", "params": {},
                               "level": "measure", "tuned_at": "x", "candidates": []}])
"""


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "plan.json")
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(start)], cwd=ROOT, env=env)
             for start in (1, 101, 201)]
    assert [pr.wait(timeout=120) for pr in procs] == [0, 0, 0]
    doc = json.loads(open(path).read())
    assert sorted(e["key"]["C"] for e in doc["entries"]) == \
        list(range(1, 13)) + list(range(101, 113)) + list(range(201, 213))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# ------------------------------------------------------------------ untrusted
def _model_runs(path):
    engine.use_plan(path)
    layer = engine.Conv2d(8, 8, 3, padding=1, seed=1)
    x = np.ones((1, 8, 10, 10), np.float32)
    out = layer(x)
    assert out.shape == (1, 8, 10, 10)
    return layer.explain(x.shape)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"format": "convtune-plan", "entries": 5}',
                                     b"\xff\xfe\x00garbage"])
def test_corrupt_file_warns_once_and_is_untouched(tmp_path, content):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="corrupt") as rec:
        info = _model_runs(path)
        plan.lookup(conv_p(c=16), 2)
        plan.lookup(conv_p(c=4), 2)
    assert len([w for w in rec if "convtune plan" in str(w.message)]) == 1
    assert str(path) in str(rec[0].message)
    assert info["source"] == "heuristic"
    assert path.read_bytes() == content
    with pytest.raises(plan.PlanError, match="refusing"):
        plan.write_entries(path, [entry_for(conv_p(), 2)])
    assert path.read_bytes() == content


def test_force_moves_an_untrusted_file_aside(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"{oops")
    moved = []
    plan.write_entries(path, [entry_for(conv_p(), 2)], force=True, on_move=moved.append)
    assert len(moved) == 1 and open(moved[0], "rb").read() == b"{oops"
    assert plan.read_plan(path).trusted


def test_foreign_hardware_not_trusted(tmp_path):
    path = tmp_path / "plan.json"
    hw = {**plan.hardware_fingerprint(), "cpu": "Some Other CPU 9000"}
    p = write_doc(path, hardware=hw)
    before = path.read_bytes()
    with pytest.warns(RuntimeWarning, match="other hardware"):
        assert plan.lookup(p, 2) is None if engine.use_plan(path) is None else False
    assert plan.read_plan(path).status == "foreign"
    assert _model_runs(path)["source"] == "heuristic"
    assert path.read_bytes() == before


@pytest.mark.parametrize("override", [{"engine_version": "9.0.0"}, {"format_version": 99}])
def test_incompatible_version_not_trusted(tmp_path, override):
    path = tmp_path / "plan.json"
    p = write_doc(path, **override)
    engine.use_plan(path)
    with pytest.warns(RuntimeWarning, match="incompatible"):
        assert plan.lookup(p, 2) is None
    assert plan.read_plan(path).status == "incompatible"


def test_missing_explicit_plan_warns_but_default_is_silent(tmp_path, monkeypatch):
    engine.use_plan(tmp_path / "nope.json")
    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert plan.lookup(conv_p(), 2) is None
    plan.reset()
    monkeypatch.delenv("CONVTUNE_PLAN")
    monkeypatch.setattr(plan, "_default_path", str(tmp_path / "cache" / "plan.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan.lookup(conv_p(), 2) is None
    assert plan.active_source()[1].startswith("the default")


def test_plan_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVTUNE_PLAN", str(tmp_path / "env.json"))
    assert plan.active_path() == str(tmp_path / "env.json")
    engine.use_plan(tmp_path / "explicit.json")
    assert plan.active_path() == str(tmp_path / "explicit.json")
    engine.use_plan(None)
    assert plan.active_path() is None
    plan.reset()
    monkeypatch.setenv("CONVTUNE_PLAN", "none")
    assert plan.active_path() is None
    monkeypatch.delenv("CONVTUNE_PLAN")
    assert plan.active_path() == plan.default_path()
    assert "convtune" in plan.default_path()


# ------------------------------------------------------------------ strict mode
def test_strict_mode(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    p = conv_p()
    plan.write_entries(path, [entry_for(p, 2, "im2col")])
    engine.use_plan(path)
    engine.set_num_threads(2)
    monkeypatch.setenv("CONVTUNE_STRICT", "1")
    assert plan.lookup(p, 2).algorithm == "im2col"
    layer = engine.Conv2d(8, 8, 3, padding=1)
    layer(np.ones((1, 8, 10, 10), np.float32))                 # has an entry
    other = engine.Conv2d(8, 8, 3, padding=0)
    with pytest.raises(plan.PlanEntryMissingError, match=r"1x8x10x10 -> 8 k3x3 s1 p0") as ei:
        other(np.ones((1, 8, 10, 10), np.float32))
    assert isinstance(ei.value, RuntimeError)
    assert "CONVTUNE_STRICT" in str(ei.value)
    # a forced algorithm needs no plan
    engine.functional.conv2d(np.ones((1, 8, 10, 10), np.float32), other.weight, algorithm="direct")
    # strict with no plan at all
    engine.use_plan(None)
    with pytest.raises(RuntimeError, match="no plan is in use"):
        plan.lookup(p, 2)
    monkeypatch.setenv("CONVTUNE_STRICT", "0")
    assert plan.lookup(p, 2) is None


def test_lookup_is_cheap(tmp_path, monkeypatch):
    """After the first look-up of a shape, later ones are cache hits: the file is not
    read again and no key is built (counted, not timed: a loaded machine makes any
    wall-clock bound flaky; benchmarks/dispatch_overhead.py has the timing)."""
    path = tmp_path / "plan.json"
    p = conv_p()
    plan.write_entries(path, [entry_for(p, 2)])
    engine.use_plan(path)
    first = plan.lookup(p, 2)
    assert first is not None and first.algorithm == entry_for(p, 2)["algorithm"]
    calls = {"read_plan": 0, "params_key": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper
    for name in calls:
        monkeypatch.setattr(plan, name, counting(name, getattr(plan, name)))
    for _ in range(2000):
        assert plan.lookup(p, 2) is first
    assert calls == {"read_plan": 0, "params_key": 0}
    assert plan.lookup(conv_p(cout=16), 2) is None     # a new shape builds its key: the
    assert calls["params_key"] == 1                    # counter does count


# -------------------------------------------------------------- kernel params
@pytest.mark.parametrize("algorithm, params", [
    ("im2col", {"max_workspace_bytes": 1 << 20}),
    ("winograd_f4x3", {"tile_block": 32}),
    ("igemm", {"panels": "gather"}),
])
def test_plan_kernel_params_reach_the_kernel(tmp_path, monkeypatch, algorithm, params):
    """An entry's params are checked, reported by explain, and passed to the kernel
    (seen by a spy on the kernel function: the output alone cannot tell, a tile block
    or workspace size changes no value); the output equals the forced algorithm's."""
    path = tmp_path / "plan.json"
    layer = engine.Conv2d(16, 16, 3, padding=1, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 16, 20, 20)).astype(np.float32)
    p = layer.op_params(x.shape)
    e = entry_for(p, engine.get_num_threads(), algorithm)
    e["params"] = params
    plan.write_entries(path, [e])
    engine.use_plan(path)
    info = engine.explain(layer, x.shape)
    assert (info["algorithm"], info["source"], info["kernel_params"]) == (algorithm, "plan", params)
    algo = registry.REGISTRY[algorithm]
    expected = np.empty(p.output_shape, np.float32)
    algo(x, algo.prepare_weight(layer.weight, p), layer.bias, expected, p,
         engine.get_num_threads(), params=params)
    module, fn = {"im2col": (registry._im2col, "conv2d_im2col"),
                  "igemm": (registry._igemm, "conv2d_igemm")}.get(
        algorithm, (registry._winograd, "conv2d_winograd"))
    kernel, seen = getattr(module, fn), []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return kernel(*args, **kwargs)
    monkeypatch.setattr(module, fn, spy)
    np.testing.assert_array_equal(layer(x), expected)
    # Winograd and igemm are also told which micro-kernel ISA runs (engine.isa): the active one
    expected_kwargs = (dict(params, isa=engine.isa.level()) if module is not registry._im2col
                       else params)
    assert seen == [expected_kwargs]


@pytest.mark.parametrize("params", [{"tile_block": 7}, {"no_such_knob": 1}, {"tile_block": "padded"}])
def test_plan_with_bad_kernel_params_still_runs(tmp_path, params):
    """A hand-edited entry with params the kernel does not take never crashes a model:
    the algorithm runs with its automatic parameters and explain says why."""
    path = tmp_path / "plan.json"
    layer = engine.Conv2d(16, 16, 3, padding=1, seed=0)
    x = np.random.default_rng(1).standard_normal((1, 16, 20, 20)).astype(np.float32)
    e = entry_for(layer.op_params(x.shape), engine.get_num_threads(), "winograd_f2x3")
    e["params"] = params
    plan.write_entries(path, [e])
    engine.use_plan(path)
    info = engine.explain(layer, x.shape)
    assert (info["algorithm"], info["source"], info["kernel_params"]) == ("winograd_f2x3", "plan", {})
    assert "ignored" in info["reason"]
    ref = engine.functional.conv2d(x, layer.weight, layer.bias, padding=1, algorithm="direct")
    assert np.abs(layer(x) - ref).max() <= 1e-4 * max(1, np.abs(ref).max())


def test_check_params_and_variants():
    im2col = registry.REGISTRY["im2col"]
    assert im2col.check_params(None) == {} and im2col.check_params({}) == {}
    with pytest.raises(ValueError, match="max_workspace_bytes"):
        im2col.check_params({"tile_block": 16})
    with pytest.raises(ValueError, match="tunable: none"):
        registry.REGISTRY["direct"].check_params({"tile_block": 16})
    variants = registry.REGISTRY["winograd_f6x3"].param_variants()
    assert variants[0] == {} and {"tile_block": 64} in variants


def write_raw_entries(path, entries):
    """A trusted plan whose entries are exactly ``entries``, written as they are (a
    hand edit: write_entries would refuse invalid ones)."""
    write_doc(path)
    doc = json.loads(path.read_text())
    doc["entries"] = entries
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("field, value", [
    ("params", "fast"), ("params", [1, 2]), ("params", {"tile_block": 16.0}),
    ("params", {"tile_block": True}), ("params", {"panels": "pad ded"}), ("params", {"panels": ""}),
    ("params", {"panels": "x" * 33}), ("params", {"panels": ["padded"]}), ("time_s", "fast"), ("tolerance", "x"), ("level", 3),
    ("candidates", "x"), ("candidates", [1, None]), ("algorithm", None), ("algorithm", 5),
    ("candidates", [{"algorithm": "im2col", "status": "ok", "median_s": "1ms"}]),
    ("key.stride", [1]), ("key.padding", [1, 1]), ("key.groups", 0), ("key.threads", "2"),
    ("key.H", 2.5), ("key.op", "conv3d"), ("key.padding_mode", 0), ("key.extra", 1), ("key", None),
])
def test_hand_edited_entry_is_skipped_with_one_warning(tmp_path, field, value):
    """Every field is checked with its type on load: a bad entry is skipped (the
    heuristic decides) with one warning naming it; the other entries are used."""
    path = tmp_path / "plan.json"
    layer = engine.Conv2d(8, 8, 3, padding=1, seed=0)
    x = np.random.default_rng(2).standard_normal((1, 8, 10, 10)).astype(np.float32)
    good_p = conv_p(c=16, cout=16)
    e = entry_for(layer.op_params(x.shape), engine.get_num_threads(), "im2col")
    if field.startswith("key."):
        e["key"][field[4:]] = value
    else:
        e[field] = value
    write_raw_entries(path, [e, entry_for(good_p, 2, "im2col")])
    engine.use_plan(path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = layer(x)
        info = engine.explain(layer, x.shape)
        layer(x)
    msgs = [str(w.message) for w in rec if "convtune plan" in str(w.message)]
    assert len(msgs) == 1 and "1 invalid entry skipped" in msgs[0], msgs
    assert info["source"] == "heuristic"
    assert plan.lookup(good_p, 2).algorithm == "im2col"      # the rest of the file is used
    ref = engine.functional.conv2d(x, layer.weight, layer.bias, padding=1, algorithm="direct")
    assert np.abs(out - ref).max() <= 1e-4 * max(1, np.abs(ref).max())
    before = path.read_bytes()
    plan.write_entries(path, [entry_for(conv_p(c=4, cout=4), 2)])   # kept as written
    assert len(json.loads(path.read_text())["entries"]) == 3 and before != path.read_bytes()


# ------------------------------------------------------- hostile and odd plan files
def _layer_call_in_subprocess(plan_path, timeout=30):
    """A model call with CONVTUNE_PLAN=plan_path in a fresh process (a hang fails)."""
    code = ("import warnings, numpy as np, engine\n"
            "warnings.simplefilter('always')\n"
            "l = engine.Conv2d(4, 4, 3, seed=0)\n"
            "print(l(np.ones((1, 4, 6, 6), np.float32)).shape, l.explain((1, 4, 6, 6))['source'])\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CONVTUNE_PLAN": str(plan_path)})


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/urandom", "/proc/self/status", "dir"])
def test_fifo_device_proc_or_directory_plan_is_never_opened(tmp_path, special):
    if special == "fifo":
        target = tmp_path / "plan.fifo"
        os.mkfifo(target)
    elif special == "dir":
        target = tmp_path
    else:
        target = special
        if not os.path.exists(target):
            pytest.skip(f"no {target}")
    r = _layer_call_in_subprocess(target)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(1,", "4,", "4,", "4)", "heuristic"]
    assert "cannot be read" in r.stderr and "not a regular file" in r.stderr
    assert plan.read_plan(target).status == "unreadable"
    if special in ("fifo", "dir"):    # (a regression must not touch a real device)
        with pytest.raises(plan.PlanError, match="not a regular file"):
            plan.write_entries(target, [entry_for(conv_p(), 2)])
        assert not os.path.exists(str(target) + ".lock")


def test_deep_nesting_and_oversized_plans_are_corrupt_or_unreadable(tmp_path, monkeypatch):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200000)
    with pytest.warns(RuntimeWarning, match="nested too deeply"):
        assert _model_runs(deep)["source"] == "heuristic"
    big = tmp_path / "big.json"
    write_doc(big)
    monkeypatch.setattr(plan, "MAX_PLAN_BYTES", 100)
    monkeypatch.setattr(plan.read_bytes, "__defaults__", (100,))
    pf = plan.read_plan(big)
    assert pf.status == "unreadable" and "limit" in pf.reason


def test_issue_reproduction_stride_of_one_and_no_algorithm(tmp_path):
    """`"stride": [1]` and no algorithm used to raise IndexError in the first call."""
    path = tmp_path / "plan.json"
    layer = engine.Conv2d(8, 8, 3, padding=1, seed=0)
    e = entry_for(layer.op_params((1, 8, 10, 10)), engine.get_num_threads())
    e["key"]["stride"] = [1]
    del e["algorithm"]
    write_raw_entries(path, [e])
    with pytest.warns(RuntimeWarning, match="invalid entry skipped"):
        assert _model_runs(path)["source"] == "heuristic"


def test_unknown_algorithm_warns_once(tmp_path):
    path = tmp_path / "plan.json"
    layer = engine.Conv2d(8, 8, 3, padding=1, seed=0)
    x = np.ones((1, 8, 10, 10), np.float32)
    plan.write_entries(path, [entry_for(layer.op_params(x.shape), engine.get_num_threads(), "fft_v9")])
    engine.use_plan(path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        layer(x)
        layer(np.ones((2, 8, 10, 10), np.float32))
        info = layer.explain(x.shape)
    msgs = [str(w.message) for w in rec if "unknown algorithm" in str(w.message)]
    assert len(msgs) == 1 and "fft_v9" in msgs[0]
    assert info["source"] == "heuristic"


def test_unreadable_is_not_called_corrupt(tmp_path):
    pf = plan.read_plan(tmp_path)            # a directory: exists, cannot be read as a file
    assert pf.status == "unreadable" and "directory" in pf.reason
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert plan.read_plan(bad).status == "corrupt"


# hypothesis: whatever JSON a plan holds, a model call never raises and gives what the
# heuristic gives (within the tolerance: a valid entry may pick another algorithm).
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_LAYER = engine.Conv2d(8, 8, 3, padding=1, seed=3)
_X = np.random.default_rng(3).standard_normal((1, 8, 10, 10)).astype(np.float32)


_DELETE = object()


def _mutated_entry(edits):
    e = entry_for(_LAYER.op_params(_X.shape), engine.get_num_threads(), "im2col")
    key_fields = set(e["key"])
    for field, value in edits:
        target = e["key"] if field in key_fields and isinstance(e.get("key"), dict) else e
        if value is _DELETE:
            target.pop(field, None)
        else:
            target[field] = value
    return e


_FIELDS = sorted(set(entry_for(conv_p(), 2)) | set(conv_p().key()) | {"threads"})


_HOSTILE = st.sampled_from([[1], [1, 2, 3], 16.0, 1.5, "x", None, [], {}, True, 2**40, -1,
                            {"max_workspace_bytes": float(1 << 20)}, {"tile_block": 16.0}])


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=_json, edits=st.lists(st.tuples(st.sampled_from(_FIELDS), _HOSTILE | _json | st.just(_DELETE)),
                                 min_size=1, max_size=3),
       algorithm=st.sampled_from(engine.algorithms() + ["nope", ""]), kind=st.integers(0, 2))
def test_random_json_plan_never_breaks_a_model(tmp_path_factory, doc, edits, algorithm, kind):
    path = tmp_path_factory.mktemp("hyp") / "plan.json"
    if kind == 0:            # any JSON document at all
        path.write_text(json.dumps(doc))
    else:                    # a trusted header around random or mutated entries
        e = _mutated_entry(edits)
        if kind == 2 and isinstance(e.get("algorithm"), str):
            e["algorithm"] = algorithm
        write_raw_entries(path, [e, doc])
    plan.reset()
    plan._warned.clear()
    engine.use_plan(None)
    expected = _LAYER(_X)
    engine.use_plan(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _LAYER(_X)
        info = engine.explain(_LAYER, _X.shape)
        engine.functional.conv2d(_X, _LAYER.weight, _LAYER.bias, padding=1)
    assert info["source"] in ("plan", "heuristic")
    tol = registry.TOLERANCE[(info["algorithm"], "float32")]
    assert np.abs(out - expected).max() <= 2 * tol * max(1, np.abs(expected).max())
    if info["source"] == "heuristic":
        np.testing.assert_array_equal(out, expected)
    plan.reset()


def test_write_failure_is_a_plan_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))
    monkeypatch.setattr(plan.os, "replace", refuse)
    with pytest.raises(plan.PlanError, match="cannot write .*plan.json: permission denied"):
        plan.write_entries(path, [entry_for(conv_p(), 2)])
    assert not path.exists() and not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.skipif(len(engine.isa.available()) < 2,
                    reason="this CPU runs one micro-kernel ISA: nothing to switch between")
def test_plan_tuned_with_other_ukernels_is_not_trusted(tmp_path, use_isa):
    """The fingerprint records the micro-kernel ISA: entries tuned while one ISA's kernels
    ran are not decisions when another's run, and apply again when it is back."""
    path = tmp_path / "plan.json"
    low, high = engine.isa.available()[-2:]
    use_isa(low)
    p = conv_p()
    plan.write_entries(path, [entry_for(p, 2, "im2col")])
    assert json.loads(path.read_text())["hardware"]["ukernels"] == low
    engine.use_plan(path)
    assert plan.lookup(p, 2).algorithm == "im2col"
    use_isa(high)
    with pytest.warns(RuntimeWarning, match=f"ukernels: plan '{low}', here '{high}'"):
        assert plan.lookup(p, 2) is None
    use_isa(low)
    assert plan.lookup(p, 2).algorithm == "im2col"
