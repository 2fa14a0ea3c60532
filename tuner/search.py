"""Candidates per shape, the accuracy gate, and the choice.

For one shape at one thread count (``tune_shape``):
1. candidates: every algorithm that can compute the shape (``engine.registry.candidates``),
   pooling's one algorithm included;
2. accuracy gate: each runs once on random data (fixed seed) and its relative error
   ``max|out - ref| / max(1, max|ref|)`` (the measure of ``engine.registry.TOLERANCE``)
   against a float64 reference is measured; candidates over the tolerance are dropped
   (kept in the entry's list with status "rejected: ...");
3. the survivors are timed (``timing.compare``: interleaved, medians, finalists
   re-measured) through the same call the layers make: an ``engine.operator`` built once
   per candidate (weights prepared once, as a layer keeps them), called on the input.
   A convolution whose weights reach ``COLD_WEIGHT_BYTES`` is timed as it runs inside a
   network, its weights evicted from the caches before every call and its input warm
   (``timing.evict_caches``; the entry says ``"weights": "cold"``), since back-to-back
   calls find such weights in L2/L3 and can rank the algorithms the other way round;
4. the fastest survivor is the choice; the entry lists every candidate, ranked.

Levels: ``estimate`` takes the heuristic's choice without running anything (the
TOLERANCE table stands in for the gate); ``measure`` is the procedure above, each
algorithm with its automatic kernel parameters; ``exhaustive`` also tries every value of
each algorithm's tunable kernel parameters (``Algorithm.tunables``: Winograd's tile
block, im2col's column-buffer bound) as separate candidates, measures longer (more,
longer samples) and always re-measures the three fastest. The chosen ``params`` go into
the entry, and layers pass them to the kernel at run time.

The float64 reference is numpy (``reference_conv`` / ``reference_pool``): per kernel tap
one float64 GEMM over a strided view of the padded input, independent of our kernels.
"""
import logging
import math
import time
from functools import partial

import numpy as np

import engine
from engine import dispatch as _dispatch
from engine import operator as _operator
from engine import plan as _plan
from engine import registry as _registry
from engine import shapes as _shapes

from . import timing

log = logging.getLogger("convtune")

LEVEL_SETTINGS = {
    # reps per round, minimum sample length, finalist re-measurement reps, always re-measure
    "measure": dict(reps=7, min_sample_s=0.01, refine_reps=7, always_refine=0),
    "exhaustive": dict(reps=15, min_sample_s=0.025, refine_reps=15, always_refine=3),
}
_NP_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# Weights of at least this many bytes are timed cold (module docstring, step 3): from
# about an L2's worth, reading them from memory is a visible share of the call.
COLD_WEIGHT_BYTES = 1 << 20


