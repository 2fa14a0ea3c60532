"""The ``convtune`` command (also ``python -m tuner``).

    convtune tune [CONFIG...] [--model MODULE:FUNCTION | --onnx MODEL.onnx] [--input N,C,H,W]
                  [--plan PATH] [--threads N[,N...]] [--level L] [--budget S] [--tolerance T]
                  [--force] [--batch N] [--dtype D] [--dask SCHEDULER_ADDRESS]
    convtune show [PLAN] [--plot FILE.png|.svg]
    convtune bench CONFIG [--plan PATH] [--threads N] [--reps R] [--batch N] [--json FILE] [--plot FILE]
    convtune bench --onnx MODEL.onnx [--input N,C,H,W] [--threads N]   # end to end vs ONNX Runtime
    convtune profile (--model MODULE:FUNCTION | CONFIG) [--input N,C,H,W] [--threads N] [--repeat R]
                     [--plan PATH|none] [--json FILE] [--trace FILE] [--plot FILE] [--no-torch]
    convtune check CONFIG... [--tolerance T] [--json PATH] [--threads N] [--dtype D]
    convtune merge OUT IN... [--force]
    convtune convert IN OUT.npz|OUT.safetensors [--key K] [--prefix P]
    convtune info

Exit status: 0 success; 1 a check found an excess, or tuning left a shape without any
accurate algorithm; 2 bad usage, a bad config, a plan file that cannot be used, or a
weights file that cannot be converted; 130 interrupted (whatever was measured is kept).

``--json FILE`` (tune, bench, profile, check) writes a versioned report (``tuner.report``
documents the schema); ``--trace FILE`` (profile) a Chrome trace that Perfetto opens;
``--plot FILE.png|.svg`` (bench, profile, show) a picture (needs ``convtune[plot]``).
Diagnostics go through ``logging.getLogger("convtune")``, printed to stderr here.
"""
import argparse
import json
import logging
import math
import os
import sys
import time

from . import onnx_cli

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130
NOISY_SPREAD = 0.25      # relative IQR above which a measurement is reported as noisy


log = logging.getLogger("convtune")


