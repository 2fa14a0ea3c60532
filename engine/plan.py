"""The plan file: tuned algorithm choices per layer shape (see DESIGN.md, "The plan").

One human-readable JSON file per kind of machine, written by ``convtune tune`` and read
lazily at run time::

    {
      "format": "convtune-plan", "format_version": 1, "engine_version": "0.1.0",
      "hardware": {"cpu": "...", "isa": ["avx2", ...], "cores": 2,
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

Writes (``write_entries``) take a lock (``filelock``),
re-read the file under it, merge, and replace the file atomically (temp file in the
same directory + ``os.replace``), so concurrent tuners merge instead of clobbering.
"""
import json
import os
import platform
import tempfile
import threading
import time
import warnings

from filelock import FileLock
from platformdirs import user_cache_dir

FORMAT = "convtune-plan"
FORMAT_VERSION = 1
LEVELS = ("estimate", "measure", "exhaustive")
LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)}
RECHECK_SECONDS = 1.0
_DISABLED = ("", "none", "off", "0")
_UNSET = object()


def _make_getenv():
    """os.environ.get for our two variables without its per-call encode/decode (about
    2 us on a slow machine; layers read CONVTUNE_PLAN on every call). Same answers:
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
    """CPU model, the ISA extensions this build uses, core count, cache sizes."""
    global _fingerprint
    if _fingerprint is None:
        try:
            from .kernels import _buildinfo
            isa = list(_buildinfo.info()["isa"])
        except Exception:  # pragma: no cover - kernels not built
            isa = []
        _fingerprint = {"cpu": _cpu_model(), "machine": platform.machine(), "isa": isa,
                        "cores": os.cpu_count() or 1, "caches": _cache_sizes()}
    return dict(_fingerprint)


def _version_compatible(version):
    """Same major.minor engine version: algorithm names and semantics are stable."""
    try:
        return str(version).split(".")[:2] == _engine_version().split(".")[:2]
    except Exception:
        return False


def header_problem(header, hardware=None):
    """Why a plan with this header must not be trusted here, or None.

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
    diffs = [k for k in ("cpu", "machine", "isa", "cores", "caches") if there.get(k) != here.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: plan {there.get(k)!r}, here {here.get(k)!r}" for k in diffs[:2])
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
    """A short human-readable shape, e.g. "conv2d 1x64x56x56 -> 64 k3x3 s1 p1 f32 t2"."""
    k = dict(key)
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


_WHAT = {"corrupt": "is corrupt", "foreign": "is from other hardware",
         "incompatible": "is from an incompatible engine version", "missing": "does not exist"}


class PlanFile:
    """A plan as read from disk: ``status`` is "ok", "missing", "corrupt", "foreign" or
    "incompatible"; ``reason`` says why when it is not "ok"; ``entries`` maps the
    hashable key to the entry dict (empty unless the file could be parsed)."""

    def __init__(self, path, status, reason=None, header=None, entries=None, stat=None):
        self.path, self.status, self.reason = path, status, reason
        self.header = header or {}
        self.entries = entries or {}
        self.stat = stat

    @property
    def trusted(self):
        return self.status == "ok"


def _validate_entry(e):
    if not isinstance(e, dict) or not isinstance(e.get("key"), dict):
        raise ValueError("an entry without a 'key' object")
    if not isinstance(e.get("algorithm"), str):
        raise ValueError(f"entry {describe_key(e['key'])} has no 'algorithm' string")
    if e.get("level", "measure") not in LEVEL_RANK:
        raise ValueError(f"entry {describe_key(e['key'])} has unknown level {e.get('level')!r}")
    if "threads" not in e["key"]:
        raise ValueError(f"entry {describe_key(e['key'])} has no 'threads' in its key")


def _stat_sig(st):
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_plan(path, hardware=None):
    """Read and classify the plan at ``path`` (never raises for a bad file)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return PlanFile(path, "missing", "the file does not exist")
    except OSError as e:
        return PlanFile(path, "corrupt", f"cannot be read: {e}")
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("the top level is not a JSON object")
        if doc.get("format") != FORMAT:
            raise ValueError(f"'format' is {doc.get('format')!r}, not {FORMAT!r}")
        entries_list = doc.get("entries", [])
        if not isinstance(entries_list, list):
            raise ValueError("'entries' is not a list")
        entries = {}
        for e in entries_list:
            _validate_entry(e)
            entries[entry_key(e["key"])] = e
    except (ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
        return PlanFile(path, "corrupt", f"not a valid plan: {e}", stat=_stat_sig(st))
    header = {k: v for k, v in doc.items() if k != "entries"}
    problem = header_problem(header, hardware)
    if problem is not None:
        return PlanFile(path, problem[0], problem[1], header, entries, _stat_sig(st))
    return PlanFile(path, "ok", None, header, entries, _stat_sig(st))


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
_lookup_cache = {}
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
    else:
        msg = (f"convtune plan {plan.path} {_WHAT[plan.status]} ({plan.reason}). It is ignored and left as "
               f"it is on disk; algorithms are chosen by the heuristic. Re-tune this machine "
               f"with `convtune tune CONFIG --plan {plan.path} --force` (the old file is kept "
               f"as a .bak), or use another plan.")
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


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
        _loaded, _loaded_path, _last_check = plan, path, time.monotonic()
        _lookup_cache.clear()
        if plan.status != "ok" and not (plan.status == "missing" and path == default_path()):
            _warn_once(plan)
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
    if found is _UNSET:
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
def _Lock(path, timeout=60.0):
    """The inter-process lock on ``path + '.lock'`` that every writer of ``path`` takes."""
    return FileLock(path + ".lock", timeout=timeout)


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


def _atomic_write(path, doc):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".tmp", dir=directory)
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


def write_entries(path, entries, *, force=False, prefer_new=False, hardware=None, on_move=None):
    """Merge ``entries`` (entry dicts) into the plan at ``path``, atomically, under a lock.

    The file is re-read under the lock, so entries another process wrote meanwhile are
    kept. An existing file that is corrupt, foreign or incompatible raises PlanError
    unless ``force``, which moves it aside (``on_move(new_name)`` is told) and starts
    afresh. ``prefer_new`` makes these entries win over existing ones with the same key
    (a forced re-tune); otherwise ``newer_wins`` decides. ``hardware`` is the
    fingerprint to record (default: this machine's; ``merge`` passes the inputs').
    Returns the number of entries in the file afterwards."""
    path = os.fspath(path)
    hardware = hardware_fingerprint() if hardware is None else hardware
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _Lock(path):
        plan = read_plan(path, hardware)
        if plan.status not in ("ok", "missing"):
            if not force:
                raise PlanError(f"refusing to write {path}: it {_WHAT[plan.status]} ({plan.reason}). "
                                f"It was left untouched; "
                                f"use --force to move it aside (to {path}.bak-...) and start a new "
                                f"plan, or write to another file with --plan.")
            moved = move_aside(path)
            if on_move is not None:
                on_move(moved)
            plan = PlanFile(path, "missing")
        merged = dict(plan.entries)
        for e in entries:
            _validate_entry(e)
            k = entry_key(e["key"])
            merged[k] = newer_wins(merged.get(k), e, prefer_new)
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "engine_version": _engine_version(), "hardware": hardware,
            "created": plan.header.get("created") or _now(), "updated": _now(),
            "entries": [merged[k] for k in sorted(merged, key=repr)],
        }
        _atomic_write(path, doc)
    with _lock:
        if _loaded_path is not None and os.path.abspath(_loaded_path) == os.path.abspath(path):
            _invalidate()
    return len(merged)
