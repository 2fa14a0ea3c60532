"""Machine-readable reports: what ``--json FILE`` writes (profile, bench, check, tune).

Every report is one JSON object with the same envelope, so a reader can tell what it
holds before reading further:

    {"schema": "convtune-report",     # always this string
     "version": 1,                    # bumped when a field changes meaning or goes away
     "command": "profile" | "bench" | "check" | "tune",
     "created": "2026-12-01T14:30:00Z",
     "engine_version": "0.1.0",
     "hardware": {...},               # engine.plan.hardware_fingerprint()
     "settings": {...},               # what the command was asked (threads, repeat, plan, ...)
     ...}                             # the command's own fields, below

Fields added later are new keys (readers ignore what they do not know); times are in
seconds (``*_s``) and milliseconds only where the key says ``_ms``; a value that was not
measured is ``null``.

profile:  "latency_ms": {"min", "median", "max"} of the whole model over the runs;
          "layers": [{"path", "op", "input_shape", "output_shape", "algorithm",
          "source" ("plan"|"heuristic"|"forced"|null), "kernel_params", "calls",
          "median_ms", "percent", "gflops" (effective GFLOP/s, convolutions),
          "torch_ms" (null when not measured), "no_plan_entry" (bool)}], sorted by
          median_ms, slowest first; "layers_total_ms".
bench:    "layers": [{"layer", "shape" (the shape's key), "layers" (names), "planned", "source",
          "times_ms": {"planned", <algorithm>..., "torch"}, "fastest"}];
          "geomean_planned_over_fastest", "geomean_torch_over_planned".
check:    "results": [{"shape", "layers", "algorithm", "tolerance", "error_vs_float64",
          "diff_vs_torch", "torch_error_vs_float64", "ok"}], "failures".
tune:     "plan" (the path written), "written", "failed", "skipped", "elapsed_s",
          "shapes": [{"shape" (label), "key" (the plan entry's key), "layers", "threads",
          "algorithm" (null: rejected), "params", "time_s", "message"}], "noisy" (labels), "exit_status".
"""
import json
import os
import time

SCHEMA = "convtune-report"
VERSION = 1


def make(command, settings, **fields):
    """A report dict for ``command`` with the common envelope and ``fields``."""
    import engine
    from engine import plan as P
    doc = {"schema": SCHEMA, "version": VERSION, "command": command,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "engine_version": engine.__version__, "hardware": P.hardware_fingerprint(),
           "settings": dict(settings)}
    doc.update(fields)
    return doc


def _clean(v):
    """JSON-safe: NaN/inf become null, tuples lists, numpy scalars Python numbers."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


def write(path, doc):
    """Write ``doc`` to ``path`` (temp file + rename: a reader never sees half a file).
    OSError propagates (the CLI reports it in one line)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_clean(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
