"""The plan file: tuned algorithm choices per layer shape (README.md, "Tuning: once per kind of machine").

One human-readable JSON file per kind of machine, written by ``convtune tune`` and read
lazily at run time::

    {
      "format": "convtune-plan", "format_version": 1, "engine_version": "0.1.0",
      "hardware": {"cpu": "...", "isa": ["avx2", ...], "ukernels": "avx2", "cores": 2,
                   "caches": {"L1d": "48K", "L2": "2048K", ...}},
      "created": "2025-...Z", "updated": "2025-...Z",
      "entries": [
        {"key": {"op": "conv2d", "dtype": "float32", "N": 1, "C": 64, "H": 56, "W": 56,
                 "out_channels": 64, "kernel": [3, 3], "stride": [1, 1],
                 "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
                 "padding_mode": "zeros", "threads": 2},
         "algorithm": "winograd_f4x3", "params": {}, "level": "measure",
         "tolerance": 1e-4, "time_s": 0.00123, "tuned_at": "...",
         "candidates": [{"algorithm": "winograd_f4x3", "params": {}, "median_s": ...,
                         "spread": 0.02, "error": 3e-6, "status": "ok"}, ...]}
      ]
    }

The entry key is ``ConvParams.key()`` (or ``PoolParams.key()``) plus the thread count.

Where the plan comes from, first match wins: ``engine.use_plan(path)`` (``None``
switches plans off), the environment variable ``CONVTUNE_PLAN`` (empty or ``none``
switches plans off), else ``plan.json`` in the user's cache directory.

Trust: a file that is corrupt, was tuned on other hardware (fingerprint differs) or by
an incompatible engine (different format version, or different major.minor engine
version) is reported once with ``warnings.warn`` and ignored for decisions; it is never
modified by loading, and writers refuse to touch it unless forced (then it is moved
aside to a ``.bak`` file first). Nothing here ever raises into a model call except
strict mode: with ``CONVTUNE_STRICT=1`` a convolution without an entry raises
``PlanEntryMissingError`` (a RuntimeError) naming the shape.

Loading is lazy and cached; the file is re-read when its (mtime, size, inode) changes,
checked at most once every ``RECHECK_SECONDS``. ``lookup`` is a dict look-up.

Writes (``write_entries``) resolve a symlink once, take a lock on the target
(``flock`` on ``PLAN.lock``; a waiting writer says for whom it waits, and gives up after
CONVTUNE_LOCK_TIMEOUT seconds), re-read the file under it, merge, and replace the file
atomically (temp file ``.plan-<pid>-*.tmp`` in the same directory + ``os.replace``;
temp files of dead writers are removed), so concurrent tuners merge instead of
clobbering.

Reading never opens anything but a regular file (no FIFO, device, /proc or /sys file),
reads at most MAX_PLAN_BYTES, and checks every field of every entry with its type: an
invalid entry is skipped with one warning naming it (the rest of the file is used), a
file that is not a plan is ignored as a whole.
"""
import errno
import json
import logging
import math
import os
import platform
import stat as _stat
import tempfile
import threading
import time
import warnings

from filelock import FileLock
from platformdirs import user_cache_dir

from ._lru import LRU

FORMAT = "convtune-plan"
FORMAT_VERSION = 1
LEVELS = ("estimate", "measure", "exhaustive")
LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)}
RECHECK_SECONDS = 1.0
_DISABLED = ("", "none", "off", "0")
_UNSET = object()


def _make_getenv():
    """os.environ.get for our two variables without its per-call encode/decode. Layers
    read CONVTUNE_PLAN once per call (``generation``): measured on a Sapphire Rapids
    (2026-12), os.environ.get took 1.1-1.9 us and this 0.14-0.20 us, about 1 us of a
    layer call's 6 us overhead (benchmarks/dispatch_overhead.py). Same answers:
    os.environ writes go to the same mapping."""
    try:
        data, encode, decode = os.environ._data, os.environ.encodekey, os.environ.decodevalue
        keys = {name: encode(name) for name in ("CONVTUNE_PLAN", "CONVTUNE_STRICT")}
    except AttributeError:  # pragma: no cover - not CPython's os.environ
        return os.environ.get

    def getenv(name):
        v = data.get(keys[name])
        return None if v is None else decode(v)
    return getenv


_getenv = _make_getenv()


class PlanError(Exception):
    """A plan file cannot be used or written (the message names the file and why)."""


class PlanEntryMissingError(RuntimeError):
    """Strict mode (CONVTUNE_STRICT=1): a convolution shape has no trusted plan entry."""


