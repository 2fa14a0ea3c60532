"""Where a model's time goes: per-layer timing through forward hooks (``convtune profile``,
``benchmarks/bench_models.py --profile``).

``profile_model(model, x, ...)`` runs the model without hooks for its whole latency,
then installs a pre- and a post-hook on every leaf layer (``Module.register_forward_*``),
runs it again, and removes every hook before returning: a model that is not being
profiled carries no hook at all (``Module.__call__`` loops over an empty tuple). Each
leaf's time per run is the sum of its calls in that run (a ReLU module applied twice in
a block counts twice); the statistic over runs (median by default) is reported with
what the engine decided for the layer (``Conv2d.explain``: algorithm, plan / heuristic /
forced, kernel parameters), its effective GFLOP/s, and, given ``torch``, PyTorch's time
for the same layer on the same input and weights.

The result is a plain dict (the "profile" report of ``tuner.report``); ``trace_events``
turns its per-call records into Chrome trace-event JSON (Perfetto, chrome://tracing).
"""
import os
import statistics
import threading
import time

import numpy as np

import engine
from engine import plan as _plan
from engine import shapes as _shapes


def _leaves(model):
    names = getattr(model, "display_names", {})
    return [(names.get(n, n), m) for n, m in model.named_modules()
            if n and not list(m.children())] or [("(model)", model)]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _dims(shape):
    return "x".join(str(d) for d in shape)


def describe(layer, in_shape, out_shape, threads, dtype="float32"):
    """(op-and-shape text, decision dict, flops per call or None) for one leaf layer:
    a convolution or pooling layer says what it computes (``op_params``) and which
    algorithm runs it (``explain``)."""
    if isinstance(layer, (engine.Conv2d, engine.MaxPool2d, engine.AvgPool2d)):
        shape = tuple(in_shape) if len(in_shape) == 4 else (1, *in_shape)
        p = layer.op_params(shape, dtype)
        info = layer.explain(shape)
        return (_plan.describe_key(_plan.params_key(p, threads)),
                {"algorithm": info["algorithm"], "source": info["source"],
                 "kernel_params": dict(info.get("kernel_params") or {}),
                 "kernels": info.get("kernels"), "choices": len(info["applicable"])},
                getattr(p, "flops", None))
    return (f"{type(layer).__name__.lower()} {_dims(in_shape)} -> {_dims(out_shape)}",
            {"algorithm": None, "source": None, "kernel_params": {}, "kernels": None, "choices": 0},
            None)


def torch_layer_fn(torch, layer, x):
    """A zero-argument callable computing ``layer`` on ``x`` with torch.nn.functional
    (a fused ReLU included), or None for layers it does not cover."""
    import torch.nn.functional as TF
    tx = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(layer, engine.Conv2d):
        tw = torch.from_numpy(np.array(layer.weight))
        tb = None if layer.bias is None else torch.from_numpy(np.array(layer.bias))
        relu, padding_mode = layer.fused_relu, layer.padding_mode
        if padding_mode != "zeros":
            return None
        def run():
            with torch.inference_mode():
                y = TF.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation, layer.groups)
                return TF.relu(y) if relu else y
        return run
    if isinstance(layer, engine.MaxPool2d):
        def run():
            with torch.inference_mode():
                return TF.max_pool2d(tx, layer.kernel_size, layer.stride, layer.padding,
                                     layer.dilation, layer.ceil_mode)
        return run
    if isinstance(layer, engine.AvgPool2d):
        def run():
            with torch.inference_mode():
                return TF.avg_pool2d(tx, layer.kernel_size, layer.stride, layer.padding,
                                     layer.ceil_mode, layer.count_include_pad, layer.divisor_override)
        return run
    return None


def _time_calls(fn, repeat, warmup, clock, stat, pause=0.0):
    if pause:
        time.sleep(pause)     # let the other OpenMP runtime's threads stop spinning
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return stat(times)


def plan_in_use():
    """The active plan's path when a trusted plan decides, else None."""
    plan = _plan.current()
    return plan.path if plan is not None and plan.trusted else None


