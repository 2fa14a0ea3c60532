"""Batch inference and tuning on a Dask cluster (optional extra: ``pip install convtune[dask]``).

    predict(model, x, client=None, batch_size=None, *, plan="active", threads=None)
        -> a dask array of model(x), computed on the cluster's workers

Tuning on the cluster is the tuner's: ``tuner.distributed.tune`` and ``convtune tune
CONFIG --dask ADDRESS`` (``engine`` never imports ``tuner``).

Importing ``engine`` never imports Dask; this module imports it only when a function
needs it, and says ``pip install convtune[dask]`` when it is missing.

How ``predict`` runs (what it saves the user from wiring by hand):

- **The model travels once per worker.** A copy of the model (its per-shape caches
  dropped) and the plan(s) are wrapped in a ``ModelBundle`` and installed on every
  worker as a Dask worker plugin (workers that join later get it when they register):
  each worker deserialises it once (``worker_stats()["bundles_received"]``) and every
  chunk's task names it (a ``ModelRef``) instead of carrying the weights. Installations
  are shared by content: ``predict`` called again on an unchanged model (same weights,
  plans and threads) while an array of the first call is alive ships nothing. Scattered data
  would not do: the scheduler's active memory manager drops the replicas of a scattered
  key that no task is waiting for yet, and the tasks then fetch the model again. The
  plugin is removed when the last dask array built on this ``predict`` is garbage
  collected (keep that array alive until its computation has finished).
- **Threads.** Dask's nanny starts each worker with ``OMP_NUM_THREADS=1`` (the
  ``distributed.nanny.pre-spawn-environ`` default), so the engine's default thread
  count there is 1 and a naive ``map_blocks`` runs every kernel on one core. ``predict``
  sets the engine's thread count in each task instead: ``threads=`` when given, else
  ``max(1, cores // threads_on_host)`` where ``cores`` is what the worker process may run
  on and ``threads_on_host`` the sum of ``nthreads`` over the Dask workers on that host,
  so Dask threads x engine threads match the machine's cores (2 workers x 1 thread on
  2 cores: 1 engine thread each; 1 worker x 1 thread on 8 cores: 8).
- **Plans.** ``plan="active"`` ships the plan the client uses (``engine.use_plan`` /
  ``CONVTUNE_PLAN`` / the default file); a path or a list of paths ships those (e.g.
  one plan per kind of machine, as ``tune`` writes them). Each worker uses the first
  plan whose hardware fingerprint (``engine.plan.hardware_fingerprint``) and engine
  version match its own; a worker with none warns once (in its log, and the client
  warns when ``predict`` is called) and uses its heuristic. Every algorithm computes the
  same convolution within its tolerance, so a plan can only make a worker slower, never
  wrong. ``plan=None`` ships no plan: every worker uses its heuristic. Plan entries are
  keyed by thread count: tune with ``--threads`` equal to the per-task thread count.

The engine's plan and thread count are per process: a worker running tasks of two
``predict`` calls with different plans at the same time (``threads_per_worker > 1``)
may resolve one model's layers under the other's plan (still correct, maybe slower).
"""
import copy
import hashlib
import json
import math
import numbers
import os
import re
import threading
import time
import uuid
import warnings
import weakref

import numpy as np

from .. import plan as _plan
from .module import Module
from ..threads import get_num_threads, set_num_threads, usable_cores

SETUP_TIMEOUT = 120.0      # seconds to wait for the cluster while setting a predict up
_INSTALL_HINT = "pip install convtune[dask]  (installs dask[distributed])"


def require_dask():
    """(dask.array, distributed), or ImportError saying how to install them."""
    try:
        import dask.array as da
        import distributed
    except ImportError as e:
        raise ImportError(f"engine.distributed needs Dask: {_INSTALL_HINT} ({e})") from None
    return da, distributed


def get_client(client=None):
    """``client`` when given (a ``distributed.Client``), else the default client."""
    _, distributed = require_dask()
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ValueError("no Dask client: pass client=, or create one first, e.g. "
                         "distributed.Client(distributed.LocalCluster()) or "
                         "distributed.Client('tcp://scheduler:8786')") from None


# ------------------------------------------------------------------ the machines
def _machine_info():
    """Run on a worker: its hardware fingerprint, usable cores and process id."""
    return {"fingerprint": _plan.hardware_fingerprint(), "cores": usable_cores(), "pid": os.getpid()}