# ------------------------------------------------------------------ fingerprint
def _engine_version():
    from . import __version__  # late: engine/__init__ imports this module
    return __version__


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            import subprocess
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except Exception:  # pragma: no cover
            pass
    return platform.processor() or platform.machine() or "unknown"


def _cache_sizes():
    """Per-core cache sizes from sysfs, e.g. {"L1d": "48K", "L1i": "32K", "L2": "2048K"}."""
    caches = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return caches
    for name in names:
        if not name.startswith("index"):
            continue
        try:
            def read(field):
                with open(os.path.join(base, name, field)) as f:
                    return f.read().strip()
            level, kind, size = read("level"), read("type"), read("size")
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        caches[f"L{level}{suffix}"] = size
    return caches


_fingerprint = None


def hardware_fingerprint():
    """CPU model, the ISA extensions this build was compiled for, the micro-kernel ISA
    that runs (``engine.isa.active()``, which CONVTUNE_ISA can cap), core count, caches."""
    global _fingerprint
    from . import isa as ukernel_isa
    if _fingerprint is None:
        try:
            from .kernels import _buildinfo
            isa = list(_buildinfo.info()["isa"])
        except Exception:  # pragma: no cover - kernels not built
            isa = []
        _fingerprint = {"cpu": _cpu_model(), "machine": platform.machine(), "isa": isa,
                        "cores": os.cpu_count() or 1, "caches": _cache_sizes()}
    return dict(_fingerprint, ukernels=ukernel_isa.active())


def _version_compatible(version):
    """Same major.minor engine version: algorithm names and semantics are stable."""
    try:
        return str(version).split(".")[:2] == _engine_version().split(".")[:2]
    except Exception:
        return False


def header_problem(header, hardware=None):
    """Why a plan with this header must not be trusted here (or, given ``hardware``, by
    a writer recording that fingerprint, as ``merge`` does), or None.

    Returns (status, reason) with status "incompatible" or "foreign", or None."""
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        return ("incompatible", f"plan format {header.get('format')!r} version "
                f"{header.get('format_version')!r}, this engine reads {FORMAT!r} version {FORMAT_VERSION}")
    if not _version_compatible(header.get("engine_version")):
        return ("incompatible", f"written by engine {header.get('engine_version')!r}, this is "
                f"engine {_engine_version()} (plans are kept per major.minor version)")
    here = hardware_fingerprint() if hardware is None else hardware
    there = header.get("hardware")
    if not isinstance(there, dict):
        return ("foreign", "the plan has no hardware fingerprint")
    diffs = [k for k in ("cpu", "machine", "isa", "ukernels", "cores", "caches") if there.get(k) != here.get(k)]
    if diffs:
        other = "here" if hardware is None else "the entries being written"
        detail = "; ".join(f"{k}: plan {there.get(k)!r}, {other} {here.get(k)!r}" for k in diffs[:2])
        return ("foreign", f"tuned on other hardware ({detail})")
    return None


# ------------------------------------------------------------------------ keys
def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def entry_key(key):
    """The hashable form of an entry's key dict (including "threads")."""
    return tuple(sorted((k, _freeze(v)) for k, v in key.items()))


def params_key(params, num_threads):
    """The key dict for ConvParams/PoolParams ``params`` at ``num_threads`` threads."""
    return {**params.key(), "threads": int(num_threads)}


def describe_key(key):
    """A short human-readable shape, e.g. "conv2d 1x64x56x56 -> 64 k3x3 s1 p1 f32 t2".
    Never raises: a malformed key (from a hand-edited plan) is shown as JSON."""
    try:
        return _describe_key(dict(key))
    except Exception:
        try:
            text = json.dumps(key, sort_keys=True, default=repr)
        except Exception:
            text = repr(key)
        return text if len(text) <= 120 else text[:117] + "..."


def _describe_key(k):
    nchw = f"{k.get('N')}x{k.get('C')}x{k.get('H')}x{k.get('W')}"
    kern = "x".join(str(v) for v in k.get("kernel", []))
    stride = k.get("stride", [1, 1])
    s = f"s{stride[0]}" if stride[0] == stride[1] else f"s{stride[0]}x{stride[1]}"
    pad = k.get("padding", [0])
    p = f"p{pad[0]}" if len(set(pad)) == 1 else "p" + ",".join(str(v) for v in pad)
    parts = [k.get("op", "?"), nchw]
    if k.get("op") == "conv2d":
        parts += ["->", str(k.get("out_channels"))]
    parts += [f"k{kern}", s, p]
    if k.get("dilation") and tuple(k["dilation"]) != (1, 1):
        parts.append("d" + "x".join(str(v) for v in k["dilation"]))
    if k.get("groups", 1) != 1:
        parts.append(f"g{k['groups']}")
    if k.get("padding_mode", "zeros") != "zeros":
        parts.append(k["padding_mode"])
    if k.get("ceil_mode"):
        parts.append("ceil")
    parts.append({"float32": "f32", "float64": "f64"}.get(k.get("dtype"), str(k.get("dtype"))))
    if "threads" in k:
        parts.append(f"t{k['threads']}")
    return " ".join(parts)


