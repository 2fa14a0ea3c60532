"""``--onnx MODEL.onnx`` for ``convtune tune`` and ``convtune bench``.

``tune --onnx``: the model is imported with ``engine.from_onnx`` (fused, as it would
run), run once on zeros and each distinct convolution / pooling shape it runs is tuned,
exactly as for ``--model``. ``bench --onnx``: the whole model end to end, convtune
(fused graph) against ONNX Runtime when it is installed, on the same random input and
thread count, with the largest difference between their outputs.

The input shape is the model's declared one; ``--input N,C,H,W`` sets the dimensions
the model leaves free (a dynamic batch) and must agree with those it fixes.
"""
import os

DEFAULT_INPUT = "1,3,224,224"      # tuner.cli's --input default (what --model uses)


def add_arguments(parser):
    """Add ``--onnx`` to a sub-command that already has ``--input``."""
    parser.add_argument("--onnx", metavar="MODEL.onnx",
                        help="also every layer shape of an ONNX model (imported with "
                        "engine.from_onnx and run once on zeros); its input shape is the "
                        "model's own, --input fills the dimensions it leaves free")


def load(path, input_text):
    """(fused Graph, input shape) for ``--onnx path`` with ``--input input_text``;
    ``tuner.configs.ConfigError`` saying what is wrong otherwise."""
    import engine
    from .configs import ConfigError

    where = f"--onnx {path}"
    try:
        graph = engine.from_onnx(path)
    except (ValueError, TypeError, ImportError, OSError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if len(graph.graph_inputs) != 1:
        raise ConfigError(f"{where}: the model has {len(graph.graph_inputs)} inputs; only "
                          f"single-input models can be tuned and benchmarked here")
    name, declared, _ = graph.graph_inputs[0]
    try:
        given = tuple(int(v) for v in str(input_text).split(","))
    except ValueError:
        raise ConfigError(f"{where}: --input: expected integers N,C,H,W, got {input_text!r}") from None
    if min(given, default=0) <= 0:
        raise ConfigError(f"{where}: --input: expected positive integers, got {input_text!r}")
    if declared is None:
        shape = given
    else:
        explicit = input_text != DEFAULT_INPUT
        if len(given) != len(declared) and explicit:
            raise ConfigError(f"{where}: --input {input_text} has {len(given)} dimensions, the "
                              f"model's input {name!r} {len(declared)}")
        shape = []
        for i, d in enumerate(declared):
            g = given[i] if i < len(given) else None
            if d is not None and g is not None and g != d and explicit:
                raise ConfigError(f"{where}: --input {input_text} does not fit the model's input "
                                  f"{name!r} of shape {_fmt(declared)}")
            if d is None and g is None:
                raise ConfigError(f"{where}: the model's input {name!r} has shape {_fmt(declared)}; "
                                  f"give its free dimensions with --input")
            shape.append(d if d is not None else g)
        shape = tuple(shape)
    graph.name = os.path.basename(path)
    return engine.fuse(graph), shape


def _fmt(dims):
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def model_entry(args):
    """The ``(model, input shape)`` pair ``tuner.configs.load_all`` takes for --onnx, or
    None when --onnx was not given."""
    path = getattr(args, "onnx", None)
    if not path:
        return None
    return load(path, args.input)


def bench(args):
    """``convtune bench --onnx``: whole-model latency, convtune vs ONNX Runtime."""
    import numpy as np

    import engine
    from . import cli, timing
    from .configs import ConfigError

    try:
        graph, shape = load(args.onnx, args.input)
    except ConfigError as e:
        cli._err(str(e))
        return cli.EXIT_USAGE
    threads = args.threads or engine.get_num_threads()
    engine.set_num_threads(threads)
    if args.plan:
        engine.use_plan(os.path.abspath(args.plan))
    dtype = graph.graph_inputs[0][2]
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    try:
        ours = graph(x)
    except (ValueError, TypeError) as e:
        cli._err(f"--onnx {args.onnx} cannot run on {shape}: {e}")
        return cli.EXIT_USAGE
    fns = {"convtune": lambda: graph(x)}
    session, diff = ort_session(args.onnx, threads), None
    if session is not None:
        feed = {session.get_inputs()[0].name: x}
        theirs = session.run(None, feed)[0]
        fns["onnxruntime"] = lambda: session.run(None, feed)
        out = ours[0] if isinstance(ours, tuple) else ours
        diff = float(np.abs(out - theirs).max() / max(float(np.abs(theirs).max()), 1e-30))
    stats = timing.measure(fns, reps=args.reps, min_sample_s=0.05, warmup=1)
    med = {n: s.median for n, s in stats.items()}
    print(f"convtune bench --onnx {args.onnx}: input {','.join(map(str, shape))} {np.dtype(dtype)}; "
          f"threads {threads}; ONNX Runtime {'not installed' if session is None else 'installed'}")
    rows = [[n, f"{med[n] * 1e3:.2f}", f"{stats[n].spread * 100:.1f}%"] for n in fns]
    print(cli._table(rows, ["runtime", "median ms", "spread (IQR/median)"], ["<", ">", ">"]))
    if session is not None:
        print(f"onnxruntime/convtune: {med['onnxruntime'] / med['convtune']:.2f} (> 1: convtune faster); "
              f"outputs differ by {diff:.1e} relative to max|output|")
    settings = {"onnx": args.onnx, "input": list(shape), "threads": threads, "reps": args.reps,
                "plan": args.plan}
    if args.json_out and not cli._write_report(
            args.json_out, "bench", settings, times_ms={n: med[n] * 1e3 for n in med},
            max_rel_difference=diff):
        return cli.EXIT_USAGE
    return cli.EXIT_OK


def ort_session(model, threads):
    """An ONNX Runtime CPU session for ``model`` (a path or serialized bytes) at
    ``threads`` threads, set up for timing beside other runtimes; None without
    onnxruntime. Its pool threads do not spin between calls: by default they do, and
    in an interleaved benchmark they steal the cores from whatever runs next
    (measured: 2x on a 0.1 ms layer)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