class _StderrHandler(logging.Handler):
    """``convtune: error: ...`` / ``convtune: warning: ...`` / ``convtune: ...`` on the
    sys.stderr of the moment (tests swap it)."""

    def emit(self, record):
        prefix = "error: " if record.levelno >= logging.ERROR else (
            "warning: " if record.levelno >= logging.WARNING else "")
        try:
            print(f"convtune: {prefix}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover
            self.handleError(record)


def _setup_logging():
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _err(msg):
    log.error(msg)


# -------------------------------------------------------------------- arguments
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def _thread_count(text):
    """A positive int no larger than engine.threads.max_threads()."""
    from engine.threads import THREADS_PER_CPU, max_threads
    v = _positive_int(text)
    if v > max_threads():
        raise argparse.ArgumentTypeError(f"expected at most {max_threads()} threads "
                                         f"({THREADS_PER_CPU} per CPU), got {text!r}")
    return v


def _threads_list(text):
    """"2" or "1,2": thread counts, each a positive int (at most max_threads())."""
    vals = [_thread_count(v) for v in str(text).split(",") if v.strip()]
    if not vals:
        raise argparse.ArgumentTypeError(f"expected a thread count or a comma list, got {text!r}")
    return vals


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def build_parser():
    ap = argparse.ArgumentParser(
        prog="convtune", description="Autotune convtune's convolution algorithms per layer shape "
        "and keep the fastest accurate choice in a plan file.",
        epilog="Exit status: 0 ok, 1 check excess / shape with no accurate algorithm, "
               "2 usage, config, plan-file or weights-file error, 130 interrupted.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("tune", help="time every algorithm per shape and write the fastest accurate one",
                       description="For each convolution and pooling shape of the configs: check every "
                       "applicable algorithm against a float64 reference, time the accurate ones "
                       "and write the fastest into the plan. Shapes already tuned at an equal or "
                       "higher level (with the same tolerance) are skipped unless --force.")
    t.add_argument("configs", nargs="*", metavar="CONFIG")
    _add_model_args(t)
    onnx_cli.add_arguments(t)
    t.add_argument("--plan", help="plan file (default: CONVTUNE_PLAN, else the user cache directory)")
    t.add_argument("--threads", type=_threads_list, default=None,
                   help="thread count(s) to tune for, e.g. 2 or 1,2 (default: engine.get_num_threads())")
    t.add_argument("--level", choices=("estimate", "measure", "exhaustive"), default="measure",
                   help="estimate: the heuristic, nothing timed; measure (default): accuracy gate + "
                   "interleaved timing; exhaustive: longer measurement, top 3 always re-measured")
    t.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                   help="stop cleanly after this many seconds (what is done is kept)")
    t.add_argument("--tolerance", type=_positive_float,
                   help="maximum relative error accepted (default: the engine's default per dtype, "
                   "1e-4 for float32, 1e-10 for float64)")
    t.add_argument("--force", action="store_true",
                   help="re-tune shapes already in the plan; replace an unusable plan file "
                   "(it is moved aside to PLAN.bak-..., never deleted)")
    t.add_argument("--batch", type=_positive_int, help="override the configs' batch size")
    t.add_argument("--dtype", choices=("float32", "float64"), help="override the configs' dtype")
    t.add_argument("--reps", type=_positive_int,
                   help="timed samples per candidate (default: 7 at measure, 15 at exhaustive)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--dask", metavar="SCHEDULER_ADDRESS",
                   help="tune on this Dask cluster's workers (e.g. tcp://10.0.0.5:8786), one job per "
                   "machine at a time, one plan per kind of machine (needs convtune[dask])")
    t.add_argument("--json", metavar="FILE", dest="json_out",
                   help="write a machine-readable report of what was tuned (see tuner/report.py)")

    s = sub.add_parser("show", help="print a plan as a table")
    s.add_argument("plan", nargs="?", metavar="PLAN", help="plan file (default: the active plan)")
    s.add_argument("--json", action="store_true", help="print the raw JSON instead")
    s.add_argument("--plot", metavar="FILE.png|.svg",
                   help="draw each shape's candidates' times (log scale), the chosen one marked")

    b = sub.add_parser("bench", help="planned choice vs every algorithm vs PyTorch, per layer")
    b.add_argument("config", nargs="?", metavar="CONFIG")
    _add_model_args(b)
    onnx_cli.add_arguments(b)
    b.add_argument("--plan", help="plan file (default: the active plan)")
    b.add_argument("--threads", type=_thread_count, default=None)
    b.add_argument("--reps", type=_positive_int, default=7, help="samples per candidate (default 7)")
    b.add_argument("--batch", type=_positive_int)
    b.add_argument("--dtype", choices=("float32", "float64"))
    b.add_argument("--json", metavar="FILE", dest="json_out", help="write a machine-readable report")
    b.add_argument("--plot", metavar="FILE.png|.svg",
                   help="draw per layer each algorithm's time (log scale), the planned one marked, "
                   "and PyTorch's")

    pr = sub.add_parser("profile", help="where a model's time goes: whole latency and a per-layer table",
                        description="Run a model (--model MODULE:FUNCTION, or a CONFIG's shapes) on "
                        "random input: whole-model min/median/max latency, then per leaf layer its "
                        "median time, share, effective GFLOP/s, the algorithm and where the decision "
                        "came from (plan/heuristic/forced) with its kernel parameters, and PyTorch's "
                        "time for the same layer when torch is installed. Timing hooks are installed "
                        "for the per-layer runs only and removed afterwards.")
    pr.add_argument("config", nargs="?", metavar="CONFIG",
                    help="a config file (its distinct shapes, each run once per layer using it)")
    pr.add_argument("--model", metavar="MODULE:FUNCTION",
                    help='a model, e.g. "engine.models:resnet18" (fused unless --no-fuse)')
    pr.add_argument("--input", metavar="N,C,H,W", default="1,3,224,224",
                    help="the model's input shape (default 1,3,224,224)")
    pr.add_argument("--threads", type=_thread_count, default=None)
    pr.add_argument("--repeat", type=_positive_int, default=10, help="timed runs (default 10)")
    pr.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    pr.add_argument("--plan", help='plan file, or "none" for the heuristic (default: the active plan)')
    pr.add_argument("--no-fuse", action="store_true", help="profile the model as built (BatchNorm, "
                    "ReLU as their own layers)")
    pr.add_argument("--no-torch", action="store_true", help="do not time PyTorch per layer")
    pr.add_argument("--json", metavar="FILE", dest="json_out", help="write a machine-readable report")
    pr.add_argument("--trace", metavar="FILE", help="write a Chrome trace (open in ui.perfetto.dev)")
    pr.add_argument("--plot", metavar="FILE.png|.svg", help="draw the per-layer time breakdown")

    c = sub.add_parser("check", help="parity regression: every algorithm vs float64 and PyTorch")
    c.add_argument("configs", nargs="*", metavar="CONFIG")
    _add_model_args(c)
    c.add_argument("--tolerance", type=_positive_float,
                   help="one tolerance for every algorithm (default: each algorithm's own, "
                   "engine.registry.TOLERANCE)")
    c.add_argument("--json", metavar="PATH", help="write a machine-readable report (see tuner/report.py)")
    c.add_argument("--threads", type=_thread_count, default=None)
    c.add_argument("--batch", type=_positive_int)
    c.add_argument("--dtype", choices=("float32", "float64", "both"),
                   help="dtype(s) to check (default: the configs')")

    m = sub.add_parser("merge", help="merge plan files into OUT",
                       description="Merge the entries of IN... (and OUT, if it exists) into OUT. "
                       "For one shape the higher tuning level wins, then the more recent. All "
                       "inputs must come from one kind of machine and a compatible engine.")
    m.add_argument("out", metavar="OUT")
    m.add_argument("inputs", nargs="+", metavar="IN")
    m.add_argument("--force", action="store_true",
                   help="skip unusable or foreign inputs instead of failing; replace an unusable OUT")

    v = sub.add_parser("convert", help="convert a weights file (.pth, .safetensors, .npz) to .npz or .safetensors",
                       description="Read IN with engine.load_weights (a PyTorch .pth in the zip or legacy "
                       "format, .safetensors or .npz, told by content; nothing in it is executed) and write "
                       "its tensors to OUT, whose extension (.npz or .safetensors) chooses the format. "
                       ".npz has no bfloat16/float8: those are widened to float32 (exactly).")
    v.add_argument("input", metavar="IN")
    v.add_argument("output", metavar="OUT")
    v.add_argument("--key", help="the entry of a nested checkpoint to take, e.g. state_dict "
                   "(default: the only entry that holds tensors)")
    v.add_argument("--prefix", help='strip this prefix from the names that start with it, e.g. "module."')

    sub.add_parser("info", help="hardware fingerprint, build, threads, BLAS, the plan in use and why")
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    _setup_logging()
    if getattr(args, "plot", None):
        from . import plot
        try:
            plot.check_path(args.plot)
            plot._figure(1, 1)
        except ValueError as e:
            _err(str(e))
            return EXIT_USAGE
        except plot.PlotUnavailable as e:
            _err(str(e))
            return EXIT_USAGE
    try:
        return {"tune": cmd_tune, "show": cmd_show, "bench": cmd_bench, "check": cmd_check,
                "merge": cmd_merge, "convert": cmd_convert, "info": cmd_info,
                "profile": cmd_profile}[args.command](args)
    except KeyboardInterrupt:
        print("\nconvtune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:  # `convtune show | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except OSError as e:     # a file or directory the user named: one line, not a traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _err(f"{where}{e.strerror or e}")
        return EXIT_USAGE
    except MemoryError:
        _err("out of memory: use a smaller --batch, --input or config")
        return EXIT_USAGE


# ------------------------------------------------------------------------ shared
def _add_model_args(parser):
    parser.add_argument("--model", metavar="MODULE:FUNCTION",
                        help='also every layer shape of a model, e.g. "engine.models:resnet18" '
                        "(built and run once on zeros to collect its shapes)")
    parser.add_argument("--input", metavar="N,C,H,W", default="1,3,224,224",
                        help="the model's input shape (default 1,3,224,224)")


def _load_configs(paths, batch=None, dtype=None, args=None):
    from .configs import ConfigError, load_all
    model = getattr(args, "model", None)
    if not paths and not model and not getattr(args, "onnx", None):
        _err("give at least one CONFIG file, --model MODULE:FUNCTION or --onnx MODEL.onnx")
        return None
    try:
        onnx_model = onnx_cli.model_entry(args)
        return load_all(paths, batch, dtype, models=([(model, args.input)] if model else []) +
                        ([onnx_model] if onnx_model else []))
    except ConfigError as e:
        _err(str(e))
        return None


def _keep_aside(P, path, entry, error):
    """After a lock timeout, keep the measurement just made in a plan of its own beside
    ``path`` (no tuned shape is lost); the text to add to the error."""
    if not isinstance(error, P.PlanLockTimeout):
        return ""
    side = f"{path}.pending-{os.getpid()}.json"
    try:
        P.write_entries(side, [entry], lock_timeout=0)
    except (P.PlanError, OSError):
        return ""
    return f", and this one in {side} (convtune merge {path} {side})"


def _say_waiting(message):
    log.info(message)


def _report_skipped(plan):
    """One line on stderr when a plan has entries that failed validation."""
    if plan.skipped:
        n = len(plan.skipped)
        log.warning(f"{plan.path}: {n} invalid entr{'y' if n == 1 else 'ies'} "
                    f"skipped (left in the file as written): {plan.skipped[0]}"
                    + (f" (and {n - 1} more)" if n > 1 else ""))


def _plan_path(explicit):
    from engine import plan
    if explicit:
        return os.path.abspath(explicit), "--plan"
    path, why = plan.active_source()
    return path, why


def _shape_label(shape):
    from engine.plan import describe_key
    return describe_key(shape.params.key())


def _table(rows, headers, aligns=None):
    """Plain-text table; ``aligns`` per column '<' or '>'."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    aligns = aligns or ["<"] * len(headers)
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(aligns, widths))
    lines = [fmt.format(*headers), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _fmt_err(e):
    return "-" if e is None else f"{e:.1e}"


def _write_report_doc(path, doc):
    """Write a made report; False (after one error line) when it cannot be."""
    from . import report
    try:
        report.write(path, doc)
    except OSError as e:
        _err(f"--json {path}: cannot write the report: {e.strerror or e}")
        return False
    return True


def _write_report(path, command, settings, **fields):
    """Write the ``--json`` report; False (after one error line) when it cannot be."""
    from . import report
    return _write_report_doc(path, report.make(command, settings, **fields))


def _write_plot(path, draw):
    """Draw with ``draw(path)``; False (after one error line) when it cannot."""
    from . import plot
    try:
        draw(path)
    except plot.PlotUnavailable as e:
        _err(str(e))
        return False
    except OSError as e:
        _err(f"--plot {path}: cannot write the picture: {e.strerror or e}")
        return False
    print(f"plot written to {path}")
    return True


def _next_steps(path, args):
    """What to do after tuning: where the plan is and the next commands."""
    from engine import plan as P
    target = (args.configs[0] if args.configs else
              f"--model {args.model} --input {args.input}" if args.model else "CONFIG")
    default = path == P.default_path()
    plan_arg = "" if default else f" --plan {path}"
    lines = [f"the plan is {path}" + (" (the default location: models use it with nothing to set)"
                                      if default else ""),
             "next:",
             ]
    cmds = [(f"convtune show{'' if default else ' ' + path}", "what was chosen, per shape"),
            (f"convtune bench {target}{plan_arg}", "planned choice vs every algorithm vs PyTorch"),
            (f"convtune profile {target}{plan_arg}", "where a model's time goes, per layer")]
    if not default:
        cmds.append((f"CONVTUNE_PLAN={path} python app.py", "use it (or engine.use_plan(path) in code)"))
    width = max(len(c) for c, _ in cmds)
    lines += [f"  {c:<{width}}   # {why}" for c, why in cmds]
    return "\n".join(lines)


# -------------------------------------------------------------------------- tune
def cmd_tune(args):
    """``convtune tune``: open the plan, select the jobs, tune them with a progress bar,
    report."""
    import engine
    from . import search

    loaded = _load_configs(args.configs, args.batch, args.dtype, args)
    if loaded is None:
        return EXIT_USAGE
    configs, shapes = loaded
    path, why = _plan_path(args.plan)
    if path is None:
        _err(f"no plan file to write to ({why}); pass --plan PATH")
        return EXIT_USAGE
    if args.dask:
        return _tune_dask(args, configs, shapes, path)
    existing = _open_plan_for_writing(path, args.force)
    if existing is None:
        return EXIT_USAGE
    threads_list = args.threads or [engine.get_num_threads()]
    jobs, skipped = search.pending_jobs(existing, shapes, threads_list, args.level, args.tolerance,
                                        args.force)
    print(f"convtune tune: {len(shapes)} distinct shape(s) in {', '.join(c.name for c in configs)}; "
          f"threads {threads_list}; level {args.level}; plan {path}")
    if skipped:
        print(f"  {skipped} already tuned at level >= {args.level} (use --force to re-tune)")
    run = _TuneRun(args, path)
    if jobs:
        run.tune(jobs)
    else:
        print("nothing to do")
    return run.finish(_tune_settings(args, threads_list), skipped)


def _open_plan_for_writing(path, force):
    """The plan file tuning will merge into (``plan.check_writable``: an unusable file is
    refused, or moved aside with --force), or None after one error line."""
    from engine import plan as P
    try:
        existing = P.check_writable(path, force, on_move=lambda moved: print(
            f"moved the unusable plan {path} aside to {moved}"))
    except P.PlanError as e:
        _err(str(e))
        return None
    _report_skipped(existing)
    return existing


def _tune_settings(args, threads_list):
    """The ``--json`` report's record of what was asked."""
    return {"configs": list(args.configs), "model": args.model, "onnx": args.onnx,
            "input": args.input if args.model else None, "threads": threads_list,
            "level": args.level, "tolerance": args.tolerance, "budget_s": args.budget,
            "force": args.force, "batch": args.batch, "dtype": args.dtype, "reps": args.reps}


class _Progress:
    """A tqdm bar counted in estimated work (FLOPs x candidates, so the ETA holds when a
    network's first layers are much bigger than its last ones), or plain lines when
    tqdm is absent or the bar is off."""

    def __init__(self, total, disable):
        self.bar = None
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, disable=True if disable else None, dynamic_ncols=True,
                            leave=False, bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                                    "[{elapsed}<{remaining}{postfix}]")
        except ImportError:  # pragma: no cover
            pass
        self.live = self.bar is not None and not self.bar.disable

    def say(self, text):
        """A line above the bar."""
        if self.live:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def job(self, text):
        if self.bar is not None:
            self.bar.set_description_str(text)

    def step(self, text):
        """What the current job is doing (the tuner's on_step)."""
        if self.live:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.refresh()

    def advance(self, cost):
        if self.bar is not None:
            self.bar.update(cost)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _TuneRun:
    """One ``convtune tune`` loop: each job tuned (``search.tune_shape``) and written to
    the plan as soon as it is measured, so an interrupted run keeps what it finished."""

    def __init__(self, args, path):
        self.args, self.path = args, path
        self.results, self.failures, self.noisy = [], [], []
        self.written = self.failed = 0
        self.status = EXIT_OK
        self.ran = False
        self.start = time.monotonic()

    def tune(self, jobs):
        from . import timing
        args = self.args
        self.ran = True
        deadline = time.monotonic() + args.budget if args.budget else None
        costs = [_work(s, args.level) for s, _, _ in jobs]
        progress = _Progress(sum(costs), args.no_progress)
        done = 0
        try:
            for (s, threads, tol), cost in zip(jobs, costs):
                progress.job(f"[{done + 1}/{len(jobs)}] {_shape_label(s)} t{threads}")
                if deadline is not None and time.monotonic() > deadline:
                    raise timing.DeadlineReached()
                if not self._tune_one(s, threads, tol, deadline, progress):
                    self.status = EXIT_USAGE
                    return
                done += 1
                progress.advance(cost)
        except timing.DeadlineReached:
            progress.say(f"budget of {args.budget:g} s reached: {len(jobs) - done} shape(s) left "
                         f"untuned; re-run to continue (tuned shapes are skipped)")
        except KeyboardInterrupt:
            progress.close()
            print(f"\ninterrupted: {self.written} shape(s) tuned and kept in {self.path}; "
                  f"re-run to continue", file=sys.stderr)
            self.status = EXIT_INTERRUPT
        finally:
            progress.close()

    def _tune_one(self, s, threads, tol, deadline, progress):
        """Tune and record one job; False when the plan could not be written."""
        from engine import plan as P
        from . import search
        label = _shape_label(s)
        entry, msg = search.tune_shape(s, threads, self.args.level, tol, deadline, progress.step,
                                       reps=self.args.reps)
        self.results.append({"shape": label, "key": P.params_key(s.params, threads),
                             "layers": s.names[:8], "threads": threads,
                             "algorithm": entry["algorithm"] if entry else None,
                             "params": entry.get("params", {}) if entry else {},
                             "time_s": entry.get("time_s") if entry else None, "message": msg})
        if entry is None:
            self.failed += 1
            self.failures.append((label, threads, msg))
            progress.say(f"  {label} t{threads}: REJECTED: {msg}")
            return True
        entry["layers"] = s.names[:8]
        try:
            P.write_entries(self.path, [entry], prefer_new=self.args.force, on_wait=_say_waiting)
        except P.PlanError as e:
            _err(f"{e}. {self.written} shape(s) tuned earlier are kept in {self.path}"
                 f"{_keep_aside(P, self.path, entry, e)}; re-run to tune the rest")
            return False
        self.written += 1
        chosen = entry["candidates"][0] if entry.get("candidates") else {}
        if (chosen.get("spread") or 0) > NOISY_SPREAD:
            self.noisy.append(label)
            msg += f"  [noisy: spread ±{chosen['spread']:.0%}]"
        progress.say(f"  {label} t{threads}: {msg}")
        return True

    def finish(self, settings, skipped):
        """Print the summary (unless the run stopped early) and write the --json report;
        the exit status."""
        elapsed = time.monotonic() - self.start
        if self.status == EXIT_OK and self.ran:
            self._summary(elapsed)
        if self.args.json_out and not _write_report(
                self.args.json_out, "tune", settings, plan=self.path, written=self.written,
                failed=self.failed, skipped=skipped, elapsed_s=elapsed, shapes=self.results,
                noisy=list(self.noisy), exit_status=self.status):
            return EXIT_USAGE
        return self.status

    def _summary(self, elapsed):
        print(f"tuned {self.written} shape(s) in {elapsed:.1f} s into {self.path}")
        if self.noisy:
            try:
                load = f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
            except OSError:  # pragma: no cover
                load = ""
            log.warning(f"{len(self.noisy)} shape(s) were measured with a spread over "
                        f"±{NOISY_SPREAD:.0%}: the machine looks busy{load}, so close candidates "
                        f"may be ranked wrongly. Re-tune on a quiet machine with --force.")
        if self.failures:
            tol = f"{self.args.tolerance:g}" if self.args.tolerance is not None else "the default"
            print(f"{self.failed} shape(s) have no algorithm within tolerance {tol}; they keep "
                  f"using the heuristic (no plan entry was written):", file=sys.stderr)
            for label, threads, msg in self.failures:
                print(f"  {label} t{threads}: {msg}", file=sys.stderr)
            self.status = EXIT_FAIL
        if self.written:
            print(_next_steps(self.path, self.args))