# --------------------------------------------------------------------- entries
class PlanEntry:
    """One decision of the plan: ``.algorithm``, ``.params``, and where it came from."""
    __slots__ = ("algorithm", "params", "level", "time_s", "data", "path")

    def __init__(self, data, path=None):
        self.data = data
        self.path = path
        self.algorithm = data["algorithm"]
        # Kept as written: dispatch checks it (Algorithm.check_params) before use, so a
        # hand-edited value can make an entry run with automatic params, never crash.
        self.params = data.get("params") or {}
        self.level = data.get("level", "measure")
        t = data.get("time_s")
        self.time_s = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def runner_up(self):
        """(name, median_s) of the second-fastest accurate candidate, or None."""
        cands = self.data.get("candidates")
        ok = [c for c in (cands if isinstance(cands, list) else [])
              if isinstance(c, dict) and c.get("status") == "ok"
              and isinstance(c.get("median_s"), (int, float)) and c.get("algorithm") != self.algorithm]
        if not ok:
            return None
        best = min(ok, key=lambda c: c["median_s"])
        return best["algorithm"], best["median_s"]

    def describe(self):
        s = f"tuned at level {self.level!r}"
        if self.time_s:
            s += f": {self.time_s * 1e3:.3f} ms"
            ru = self.runner_up()
            if ru is not None and ru[1]:
                s += f", {ru[1] / self.time_s:.2f}x faster than {ru[0]}"
        if self.path:
            s += f" (plan {self.path})"
        return s

    def __repr__(self):
        return f"<PlanEntry {self.algorithm} {self.level}>"


_WHAT = {"corrupt": "is corrupt", "unreadable": "cannot be read", "foreign": "is from other hardware",
         "incompatible": "is from an incompatible engine version", "missing": "does not exist"}


def status_text(plan):
    """What a PlanFile's status means, as the rest of a sentence about it: "is corrupt
    (line 3: ...)", "is from other hardware (cpu differs)", "is usable"."""
    if plan.status == "ok":
        return "is usable"
    what = _WHAT.get(plan.status, plan.status)
    return f"{what} ({plan.reason})" if plan.reason else what


class PlanFile:
    """A plan as read from disk: ``status`` is "ok", "missing", "unreadable", "corrupt",
    "foreign" or "incompatible"; ``reason`` says why when it is not "ok"; ``entries`` maps the
    hashable key to the entry dict (empty unless the file could be parsed)."""

    def __init__(self, path, status, reason=None, header=None, entries=None, stat=None,
                 skipped=None):
        self.path, self.status, self.reason = path, status, reason
        self.header = header or {}
        self.entries = entries or {}
        self.stat = stat
        self.skipped = skipped or []     # why each invalid entry was left out
        self.invalid = []                # those entries as written (writers keep them)

    @property
    def trusted(self):
        return self.status == "ok"


# ------------------------------------------------------------------ validation
# Every field a reader uses is checked with its type on load: a hand-edited or damaged
# entry is skipped (and named in one warning), never passed on to a kernel.
MAX_PLAN_BYTES = 64 << 20          # a plan of 100,000 entries is ~60 MB
_BIG = 1 << 62                     # sizes past this are nonsense (and overflow C)
_DTYPES = ("float32", "float64")
_PAD_MODES = ("zeros", "reflect", "replicate", "circular")


def _int(lo):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= _BIG
    check.what = f"an int >= {lo}"
    return check


def _ints(n, lo):
    one = _int(lo)

    def check(v):
        return isinstance(v, list) and len(v) == n and all(one(x) for x in v)
    check.what = f"a list of {n} ints >= {lo}"
    return check


def _choice(values):
    def check(v):
        return isinstance(v, str) and v in values
    check.what = f"one of {list(values)}"
    return check


def _is_bool(v):
    return isinstance(v, bool)


_is_bool.what = "true or false"


def _number_or_null(v):
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) and v >= 0)


_number_or_null.what = "a finite number >= 0 or null"


def _positive_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


_positive_number.what = "a finite number > 0"


def _string(v):
    return isinstance(v, str) and len(v) <= 4096


_string.what = "a string"


