"""engine.distributed on a real Dask cluster: a LocalCluster of 2 worker processes x 1
thread on 127.0.0.1 (module-scoped; the kill test starts its own).

What is checked: predict equals the local model bit for bit on the same algorithm
(forced, or chosen by a shipped plan); the model is deserialised once per worker, not
once per chunk; the engine thread count on the workers is what predict set (the
nanny's OMP_NUM_THREADS=1 default is there first); a plan from other hardware warns and
falls back to the heuristic; distributed tuning gives the local tuner's entry keys,
runs one job per host at a time and writes a plan per kind of machine; a worker killed
mid-tune loses no finished shape and does not hang the run.
"""
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="needs dask[distributed]: pip install convtune[dask]")
da = pytest.importorskip("dask.array", reason="needs dask[distributed]: pip install convtune[dask]")

import engine  # noqa: E402
import engine.distributed as ED  # noqa: E402
from engine import plan as P  # noqa: E402
from tuner import cli, configs  # noqa: E402
from tuner import distributed as TD  # noqa: E402
from tuner.model_shapes import collect_shapes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CNN = os.path.join(ROOT, "configs", "seed_cnn.json")
TIMEOUT = 60


def _cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address="127.0.0.1:0")


@pytest.fixture(scope="module")
def cluster():
    """(client, what the workers reported before any predict ran). The scheduler's
    active memory manager runs every 50 ms (default 2 s), so that a model kept as
    scattered data would lose its replicas between two computes here."""
    import dask
    with dask.config.set({"distributed.scheduler.active-memory-manager.interval": "50ms"}), \
            _cluster() as lc, distributed.Client(lc, timeout=TIMEOUT) as client:
        before = client.run(lambda: (os.environ.get("OMP_NUM_THREADS"), engine.get_num_threads()))
        yield client, before


@pytest.fixture(autouse=True)
def no_plan():
    """The client uses no plan unless a test says so."""
    engine.use_plan(None)
    yield
    P.reset()


def seed_cnn(algorithm=None):
    """The seed CNN of configs/seed_cnn.json, seeded, optionally forced to ``algorithm``."""
    m = engine.Sequential(engine.Conv2d(3, 10, 3, padding=1, seed=1), engine.MaxPool2d(2, 1),
                          engine.Conv2d(10, 16, 3, padding=1, seed=2), engine.MaxPool2d(2, 1))
    for layer in m:
        if isinstance(layer, engine.Conv2d):
            layer.algorithm = algorithm
    return m


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32)


