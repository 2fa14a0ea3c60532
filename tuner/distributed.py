"""Tuning on a Dask cluster: ``convtune tune CONFIG --dask ADDRESS`` and
``tuner.distributed.tune``.

The client is the driver; the workers measure:

1. the workers are asked for their hardware fingerprint and grouped by it: each kind
   of machine gets its own plan (``plan_path`` itself when there is one kind, else
   ``engine.distributed.plan_path_for(plan_path, fingerprint)``: ``plan.<id>.json``);
2. per kind, the shapes still to tune are those ``search.pending_jobs`` leaves (the
   local ``convtune tune`` rule), one job per (shape, thread count);
3. at most one job runs per machine (host) at a time, so timings never share the
   cores with another measurement; a job is restricted to that host's workers of that
   kind and runs ``search.tune_shape``, the same function the local tuner runs;
4. each finished job's entry is merged into its kind's plan at once with
   ``engine.plan.write_entries`` (lock, re-read, merge, atomic replace), so a worker
   lost mid-run loses only its unfinished shape: the scheduler re-runs it on another
   worker of that host, or, when the host's workers are all gone, this driver
   resubmits it elsewhere (up to ``MAX_ATTEMPTS`` times).

The driver coordinates its own jobs only; two drivers tuning on one cluster at once
do not see each other's jobs.
"""
import os
import time
import uuid

from engine import distributed as _D
from engine import plan as _plan

from . import search

MAX_ATTEMPTS = 3
POLL_SECONDS = 0.25


def _tune_job(shape, threads, level, tolerance, reps):
    """Run on a worker: ``search.tune_shape`` and what the driver needs to file it."""
    started = time.time()
    entry, msg = search.tune_shape(shape, threads, level, tolerance, None, None, reps=reps)
    return {"entry": entry, "message": msg, "fingerprint": _plan.hardware_fingerprint(),
            "pid": os.getpid(), "started": started, "finished": time.time()}


def _as_shapes(config_or_shapes, batch, dtype):
    from .configs import Shape, load_all
    items = config_or_shapes
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"tune: expected a config path, a list of them or a list of "
                        f"tuner.configs.Shape, got {config_or_shapes!r}")
    if all(isinstance(s, Shape) for s in items):
        return list(items)
    if all(isinstance(p, (str, os.PathLike)) for p in items):
        return load_all([os.fspath(p) for p in items], batch, dtype)[1]
    raise TypeError("tune: config_or_shapes mixes paths and other things; give config paths "
                    "or tuner.configs.Shape objects")


class _Group:
    """One kind of machine: its fingerprint, plan file and jobs still to run."""

    def __init__(self, fingerprint, path):
        self.fingerprint, self.path = fingerprint, path
        self.queue = []          # [(shape, threads, tolerance, attempts)]