def _param_value(x):
    """An int, or a short word (igemm's panels="padded"): dispatch still checks each
    value against the algorithm's tunables (Algorithm.check_params) before a kernel
    sees it, so nothing else can pass."""
    return _int(0)(x) or (isinstance(x, str) and 0 < len(x) <= 32
                          and x.replace("_", "").isalnum() and x.isascii())


def _params(v):
    """Kernel params: {name: int or short word}."""
    return v is None or (isinstance(v, dict) and len(v) <= 64 and all(
        isinstance(k, str) and _param_value(x) for k, x in v.items()))


_params.what = "an object of int or short word values"

_COMMON_KEY = {"dtype": _choice(_DTYPES), "N": _int(0), "C": _int(1), "H": _int(1), "W": _int(1),
               "kernel": _ints(2, 1), "stride": _ints(2, 1), "dilation": _ints(2, 1),
               "threads": _int(1)}
_KEY_SCHEMA = {
    "conv2d": {**_COMMON_KEY, "out_channels": _int(1), "padding": _ints(4, 0), "groups": _int(1),
               "padding_mode": _choice(_PAD_MODES)},
    "max_pool2d": {**_COMMON_KEY, "padding": _ints(2, 0), "ceil_mode": _is_bool},
    "avg_pool2d": {**_COMMON_KEY, "padding": _ints(2, 0), "ceil_mode": _is_bool},
}
_ENTRY_SCHEMA = {"algorithm": _string, "params": _params, "level": _choice(LEVELS),
                 "tolerance": _positive_number, "time_s": _number_or_null, "tuned_at": _string}
_CANDIDATE_SCHEMA = {"algorithm": _string, "params": _params, "median_s": _number_or_null,
                     "spread": _number_or_null, "error": _number_or_null, "status": _string}


def _check_fields(obj, schema, where, required=()):
    for name in required:
        if name not in obj:
            raise ValueError(f"{where} has no {name!r}")
    for name, check in schema.items():
        if name in obj and not check(obj[name]):
            raise ValueError(f"{where}: {name!r} is {_short(obj[name])}, expected {check.what}")


def _short(v):
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _validate_entry(e):
    """ValueError naming the entry and the field unless ``e`` is a well-typed entry."""
    if not isinstance(e, dict) or not isinstance(e.get("key"), dict):
        raise ValueError(f"an entry without a 'key' object: {_short(e)}")
    key = e["key"]
    where = f"entry {describe_key(key)}"
    op = key.get("op")
    schema = _KEY_SCHEMA.get(op) if isinstance(op, str) else None
    if schema is None:
        raise ValueError(f"{where}: 'op' is {_short(key.get('op'))}, expected one of {list(_KEY_SCHEMA)}")
    extra = sorted(set(key) - set(schema) - {"op"})
    if extra:
        raise ValueError(f"{where}: unknown key field(s) {extra}")
    _check_fields(key, schema, where + " key", required=schema)
    _check_fields(e, _ENTRY_SCHEMA, where, required=("algorithm",))
    cands = e.get("candidates", [])
    if not isinstance(cands, list) or len(cands) > 256:
        raise ValueError(f"{where}: 'candidates' is not a list (of at most 256)")
    for i, c in enumerate(cands):
        if not isinstance(c, dict):
            raise ValueError(f"{where}: candidate {i} is not an object")
        _check_fields(c, _CANDIDATE_SCHEMA, f"{where} candidate {i}", required=("algorithm",))


def _validate_header(doc):
    hw = doc.get("hardware")
    if hw is None:
        return
    if not isinstance(hw, dict):
        raise ValueError("'hardware' is not an object")
    checks = {"cpu": _string, "machine": _string, "cores": _int(1)}
    _check_fields(hw, checks, "'hardware'")
    isa, caches = hw.get("isa", []), hw.get("caches", {})
    if not (isinstance(isa, list) and all(_string(x) for x in isa)):
        raise ValueError("'hardware': 'isa' is not a list of strings")
    if not (isinstance(caches, dict) and all(_string(v) for v in caches.values())):
        raise ValueError("'hardware': 'caches' is not an object of strings")
    for name in ("engine_version", "created", "updated"):
        if name in doc and not _string(doc[name]):
            raise ValueError(f"{name!r} is not a string")


def _stat_sig(st):
    return (st.st_mtime_ns, st.st_size, st.st_ino)


_SPECIAL_DIRS = ("/proc/", "/sys/", "/dev/")


