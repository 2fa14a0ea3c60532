"""The plan file: tuned algorithm choices per layer shape (see DESIGN.md, "The plan").

Placeholder until the tuner lands: no plan is ever active, so ``lookup`` finds nothing
and dispatch falls back to its heuristic.
"""
import os

_path = None
_generation = 0


def use_plan(path):
    """Use the plan at ``path`` for run-time decisions (``None`` to use none)."""
    global _path, _generation
    _path = None if path is None else os.fspath(path)
    _generation += 1


def generation():
    """A counter bumped whenever the active plan changes: layers re-resolve then."""
    return _generation


def active_path():
    return _path if _path is not None else os.environ.get("CONVTUNE_PLAN") or None


def lookup(params, num_threads=None):
    """The plan entry for ConvParams ``params`` at ``num_threads``, or None."""
    return None