def profile_model(model, x, repeat=10, warmup=2, torch=None, clock=time.perf_counter,
                  stat=statistics.median, run_model=None, latency=True):
    """Profile ``model`` (an engine Module) on ``x``; returns a dict with "latency_ms"
    ({"min", "median", "max"} of ``repeat`` whole runs without hooks), "layers" (one dict
    per leaf that ran, slowest first: see tuner.report) and "calls" (per-call records
    (path, op, start s, duration s, thread id) for ``trace_events``).

    ``run_model`` (default ``model(x)``) is what one run calls; ``clock`` returns seconds;
    ``latency=False`` skips the runs without hooks ("latency_ms" is then None)."""
    run = run_model or (lambda: model(x))
    for _ in range(warmup):
        run()
    whole = []
    for _ in range(repeat if latency else 0):
        t0 = clock()
        run()
        whole.append((clock() - t0) * 1e3)

    leaves = _leaves(model)
    index = {id(m): i for i, (_, m) in enumerate(leaves)}
    per_run = [[0.0] * len(leaves) for _ in range(repeat)]
    calls = [0] * len(leaves)
    first = [None] * len(leaves)             # (input array, output shape) of the first call
    stack, records = [], []
    state = {"run": 0}

    def pre(m, args):
        stack.append(clock())

    def post(m, args, out):
        t1 = clock()
        t0 = stack.pop()
        i = index[id(m)]
        per_run[state["run"]][i] += (t1 - t0) * 1e3
        if state["run"] == 0:
            calls[i] += 1
        if first[i] is None:
            first[i] = (args[0], tuple(np.shape(_first(out))))
        records.append((leaves[i][0], type(m).__name__, t0 - origin_clock, t1 - t0,
                        threading.get_native_id()))

    origin_clock = clock()
    handles = []
    try:
        for _, m in leaves:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        for r in range(repeat):
            state["run"] = r
            t0 = clock()
            run()
            records.append(("forward", "model", t0 - origin_clock, clock() - t0,
                            threading.get_native_id()))
    finally:
        for h in handles:
            h.remove()
        for _, m in leaves:   # back to the class's empty tuples: as if never profiled
            for attr in ("_forward_hooks", "_forward_pre_hooks"):
                if attr in m.__dict__ and not m.__dict__[attr]:
                    del m.__dict__[attr]

    threads = engine.get_num_threads()
    planned = plan_in_use()
    rows = []
    for i, (path, m) in enumerate(leaves):
        if first[i] is None:
            continue
        xin, out_shape = first[i]
        label, decision, flops = describe(m, np.shape(xin), out_shape, threads,
                                          getattr(xin, "dtype", "float32"))
        ms = stat([per_run[r][i] for r in range(repeat)])
        t_ms = None
        if torch is not None:
            fn = torch_layer_fn(torch, m, xin)
            if fn is not None:
                t_ms = _time_calls(fn, repeat, 2, clock, stat, pause=0.02) * calls[i]
        rows.append({
            "path": path, "op": type(m).__name__, "shape": label,
            "input_shape": list(np.shape(xin)), "output_shape": list(out_shape),
            **{k: decision[k] for k in ("algorithm", "source", "kernel_params", "kernels")},
            "calls": calls[i], "median_ms": ms,
            "gflops": (flops * calls[i] / (ms * 1e6)) if flops and ms > 0 else None,
            "torch_ms": t_ms,
            # a plan could have chosen, and did not (pooling has nothing to choose)
            "no_plan_entry": bool(planned and decision["source"] == "heuristic"
                                  and decision["choices"] > 1),
        })
    total = sum(r["median_ms"] for r in rows)
    for r in rows:
        r["percent"] = 100.0 * r["median_ms"] / total if total > 0 else 0.0
    rows.sort(key=lambda r: -r["median_ms"])
    lat = {"min": min(whole), "median": statistics.median(whole), "max": max(whole)} if whole else None
    return {"latency_ms": lat,
            "layers": rows, "layers_total_ms": total, "plan": planned, "threads": threads,
            "repeat": repeat, "calls": records}