def read_bytes(path, limit=MAX_PLAN_BYTES):
    """(bytes, stat signature) of the regular file at ``path``, read safely.

    Only a regular file outside /proc, /sys and /dev is opened (a FIFO or a device
    would block or never end), with O_NONBLOCK and re-checked on the open descriptor
    (the name may have been swapped in between); at most ``limit`` bytes are read.
    FileNotFoundError when it does not exist; PlanUnreadable (an OSError) otherwise."""
    st = os.stat(path)
    real = os.path.realpath(path)
    if not _stat.S_ISREG(st.st_mode) or real.startswith(_SPECIAL_DIRS):
        raise PlanUnreadable(f"{_file_kind(st.st_mode, real)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise PlanUnreadable(f"{_file_kind(st.st_mode, real)}, not a regular file")
        if st.st_size > limit:
            raise PlanUnreadable(f"{st.st_size} bytes, over the {limit}-byte limit for a plan")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PlanUnreadable(f"over the {limit}-byte limit for a plan")
        return b"".join(chunks), _stat_sig(st)
    finally:
        os.close(fd)


def _file_kind(mode, real):
    if _stat.S_ISFIFO(mode):
        return "a FIFO"
    if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode):
        return "a device"
    if _stat.S_ISDIR(mode):
        return "a directory"
    if real.startswith(_SPECIAL_DIRS):
        return f"a system file under /{real.split('/')[1]}"
    return "a socket or other special file"


class PlanUnreadable(OSError):
    """The plan path exists but is not a file we may read (FIFO, device, too large)."""


def read_plan(path, hardware=None):
    """Read and classify the plan at ``path`` (never raises for a bad file).

    "unreadable": it exists but cannot be read (permissions, a FIFO or device, too
    large); "corrupt": it was read but is not a plan (not JSON, nested too deeply, not
    our format). Entries that fail validation are left out and listed in ``skipped``
    as (description, reason); the rest of the file is used."""
    path = os.fspath(path)
    try:
        raw, sig = read_bytes(path)
    except FileNotFoundError:
        return PlanFile(path, "missing", "the file does not exist")
    except OSError as e:
        return PlanFile(path, "unreadable", _os_reason(e))
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("the top level is not a JSON object")
        if doc.get("format") != FORMAT:
            raise ValueError(f"'format' is {_short(doc.get('format'))}, not {FORMAT!r}")
        entries_list = doc.get("entries", [])
        if not isinstance(entries_list, list):
            raise ValueError("'entries' is not a list")
        _validate_header(doc)
    except RecursionError:
        return PlanFile(path, "corrupt", "not a valid plan: JSON nested too deeply", stat=sig)
    except (ValueError, UnicodeDecodeError) as e:
        return PlanFile(path, "corrupt", f"not a valid plan: {e}", stat=sig)
    entries, skipped, invalid = {}, [], []
    for e in entries_list:
        try:
            _validate_entry(e)
        except ValueError as err:
            skipped.append(str(err))
            invalid.append(e)
            continue
        entries[entry_key(e["key"])] = e
    header = {k: v for k, v in doc.items() if k != "entries"}
    problem = header_problem(header, hardware)
    status, reason = problem if problem is not None else ("ok", None)
    plan = PlanFile(path, status, reason, header, entries, sig, skipped)
    plan.invalid = invalid
    return plan


def _os_reason(e):
    if isinstance(e, PlanUnreadable):
        return str(e)
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or str(e)


# ----------------------------------------------------------- which plan, loaded
_lock = threading.RLock()


def _after_fork_in_child():
    """A thread of the parent may have held the lock at fork(); it is gone in the child."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_explicit = _UNSET          # what use_plan() set: _UNSET, None or a path
_generation = 0
_loaded = None              # PlanFile of the active path
_loaded_path = None
# (params, threads) -> PlanEntry or None; bounded: a model fed ever new input sizes
LOOKUP_CACHE_SIZE = 4096
_lookup_cache = LRU(LOOKUP_CACHE_SIZE)
_last_check = 0.0
_warned = set()


_default_path = None


def default_path():
    """``plan.json`` in the user's cache directory."""
    global _default_path
    if _default_path is None:
        _default_path = os.path.join(user_cache_dir("convtune", appauthor=False), "plan.json")
    return _default_path


def active_source():
    """(path or None, why): which plan is in use and what selected it."""
    if _explicit is not _UNSET:
        if _explicit is None:
            return None, "plans switched off by engine.use_plan(None)"
        return _explicit, "set by engine.use_plan()"
    env = _getenv("CONVTUNE_PLAN")
    if env is not None:
        if env.strip().lower() in _DISABLED:
            return None, f"plans switched off by CONVTUNE_PLAN={env!r}"
        return env, "from the environment variable CONVTUNE_PLAN"
    return default_path(), "the default location (user cache directory)"


