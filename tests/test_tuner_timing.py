"""tuner.timing's cold samples (``before``) and the tuner's use of them for layers with
large weights: what is timed, what is not, and what the plan entry records."""
import numpy as np
import pytest

from engine import shapes
from tuner import configs, search, timing


class FakeClock:
    """A clock that moves only when the test's functions advance it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_before_runs_untimed_and_makes_each_sample_one_call(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "clock", clock)
    calls = []

    def fn():
        calls.append("fn")
        clock.now += 1.0

    def before():
        calls.append("before")
        clock.now += 100.0

    assert timing.sample(fn, 5, before) == 1.0
    assert calls == ["before", "fn"]
    calls.clear()
    stats = timing.measure({"a": fn, "b": fn}, reps=3, min_sample_s=10.0, warmup=1, before=before)
    for st in stats.values():
        assert st.inner == 1 and st.samples == [1.0, 1.0, 1.0]
    # warm-up calls (one each) have no before(); every timed call has exactly one
    timed = [i for i, c in enumerate(calls) if c == "fn" and i > 0 and calls[i - 1] == "before"]
    assert len(timed) == 2 * (1 + 3)               # one calibration sample + 3 reps each
    assert calls.count("before") == len(timed)
    # without before: back-to-back calls, calibrated to the sample length
    calls.clear()
    assert timing.sample(fn, 4) == 1.0 and calls == ["fn"] * 4


def test_evict_caches_keeps_one_bounded_buffer_and_leaves_the_arrays_alone():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    timing.evict_caches(x)
    buf = timing._evict_buffer
    assert 8 << 20 <= buf.nbytes <= 256 << 20
    timing.evict_caches(x, x)
    assert timing._evict_buffer is buf                     # allocated once
    np.testing.assert_array_equal(x, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_last_level_cache_comes_from_the_fingerprint_sizes():
    caches = {"L1d": "32K", "L1i": "32K", "L2": "1024K", "L3": "32768K"}
    assert timing._last_level_cache_bytes(caches) == 32 << 20
    assert timing._last_level_cache_bytes({**caches, "L3": "garbage"}) == 1 << 20
    assert timing._last_level_cache_bytes({"L3": "2M"}) == 2 << 20
    assert timing._last_level_cache_bytes({}) == 32 << 20            # unknown: the default


def conv_shape(c_in, c_out, k, hw=4):
    doc = {"name": "t", "input": [c_in, hw, hw], "batch": 1,
           "layers": [{"type": "conv", "name": "c", "out_channels": c_out, "kernel_size": k}]}
    (shape,) = configs.parse(doc).shapes
    return shape


@pytest.mark.parametrize("c_in,c_out,k,cold", [(8, 8, 3, False), (256, 1024, 1, True),
                                               (128, 256, 3, True), (64, 64, 3, False)])
def test_large_weights_are_timed_cold(monkeypatch, plans_off, c_in, c_out, k, cold):
    """From COLD_WEIGHT_BYTES of weights the tuner evicts the caches before every timed
    call, keeps the input warm, and says so in the entry; smaller layers are timed warm."""
    shape = conv_shape(c_in, c_out, k)
    assert search.weights_cold(shape.params) == cold
    assert (c_out * c_in * k * k * 4 >= search.COLD_WEIGHT_BYTES) == cold
    evicted = []
    monkeypatch.setattr(timing, "evict_caches", lambda *warm: evicted.append(warm))
    entry, _ = search.tune_shape(shape, 1, reps=2)
    assert entry["weights"] == ("cold" if cold else "warm")
    timed = sum(c.get("samples", 0) for c in entry["candidates"])
    if cold:
        # one eviction per timed sample and per calibration sample of each candidate
        ok = [c for c in entry["candidates"] if c["status"] == "ok"]
        assert len(evicted) == timed + len(ok)
        assert all(len(w) == 1 and w[0].shape == (1, c_in, 4, 4) for w in evicted)   # the input
    else:
        assert evicted == []


def test_pooling_is_never_cold():
    p = shapes.pool_params("max_pool2d", (1, 512, 56, 56), 3, 2, 1, 1, False, "float32")
    assert not search.weights_cold(p)
