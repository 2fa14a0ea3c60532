"""convtune's autotuner: measures algorithms per layer shape and writes plans.

It sits beside the runtime and imports ``engine``, never the reverse, and uses its
public names only (tests/test_architecture.py checks): ``engine.plan`` (reading,
``status_text``, ``check_writable``, writing), ``engine.registry`` (``candidates``,
``applicable``, tolerances), ``engine.dispatch`` (the heuristic, ``Choice``),
``engine.operator`` (what it times: the call a layer makes), ``engine.shapes``, and
layers' ``op_params``.

    configs   config files: networks (shapes propagated from the input) and shape suites
    model_shapes  the shapes a model runs (``--model``), through layers' ``op_params``
    timing    warm-up, calls per sample, interleaved repetitions, median and spread
    search    candidates per shape, the float64 accuracy gate, the choice
    profile   per-layer timing of a model through forward hooks (installed, then removed)
    report    the versioned JSON reports of ``--json FILE``
    plot      ``--plot FILE.png|.svg`` through matplotlib's Figure + Agg (optional extra)
    cli       the ``convtune`` command: tune, show, bench, profile, check, merge, info
"""