def trace_events(calls, pid=None, process_name="convtune profile"):
    """Chrome trace-event JSON (a dict) from ``profile_model``'s "calls": one complete
    ("X") event per layer call and per whole forward, ts/dur in microseconds."""
    pid = os.getpid() if pid is None else pid
    events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
               "args": {"name": process_name}}]
    for tid in sorted({c[4] for c in calls}):
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                       "args": {"name": f"python thread {tid}"}})
    for name, op, start, dur, tid in calls:
        events.append({"name": name, "cat": op, "ph": "X", "ts": round(start * 1e6, 3),
                       "dur": round(dur * 1e6, 3), "pid": pid, "tid": tid})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def format_table(rows, total_ms=None, min_percent=0.0):
    """The per-layer table as text (rows as ``profile_model`` returns them); layers under
    ``min_percent`` of the total are summed in one line."""
    from .cli import _table
    out = []
    small = [r for r in rows if r["percent"] < min_percent]
    for r in rows:
        if r["percent"] < min_percent:
            continue
        decision = r["algorithm"] or "-"
        if r["source"]:
            decision += f" ({r['source']}"
            decision += (", " + ", ".join(f"{k}={v}" for k, v in r["kernel_params"].items())
                         if r["kernel_params"] else "") + ")"
        if r["no_plan_entry"]:
            decision += "  ! no plan entry"
        t = r["torch_ms"]
        out.append([r["path"], r["shape"] + (f" (x{r['calls']})" if r["calls"] > 1 else ""),
                    decision, f"{r['median_ms']:.3f}", f"{r['percent']:.1f}",
                    "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
                    "-" if t is None else f"{t:.3f}",
                    "-" if t is None or r["median_ms"] <= 0 else f"{t / r['median_ms']:.2f}"])
    text = _table(out, ["layer", "op and shape", "algorithm (source, params)", "ms", "%",
                        "GFLOP/s", "torch ms", "torch/convtune"],
                  ["<", "<", "<", ">", ">", ">", ">", ">"])
    if small:
        text += (f"\n({len(small)} more layer(s) under {min_percent:g}% each, "
                 f"{sum(r['median_ms'] for r in small):.3f} ms in all: "
                 f"{', '.join(sorted({r['op'] for r in small}))})")
    if total_ms is not None:
        layers = sum(r["median_ms"] for r in rows)
        text += f"\nsum of layers {layers:.2f} ms (whole model median {total_ms:.2f} ms)"
    return text


class ConfigModel(engine.Module):
    """A config's shapes as a model: one layer per distinct shape, run once per layer of
    the config that has that shape, each on its own input (a config describes shapes,
    not the data flow between layers). ``display_names`` maps child names to the
    config's layer names."""

    def __init__(self, shapes, seed=0):
        super().__init__()
        self.display_names = {}
        self._inputs = []
        rng = np.random.default_rng(seed)
        for i, s in enumerate(shapes):
            p = s.params
            if isinstance(p, _shapes.ConvParams):
                t, b, l, r = p.pads
                layer = engine.Conv2d(p.c_in, p.c_out, p.kernel, p.stride,
                                      (t, l) if (t == b and l == r) else "same", p.dilation,
                                      p.groups, bias=s.bias, padding_mode=p.padding_mode,
                                      dtype=np.dtype(p.dtype), seed=i)
                shape = (p.n, p.c_in, p.h, p.w)
            elif p.op == "max_pool2d":
                layer = engine.MaxPool2d(p.kernel, p.stride, p.padding, p.dilation, ceil_mode=p.ceil_mode)
                shape = (p.n, p.c, p.h, p.w)
            else:
                layer = engine.AvgPool2d(p.kernel, p.stride, p.padding, p.ceil_mode, s.count_include_pad)
                shape = (p.n, p.c, p.h, p.w)
            name = f"shape{i}"
            self.add_module(name, layer)
            self.display_names[name] = ", ".join(s.names[:3]) + (f" +{len(s.names) - 3}" if len(s.names) > 3 else "")
            x = rng.standard_normal(shape).astype(p.dtype)
            self._inputs.append((layer, x, len(s.names)))

    def forward(self, x=None):
        for layer, xin, count in self._inputs:
            for _ in range(count):
                layer(xin)
        return x