def machines(client, workers=None, attempts=3):
    """{worker address: {"host", "nthreads", "fingerprint", "cores", "pid"}} for the
    cluster's workers (or the given ``workers`` addresses), asked of each worker; the
    ones that do not answer are left out. When none answers, it asks again up to
    ``attempts`` times, 0.5 s, 1 s, ... apart: on a loaded machine a worker's reply or
    its registration can lag (a suite run once saw both workers missing for one call
    between two predicts)."""
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(0.5 * attempt)
        info = client.scheduler_info(n_workers=-1)["workers"] if takes_n_workers(client) \
            else client.scheduler_info()["workers"]
        addrs = [a for a in info if workers is None or a in workers]
        if not addrs:
            continue
        found = client.run(_machine_info, workers=addrs, on_error="return", wait=True)
        out = {}
        for a, r in found.items():
            if isinstance(r, dict) and a in info:
                out[a] = {"host": info[a].get("host") or _host_of(a),
                          "nthreads": int(info[a].get("nthreads") or 1), **r}
        if out:
            return out
    return {}


def takes_n_workers(client):
    """Whether ``client.scheduler_info`` takes ``n_workers`` (newer distributed lists
    only a few workers unless it is -1)."""
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _host_of(address):
    m = re.match(r"^[a-z]+://\[?([^\]]+?)\]?:\d+$", address)
    return m.group(1) if m else address


