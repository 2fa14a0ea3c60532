"""Shared fixtures: thread-count restore, a seeded rng, torch when installed, and a
reproducible hypothesis profile."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The suite never reads the machine's own plan (the user cache, or a CONVTUNE_PLAN
# the caller exported): decisions under test are forced, heuristic, or a plan a test
# writes itself.
os.environ["CONVTUNE_PLAN"] = "none"
os.environ.pop("CONVTUNE_STRICT", None)

try:
    from hypothesis import HealthCheck, settings

    # Derandomized: CI runs the same examples every time; no deadline (first calls
    # JIT nothing, but thread pools and BLAS warm up).
    settings.register_profile("convtune", derandomize=True, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.function_scoped_fixture])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "convtune"))
except ImportError:  # pragma: no cover
    pass

DTYPES = ["float32", "float64"]


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test leaves engine's thread count as it found it."""
    import engine
    before = engine.get_num_threads()
    yield
    engine.set_num_threads(before)


@pytest.fixture
def plans_off(monkeypatch):
    """No plan file decides anything: dispatch is forced or heuristic. Used by this
    suite's modules (``pytestmark``), not autouse, so other modules' plan tests keep
    their own set-up."""
    import engine
    from engine import plan
    monkeypatch.setenv("CONVTUNE_PLAN", "none")
    engine.use_plan(None)
    yield
    if hasattr(plan, "reset"):
        plan.reset()
    else:  # pragma: no cover - older plan module
        engine.use_plan(None)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


def _isa_params():
    """Every micro-kernel ISA as a pytest param; those this CPU cannot run are skipped
    with the reason (never passed silently)."""
    from engine import isa
    return [pytest.param(name, id=name, marks=pytest.mark.skipif(
                name not in isa.available(),
                reason=f"this CPU has no {name} (it supports up to {isa.cpu()})"))
            for name in isa.NAMES]


ISAS = _isa_params()


@pytest.fixture
def use_isa():
    """use_isa(name): run the micro-kernels of ``name`` for the rest of the test."""
    from engine import isa
    before = isa.active()
    yield isa.set_cap
    isa.set_cap(before)