def local(model, x, batch, threads=1):
    """The model run here, chunk by chunk as the cluster runs it, at ``threads``."""
    engine.set_num_threads(threads)
    return np.concatenate([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def stats(client):
    return client.run(ED.worker_stats)


# ------------------------------------------------------------------------ import
def test_importing_engine_does_not_import_dask():
    code = ("import sys, engine, engine.distributed; "
            "bad = [m for m in ('dask', 'distributed') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr


def test_without_dask_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)     # import distributed fails
    with pytest.raises(ImportError, match=r"pip install convtune\[dask\]"):
        ED.predict(engine.Sequential(), images(1))


class _FlakyClient:
    """A client whose scheduler lists no worker on the first call, then one whose
    first answer is an error: what a loaded machine can show for a moment."""
    def __init__(self):
        self.calls = {"scheduler_info": 0, "run": 0}

    def scheduler_info(self, n_workers=0):
        self.calls["scheduler_info"] += 1
        ws = {} if self.calls["scheduler_info"] == 1 else {"tcp://10.0.0.1:4000": {"nthreads": 2}}
        return {"workers": ws}

    def run(self, fn, workers=None, on_error="raise", wait=True):
        self.calls["run"] += 1
        if self.calls["run"] == 1:
            return {a: OSError("worker busy") for a in workers}
        return {a: fn() for a in workers}


def test_machines_asks_again_when_nobody_answers(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    client = _FlakyClient()
    info = ED.machines(client)
    assert list(info) == ["tcp://10.0.0.1:4000"]
    assert info["tcp://10.0.0.1:4000"]["host"] == "10.0.0.1"
    assert info["tcp://10.0.0.1:4000"]["nthreads"] == 2
    assert info["tcp://10.0.0.1:4000"]["pid"] == os.getpid()
    assert client.calls == {"scheduler_info": 3, "run": 2}
    # asked once only, a silent cluster is reported as empty at once
    assert ED.machines(_FlakyClient(), attempts=1) == {}


# ----------------------------------------------------------------------- predict
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_predict_equals_local_bit_for_bit(cluster, algorithm):
    client, _ = cluster
    model = seed_cnn(algorithm)
    x = images(10)
    y = ED.predict(model, da.from_array(x, chunks=(4, 3, 32, 32)), client, threads=1)
    assert isinstance(y, da.Array)
    assert y.shape == (10, 16, 30, 30) and y.dtype == np.float32
    assert y.chunks[0] == (4, 4, 2)
    out = y.compute(timeout=TIMEOUT)
    assert np.array_equal(out, local(model, x, 4))


def test_predict_rechunks_and_accepts_numpy_and_batches(cluster):
    client, _ = cluster
    model = seed_cnn("direct")
    x = images(6, seed=1)
    ref = local(model, x, 3)
    # chunked along C and H: merged; batch_size recuts N
    xd = da.from_array(x, chunks=(2, 1, 16, 32))
    y = ED.predict(model, xd, client, batch_size=3, threads=1)
    assert y.chunks[0] == (3, 3)
    assert np.array_equal(y.compute(timeout=TIMEOUT), ref)
    y = ED.predict(model, x, client, batch_size=3, threads=1)
    assert np.array_equal(y.compute(timeout=TIMEOUT), ref)
    y = ED.predict(model, iter([x[:3], x[3:]]), client, threads=1)
    assert y.chunks[0] == (3, 3)
    assert np.array_equal(y.compute(timeout=TIMEOUT), ref)


def test_predict_output_of_other_rank(cluster):
    """A classifier head: [N, C, H, W] -> [N, classes]."""
    client, _ = cluster
    model = engine.Sequential(engine.Conv2d(3, 4, 3, seed=3), engine.Flatten(),
                              engine.Linear(4 * 30 * 30, 5, seed=4))
    model[0].algorithm = "im2col"
    x = images(4, seed=2)
    y = ED.predict(model, x, client, batch_size=2, threads=1)
    assert y.shape == (4, 5)
    assert np.array_equal(y.compute(timeout=TIMEOUT), local(model, x, 2))


def _installed(client):
    return client.run(lambda dask_worker: sorted(n for n in dask_worker.plugins
                                                 if n.startswith("convtune-model-")))


def test_model_is_shipped_once_per_worker(cluster):
    client, _ = cluster
    before = stats(client)
    y = ED.predict(seed_cnn("direct"), images(16), client, batch_size=2, threads=1)
    assert y.npartitions == 8
    y.compute(timeout=TIMEOUT)
    time.sleep(0.3)                   # several memory-manager passes
    (y + 1).sum().compute(timeout=TIMEOUT)
    after = stats(client)
    received = {a: after[a]["bundles_received"] - before[a]["bundles_received"] for a in after}
    # each worker deserialised the model exactly once, though 16 chunks ran
    assert received == {a: 1 for a in after}
    # predict again on the unchanged model: the installation is shared, nothing shipped
    y2 = ED.predict(seed_cnn("direct"), images(4), client, batch_size=2, threads=1)
    y2.compute(timeout=TIMEOUT)
    assert stats(client) == after
    # other weights: shipped anew, once per worker
    changed = seed_cnn("direct")
    changed[0].weight = changed[0].weight * 2
    y3 = ED.predict(changed, images(4), client, batch_size=1, threads=1)
    y3.compute(timeout=TIMEOUT)
    third = stats(client)
    assert {a: third[a]["bundles_received"] - after[a]["bundles_received"] for a in third} == {a: 1 for a in third}
    assert all(len(v) == 2 for v in _installed(client).values())
    # released with the last array built on each
    del y, y3
    deadline = time.monotonic() + TIMEOUT
    while any(len(v) > 1 for v in _installed(client).values()) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert all(len(v) == 1 for v in _installed(client).values())
    del y2
    deadline = time.monotonic() + TIMEOUT
    while any(_installed(client).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_installed(client).values())


def test_workers_start_single_threaded_and_predict_sets_threads(cluster):
    client, before = cluster
    # the trap: Dask's nanny sets OMP_NUM_THREADS=1, so the engine's default there is 1
    assert all(v == ("1", 1) for v in before.values()), before
    model = seed_cnn("direct")
    ED.predict(model, images(4), client, batch_size=1, threads=2).compute(timeout=TIMEOUT)
    assert set(client.run(engine.get_num_threads).values()) == {2}
    # automatic: cores // Dask threads on the host (2 workers x 1 thread here)
    cores = client.run(ED.usable_cores)
    ED.predict(model, images(4), client, batch_size=1).compute(timeout=TIMEOUT)
    got = client.run(engine.get_num_threads)
    assert got == {a: max(1, cores[a] // 2) for a in got}
    assert {s["threads"] for s in stats(client).values()} == set(got.values())


def test_worker_joining_later_gets_the_model(cluster):
    client, _ = cluster
    model = seed_cnn("direct")
    x = images(12, seed=5)
    y = ED.predict(model, x, client, batch_size=1, threads=None)
    old = set(client.scheduler_info(n_workers=-1)["workers"])
    cores = client.run(ED.usable_cores)
    client.cluster.scale(3)
    try:
        client.wait_for_workers(3, timeout=TIMEOUT)
        [new] = set(client.scheduler_info(n_workers=-1)["workers"]) - old
        # installed on the newcomer at registration, before it ran anything
        assert new in _installed(client) and len(_installed(client)[new]) == 1
        out = client.compute(y, workers=[new]).result(timeout=TIMEOUT)
        assert np.array_equal(out, local(model, x, 1))
        s = client.run(ED.worker_stats, workers=[new])[new]
        # the thread decision of its host (2 Dask threads on it when predict was called)
        assert s["bundles_received"] == 1 and s["threads"] == max(1, cores[next(iter(old))] // 2)
    finally:
        client.cluster.scale(2)
        deadline = time.monotonic() + TIMEOUT
        while len(client.scheduler_info(n_workers=-1)["workers"]) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)


def test_threads_for():
    assert ED.threads_for(2, 2) == 1
    assert ED.threads_for(8, 1) == 8
    assert ED.threads_for(8, 3) == 2
    assert ED.threads_for(1, 4) == 1


def _plan_for(model, path, batch, threads, algorithm, hardware=None):
    """A plan forcing ``algorithm`` for every conv shape of ``model`` at ``batch``."""
    found = collect_shapes(model, (batch, 3, 32, 32), details=True)
    entries = [{"key": P.params_key(d["params"], threads), "algorithm": algorithm, "params": {},
                "level": "measure", "tolerance": 1e-4, "tuned_at": "2026-01-01T00:00:00Z"}
               for d in found if d["key"]["op"] == "conv2d"]
    assert len(entries) == 2
    P.write_entries(path, entries, hardware=hardware)
    return path


def test_shipped_plan_decides_on_the_workers(cluster, tmp_path):
    client, _ = cluster
    model = seed_cnn()               # nothing forced: plan or heuristic decides
    x = images(8, seed=3)
    heuristic = local(model, x, 4)
    path = _plan_for(model, str(tmp_path / "plan.json"), 4, 1, "direct")
    engine.use_plan(path)
    assert engine.explain(model[0], (4, 3, 32, 32))["source"] == "plan"
    planned = local(model, x, 4)
    assert not np.array_equal(planned, heuristic)    # the plan changes the bits
    # the workers' environment says CONVTUNE_PLAN=none; the shipped plan still decides
    out = ED.predict(model, x, client, batch_size=4, threads=1).compute(timeout=TIMEOUT)
    assert np.array_equal(out, planned)
    out = ED.predict(model, x, client, batch_size=4, threads=1, plan=None).compute(timeout=TIMEOUT)
    assert np.array_equal(out, heuristic)


def test_foreign_plan_warns_once_and_uses_the_heuristic(cluster, tmp_path):
    client, _ = cluster
    model = seed_cnn()
    x = images(8, seed=4)
    heuristic = local(model, x, 2)
    fake = {**P.hardware_fingerprint(), "cpu": "Imaginary CPU 9000"}
    path = _plan_for(model, str(tmp_path / "other.json"), 2, 1, "direct", hardware=fake)
    before = stats(client)
    with pytest.warns(RuntimeWarning, match="heuristic"):
        y = ED.predict(model, x, client, batch_size=2, threads=1, plan=path)
    out = y.compute(timeout=TIMEOUT)
    assert np.array_equal(out, heuristic)
    after = stats(client)
    new = {a: after[a]["warnings"][len(before[a]["warnings"]):] for a in after}
    # 4 chunks, 2 workers: at most one warning each, naming the cause
    assert all(len(w) == 1 and "Imaginary CPU 9000" in w[0] for w in new.values()), new


def test_predict_bad_input(cluster):
    client, _ = cluster
    model = seed_cnn()
    with pytest.raises(TypeError, match="engine Module"):
        ED.predict(lambda a: a, images(2), client)
    with pytest.raises(ValueError, match=r"4-D \[N, C, H, W\]"):
        ED.predict(model, images(2)[0], client)
    with pytest.raises(TypeError, match="float32 or float64"):
        ED.predict(model, np.zeros((2, 3, 32, 32), np.int32), client)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ED.predict(model, images(2), client, batch_size=0)
    with pytest.raises(TypeError, match="threads must be a positive int"):
        ED.predict(model, images(2), client, threads=1.5)
    with pytest.raises(TypeError, match="iterable of numpy"):
        ED.predict(model, "images", client)
    with pytest.raises(ValueError, match="batch 1 of x has shape"):
        ED.predict(model, [images(2), np.zeros((2, 3, 8, 8), np.float32)], client)
    with pytest.raises(ValueError, match="cannot be shipped"):
        ED.predict(model, images(2), client, plan="/nonexistent/plan.json")
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        ED.predict(model, images(2), client="tcp://127.0.0.1:1")


# ------------------------------------------------------------------------ tuning
def _keys(path):
    return {P.entry_key(e["key"]) for e in P.read_plan(path).entries.values()}


def test_distributed_tune_matches_local_tune(cluster, tmp_path):
    client, _ = cluster
    local_plan, dist_plan = str(tmp_path / "local.json"), str(tmp_path / "dist.json")
    assert cli.main(["tune", SEED_CNN, "--plan", local_plan, "--threads", "1", "--reps", "2",
                     "--no-progress"]) == 0
    address = client.scheduler.address
    assert cli.main(["tune", SEED_CNN, "--plan", dist_plan, "--threads", "1", "--reps", "2",
                     "--no-progress", "--dask", address]) == 0
    assert _keys(dist_plan) == _keys(local_plan)
    assert len(_keys(dist_plan)) == len(configs.load(SEED_CNN).shapes)
    doc = P.read_plan(dist_plan)
    assert doc.trusted and doc.header["hardware"] == P.hardware_fingerprint()
    # a second run finds everything tuned
    summary = TD.tune(SEED_CNN, client, dist_plan, threads=[1], reps=2, timeout=TIMEOUT)
    assert summary["written"] == 0 and summary["skipped"] == len(_keys(dist_plan))


def test_tune_one_job_per_host_and_one_plan_per_kind_of_machine(cluster, tmp_path):
    client, _ = cluster
    addrs = sorted(client.scheduler_info(n_workers=-1)["workers"])

    def pretend(cpu):
        P.hardware_fingerprint()
        P._fingerprint["cpu"] = cpu

    client.run(pretend, "Imaginary CPU 9000", workers=[addrs[1]])
    try:
        base = str(tmp_path / "plan.json")
        summary = TD.tune(SEED_CNN, client, base, threads=[1], level="measure", reps=1,
                          timeout=TIMEOUT)
    finally:
        client.run(lambda: setattr(P, "_fingerprint", None), workers=[addrs[1]])
    here = P.hardware_fingerprint()
    other = {**here, "cpu": "Imaginary CPU 9000"}
    assert set(summary["plans"].values()) == {ED.plan_path_for(base, here), ED.plan_path_for(base, other)}
    n = len(configs.load(SEED_CNN).shapes)
    for fp in (here, other):
        pf = P.read_plan(ED.plan_path_for(base, fp), fp)
        assert pf.trusted and pf.header["hardware"] == fp
        assert len(pf.entries) == n
    assert summary["written"] == 2 * n and not summary["failed"] and not summary["untuned"]
    # one host: the jobs never overlapped in time
    spans = sorted((r["started"], r["finished"]) for r in summary["records"])
    assert len(spans) == 2 * n
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def test_tune_bad_input(cluster, tmp_path):
    client, _ = cluster
    with pytest.raises(ValueError, match="level must be one of"):
        TD.tune(SEED_CNN, client, str(tmp_path / "p.json"), level="quick")
    with pytest.raises(TypeError, match="config path"):
        TD.tune(42, client, str(tmp_path / "p.json"))
    bad = tmp_path / "corrupt.json"
    bad.write_text("{not json")
    with pytest.raises(P.PlanError, match="refusing to write"):
        TD.tune(SEED_CNN, client, str(bad), threads=[1], level="estimate")
    assert bad.read_text() == "{not json"


def _executing(dask_worker):
    """Run on a worker: the keys of the tasks it is executing now."""
    return [ts.key for ts in dask_worker.state.executing]


def test_worker_killed_mid_tune_keeps_finished_shapes(tmp_path):
    # convolutions only, 15 samples each: a job takes ~1 s, far longer than the few ms
    # between seeing it run and the kill (at ~0.3 s a loaded machine let the job finish
    # first, and the test failed)
    shapes = [s for b in (2, 4, 8) for s in configs.load_all([SEED_CNN], batch=b)[1] if s.op == "conv2d"]
    path = str(tmp_path / "plan.json")
    with _cluster() as lc, distributed.Client(lc, timeout=TIMEOUT) as client:
        pids = client.run(os.getpid)
        result, seen = {}, []
        t = threading.Thread(target=lambda: result.update(summary=TD.tune(
            shapes, client, path, threads=[1], reps=15, timeout=TIMEOUT, on_result=seen.append)))
        t.start()
        deadline = time.monotonic() + TIMEOUT
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen, "no shape finished"
        # kill the worker process in the middle of the next job it runs
        victim = key = None
        while victim is None and time.monotonic() < deadline and t.is_alive():
            running = {a: k for a, k in client.run(_executing, workers=list(pids)).items() if k}
            if running:
                victim, [key] = next(iter(running.items()))
                os.kill(pids[victim], signal.SIGKILL)       # first: the job is still running
                finished = {P.entry_key(e["key"]): e["tuned_at"] for e in P.read_plan(path).entries.values()}
        t.join(TIMEOUT)
        assert not t.is_alive(), "tuning hung after a worker was killed"
    assert victim is not None, "the run ended before a worker could be killed mid-job"
    summary = result["summary"]
    assert not summary["failed"] and not summary["untuned"], summary
    final = {P.entry_key(e["key"]): e["tuned_at"] for e in P.read_plan(path).entries.values()}
    assert len(final) == len(shapes)
    assert finished and all(final[k] == v for k, v in finished.items())   # none lost or redone
    # the killed job was run again, by another process: either Dask rescheduled the task
    # itself (same key) or its future was lost and the driver re-sent the job (new key)
    redone = [r for r in summary["records"] if r["key"] == key]
    if redone:
        assert len(redone) == 1 and redone[0]["pid"] != pids[victim], (key, summary["records"])
    else:
        assert summary["resubmitted"] >= 1, summary
