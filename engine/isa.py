"""Which instruction set the micro-kernels run: one decision, made once at import.

The build compiles every ISA's micro-kernels (``kernels/ukernels/``, each object with
its own target flags), so one portable binary runs the best kernels of any x86-64:

    baseline   portable C (correct on every CPU)
    avx2       AVX2 + FMA (AMD Zen 2/3, Intel Haswell and later)
    avx512     AVX-512F (Intel Skylake-SP and later, AMD Zen 4)

``active()`` is the best ISA the CPU supports (cpuid), capped by the environment
variable ``CONVTUNE_ISA=baseline|avx2|avx512`` (read at import; asking for an ISA the
CPU lacks is a ValueError). ``set_cap(name)`` changes the cap at run time, for tests
and for measuring one ISA's kernels on a machine that has a better one. The plan's
hardware fingerprint records ``active()``, so a plan tuned with one ISA's kernels is
not trusted when another's run.
"""
import os

from .kernels import _ukernels

NAMES = _ukernels.ISA_NAMES
_cpu_level = _ukernels.cpu_isa()
_level = None


def _parse(name, source):
    if not isinstance(name, str) or name.strip().lower() not in NAMES:
        raise ValueError(f"{source} must be one of {', '.join(NAMES)}, got {name!r}")
    level = NAMES.index(name.strip().lower())
    if level > _cpu_level:
        raise ValueError(f"{source}={name!r}: this CPU cannot run {NAMES[level]} kernels "
                         f"(it supports up to {NAMES[_cpu_level]}); use one of "
                         f"{', '.join(available())}")
    return level


def cpu():
    """The best ISA this CPU (and OS) supports."""
    return NAMES[_cpu_level]


def vendor():
    """The CPU's vendor: "amd", "intel" or "other" (where two correct kernels are fast on
    different cores, e.g. Winograd's tile transforms, kernels.winograd.auto_transforms)."""
    return _ukernels.cpu_vendor()


def available():
    """The ISAs whose kernels can run here, lowest first (what tests iterate over)."""
    return list(NAMES[:_cpu_level + 1])


def level():
    """Index of the active ISA in NAMES (what the kernels are passed)."""
    global _level
    if _level is None:
        env = os.environ.get("CONVTUNE_ISA", "").strip()
        _level = _parse(env, "CONVTUNE_ISA") if env else _cpu_level
    return _level


def active():
    """The ISA whose micro-kernels run now."""
    return NAMES[level()]


def set_cap(name):
    """Run ``name``'s kernels from now on (None: the CPU's best again). ValueError for
    an unknown name or one this CPU cannot run. Plans are re-checked against the new
    fingerprint and layers re-resolve their algorithm."""
    global _level
    new = _cpu_level if name is None else _parse(name, "set_cap")
    if new != _level:
        _level = new
        from . import plan
        plan.invalidate()


def kernels(name=None):
    """Names and register tiles of an ISA's micro-kernels (default: the active one)."""
    return _ukernels.kernel_info(level() if name is None else _parse(name, "kernels"))


level()    # a bad CONVTUNE_ISA fails the import with its message, not a later call
