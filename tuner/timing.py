"""Timing: the one place for warm-up, repetitions, interleaving, medians and spread.

Used by the tuner (``convtune tune``/``bench``) and by ``benchmarks/bench_layers.py``.

The procedure (``compare``):
1. warm-up: each candidate runs ``warmup`` times (first-touch pages, weight caches,
   BLAS buffers, the OpenMP team);
2. calibration: the number of calls per sample (``inner``) doubles until one sample
   takes at least ``min_sample_s``, so the clock's resolution and the loop's overhead
   do not matter for fast kernels;
3. ``reps`` rounds; in each round every candidate takes one sample, the order rotated
   round by round, so a slow drift of the machine (another process, thermal) hits all
   candidates alike instead of biasing whichever ran last;
4. each candidate's per-call time is the median of its samples; spread is the
   interquartile range relative to the median;
   (if a sample runs far over its target, e.g. on a loaded machine, later samples
   take fewer calls; each sample is normalised per call, so they stay comparable);
5. refinement: candidates whose medians lie within noise of the fastest (``finalists``)
   are measured again, interleaved among themselves, and the new samples are pooled
   (again, up to twice more, while they stay close and noisy).

A ``deadline`` (time.monotonic() value) aborts with ``DeadlineReached`` between samples.

``before`` (optional, in ``measure`` / ``compare``): a callable run, untimed, before every
timed call, which then makes every sample one call. The tuner passes ``evict_caches``
for layers with large weights: inside a network each layer's weights were last read a
whole forward ago and come from memory, while back-to-back calls find them in L2/L3
(ResNet-50's 512->2048 1x1 at 7x7, two threads on an AMD EPYC Zen 4: im2col 5% faster than
igemm back to back, 27% slower with the weights evicted).
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np

from engine import plan as _plan

clock = time.perf_counter


class DeadlineReached(Exception):
    """The time budget ran out in the middle of a measurement."""


@dataclass
class Stats:
    """Per-call time statistics of one candidate (seconds)."""
    samples: list = field(default_factory=list)
    inner: int = 1

    @property
    def median(self):
        return _quantile(sorted(self.samples), 0.5)

    @property
    def spread(self):
        """(q75 - q25) / median: the relative noise of the samples."""
        s = sorted(self.samples)
        med = _quantile(s, 0.5)
        return (_quantile(s, 0.75) - _quantile(s, 0.25)) / med if med > 0 else 0.0

    @property
    def min(self):
        return min(self.samples)

    def as_dict(self):
        return {"median_s": self.median, "spread": round(self.spread, 4), "min_s": self.min,
                "samples": len(self.samples), "calls_per_sample": self.inner}


def _quantile(sorted_values, q):
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _check(deadline):
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineReached()


def sample(fn, inner, before=None):
    """Seconds per call of ``fn`` over ``inner`` back-to-back calls, or (``before``
    given) of one call after ``before()``, which is not timed."""
    if before is not None:
        before()
        t0 = clock()
        fn()
        return clock() - t0
    t0 = clock()
    for _ in range(inner):
        fn()
    return (clock() - t0) / inner


def calibrate(fn, min_sample_s, warmup=1, deadline=None, max_inner=1 << 20, before=None):
    """Warm ``fn`` up, then double the calls per sample until a sample lasts at least
    ``min_sample_s``. Returns (inner, seconds per call of the last trial). With
    ``before`` a sample is one call (inner 1)."""
    for _ in range(warmup):
        fn()
        _check(deadline)
    if before is not None:
        return 1, sample(fn, 1, before)
    inner = 1
    while True:
        t = sample(fn, inner)
        _check(deadline)
        if t * inner >= min_sample_s or inner >= max_inner:
            return inner, t
        # jump close to the target, at least doubling
        inner = min(max_inner, max(inner * 2, int(math.ceil(min_sample_s / max(t, 1e-9) * 1.1))))


def measure(fns, reps=7, min_sample_s=0.01, warmup=1, deadline=None, stats=None, on_sample=None,
            on_stats=None, before=None):
    """Interleaved measurement of ``fns`` (name -> zero-argument callable).

    Returns name -> Stats. ``stats`` (from an earlier call) is extended in place,
    reusing its calibration; ``on_sample(name)`` is called after every sample, and
    ``on_stats(name, stats)`` too (every candidate's Stats so far, e.g. for the best
    so far in a progress bar); ``before``: see the module docstring."""
    names = list(fns)
    stats = {} if stats is None else stats
    for name in names:
        if name not in stats:
            inner, _ = calibrate(fns[name], min_sample_s, warmup, deadline, before=before)
            stats[name] = Stats([], inner)
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            st = stats[name]
            t = sample(fns[name], st.inner, before)
            st.samples.append(t)
            # A loaded machine can make calls much slower than at calibration: keep
            # samples near their target length instead of letting them balloon.
            if t * st.inner > 4 * min_sample_s and st.inner > 1:
                st.inner = max(1, int(min_sample_s / t))
            if on_sample is not None:
                on_sample(name)
            if on_stats is not None:
                on_stats(name, stats)
            _check(deadline)
    return stats


def finalists(stats, noise_floor=0.03):
    """Names whose median is within noise of the fastest: median_i <= best * (1 + tol),
    tol = max(noise_floor, the two candidates' spreads added)."""
    if not stats:
        return []
    best_name = min(stats, key=lambda n: stats[n].median)
    best = stats[best_name]
    out = []
    for name, st in stats.items():
        tol = max(noise_floor, best.spread + st.spread)
        if st.median <= best.median * (1.0 + tol):
            out.append(name)
    return sorted(out, key=lambda n: stats[n].median)


def compare(fns, reps=7, min_sample_s=0.01, warmup=1, refine_reps=None, deadline=None,
            on_sample=None, always_refine=0, extra_rounds=2, noisy_spread=0.15, on_stats=None,
            before=None):
    """``measure`` then re-measure the finalists (pooled samples). ``always_refine``
    re-measures at least that many of the fastest even when clearly apart; while the
    re-measured candidates stay within noise of each other with a spread above
    ``noisy_spread``, up to ``extra_rounds`` more rounds are taken. ``before``: see the
    module docstring.

    Returns (name -> Stats, list of names re-measured)."""
    stats = measure(fns, reps, min_sample_s, warmup, deadline, on_sample=on_sample, on_stats=on_stats,
                    before=before)
    fin = finalists(stats)
    if always_refine:
        ranked = sorted(stats, key=lambda n: stats[n].median)
        fin = list(dict.fromkeys(fin + ranked[:always_refine]))
    if len(fin) > 1:
        measure({n: fns[n] for n in fin}, refine_reps or reps, min_sample_s, 0, deadline,
                stats=stats, on_sample=on_sample, on_stats=on_stats, before=before)
        # Still noisy (a busy machine): up to ``extra_rounds`` more rounds among those
        # still within noise of each other, so their medians rest on more samples.
        for _ in range(extra_rounds):
            close = finalists({n: stats[n] for n in fin})
            if len(close) < 2 or max(stats[n].spread for n in close) <= noisy_spread:
                break
            measure({n: fns[n] for n in close}, refine_reps or reps, min_sample_s, 0, deadline,
                    stats=stats, on_sample=on_sample, on_stats=on_stats, before=before)
    else:
        fin = []
    return stats, fin


def _last_level_cache_bytes(caches):
    """The largest of ``caches`` (the plan fingerprint's sysfs sizes, e.g. {"L2": "1024K",
    "L3": "32768K"}: the L3 on x86) in bytes, or 32 MiB if none can be read."""
    best = 0
    for text in caches.values():
        text = str(text).strip().upper()
        try:
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return best or 32 << 20


_evict_buffer = None


def evict_caches(*warm):
    """Push everything out of the caches by reading a buffer of twice the last-level
    cache (8-256 MiB, allocated once), then read the arrays ``warm`` back in (a layer's
    input, which the layer before it has just written)."""
    global _evict_buffer
    if _evict_buffer is None:
        caches = _plan.hardware_fingerprint()["caches"]
        size = min(max(2 * _last_level_cache_bytes(caches), 8 << 20), 256 << 20)
        _evict_buffer = np.ones(size // 8, np.float64)
    _evict_buffer.sum()
    for a in warm:
        a.sum()


def format_time(seconds):
    """'12.3 ms', '45.6 us', '1.23 s'."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e6:.3g} us"


def geomean(values):
    vals = [v for v in values if v and v > 0 and not math.isnan(v)]
    if not vals:
        return math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