def _tune_dask(args, configs, shapes, path):
    """``convtune tune --dask ADDRESS``: the shapes tuned on the cluster's workers
    (``tuner.distributed.tune``), a plan per kind of machine."""
    try:
        from distributed import Client
        from . import distributed as dist
    except ImportError as e:
        _err(f"--dask needs Dask: pip install convtune[dask] ({e})")
        return EXIT_USAGE
    from engine import plan as P
    try:
        client = Client(args.dask, timeout=30)
    except (OSError, TimeoutError, ValueError) as e:
        _err(f"cannot connect to the Dask scheduler {args.dask}: {e}")
        return EXIT_USAGE
    names = ", ".join(c.name for c in configs)
    print(f"convtune tune: {len(shapes)} distinct shape(s) in {names} on the Dask cluster {args.dask}; "
          f"level {args.level}; plan {path}", flush=True)
    try:
        summary = dist.tune(shapes, client, path, threads=args.threads, level=args.level,
                            tolerance=args.tolerance, force=args.force, reps=args.reps,
                            timeout=args.budget,
                            on_result=lambda r: print(f"  {r['label']} t{r['threads']} on {r['host']} "
                                                      f"(pid {r['pid']}): {r['message']}", flush=True))
    except P.PlanError as e:
        _err(str(e))
        return EXIT_USAGE
    finally:
        client.close()
    if summary["skipped"]:
        print(f"  {summary['skipped']} already tuned at level >= {args.level} (use --force to re-tune)")
    for fid, p in summary["plans"].items():
        print(f"plan for {fid}: {p}")
    print(f"tuned {summary['written']} shape(s); {summary['resubmitted']} job(s) resubmitted after "
          f"losing their worker")
    if summary["untuned"]:
        print(f"{len(summary['untuned'])} shape(s) left untuned (budget reached or no worker of their "
              f"kind); re-run to continue", file=sys.stderr)
    if summary["failed"]:
        print(f"{len(summary['failed'])} shape(s) have no plan entry:", file=sys.stderr)
        for label, threads, msg in summary["failed"]:
            print(f"  {label} t{threads}: {msg}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _work(shape, level):
    """Rough relative cost of tuning ``shape``: arithmetic x candidates, plus a floor for
    the fixed per-candidate timing cost (samples have a minimum length)."""
    p = shape.params
    if level == "estimate":
        return 1.0
    if hasattr(p, "flops"):
        from engine import registry
        return (p.flops / 2e9 + 0.5) * len(registry.applicable(p))
    n, c, oh, ow = p.output_shape
    return n * c * oh * ow * p.kernel[0] * p.kernel[1] / 2e9 + 0.5


# -------------------------------------------------------------------------- show
def cmd_show(args):
    """``convtune show``: the plan's header and one row per entry (or its raw JSON)."""
    from engine import plan as P

    path = os.path.abspath(args.plan) if args.plan else P.active_path()
    if path is None:
        _err(f"no plan in use ({P.active_source()[1]}); name one: convtune show PLAN")
        return EXIT_USAGE
    plan = P.read_plan(path)
    if plan.status in ("missing", "unreadable"):
        _err(f"{path} {P.status_text(plan)}")
        return EXIT_USAGE
    if args.json and not _print_raw_plan(path):
        return EXIT_USAGE
    if plan.status == "corrupt":
        _err(f"{path} {P.status_text(plan)}")
        return EXIT_USAGE
    if args.json:
        return EXIT_OK
    _report_skipped(plan)
    _print_plan_header(plan)
    entries = sorted(plan.entries.values(),
                     key=lambda e: (e["key"].get("op") != "conv2d", e["key"].get("threads"),
                                    -(e["key"].get("H", 0) * e["key"].get("W", 0)), repr(e["key"])))
    print(_table([_plan_row(e) for e in entries],
                 ["shape", "algorithm", "time", "spread", "runner-up", "margin", "error",
                  "rejected", "level"], ["<", "<", ">", ">", "<", ">", ">", ">", "<"]))
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    if args.plot:
        from . import plot
        if not _write_plot(args.plot, lambda p: plot.plot_algorithms(
                plan_groups(entries), p, f"plan {path}: candidates per shape")):
            return EXIT_USAGE
    return EXIT_OK


def _print_raw_plan(path):
    """``show --json``: the file's bytes as they are; False after an error line."""
    from engine import plan as P
    try:
        raw, _ = P.read_bytes(path)
    except OSError as e:
        _err(f"{path} cannot be read ({e})")
        return False
    sys.stdout.write(raw.decode("utf-8", "replace"))
    return True


def _print_plan_header(plan):
    from engine import plan as P
    h = plan.header
    hw = h.get("hardware", {})
    print(f"plan {plan.path}")
    print(f"  engine {h.get('engine_version')}, format {h.get('format_version')}, updated {h.get('updated')}")
    print(f"  hardware: {hw.get('cpu')}, {hw.get('cores')} cores, ISA {', '.join(hw.get('isa') or []) or '-'}, "
          f"caches {', '.join(f'{k} {v}' for k, v in (hw.get('caches') or {}).items()) or '-'}")
    if not plan.trusted:
        print(f"  NOT TRUSTED here: it {P.status_text(plan)}; its entries are shown but not used")


def _plan_row(e):
    """One entry as a ``show`` row: the choice, its time and spread, the runner-up and
    its margin, the error, how many candidates the gate rejected, the level."""
    from engine import plan as P
    from .timing import format_time
    best = e.get("time_s")
    candidates = e.get("candidates", [])
    others = [c for c in candidates if c.get("status") == "ok"
              and c.get("algorithm") != e["algorithm"] and c.get("median_s")]
    ru = min(others, key=lambda c: c["median_s"]) if others else None
    chosen = next((c for c in candidates if c.get("algorithm") == e["algorithm"]), {})
    rejected = sum(1 for c in candidates if str(c.get("status", "")).startswith("rejected"))
    return [P.describe_key(e["key"]), e["algorithm"], format_time(best) if best else "-",
            f"±{chosen['spread']:.0%}" if chosen.get("spread") is not None else "-",
            ru["algorithm"] if ru else "-",
            f"+{ru['median_s'] / best - 1:.0%}" if ru and best else "-",
            _fmt_err(chosen.get("error")), str(rejected) if rejected else "-", e.get("level", "?")]


def plan_groups(entries):
    """``plot.plot_algorithms`` groups from plan entries: each timed candidate's median
    (ms), the plan's choice marked."""
    from engine.plan import describe_key
    from .search import candidate_label
    groups = []
    for e in entries:
        times = {candidate_label(c): c["median_s"] * 1e3 for c in e.get("candidates", [])
                 if c.get("status") == "ok" and c.get("median_s")}
        groups.append({"label": describe_key(e["key"]), "times_ms": times, "torch_ms": None,
                       "chosen": candidate_label({"algorithm": e["algorithm"],
                                                  "params": e.get("params") or {}})})
    return groups


# ------------------------------------------------------------------------- bench
def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def cmd_bench(args):
    """``convtune bench``: per shape, the planned operator, every algorithm forced and
    PyTorch, timed side by side; a table, geometric means, --json and --plot."""
    if args.onnx:       # the whole model end to end, against ONNX Runtime
        return onnx_cli.bench(args)
    import engine
    from engine import plan as P
    from . import timing

    loaded = _load_configs([args.config] if args.config else [], args.batch, args.dtype, args)
    if loaded is None:
        return EXIT_USAGE
    _, shapes = loaded
    threads = args.threads or engine.get_num_threads()
    engine.set_num_threads(threads)
    if args.plan:
        engine.use_plan(os.path.abspath(args.plan))
    plan = P.current()
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    print(f"convtune bench {args.config}: threads {threads}; plan "
          f"{plan.path + ('' if plan.trusted else ' (' + plan.status + ', ignored)') if plan else 'none'}; "
          f"PyTorch {torch.__version__ if torch else 'not installed'}")
    algo_names = engine.algorithms()
    layers = [_bench_shape(s, threads, torch, args.reps) for s in shapes]
    ratios_best = [l["planned_over_fastest"] for l in layers]
    ratios_torch = [l["torch_over_planned"] for l in layers if l["torch_over_planned"]]
    headers = ["layer", "planned", "planned ms"] + [f"{n} ms" for n in algo_names] + \
              ["torch ms", "fastest", "planned/fastest", "torch/planned"]
    print(_table([_bench_row(l, algo_names) for l in layers], headers,
                 ["<", "<"] + [">"] * (len(headers) - 2)))
    print(f"planned/fastest: geometric mean {timing.geomean(ratios_best):.3f}, worst {max(ratios_best):.3f} "
          f"(1.00 = the planned choice is the fastest algorithm)")
    if ratios_torch:
        print(f"torch/planned: geometric mean {timing.geomean(ratios_torch):.3f} (> 1: convtune faster)")
    settings = {"config": args.config, "model": args.model, "input": args.input if args.model else None,
                "plan": plan.path if plan else None, "plan_trusted": bool(plan and plan.trusted),
                "threads": threads, "reps": args.reps, "batch": args.batch, "dtype": args.dtype,
                "torch": torch.__version__ if torch else None}
    if args.json_out and not _write_report(
            args.json_out, "bench", settings, layers=layers,
            geomean_planned_over_fastest=timing.geomean(ratios_best),
            geomean_torch_over_planned=timing.geomean(ratios_torch) if ratios_torch else None):
        return EXIT_USAGE
    if args.plot:
        from . import plot
        if not _write_plot(args.plot, lambda p: plot.plot_algorithms(
                bench_groups(layers), p, f"convtune bench {args.config or args.model}: "
                f"{threads} thread(s)")):
            return EXIT_USAGE
    return EXIT_OK


def _bench_shape(s, threads, torch, reps):
    """Time one shape: "planned" is the operator the dispatch builds (plan or heuristic);
    beside it every applicable algorithm forced, when there is a choice at all, and
    PyTorch. The report's record of the shape."""
    from engine import dispatch
    from . import search, timing
    prep = search.Prepared(s, threads)
    choice = dispatch.choose(s.params, None, threads)
    fns = {"planned": prep.runner(choice.algorithm, choice.params)}
    if len(prep.names) > 1:
        fns.update((n, prep.runner(n)) for n in prep.names)
    if torch is not None:
        fns["torch"] = search.torch_runner(torch, s, prep.x, prep.w, prep.b)
    stats = timing.measure(fns, reps=reps, min_sample_s=0.01, warmup=1)
    med = {n: st.median for n, st in stats.items()}
    algos = [n for n in med if n not in ("planned", "torch")]
    best = min(algos, key=med.get) if algos else "planned"
    return {"layer": _shape_label(s), "shape": s.params.key(), "layers": s.names[:8],
            "planned": choice.algorithm, "source": choice.source,
            "times_ms": {n: med[n] * 1e3 for n in med}, "fastest": best if algos else None,
            "planned_over_fastest": med["planned"] / med[best],
            "torch_over_planned": med["torch"] / med["planned"] if "torch" in med else None}


def _bench_row(layer, algo_names):
    t = layer["times_ms"]
    ms = [f"{t[n]:.3f}" if n in t else "-" for n in algo_names + ["torch"]]
    r_torch = layer["torch_over_planned"]
    return ([layer["layer"], f"{layer['planned']} ({layer['source']})", f"{t['planned']:.3f}"] + ms +
            [layer["fastest"] or "-", f"{layer['planned_over_fastest']:.2f}",
             f"{r_torch:.2f}" if r_torch else "-"])


def bench_groups(layers):
    """``plot.plot_algorithms`` groups from a bench report's "layers": each algorithm's
    time (forced), the planned one marked, PyTorch's; a layer with one kernel (pooling)
    shows its planned call under that kernel's name."""
    groups = []
    for r in layers:
        times = {n: t for n, t in r["times_ms"].items() if n not in ("planned", "torch")}
        groups.append({"label": r["layer"], "chosen": r["planned"],
                       "times_ms": times or {r["planned"]: r["times_ms"]["planned"]},
                       "torch_ms": r["times_ms"].get("torch")})
    return groups


# ----------------------------------------------------------------------- profile
def _parse_input(text):
    """"N,C,H,W" -> a tuple of four positive ints, or None after one error line."""
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0:
        _err(f"--input: expected four positive integers N,C,H,W, got {text!r}")
        return None
    return shape


def _profile_target(args):
    """(model, input array or None, description) for ``convtune profile``, or None after
    one error line."""
    import numpy as np

    import engine
    from .model_shapes import resolve_model
    from .profile import ConfigModel

    if bool(args.model) == bool(args.config):
        _err("give either a CONFIG file or --model MODULE:FUNCTION (one of them)")
        return None
    if args.config:
        from .configs import ConfigError, load
        try:
            shapes = load(args.config).shapes
        except ConfigError as e:
            _err(str(e))
            return None
        return ConfigModel(shapes), None, f"{args.config} ({len(shapes)} distinct shapes)"
    shape = _parse_input(args.input)
    if shape is None:
        return None
    try:
        model = resolve_model(args.model)
    except (ValueError, TypeError) as e:
        _err(f"--model {args.model}: {e}")
        return None
    convs = [m for m in model.modules() if isinstance(m, engine.Conv2d)]
    dtype = convs[0].dtype if convs else np.dtype(np.float32)
    if not args.no_fuse:
        model = engine.fuse(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    try:
        model(x)
    except (ValueError, TypeError) as e:
        _err(f"--model {args.model} cannot run on --input {args.input}: {e}")
        return None
    return model, x, f"{args.model} on {args.input} {dtype}, {'unfused' if args.no_fuse else 'fused'}"


def cmd_profile(args):
    """``convtune profile``: open the plan, build the model, time it whole and per layer
    (against PyTorch), print the table and write --json / --trace / --plot."""
    import engine
    from engine import plan as P
    from . import profile as prof
    from .report import make

    if args.warmup < 0:
        _err(f"--warmup: expected an int >= 0, got {args.warmup}")
        return EXIT_USAGE
    if not _use_profile_plan(args.plan):
        return EXIT_USAGE
    threads = args.threads or engine.get_num_threads()
    engine.set_num_threads(threads)
    target = _profile_target(args)
    if target is None:
        return EXIT_USAGE
    model, x, what = target
    torch = None if args.no_torch else _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    plan = P.current()
    print(f"convtune profile {what}")
    print(f"  threads {threads}; {args.repeat} timed runs after {args.warmup} warm-up; plan "
          f"{_plan_in_use_text(plan)}; PyTorch "
          f"{torch.__version__ if torch else ('not timed' if args.no_torch else 'not installed')}")
    result = prof.profile_model(model, x, repeat=args.repeat, warmup=args.warmup, torch=torch)
    _print_profile(result, args, threads)
    settings = {"model": args.model, "config": args.config,
                "input": args.input if args.model else None, "threads": threads,
                "repeat": args.repeat, "warmup": args.warmup, "plan": result["plan"],
                "plan_status": plan.status if plan else None, "fused": not args.no_fuse,
                "torch": torch.__version__ if torch else None}
    doc = make("profile", settings, latency_ms=result["latency_ms"], layers=result["layers"],
               layers_total_ms=result["layers_total_ms"], plan=result["plan"])
    if args.json_out:
        if not _write_report_doc(args.json_out, doc):
            return EXIT_USAGE
        print(f"report written to {args.json_out}")
    if args.trace and not _write_trace(args.trace, prof.trace_events(result["calls"])):
        return EXIT_USAGE
    if args.plot and not _write_plot(args.plot, lambda p: _plot_profile(doc, p)):
        return EXIT_USAGE
    return EXIT_OK


def _use_profile_plan(arg):
    """``profile --plan``: "none" (the heuristic) or an existing file; False after an
    error line."""
    import engine
    from engine import plan as P
    if not arg:
        return True
    if arg.lower() == "none":
        engine.use_plan(None)
        return True
    path = os.path.abspath(arg)
    if P.read_plan(path).status == "missing":
        _err(f"--plan {arg}: no such file (\"none\" profiles the heuristic)")
        return False
    engine.use_plan(path)
    return True


def _plan_in_use_text(plan):
    from engine import plan as P
    if plan is None:
        return f"none ({P.active_source()[1]}): the heuristic decides"
    if plan.trusted:
        return f"{plan.path} ({len(plan.entries)} entries)"
    return f"{plan.path} ({plan.status}, ignored: the heuristic decides)"


def _print_profile(result, args, threads):
    from . import profile as prof
    lat = result["latency_ms"]
    print(f"whole model: min {lat['min']:.3f} ms, median {lat['median']:.3f} ms, max {lat['max']:.3f} ms "
          f"({args.repeat} runs, no hooks)")
    print(f"per layer (median of {args.repeat} runs with timing hooks), slowest first:")
    print(prof.format_table(result["layers"], lat["median"], min_percent=0.1))
    missing = [r for r in result["layers"] if r["no_plan_entry"]]
    if missing:
        hint = (f"--model {args.model} --input {args.input}" if args.model else args.config)
        print(f"{len(missing)} layer(s) marked '! no plan entry': the plan has no entry for their shape "
              f"at {threads} thread(s), so the heuristic decided; tune them with "
              f"`convtune tune {hint} --threads {threads} --plan {result['plan']}`")


def _write_trace(path, events):
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(events, f)
    except OSError as e:
        _err(f"--trace {path}: cannot write the trace: {e.strerror or e}")
        return False
    print(f"trace written to {path} (open it in https://ui.perfetto.dev)")
    return True


def _plot_profile(doc, path):
    from . import plot
    plot.plot_profile(doc, path)


# ------------------------------------------------------------------------- check
def cmd_check(args):
    """``convtune check``: every algorithm on every shape against the float64 reference
    and PyTorch, within its tolerance (``engine.registry.TOLERANCE``)."""
    import engine

    dtypes = [None] if not args.dtype else (["float32", "float64"] if args.dtype == "both" else [args.dtype])
    all_shapes = []
    for dt in dtypes:
        loaded = _load_configs(args.configs, args.batch, dt, args)
        if loaded is None:
            return EXIT_USAGE
        all_shapes += loaded[1]
    threads = args.threads or engine.get_num_threads()
    engine.set_num_threads(threads)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    results = [r for s in all_shapes for r in _check_shape(s, threads, torch, args.tolerance)]
    failures = sum(not r["ok"] for r in results)
    print(_table([_check_row(r) for r in results],
                 ["shape", "algorithm", "err vs f64", "diff vs torch", "tolerance", "result"],
                 ["<", "<", ">", ">", ">", "<"]))
    if args.json:
        settings = {"configs": args.configs, "threads": threads, "tolerance": args.tolerance,
                    "torch": torch.__version__ if torch else None, "model": args.model,
                    "input": args.input if args.model else None, "batch": args.batch,
                    "dtype": args.dtype}
        if not _write_report(args.json, "check", settings, results=results, failures=failures):
            return EXIT_USAGE
    if failures:
        print(f"FAILED: {failures} of {len(results)} algorithm/shape pair(s) exceed their tolerance",
              file=sys.stderr)
        return EXIT_FAIL
    print(f"all {len(results)} algorithm/shape pair(s) within tolerance"
          + ("" if torch else " (PyTorch not installed: checked against float64 only)"))
    return EXIT_OK


def _check_shape(s, threads, torch, tolerance=None):
    """Each applicable algorithm's operator on ``s``: its error against the float64
    reference and its difference from PyTorch (allowed PyTorch's own error on top),
    each within ``tolerance`` (default: the algorithm's documented one)."""
    import numpy as np
    from engine import registry
    from . import search
    prep = search.Prepared(s, threads)
    ref = prep.ref
    t_out = t_err = None
    if torch is not None:
        t_out = search.torch_runner(torch, s, prep.x, prep.w, prep.b)().numpy().astype(np.float64)
        t_err = search.rel_error(t_out, ref)
    results = []
    for name in prep.names:
        out = prep.output(name)
        err = search.rel_error(out, ref)
        tol = tolerance if tolerance is not None else registry.tolerance(name, s.params.dtype)
        vs_torch = None if t_out is None else search.rel_error(out, t_out)
        ok_ref = err <= tol
        ok_torch = vs_torch is None or vs_torch <= tol + (t_err or 0.0)
        results.append({
            "shape": s.params.key(), "layers": s.names, "algorithm": name, "tolerance": tol,
            "error_vs_float64": err if math.isfinite(err) else None,
            "diff_vs_torch": vs_torch if vs_torch is None or math.isfinite(vs_torch) else None,
            "torch_error_vs_float64": t_err, "ok": ok_ref and ok_torch,
            "result": "ok" if ok_ref and ok_torch else ("EXCESS vs float64" if not ok_ref else "EXCESS vs torch")})
    return results


def _check_row(r):
    from engine.plan import describe_key
    return [describe_key(r["shape"]), r["algorithm"], _fmt_err(r["error_vs_float64"]),
            _fmt_err(r["diff_vs_torch"]), f"{r['tolerance']:.0e}", r["result"]]


# ------------------------------------------------------------------------- merge
def cmd_merge(args):
    from engine import plan as P

    out = os.path.abspath(args.out)
    plans = []
    for path in args.inputs:
        pf = P.read_plan(path)
        if pf.status in ("missing", "unreadable", "corrupt", "incompatible"):
            msg = f"it {P.status_text(pf)}"
            if args.force:
                print(f"skipping {path}: {msg}", file=sys.stderr)
                continue
            _err(f"cannot merge {path}: {msg} (--force skips it)")
            return EXIT_USAGE
        plans.append(pf)
    if not plans:
        _err("no usable input plan")
        return EXIT_USAGE
    hw = plans[0].header.get("hardware")
    same = [pf for pf in plans if pf.header.get("hardware") == hw]
    if len(same) != len(plans):
        others = [pf.path for pf in plans if pf.header.get("hardware") != hw]
        if not args.force:
            _err(f"inputs come from different hardware: {plans[0].path} vs {', '.join(others)}; "
                 f"a plan holds one kind of machine (--force keeps only those matching the first)")
            return EXIT_USAGE
        for o in others:
            print(f"skipping {o}: other hardware than {plans[0].path}", file=sys.stderr)
        plans = same
    try:   # an unusable output is refused, or moved aside with --force, before merging
        P.check_writable(out, args.force, hw,
                         on_move=lambda m: print(f"moved the unusable {out} aside to {m}"))
    except P.PlanError as e:
        _err(str(e))
        return EXIT_USAGE
    entries = [e for pf in plans for e in pf.entries.values()]
    try:
        total = P.write_entries(out, entries, force=args.force, hardware=hw, on_wait=_say_waiting)
    except P.PlanError as e:
        _err(str(e))
        return EXIT_USAGE
    print(f"merged {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} from {len(plans)} plan(s) "
          f"into {out}: {total} entries")
    if hw != P.hardware_fingerprint():
        print(f"note: {out} describes other hardware ({(hw or {}).get('cpu')}) and is not trusted here")
    return EXIT_OK


# ----------------------------------------------------------------------- convert
def cmd_convert(args):
    from engine.nn import weights as W

    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".npz", ".safetensors"):
        _err(f"{args.output}: expected a name ending in .npz or .safetensors")
        return EXIT_USAGE
    try:
        kind = W.detect_format(args.input)
        tensors = W.remap_keys(W.load_weights(args.input, key=args.key), prefix=args.prefix)
        widened = [k for k, a in tensors.items() if a.dtype.type.__module__ != "numpy"] \
            if ext == ".npz" else []
        W.save_weights(tensors, args.output)
    except (ValueError, TypeError, KeyError, ImportError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        _err(" ".join(str(msg).split()))
        return EXIT_USAGE
    nbytes = sum(a.nbytes for a in tensors.values())
    print(f"wrote {len(tensors)} tensor(s), {nbytes / 2 ** 20:.1f} MiB, from {args.input} ({kind}) "
          f"to {args.output}")
    if widened:
        print(f"note: {len(widened)} bfloat16/float8 tensor(s) widened to float32 for .npz "
              f"(e.g. {widened[0]})")
    return EXIT_OK


# -------------------------------------------------------------------------- info
def cmd_info(args):
    import engine
    from engine import plan as P
    from engine.build import format_build_info

    print(f"convtune engine {engine.__version__}")
    hw = P.hardware_fingerprint()
    print(f"CPU:       {hw['cpu']} ({hw['machine']}), {hw['cores']} cores")
    print(f"caches:    {', '.join(f'{k} {v}' for k, v in hw['caches'].items()) or 'unknown'}")
    print(format_build_info())
    print(f"algorithms: {', '.join(engine.algorithms())}")
    path, why = P.active_source()
    if path is None:
        print(f"plan:      none ({why})")
    else:
        pf = P.read_plan(path)
        state = {"ok": f"in use, {len(pf.entries)} entries",
                 "missing": "does not exist yet (the heuristic decides; run `convtune tune`)"}.get(
            pf.status, f"NOT TRUSTED: it {P.status_text(pf)}")
        if pf.skipped:
            state += f"; {len(pf.skipped)} invalid entr{'y' if len(pf.skipped) == 1 else 'ies'} skipped"
        print(f"plan:      {path}\n           {why}; {state}")
    print(f"strict:    {'on (CONVTUNE_STRICT)' if P.strict_mode() else 'off'}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