def weights_cold(p):
    """Whether ``p`` (ConvParams or PoolParams) is timed with its weights evicted."""
    if not isinstance(p, _shapes.ConvParams):
        return False
    kh, kw = p.kernel
    return p.c_out * (p.c_in // p.groups) * kh * kw * np.dtype(p.dtype).itemsize >= COLD_WEIGHT_BYTES


def default_tolerance(dtype):
    return _registry.DEFAULT_TOLERANCE[str(np.dtype(dtype))]


# ------------------------------------------------------------------------- data
def make_conv_data(p, seed=0, bias=True):
    """Random input U(-1, 1) and PyTorch-initialised weight/bias, in ``p.dtype``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(p.dtype)
    x = rng.uniform(-1, 1, size=(p.n, p.c_in, p.h, p.w)).astype(dtype)
    fan_in = (p.c_in // p.groups) * p.kernel[0] * p.kernel[1]
    bound = 1.0 / math.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=(p.c_out, p.c_in // p.groups, *p.kernel)).astype(dtype)
    b = rng.uniform(-bound, bound, size=(p.c_out,)).astype(dtype) if bias else None
    return x, w, b


def make_pool_data(p, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(p.n, p.c, p.h, p.w)).astype(np.dtype(p.dtype))


def rel_error(out, ref):
    """max|out - ref| / max(1, max|ref|); inf when ``out`` has a NaN/inf ``ref`` lacks."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape != ref.shape:
        return math.inf
    if out.size == 0:
        return 0.0
    diff = np.abs(out - ref)
    err = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
    if np.isnan(diff).any() and not np.isnan(ref).any():
        return math.inf
    return err / max(1.0, float(np.max(np.abs(ref))))


# -------------------------------------------------------------------- reference
def reference_conv(x, w, b, p):
    """float64 convolution in numpy, independent of the kernels: pad with the padding
    mode, then for each group and kernel tap one GEMM over a strided view."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    top, bottom, left, right = p.pads
    if max(p.pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=_NP_PAD[p.padding_mode])
    oh, ow = p.out_h, p.out_w
    (sh, sw), (dh, dw), g = p.stride, p.dilation, p.groups
    cig, cog = p.c_in // g, p.c_out // g
    out = np.zeros((p.c_out, p.n, oh, ow))
    for gi in range(g):
        xg = x[:, gi * cig:(gi + 1) * cig]
        wg = w[gi * cog:(gi + 1) * cog]
        acc = out[gi * cog:(gi + 1) * cog]
        for i in range(p.kernel[0]):
            for j in range(p.kernel[1]):
                view = xg[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                          j * dw: j * dw + sw * (ow - 1) + 1: sw]        # (n, cig, oh, ow)
                acc += np.tensordot(wg[:, :, i, j], view, axes=([1], [1]))
    out = out.transpose(1, 0, 2, 3)
    if b is not None:
        out = out + np.asarray(b, dtype=np.float64)[None, :, None, None]
    return np.ascontiguousarray(out)


def reference_pool(x, p, count_include_pad=True):
    """float64 max/avg pooling with PyTorch's rules (padding, dilation, ceil_mode)."""
    x = np.asarray(x, dtype=np.float64)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    oh, ow = p.out_h, p.out_w
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    extra_h = max(0, need_h - (p.h + 2 * ph))
    extra_w = max(0, need_w - (p.w + 2 * pw))
    fill = -np.inf if p.op == "max_pool2d" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=fill)
    taps = [xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    if p.op == "max_pool2d":
        out = taps[0]
        for t in taps[1:]:
            out = np.maximum(out, t)
        return np.ascontiguousarray(out)

    def sizes(o, k, s, pad, size):
        start = np.arange(o) * s - pad
        end = np.minimum(start + k, size + pad)
        full = end - start
        return full, np.minimum(end, size) - np.maximum(start, 0)
    full_h, in_h = sizes(oh, kh, sh, ph, p.h)
    full_w, in_w = sizes(ow, kw, sw, pw, p.w)
    div = np.outer(full_h, full_w) if count_include_pad else np.outer(in_h, in_w)
    return np.ascontiguousarray(sum(taps) / div)


def torch_runner(torch, shape, x, w, b):
    """A zero-argument callable computing ``shape`` with torch.nn.functional (padding
    modes and asymmetric padding through F.pad, as nn.Conv2d does)."""
    import torch.nn.functional as TF
    p = shape.params
    tx = torch.from_numpy(x)
    if isinstance(p, _shapes.ConvParams):
        tw = torch.from_numpy(w)
        tb = None if b is None else torch.from_numpy(b)
        if p.padding_mode != "zeros" and max(p.pads):
            t, bo, l, r = p.pads
            return lambda: TF.conv2d(TF.pad(tx, (l, r, t, bo), mode=p.padding_mode), tw, tb,
                                     p.stride, 0, p.dilation, p.groups)
        if p.pads[0] == p.pads[1] and p.pads[2] == p.pads[3]:
            return lambda: TF.conv2d(tx, tw, tb, p.stride, (p.pads[0], p.pads[2]), p.dilation, p.groups)
        t, bo, l, r = p.pads
        return lambda: TF.conv2d(TF.pad(tx, (l, r, t, bo)), tw, tb, p.stride, 0, p.dilation, p.groups)
    if p.op == "max_pool2d":
        return lambda: TF.max_pool2d(tx, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
    return lambda: TF.avg_pool2d(tx, p.kernel, p.stride, p.padding, p.ceil_mode, shape.count_include_pad)



# ------------------------------------------------------------------- the search
def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_status(err, tol):
    if not math.isfinite(err):
        return "rejected: non-finite output"
    if err > tol:
        return f"rejected: error {err:.2e} > tolerance {tol:.1e}"
    return "ok"


def candidate_label(c):
    """"winograd_f4x3[tile_block=64]": a candidate's algorithm and its kernel params."""
    return c["algorithm"] + "".join(f"[{k}={v}]" for k, v in (c.get("params") or {}).items())


class Prepared:
    """A shape's data and the per-candidate operators, set up once for gate and timing."""

    def __init__(self, shape, threads, seed=0):
        self.shape, self.p, self.threads = shape, shape.params, threads
        if isinstance(self.p, _shapes.ConvParams):
            self.x, self.w, self.b = make_conv_data(self.p, seed, shape.bias)
        else:
            self.x = make_pool_data(self.p, seed)
            self.w = self.b = None
        self.names = _registry.applicable(self.p)
        self._ref = None
        self._prepared = {}

    @property
    def ref(self):
        if self._ref is None:
            if isinstance(self.p, _shapes.ConvParams):
                self._ref = reference_conv(self.x, self.w, self.b, self.p)
            else:
                self._ref = reference_pool(self.x, self.p, self.shape.count_include_pad)
        return self._ref

    def operator(self, name, params=None):
        """The operator computing the shape with ``name`` and kernel ``params`` (what a
        layer runs); the weights are prepared once per algorithm."""
        choice = _dispatch.Choice(name, "forced", "tuner candidate", dict(params or {}))
        if isinstance(self.p, _shapes.ConvParams):
            if name not in self._prepared:
                self._prepared[name] = _registry.get(name).prepare_weight(self.w, self.p)
            return _operator.ConvOperator(self.p, choice, self.w, self.b, num_threads=self.threads,
                                          prepared=self._prepared[name])
        return _operator.PoolOperator(self.p, choice, count_include_pad=self.shape.count_include_pad,
                                      num_threads=self.threads)

    def runner(self, name, params=None):
        """A zero-argument callable computing the shape with ``name`` and ``params``."""
        return partial(self.operator(name, params), self.x)

    def candidates(self, level):
        """[(label, algorithm, params)] to try: each applicable algorithm with automatic
        params, and at ``exhaustive`` every tunable parameter value too."""
        return [(candidate_label({"algorithm": name, "params": params}), name, params)
                for name, params in _registry.candidates(self.p, exhaustive=level == "exhaustive")]

    def output(self, name, params=None):
        return self.runner(name, params)()

    def error(self, name, params=None):
        return rel_error(self.output(name, params), self.ref)


def estimate_entry(shape, threads, tolerance):
    """The heuristic's decision as a plan entry (nothing is run)."""
    p = shape.params
    key = _plan.params_key(p, threads)
    names = _registry.applicable(p)
    choice, reason = _dispatch.heuristic(p)
    cands = []
    for n in names:
        bound = _registry.tolerance(n, p.dtype)
        cands.append({"algorithm": n, "params": {}, "median_s": None, "spread": None, "error": None,
                      "error_bound": bound,
                      "status": "ok" if bound <= tolerance else
                      f"rejected: documented error bound {bound:.1e} > tolerance {tolerance:.1e}"})
    ok = [c["algorithm"] for c in cands if c["status"] == "ok"]
    if not ok:
        return None
    if choice not in ok:
        choice, reason = ok[0], f"the heuristic's {choice} is over the tolerance; first accurate"
    cands.sort(key=lambda c: (c["algorithm"] != choice, c["status"] != "ok"))
    return {"key": key, "algorithm": choice, "params": {}, "level": "estimate", "tolerance": tolerance,
            "time_s": None, "tuned_at": _now(), "reason": reason, "candidates": cands}


def pending_jobs(existing, shapes, threads_list, level, tolerance=None, force=False):
    """What ``convtune tune`` still has to tune: ([(shape, threads, tolerance)], skipped).

    A shape at a thread count is skipped when ``existing`` (a PlanFile) already holds it
    at an equal or higher ``level`` with the same tolerance, unless ``force``;
    ``tolerance`` None means the default for each shape's dtype."""
    rank = _plan.LEVEL_RANK[level]
    jobs, skipped = [], 0
    for threads in threads_list:
        for s in shapes:
            tol = tolerance if tolerance is not None else default_tolerance(s.params.dtype)
            old = existing.entries.get(_plan.entry_key(_plan.params_key(s.params, threads)))
            if (old is not None and not force and _plan.LEVEL_RANK.get(old.get("level"), -1) >= rank
                    and math.isclose(float(old.get("tolerance") or 0), tol, rel_tol=1e-9)):
                skipped += 1
                continue
            jobs.append((s, threads, tol))
    return jobs, skipped


def tune_shape(shape, threads, level="measure", tolerance=None, deadline=None, on_step=None,
               reps=None):
    """Tune one shape at ``threads`` threads. Returns (entry or None, message).

    ``entry`` is None when every candidate fails the accuracy gate; ``message`` says
    what was chosen or why nothing was. ``on_step(text)`` reports progress; ``reps``
    overrides the level's samples per candidate."""
    p = shape.params
    tolerance = default_tolerance(p.dtype) if tolerance is None else float(tolerance)
    if level == "estimate":
        e = estimate_entry(shape, threads, tolerance)
        if e is None:
            return None, f"no algorithm's documented error bound is within tolerance {tolerance:.1e}"
        return e, f"{e['algorithm']} (heuristic)"
    settings = dict(LEVEL_SETTINGS[level])
    if reps:
        settings.update(reps=reps, refine_reps=reps)
    engine.set_num_threads(threads)
    prep = Prepared(shape, threads)
    cands = {}
    for label, name, params in prep.candidates(level):
        if on_step:
            on_step(f"checking {label}")
        err = prep.error(name, params)
        cands[label] = {"algorithm": name, "params": params, "median_s": None, "spread": None,
                        "error": err if math.isfinite(err) else None,
                        "status": _check_status(err, tolerance)}
        if deadline is not None and time.monotonic() > deadline:
            raise timing.DeadlineReached()
    ok = [n for n, c in cands.items() if c["status"] == "ok"]
    if not ok:
        best = min(cands.values(), key=lambda c: c["error"] if c["error"] is not None else math.inf)
        return None, (f"no algorithm within tolerance {tolerance:.1e} "
                      f"(least error: {best['algorithm']} {best['error'] or math.inf:.2e})")
    fns = {n: prep.runner(cands[n]["algorithm"], cands[n]["params"]) for n in ok}
    cold = weights_cold(p)

    def progress(name, stats):
        timed = [(st.median, n) for n, st in stats.items() if st.samples]
        best = min(timed) if timed else None
        on_step(f"timing {name}" + (f" | best so far {best[1]} {timing.format_time(best[0])}"
                                    if best else ""))

    stats, refined = timing.compare(
        fns, reps=settings["reps"], min_sample_s=settings["min_sample_s"],
        refine_reps=settings["refine_reps"], always_refine=settings["always_refine"],
        deadline=deadline, on_stats=progress if on_step else None,
        before=partial(timing.evict_caches, prep.x) if cold else None)
    for n, st in stats.items():
        cands[n].update(median_s=st.median, spread=round(st.spread, 4), samples=len(st.samples))
    ranked = sorted(cands.values(), key=lambda c: (c["median_s"] is None, c["median_s"] or 0,
                                                    c["error"] if c["error"] is not None else math.inf))
    best = ranked[0]
    entry = {"key": _plan.params_key(p, threads), "algorithm": best["algorithm"],
             "params": dict(best["params"]),
             "level": level, "tolerance": tolerance, "time_s": best["median_s"], "tuned_at": _now(),
             "weights": "cold" if cold else "warm", "remeasured": refined, "candidates": ranked}
    msg = f"{candidate_label(best)} {timing.format_time(best['median_s'])}"
    if len(ranked) > 1 and ranked[1]["median_s"]:
        msg += f" (next {candidate_label(ranked[1])} +{ranked[1]['median_s'] / best['median_s'] - 1:.0%})"
    rejected = [candidate_label(c) for c in ranked if c["status"] != "ok"]
    if rejected:
        msg += f"; rejected by the accuracy gate: {', '.join(rejected)}"
    log.debug("tuned %s at %d thread(s): %s", _plan.describe_key(entry["key"]), threads, msg)
    return entry, msg