def active_path():
    """The path of the plan in use, or None when plans are switched off."""
    return active_source()[0]


def use_plan(path):
    """Use the plan at ``path`` for run-time decisions (``None`` to use none)."""
    global _explicit
    with _lock:
        _explicit = None if path is None else os.path.abspath(os.fspath(path))
        _invalidate()


def reset():
    """Forget ``use_plan`` (back to CONVTUNE_PLAN / the default) and every cache."""
    global _explicit
    with _lock:
        _explicit = _UNSET
        _invalidate()


def invalidate():
    """Drop every cache (the plan is re-read and its trust re-checked on next use) and
    bump ``generation()`` so layers re-resolve: for changes of what the fingerprint
    describes, such as the micro-kernel ISA (``engine.isa.set_cap``)."""
    with _lock:
        _invalidate()


def _invalidate():
    global _generation, _loaded, _loaded_path, _last_check
    _generation += 1
    _loaded = None
    _loaded_path = None
    _lookup_cache.clear()
    _last_check = 0.0


def _warn_once(plan):
    sig = (plan.path, plan.status, plan.stat)
    if sig in _warned:
        return
    _warned.add(sig)
    if plan.status == "missing":
        msg = (f"convtune plan {plan.path} does not exist; algorithms are chosen by the "
               f"heuristic. Create it with `convtune tune CONFIG --plan {plan.path}`.")
    elif plan.status == "unreadable":
        msg = (f"convtune plan {plan.path} cannot be read ({plan.reason}); it is ignored and "
               f"algorithms are chosen by the heuristic. Point CONVTUNE_PLAN or "
               f"engine.use_plan() at a plan file.")
    else:
        msg = (f"convtune plan {plan.path} {status_text(plan)}. It is ignored and left as "
               f"it is on disk; algorithms are chosen by the heuristic. Re-tune this machine "
               f"with `convtune tune CONFIG --plan {plan.path} --force` (the old file is kept "
               f"as a .bak), or use another plan.")
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _warn_entries(plan):
    """One warning per loaded file for invalid entries (named, then skipped), and one
    for conv2d entries naming an algorithm this engine does not have (ignored)."""
    sig = (plan.path, "entries", plan.stat)
    if sig in _warned:
        return
    _warned.add(sig)
    if plan.skipped:
        n = len(plan.skipped)
        more = f" (and {n - 3} more)" if n > 3 else ""
        warnings.warn(f"convtune plan {plan.path}: {n} invalid entr{'y' if n == 1 else 'ies'} "
                      f"skipped, the rest is used: {'; '.join(plan.skipped[:3])}{more}",
                      RuntimeWarning, stacklevel=5)
    if plan.trusted:
        from .registry import REGISTRY   # late: the registry imports the kernels
        unknown = sorted({e["algorithm"] for e in plan.entries.values()
                          if e["key"]["op"] == "conv2d" and e["algorithm"] not in REGISTRY})
        if unknown:
            warnings.warn(f"convtune plan {plan.path} names unknown algorithm(s) {unknown}; those "
                          f"entries are ignored (this engine has {sorted(REGISTRY)})",
                          RuntimeWarning, stacklevel=5)


def _refresh(now=None):
    """Re-stat the active plan at most every RECHECK_SECONDS; drop caches on change."""
    global _last_check
    now = time.monotonic() if now is None else now
    if _loaded is None or now - _last_check < RECHECK_SECONDS:
        return
    _last_check = now
    try:
        sig = _stat_sig(os.stat(_loaded.path))
    except OSError:
        sig = None
    if sig != _loaded.stat:
        _invalidate()


def current():
    """The active PlanFile (loaded lazily, cached), or None when plans are off."""
    global _loaded, _loaded_path, _last_check
    with _lock:
        path = active_path()
        if _loaded is not None and _loaded_path == path:
            _refresh()
            if _loaded is not None:
                return _loaded
        if path is None:
            return None
        plan = read_plan(path)
        logging.getLogger("convtune").debug("plan %s: %s, %d entries", path, plan.status,
                                            len(plan.entries))
        _loaded, _loaded_path, _last_check = plan, path, time.monotonic()
        _lookup_cache.clear()
        if plan.status != "ok" and not (plan.status == "missing" and path == default_path()):
            _warn_once(plan)
        _warn_entries(plan)
        return plan


def generation():
    """A counter bumped whenever the active plan changes (use_plan, or the file changed
    on disk): layers re-resolve their algorithm then."""
    if _loaded is not None:
        with _lock:
            _refresh()
    if _explicit is _UNSET:
        # CONVTUNE_PLAN may be changed between calls (tests do): follow it.
        path = active_path()
        if _loaded is not None and path != _loaded_path:
            with _lock:
                _invalidate()
    return _generation