def threads_for(cores, threads_on_host):
    """Engine threads per Dask thread so that Dask threads x engine threads fill the
    machine: ``max(1, cores // threads_on_host)``."""
    return max(1, int(cores) // max(1, int(threads_on_host)))


def fingerprint_id(fingerprint):
    """A short file-name-safe name for a kind of machine, e.g. "amd-epyc-7b13-2c-1f0c9a2b"
    (CPU model, core count, and a hash of the whole fingerprint)."""
    text = json.dumps(fingerprint, sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    cpu = re.sub(r"[^a-z0-9]+", "-", str(fingerprint.get("cpu", "cpu")).lower()).strip("-")[:40] or "cpu"
    return f"{cpu}-{fingerprint.get('cores', '?')}c-{digest}"


def plan_path_for(plan_path, fingerprint):
    """The plan file for one kind of machine beside ``plan_path``:
    ``plan.json`` -> ``plan.<fingerprint_id>.json``."""
    root, ext = os.path.splitext(os.fspath(plan_path))
    return f"{root}.{fingerprint_id(fingerprint)}{ext or '.json'}"


# -------------------------------------------------------------------- the plans
def _plan_docs(plan):
    """The plan documents ``predict`` ships for its ``plan=`` argument."""
    if plan is None:
        return []
    if isinstance(plan, str) and plan == "active":
        path = _plan.active_path()
        if path is None:
            return []
        pf = _plan.read_plan(path)
        return [] if pf.status in ("missing", "corrupt") else [_doc(pf)]
    paths = [plan] if isinstance(plan, (str, os.PathLike)) else plan
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise TypeError(f"plan must be 'active', None, a path or a list of paths, got {plan!r}")
    docs = []
    for p in paths:
        pf = _plan.read_plan(p)
        if pf.status in ("missing", "corrupt"):
            raise ValueError(f"plan {os.fspath(p)} cannot be shipped: {pf.reason}")
        docs.append(_doc(pf))
    return docs


def _doc(pf):
    return {**pf.header, "entries": list(pf.entries.values()), "_source": pf.path}


def pick_plan(docs, fingerprint):
    """(doc, None) for the first plan document trusted on hardware ``fingerprint``, else
    (None, why none is; None when there are no documents)."""
    why = None
    for d in docs:
        problem = _plan.header_problem(d, fingerprint)
        if problem is None:
            return d, None
        why = why or f"{d.get('_source')}: {problem[1]}"
    return None, why


# ---------------------------------------------------------------- worker side
_stats_lock = threading.Lock()
_STATS = {"bundles_received": 0, "warnings": [], "threads": None}


def worker_stats():
    """This process's record (meant to be read on workers with ``client.run``):
    "bundles_received" (ModelBundles deserialised), "warnings" (plan warnings given),
    "threads" (the engine thread count the last bundle set)."""
    with _stats_lock:
        return {"bundles_received": _STATS["bundles_received"], "warnings": list(_STATS["warnings"]),
                "threads": _STATS["threads"]}


class ModelBundle:
    """What ``predict`` ships to each worker once: the model, the plan documents, and
    the thread decision (``threads``, else per worker address ``threads_by_worker``,
    else, for a worker that joined later, per host ``threads_by_host``).

    On a worker, ``activate()`` (first call per process: choose the plan for this
    hardware, write it to a local file; every call: set the engine's thread count and
    plan if another task changed them) returns the model ready to run."""

    def __init__(self, model, plans, threads=None, threads_by_worker=None, threads_by_host=None):
        self.model = copy.deepcopy(model)        # a snapshot; its caches start empty
        self.plans = list(plans)
        self.threads = threads
        self.threads_by_worker = dict(threads_by_worker or {})
        self.threads_by_host = dict(threads_by_host or {})
        self._setup = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_setup", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup = None
        self._lock = threading.Lock()
        with _stats_lock:
            _STATS["bundles_received"] += 1

    def _prepare(self):
        """Once per process: (engine threads, plan path or None)."""
        worker = _current_worker()
        threads = self.threads
        if threads is None:
            threads = self.threads_by_worker.get(getattr(worker, "address", None))
        if threads is None:      # a worker that joined after predict was called
            address = getattr(worker, "address", "") or ""
            threads = self.threads_by_host.get(_host_of(address))
        if threads is None:
            threads = threads_for(usable_cores(), getattr(worker, "nthreads", 1) or 1)
        doc, why = pick_plan(self.plans, _plan.hardware_fingerprint())
        path = None
        if doc is not None:
            directory = getattr(worker, "local_directory", None) or _tmpdir()
            path = os.path.join(os.path.abspath(directory), f"convtune-plan-{os.getpid()}-{id(self):x}.json")
            body = {k: v for k, v in doc.items() if k != "_source"}
            with open(path, "w", encoding="utf-8") as f:
                json.dump(body, f)
        elif why is not None:
            msg = (f"convtune: no plan shipped with this model was tuned on this worker's "
                   f"hardware ({why}); its layers use the heuristic")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            with _stats_lock:
                _STATS["warnings"].append(msg)
        with _stats_lock:
            _STATS["threads"] = threads
        return threads, path

    def release(self):
        """On a worker, when the plugin goes: delete the plan file written for it."""
        setup, self._setup = self._setup, None
        if setup is not None and setup[1] is not None:
            try:
                os.unlink(setup[1])
            except OSError:
                pass
        if setup is not None and _plan.active_path() == setup[1]:
            _plan.use_plan(None)

    def activate(self):
        """The model, with this process's engine thread count and plan set for it."""
        with self._lock:
            if self._setup is None:
                self._setup = self._prepare()
        threads, path = self._setup
        if get_num_threads() != threads:
            set_num_threads(threads)
        if _plan.active_path() != path:      # None: no plan, the heuristic decides
            _plan.use_plan(path)
        return self.model


def _tmpdir():
    import tempfile
    return tempfile.gettempdir()


def _current_worker():
    try:
        from distributed import get_worker
        return get_worker()
    except (ImportError, ValueError):
        return None


class ModelRef:
    """What each task carries instead of the model: the name of the worker plugin that
    holds the model's ``ModelBundle`` on every worker. On the client, when the last
    reference to it goes (the dask arrays built on it), the plugin is unregistered."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):              # the copies in tasks carry no finalizer
        return (ModelRef, (self.name,))

    def __dask_tokenize__(self):
        return self.name

    def __repr__(self):
        return f"ModelRef({self.name!r})"

    def bundle(self):
        """On a worker: the ModelBundle this names."""
        worker = _current_worker()
        plugin = None if worker is None else worker.plugins.get(self.name)
        if plugin is None:
            raise RuntimeError(f"convtune: the model {self.name} is no longer installed on this "
                               f"worker: it was released when the dask arrays built by predict were "
                               f"garbage collected; keep the array alive until compute finishes")
        return plugin.bundle


_plugin_class = None


def _make_plugin(name, payload):
    """A ``distributed.WorkerPlugin`` carrying a pickled ModelBundle (``payload``), which
    it unpickles once on the worker (the class is made on first use, so that importing
    this module does not import Dask)."""
    global _plugin_class
    if _plugin_class is None:
        from distributed.diagnostics.plugin import WorkerPlugin

        class ModelPlugin(WorkerPlugin):
            """Holds one installed model's ModelBundle on a worker."""

            def __init__(self, name, payload):
                self.name, self.payload, self.bundle = name, payload, None

            def __reduce__(self):
                return (_make_plugin, (self.name, self.payload))

            def setup(self, worker):
                import pickle
                self.bundle, self.payload = pickle.loads(self.payload), None

            def teardown(self, worker):
                if self.bundle is not None:
                    self.bundle.release()

        _plugin_class = ModelPlugin
    return _plugin_class(name, payload)


# Client side: the models installed on clusters, by content, so that predict calls on
# an unchanged model share one installation: (client id, digest) -> entry.
_install_lock = threading.Lock()
_installed = {}


def _install(client, bundle):
    """A ModelRef to ``bundle`` installed on the cluster of ``client``: the bundle is
    pickled here once; when identical bytes are installed already (same model, plans
    and thread decision), that installation is shared. The second item is the entry's
    cache of output shapes."""
    import cloudpickle
    payload = cloudpickle.dumps(bundle, protocol=5)
    key = (client.id, hashlib.blake2b(payload, digest_size=16).hexdigest())
    with _install_lock:
        entry = _installed.get(key)
        if entry is None:
            name = f"convtune-model-{key[1][:12]}-{uuid.uuid4().hex[:8]}"
            client.register_plugin(_make_plugin(name, payload), name=name)
            entry = _installed[key] = {"name": name, "refs": 0, "specs": {}, "client": client}
        entry["refs"] += 1
    ref = ModelRef(entry["name"])
    weakref.finalize(ref, _drop, key)
    return ref, entry["specs"]


def _drop(key):
    """Finalizer of a ModelRef on the client: when the last one of an installation goes,
    unregister its plugin (a callback on the client's event loop: finalizers run in
    whatever thread collects the garbage)."""
    with _install_lock:
        entry = _installed.get(key)
        if entry is None:
            return
        entry["refs"] -= 1
        if entry["refs"] > 0:
            return
        del _installed[key]
    client, name = entry["client"], entry["name"]
    if getattr(client, "status", None) not in ("running", "connecting"):
        return

    async def go():
        try:
            await client.scheduler.unregister_worker_plugin(name=name)
        except Exception:  # pragma: no cover - the cluster is going away
            pass
    try:
        client.loop.add_callback(go)
    except Exception:  # pragma: no cover - the loop is closed
        pass


def _resolve(ref):
    return ref if isinstance(ref, ModelBundle) else ref.bundle()


def _predict_block(block, ref):
    """Run on a worker: the model on one chunk [n, C, H, W]; ``ref`` a ModelRef (or,
    to measure what per-task shipping costs, a ModelBundle itself)."""
    model = _resolve(ref).activate()
    out = np.asarray(model(np.ascontiguousarray(block)))
    if out.ndim == 0 or out.shape[0] != block.shape[0]:
        raise ValueError(f"predict: the model turned a batch of {block.shape[0]} into an output "
                         f"of shape {out.shape}; it must keep the batch dimension first")
    return out


def _output_spec(ref, shape, dtype):
    """Run on a worker: (shape, dtype) of the model's output for zeros of ``shape``."""
    model = _resolve(ref).activate()
    out = np.asarray(model(np.zeros(shape, dtype)))
    return out.shape, str(out.dtype)


# ---------------------------------------------------------------- client side
def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"predict: {name} must be a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"predict: {name} must be a positive int, got {v}")
    return int(v)


def _check_4d(shape, dtype, what):
    if len(shape) != 4:
        raise ValueError(f"predict: {what} must be 4-D [N, C, H, W], got shape {tuple(shape)}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"predict: {what} must be float32 or float64, got {np.dtype(dtype)}")


def as_batches(x, batch_size=None, default_chunks=1):
    """``x`` as a dask array [N, C, H, W] chunked along N only (``batch_size`` images a
    chunk when given). ``x`` is a dask array, a numpy array (cut into ``batch_size`` or
    ``default_chunks`` chunks) or an iterable of numpy batches (one chunk each)."""
    da, _ = require_dask()
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(x, da.Array):
        _check_4d(x.shape, x.dtype, "x")
        if any(math.isnan(s) for s in x.shape):
            raise ValueError("predict: x has unknown chunk sizes; call x.compute_chunk_sizes() first")
        return x.rechunk({0: batch_size if batch_size else x.chunks[0], 1: -1, 2: -1, 3: -1})
    if isinstance(x, np.ndarray):
        _check_4d(x.shape, x.dtype, "x")
        n = x.shape[0]
        bs = batch_size or max(1, math.ceil(n / max(1, default_chunks)))
        return da.from_array(x, chunks=(bs, -1, -1, -1))
    if isinstance(x, (str, bytes, dict)) or not hasattr(x, "__iter__"):
        raise TypeError(f"predict: x must be a dask array, a numpy array or an iterable of numpy "
                        f"batches [n, C, H, W], got {type(x).__name__}")
    parts = []
    for i, b in enumerate(x):
        if not isinstance(b, np.ndarray):
            raise TypeError(f"predict: batch {i} of x is a {type(b).__name__}, expected a numpy array")
        _check_4d(b.shape, b.dtype, f"batch {i} of x")
        if parts and (b.shape[1:] != parts[0].shape[1:] or b.dtype != parts[0].dtype):
            raise ValueError(f"predict: batch {i} of x has shape {b.shape} and dtype {b.dtype}; "
                             f"batch 0 has {parts[0].shape} and {parts[0].dtype}")
        parts.append(b)
    if not parts:
        raise ValueError("predict: x is an empty iterable (no batches)")
    arr = da.concatenate([da.from_array(b, chunks=b.shape) for b in parts], axis=0)
    return arr.rechunk({0: batch_size}) if batch_size else arr


def predict(model, x, client=None, batch_size=None, *, plan="active", threads=None):
    """``model(x)`` computed on a Dask cluster, as a (lazy) dask array.

    ``model`` an engine Module (e.g. ``engine.fuse(engine.models.resnet18())``);
    ``x`` a dask array [N, C, H, W] (chunks along C, H, W are merged), a numpy array or
    an iterable of numpy batches; ``batch_size`` images per task (default: the dask
    array's chunks, or two chunks per Dask thread for numpy input); ``client`` a
    ``distributed.Client`` (default: the current one). ``plan`` and ``threads``: see the
    module docstring. The model is snapshotted now and sent to each worker once; the
    output's shape and dtype come from running it once on one zero image on a worker.
    Call ``.compute()`` (or ``client.compute``) on the result."""
    da, _ = require_dask()
    if not isinstance(model, Module):
        raise TypeError(f"predict: model must be an engine Module, got {type(model).__name__}")
    if threads is not None:
        threads = _positive_int(threads, "threads")
    client = get_client(client)
    info = machines(client)
    if not info:
        raise ValueError("predict: the Dask cluster has no workers")
    total_threads = sum(m["nthreads"] for m in info.values())
    arr = as_batches(x, batch_size, default_chunks=2 * total_threads)
    docs = _plan_docs(plan)

    on_host = {}
    for m in info.values():
        on_host[m["host"]] = on_host.get(m["host"], 0) + m["nthreads"]
    by_worker = {a: threads_for(m["cores"], on_host[m["host"]]) for a, m in info.items()}
    by_host = {m["host"]: by_worker[a] for a, m in info.items()}
    if docs:
        unplanned = sorted(a for a, m in info.items() if pick_plan(docs, m["fingerprint"])[0] is None)
        if unplanned:
            why = pick_plan(docs, info[unplanned[0]]["fingerprint"])[1]
            warnings.warn(f"convtune: {len(unplanned)} of {len(info)} Dask worker(s) ({', '.join(unplanned[:4])}"
                          f"{', ...' if len(unplanned) > 4 else ''}) run on hardware no shipped plan was "
                          f"tuned on ({why}); they use their heuristic", RuntimeWarning, stacklevel=2)

    ref, specs = _install(client, ModelBundle(model, docs, threads, by_worker, by_host))
    probe = ((1, *arr.shape[1:]), str(arr.dtype))
    if probe not in specs:
        specs[probe] = client.submit(_output_spec, ref, *probe, pure=False).result(timeout=SETUP_TIMEOUT)
    out_shape, out_dtype = specs[probe]
    out_dtype = np.dtype(out_dtype)
    rest = tuple(out_shape[1:])
    ndim = 1 + len(rest)
    kwargs = {}
    if ndim < 4:
        kwargs["drop_axis"] = list(range(ndim, 4))
    elif ndim > 4:
        kwargs["new_axis"] = list(range(4, ndim))
    return da.map_blocks(_predict_block, arr, ref, dtype=out_dtype,
                         chunks=(arr.chunks[0], *((d,) for d in rest)),
                         meta=np.empty((0,) * ndim, out_dtype), **kwargs)
