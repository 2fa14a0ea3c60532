"""Pictures for ``--plot FILE.png|.svg`` (bench, profile, show).

matplotlib is optional (``pip install "convtune[plot]"``) and used through
``matplotlib.figure.Figure`` on an Agg canvas: no display, no pyplot state, safe in a
server or a test. Every function draws from a report dict (``tuner.report``) and
returns the Figure, so what is drawn can be read back (``drawn_bars``) and compared
with the report's numbers.

- ``plot_algorithms(groups, path)``: per layer, grouped bars of each algorithm's time
  (log scale), the chosen one outlined in black and starred, PyTorch's where measured;
- ``plot_profile(report, path)``: the per-layer time breakdown of ``convtune profile``,
  slowest first, with PyTorch's time beside each layer where measured.
"""
import math
import os

INSTALL_HINT = 'matplotlib is needed for --plot: pip install "convtune[plot]" (or pip install matplotlib)'
EXTENSIONS = (".png", ".svg")
TORCH = "torch"


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def check_path(path):
    """ValueError unless ``path`` ends in .png or .svg (checked before any work)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in EXTENSIONS:
        raise ValueError(f"--plot {path}: expected a file name ending in .png or .svg")
    return ext[1:]


def _figure(width, height):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    if path is not None:
        fig.savefig(os.fspath(path), format=check_path(path))
    return fig


def drawn_bars(fig):
    """{series label: [bar length, ...]} read back from the bars on ``fig``'s first axes
    (the height of vertical bars, the width of horizontal ones), in drawing order."""
    ax = fig.axes[0]
    out = {}
    for c in ax.containers:
        horizontal = getattr(c, "orientation", "vertical") == "horizontal"
        out[c.get_label()] = [p.get_width() if horizontal else p.get_height() for p in c.patches]
    return out


def plot_algorithms(groups, path=None, title=""):
    """Grouped bars: ``groups`` is a list of {"label", "times_ms": {algorithm: ms},
    "chosen": algorithm or None, "torch_ms": ms or None}. One colour per algorithm
    (and one for PyTorch); missing times draw no bar. Returns the Figure (saved to
    ``path`` when given)."""
    algos = []
    for g in groups:
        for a in g["times_ms"]:
            if a not in algos:
                algos.append(a)
    series = algos + ([TORCH] if any(g.get("torch_ms") for g in groups) else [])
    n = max(len(series), 1)
    fig = _figure(min(20.0, max(6.0, 0.3 * len(groups) * n + 2)), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / n
    colours = {}
    for k, name in enumerate(series):
        xs, hs, chosen = [], [], []
        for i, g in enumerate(groups):
            v = g.get("torch_ms") if name == TORCH else g["times_ms"].get(name)
            if v is None or not v > 0 or not math.isfinite(v):
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            hs.append(v)
            chosen.append(name != TORCH and g.get("chosen") == name)
        bars = ax.bar(xs, hs, width, label=name, color="0.6" if name == TORCH else None,
                      hatch="//" if name == TORCH else None)
        colours[name] = bars
        for b, c in zip(bars.patches, chosen):
            if c:
                b.set_edgecolor("black")
                b.set_linewidth(1.6)
        cx = [x for x, c in zip(xs, chosen) if c]
        ch = [h for h, c in zip(hs, chosen) if c]
        if cx:
            ax.plot(cx, [h * 1.25 for h in ch], linestyle="none", marker="*", color="black",
                    markersize=7)
    ax.set_yscale("log")
    ax.set_ylabel("time per call (ms, log scale)")
    ax.set_xticks(range(len(groups)), [g["label"] for g in groups], rotation=60, ha="right",
                  fontsize=7)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.legend(fontsize=7, ncols=min(4, n), title="* chosen", title_fontsize=7)
    ax.set_title(title or "time per layer and algorithm", fontsize=9)
    return _save(fig, path)


def plot_profile(report, path=None, top=30, min_percent=0.1):
    """``convtune profile``'s per-layer breakdown: horizontal bars of each layer's
    median time (the ``top`` slowest with at least ``min_percent`` of the total, slowest
    at the top), labelled with its algorithm and share of the total, PyTorch's time
    beside it where measured."""
    rows = [r for r in report["layers"] if r["percent"] >= min_percent][:top]
    has_torch = any(r.get("torch_ms") is not None for r in rows)
    fig = _figure(9.0, 1.2 + 0.28 * len(rows) * (1.6 if has_torch else 1))
    ax = fig.add_subplot()
    h = 0.4 if has_torch else 0.8
    ys = list(range(len(rows)))
    bars = ax.barh([y - (h / 2 if has_torch else 0) for y in ys], [r["median_ms"] for r in rows], h,
                   label="convtune", color="tab:blue")
    for b, r in zip(bars.patches, rows):
        tag = r["algorithm"] or r["op"]
        if r.get("no_plan_entry"):
            tag += " (no plan entry)"
        ax.annotate(f" {tag}, {r['percent']:.1f}%", (b.get_width(), b.get_y() + b.get_height() / 2),
                    va="center", fontsize=6)
    if has_torch:
        tr = [(y, r["torch_ms"]) for y, r in zip(ys, rows) if r.get("torch_ms") is not None]
        ax.barh([y + h / 2 for y, _ in tr], [t for _, t in tr], h, label="PyTorch", color="0.6",
                hatch="//")
    ax.set_yticks(ys, [f"{r['path']}  {r['shape']}" for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("median time per run (ms)")
    lat = report.get("latency_ms") or {}
    settings = report.get("settings") or {}
    ax.set_title(f"per-layer time: {settings.get('model') or settings.get('config') or ''} "
                 f"(whole model median {lat.get('median', float('nan')):.2f} ms)", fontsize=9)
    ax.margins(x=0.25)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