def strict_mode():
    return (_getenv("CONVTUNE_STRICT") or "").strip().lower() not in ("", "0", "false", "no", "off")


def lookup(params, num_threads=None):
    """The plan entry for ConvParams ``params`` at ``num_threads``, or None.

    None when no plan is in use, the plan is not trusted, or it has no entry; in
    strict mode (CONVTUNE_STRICT=1) the last two raise PlanEntryMissingError."""
    if num_threads is None:
        from .threads import get_num_threads
        num_threads = get_num_threads()
    ck = (params, num_threads)
    plan = current()
    found = _lookup_cache.get(ck, _UNSET)
    key = None
    if found is not _UNSET:
        if len(_lookup_cache) > LOOKUP_CACHE_SIZE // 2:   # recency matters near the bound
            try:
                _lookup_cache.move_to_end(ck)  # LRU: a hit is recent
            except KeyError:                   # evicted meanwhile by another thread
                pass
    else:
        found = None
        if plan is not None and plan.trusted:
            key = params_key(params, num_threads)
            data = plan.entries.get(entry_key(key))
            if data is not None:
                found = PlanEntry(data, plan.path)
        _lookup_cache[ck] = found
    if found is None and strict_mode():
        if plan is None:
            why = "no plan is in use (" + active_source()[1] + ")"
        elif not plan.trusted:
            why = f"plan {plan.path} is not trusted ({plan.reason})"
        else:
            why = f"plan {plan.path} has no entry for it"
        raise PlanEntryMissingError(
            f"CONVTUNE_STRICT=1: no plan entry for {describe_key(key or params_key(params, num_threads))}: "
            f"{why}. Tune it with `convtune tune CONFIG --threads {num_threads}` or unset CONVTUNE_STRICT.")
    return found


# ---------------------------------------------------------------------- writing
class PlanLockTimeout(PlanError):
    """Another process held the plan's lock for longer than the timeout."""


def lock_timeout():
    """Seconds a writer waits for the plan's lock: CONVTUNE_LOCK_TIMEOUT, else 60."""
    try:
        v = float(os.environ.get("CONVTUNE_LOCK_TIMEOUT", "60"))
        return v if math.isfinite(v) and v >= 0 else 60.0
    except ValueError:
        return 60.0


def _holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 512).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


class _Lock:
    """The inter-process lock on ``path + '.lock'`` that every writer of ``path`` takes
    (``flock``; filelock where there is no fcntl). The holder writes "pid N (command)"
    into the lock file, so a writer that has to wait says for whom; ``on_wait(message)``
    is told once (default: a RuntimeWarning). PlanLockTimeout after ``timeout`` s."""

    def __init__(self, path, timeout=None, on_wait=None):
        self.path, self.lockpath = path, path + ".lock"
        self.timeout = lock_timeout() if timeout is None else timeout
        self.on_wait = on_wait
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._fallback = FileLock(self.lockpath, timeout=self.timeout)
            self._fallback.acquire()
            return self
        fd = os.open(self.lockpath, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                msg = (f"waiting up to {self.timeout:g} s for the lock on {self.path} "
                       f"({self.lockpath}), held by {holder}")
                if self.on_wait is not None:
                    self.on_wait(msg)
                else:
                    warnings.warn(msg, RuntimeWarning, stacklevel=3)
                deadline = time.monotonic() + self.timeout
                while True:
                    time.sleep(0.05)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise PlanLockTimeout(
                                f"gave up after {self.timeout:g} s waiting for the lock on "
                                f"{self.path} ({self.lockpath}), held by {_holder(fd)}; "
                                f"nothing was written by this call (set CONVTUNE_LOCK_TIMEOUT "
                                f"to wait longer)") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({_command()})\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is None:
            self._fallback.release()
            return False
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)    # closing releases the flock
        self.fd = None
        return False


def _command():
    import sys
    argv = [os.path.basename(sys.argv[0] or "python")] + sys.argv[1:3]
    return " ".join(argv)[:200]


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def newer_wins(old, new, prefer_new=False):
    """Merge rule for two entries with one key: the higher tuning level wins; at an
    equal level the more recently tuned one; ``prefer_new`` (a forced re-tune) wins."""
    if old is None or prefer_new:
        return new
    ro, rn = LEVEL_RANK.get(old.get("level"), -1), LEVEL_RANK.get(new.get("level"), -1)
    if rn != ro:
        return new if rn > ro else old
    return new if str(new.get("tuned_at", "")) >= str(old.get("tuned_at", "")) else old


