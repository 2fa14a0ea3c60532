"""convtune's autotuner: measures algorithms per layer shape and writes plans.

It sits beside the runtime and imports ``engine``, never the reverse; it talks to it
only through ``engine.plan`` and the public ``algorithm=`` path (``functional``).

    configs   config files: networks (shapes propagated from the input) and shape suites
    timing    warm-up, calls per sample, interleaved repetitions, median and spread
    search    candidates per shape, the float64 accuracy gate, the choice
    profile   per-layer timing of a model through forward hooks (installed, then removed)
    report    the versioned JSON reports of ``--json FILE``
    plot      ``--plot FILE.png|.svg`` through matplotlib's Figure + Agg (optional extra)
    cli       the ``convtune`` command: tune, show, bench, profile, check, merge, info
"""