def tune(config_or_shapes, client, plan_path, *, threads=None, level="measure", tolerance=None,
         force=False, reps=None, batch=None, dtype=None, timeout=None, on_result=None):
    """Tune the distinct shapes on the cluster's workers; returns a summary dict.

    ``config_or_shapes``: config path(s) or ``tuner.configs.Shape`` objects (``batch`` /
    ``dtype`` override the configs'). ``threads``: thread counts to tune for (default:
    the engine threads ``predict`` gives each task on that kind of machine,
    ``engine.distributed.threads_for(cores, Dask threads on the host)``, so the plan
    has entries for the way the cluster runs).
    ``level``, ``tolerance``, ``reps``, ``force``: as ``convtune tune``. ``timeout``
    seconds bounds the run (what finished is kept). ``on_result(record)`` is called on
    the driver for each finished job.

    Summary: "plans" {fingerprint id: path}, "written", "skipped", "failed" [(label,
    threads, message)], "untuned" [(label, threads)] (timeout or no worker of its
    kind left), "resubmitted" (jobs this driver re-sent after losing their workers) and
    "records" (one per finished job: label, threads, task key, worker pid, host,
    start/end times).
    Raises ``engine.plan.PlanError`` if a target plan is unusable and not ``force``."""
    _, distributed = _D.require_dask()
    client = _D.get_client(client)
    if level not in _plan.LEVEL_RANK:
        raise ValueError(f"tune: level must be one of {list(_plan.LEVELS)}, got {level!r}")
    if threads is not None:
        threads = [int(t) for t in ([threads] if isinstance(threads, int) else threads)]
        if not threads or min(threads) < 1:
            raise ValueError(f"tune: threads must be positive ints, got {threads!r}")
    shapes = _as_shapes(config_or_shapes, batch, dtype)
    plan_path = os.path.abspath(os.fspath(plan_path))
    deadline = None if timeout is None else time.monotonic() + float(timeout)

    info = _D.machines(client)
    if not info:
        raise ValueError("tune: the Dask cluster has no workers")
    kinds, on_host = {}, {}
    for m in info.values():
        on_host[m["host"]] = on_host.get(m["host"], 0) + m["nthreads"]
        kinds.setdefault(_D.fingerprint_id(m["fingerprint"]), m["fingerprint"])
    groups = {}
    for fid, fp in sorted(kinds.items()):
        path = plan_path if len(kinds) == 1 else _D.plan_path_for(plan_path, fp)
        g = groups[fid] = _Group(fp, path)
        existing = _plan.check_writable(path, force, fp)
        default = sorted({_D.threads_for(m["cores"], on_host[m["host"]]) for m in info.values()
                          if _D.fingerprint_id(m["fingerprint"]) == fid})
        jobs, skipped = search.pending_jobs(existing, shapes, threads or default, level, tolerance, force)
        g.skipped = skipped
        g.queue = [(s, t, tol, 0) for s, t, tol in jobs]

    summary = {"plans": {fid: g.path for fid, g in groups.items()}, "written": 0,
               "skipped": sum(g.skipped for g in groups.values()), "failed": [], "untuned": [],
               "resubmitted": 0, "records": []}
    inflight = {}                # host -> (future, fid, job, allowed worker addresses)
    no_worker_since = None

    def label(s):
        return _plan.describe_key(s.params.key())

    def requeue(fid, job, why):
        s, t, tol, attempts = job
        if attempts + 1 >= MAX_ATTEMPTS:
            summary["failed"].append((label(s), t, f"gave up after {attempts + 1} attempts: {why}"))
        else:
            groups[fid].queue.insert(0, (s, t, tol, attempts + 1))
            summary["resubmitted"] += 1

    try:
        while inflight or any(g.queue for g in groups.values()):
            if deadline is not None and time.monotonic() > deadline:
                break
            # The cluster as it is now: workers that left are gone, new ones are asked.
            current = client.scheduler_info(**({"n_workers": -1} if _D.takes_n_workers(client) else {}))["workers"]
            for a in [a for a in info if a not in current]:
                del info[a]
            new = [a for a in current if a not in info]
            if new:
                # (once: a worker that does not answer yet is asked on the next pass)
                info.update(_D.machines(client, workers=new, attempts=1))
            # Jobs whose every allowed worker has left cannot run: send them elsewhere.
            for host, (fut, fid, job, allowed) in list(inflight.items()):
                if not any(a in info for a in allowed) and fut.status == "pending":
                    client.cancel(fut)
                    del inflight[host]
                    requeue(fid, job, "its workers left the cluster")
            # One job per idle host, of a kind that host has workers of.
            hosts = {}
            for a, m in info.items():
                hosts.setdefault(m["host"], {}).setdefault(_D.fingerprint_id(m["fingerprint"]), []).append(a)
            for host, by_kind in sorted(hosts.items()):
                if host in inflight:
                    continue
                fid = next((f for f in sorted(by_kind) if f in groups and groups[f].queue), None)
                if fid is None:
                    continue
                job = groups[fid].queue.pop(0)
                s, t, tol, _ = job
                fut = client.submit(_tune_job, s, t, level, tol, reps, workers=by_kind[fid],
                                    allow_other_workers=False, pure=False,
                                    key=f"convtune-tune-{uuid.uuid4().hex[:12]}")
                inflight[host] = (fut, fid, job, list(by_kind[fid]))
            if not inflight:
                # Shapes left for kinds of machine that have no worker now: wait a while.
                no_worker_since = no_worker_since or time.monotonic()
                if time.monotonic() - no_worker_since > _D.SETUP_TIMEOUT:
                    break
                time.sleep(POLL_SECONDS)
                continue
            no_worker_since = None
            try:
                distributed.wait([f for f, *_ in inflight.values()], timeout=POLL_SECONDS,
                                 return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            for host, (fut, fid, job, allowed) in list(inflight.items()):
                if fut.status == "finished":
                    del inflight[host]
                    _file(fut, groups[fid], job, host, force, summary, on_result)
                elif fut.status in ("error", "cancelled", "lost"):
                    del inflight[host]
                    exc = fut.exception() if fut.status == "error" else None
                    if exc is None or _worker_lost(exc, distributed):
                        requeue(fid, job, f"{type(exc).__name__ if exc else fut.status}")
                    else:
                        s, t, _, _ = job
                        summary["failed"].append((label(s), t, f"{type(exc).__name__}: {exc}"))
    finally:
        for fut, *_ in inflight.values():
            client.cancel(fut)
    for _, _, job, _ in inflight.values():
        summary["untuned"].append((label(job[0]), job[1]))
    for g in groups.values():
        summary["untuned"] += [(label(s), t) for s, t, _, _ in g.queue]
    return summary


def _worker_lost(exc, distributed):
    """Did the job fail because its worker died (rather than the tuning itself)?"""
    lost = [getattr(distributed, "KilledWorker", None), getattr(distributed.comm, "CommClosedError", None)]
    return isinstance(exc, tuple(c for c in lost if c is not None)) or isinstance(exc, (OSError, EOFError))


def _file(fut, group, job, host, force, summary, on_result):
    """Merge one finished job's entry into its kind's plan and record it."""
    result = fut.result()
    s, t, _, _ = job
    label = _plan.describe_key(s.params.key())
    record = {"label": label, "threads": t, "host": host, "pid": result["pid"], "key": fut.key,
              "started": result["started"], "finished": result["finished"],
              "message": result["message"], "plan": group.path}
    if result["fingerprint"] != group.fingerprint:   # should not happen: jobs are pinned
        record["message"] = "measured on other hardware than its group; discarded"
        summary["failed"].append((label, t, record["message"]))
    elif result["entry"] is None:
        summary["failed"].append((label, t, result["message"]))
    else:
        entry = result["entry"]
        entry["layers"] = s.names[:8]
        _plan.write_entries(group.path, [entry], prefer_new=force, force=force,
                            hardware=group.fingerprint)
        summary["written"] += 1
    summary["records"].append(record)
    if on_result is not None:
        on_result(record)