_TMP_PREFIX = ".plan-"


def _clean_stale_temps(directory):
    """Remove ``.plan-<pid>-*.tmp`` files whose writer is dead (a kill -9 mid-write).
    Called under the plan's lock; live writers' files and other files are left alone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(_TMP_PREFIX) and name.endswith(".tmp")):
            continue
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _atomic_write(path, doc):
    directory = os.path.dirname(os.path.abspath(path))
    _clean_stale_temps(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def move_aside(path):
    """Rename an untrusted plan to ``path.bak-<time>`` (never delete it); the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dst = f"{path}.bak-{stamp}"
    i = 1
    while os.path.exists(dst):
        dst = f"{path}.bak-{stamp}-{i}"
        i += 1
    os.replace(path, dst)
    return dst


def write_entries(path, entries, *, force=False, prefer_new=False, hardware=None, on_move=None,
                  on_wait=None, lock_timeout=None):
    """Merge ``entries`` (entry dicts) into the plan at ``path``, atomically, under a lock.

    The file is re-read under the lock, so entries another process wrote meanwhile are
    kept. An existing file that is corrupt, foreign or incompatible raises PlanError
    unless ``force``, which moves it aside (``on_move(new_name)`` is told) and starts
    afresh. ``prefer_new`` makes these entries win over existing ones with the same key
    (a forced re-tune); otherwise ``newer_wins`` decides. ``hardware`` is the
    fingerprint to record (default: this machine's; ``merge`` passes the inputs').
    A symlink is resolved once: the lock and the replacement are the target's. A lock
    held by another process is waited for (``on_wait(message)`` says for whom) up to
    ``lock_timeout`` s (default ``lock_timeout()``), then PlanLockTimeout (a PlanError).
    Returns the number of entries in the file afterwards."""
    path = os.path.realpath(os.fspath(path))
    hardware = hardware_fingerprint() if hardware is None else hardware
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None
        if (mode is not None and not _stat.S_ISREG(mode)) or path.startswith(_SPECIAL_DIRS):
            # no lock file next to a device or FIFO, and never a rename of it
            raise PlanError(f"cannot write {path}: it is not a regular file; it was left "
                            f"untouched. Choose another file with --plan.")
    try:
        return _write_locked(path, entries, force, prefer_new, hardware, on_move, on_wait,
                             lock_timeout)
    except PlanError:
        raise
    except OSError as e:      # a read-only directory, a full disk: one clear sentence
        what = e.filename if getattr(e, "filename", None) else path
        raise PlanError(f"cannot write {path}: {_os_reason(e)} ({what}); nothing was "
                        f"changed") from None


def check_writable(path, force=False, hardware=None, on_move=None):
    """The PlanFile at ``path`` that new entries will be merged into (read against
    ``hardware``, default this machine's), or PlanError saying why it cannot be written:
    a file that cannot be read is never touched (it may be a device or FIFO); a
    corrupt, foreign or incompatible one is refused unless ``force``, which moves it
    aside (``move_aside``; ``on_move(new_path)`` is told) and starts an empty plan."""
    plan = read_plan(path, hardware)
    if plan.status == "unreadable":
        raise PlanError(f"cannot write {path}: it cannot be read ({plan.reason}); "
                        f"it was left untouched. Choose another file with --plan.")
    if plan.status in ("ok", "missing"):
        return plan
    if not force:
        raise PlanError(f"refusing to write {path}: it {status_text(plan)}. It was left "
                        f"untouched; use --force to move it aside (to {path}.bak-...) and "
                        f"start a new plan, or write to another file with --plan.")
    moved = move_aside(path)
    if on_move is not None:
        on_move(moved)
    return PlanFile(path, "missing")


def _write_locked(path, entries, force, prefer_new, hardware, on_move, on_wait, timeout):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _Lock(path, timeout=timeout, on_wait=on_wait):
        plan = check_writable(path, force, hardware, on_move)
        merged = dict(plan.entries)
        for e in entries:
            _validate_entry(e)
            k = entry_key(e["key"])
            merged[k] = newer_wins(merged.get(k), e, prefer_new)
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "engine_version": _engine_version(), "hardware": hardware,
            "created": plan.header.get("created") or _now(), "updated": _now(),
            # entries that failed validation stay as they were written (not ours to drop)
            "entries": [merged[k] for k in sorted(merged, key=repr)] + plan.invalid,
        }
        _atomic_write(path, doc)
    with _lock:
        if _loaded_path is not None and os.path.realpath(_loaded_path) == path:
            _invalidate()
    return len(merged)
