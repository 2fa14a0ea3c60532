"""Batch inference on a Dask cluster against one process, on the same machine.

ResNet-18 (``engine.models.resnet18``, random weights, fused), float32 images
224x224, no plan (``CONVTUNE_PLAN=none``: every setup uses the heuristic), in chunks of
``--batch`` images. Three setups, their runs interleaved (the order rotates per round)
and each one's median reported:

- ``local``: one process, ``engine.set_num_threads(--threads)``, the chunks one after
  another, the model's prepared weights kept from run to run (warm);
- ``local-cold``: the same on a fresh copy of the model each run (its weights prepared,
  e.g. Winograd-transformed, during the run), what ``dask`` pays on its workers;
- ``dask``: ``engine.distributed.predict`` on a LocalCluster of ``--workers`` processes
  x 1 thread (127.0.0.1), the model installed once per worker (each run is a fresh
  ``predict`` call whose array is dropped after it, so the shipping, the output-shape
  probe and the weight preparation on each worker are included);
- ``dask-installed``: computing again one ``predict`` array made before the runs
  (the model already on the workers: the cluster's own overhead, without shipping);
- ``dask-per-chunk``: the same tasks with the model embedded in every task instead of
  installed (what a naive ``map_blocks(model, ...)`` does): each chunk deserialises the
  weights again and prepares them again (e.g. Winograd-transformed).

The images are persisted on the workers before the timed runs, as data a cluster loads
itself would be (``--data client`` instead embeds them in every run's graph, sent from
this process). Times are end to end, from the ``predict`` call to the numpy result. The model
deserialisations counted on the workers are printed per setup.

    python benchmarks/bench_distributed.py                    # 64 images, chunks of 8, 3 rounds
    python benchmarks/bench_distributed.py --images 32 --rounds 5
"""
import argparse
import copy
import os
import statistics
import sys
import time

os.environ["CONVTUNE_PLAN"] = "none"     # the heuristic everywhere (workers inherit it)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import engine  # noqa: E402
import engine.distributed as ED  # noqa: E402


def _received(client):
    return sum(s["bundles_received"] for s in client.run(ED.worker_stats).values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8, help="images per chunk (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (1 thread each)")
    ap.add_argument("--threads", type=int, default=2, help="engine threads of the local setup")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per setup (after one warm-up)")
    ap.add_argument("--data", choices=("cluster", "client"), default="cluster",
                    help="cluster (default): images persisted on the workers first; client: "
                    "sent from this process with every run")
    args = ap.parse_args(argv)

    import dask.array as da
    import distributed

    model = engine.fuse(engine.models.resnet18(seed=0))
    x = np.random.default_rng(0).uniform(-1, 1, (args.images, 3, args.size, args.size)).astype(np.float32)
    xd = da.from_array(x, chunks=(args.batch, 3, args.size, args.size))

    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as lc, \
            distributed.Client(lc) as client:
        if args.data == "cluster":
            xd = client.persist(xd)
            distributed.wait(xd)

        def local():
            engine.set_num_threads(args.threads)
            return np.concatenate([model(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])

        def local_cold():
            fresh = copy.deepcopy(model)     # prepared weights and choices start empty
            engine.set_num_threads(args.threads)
            return np.concatenate([fresh(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])

        def dask_once():
            return ED.predict(model, xd, client, plan=None).compute()

        def dask_per_chunk():
            # predict's tasks, but with the bundle itself in every task instead of a future
            bundle = ED.ModelBundle(model, [], ED.threads_for(ED.usable_cores(), args.workers))
            return da.map_blocks(ED._predict_block, xd, bundle, dtype=np.float32,
                                 chunks=(xd.chunks[0], (1000,)), drop_axis=[2, 3],
                                 meta=np.empty((0, 0), np.float32)).compute()

        # threads=1 explicitly: another bundle than dask_once's (threads chosen per
        # worker), so dask_once cannot share this installation and ships every run
        installed = ED.predict(model, xd, client, plan=None, threads=1)

        def dask_again():
            return installed.compute()

        setups = [("local", local), ("local-cold", local_cold), ("dask", dask_once),
                  ("dask-installed", dask_again),
                  ("dask-per-chunk", dask_per_chunk)]
        times = {name: [] for name, _ in setups}
        shipped = {name: [] for name, _ in setups}
        ref = None
        for rnd in range(args.rounds + 1):
            order = setups[rnd % len(setups):] + setups[:rnd % len(setups)]
            for name, fn in order:
                before = _received(client)
                t0 = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t0
                got = _received(client) - before
                if ref is None:
                    ref = out
                assert out.shape == ref.shape and np.allclose(out, ref, rtol=1e-3, atol=1e-3), name
                if rnd:                     # round 0 warms up every setup
                    times[name].append(dt)
                    shipped[name].append(got)
                print(f"  round {rnd} {name:15s} {dt:7.2f} s  {args.images / dt:6.1f} images/s"
                      f"  model deserialisations on workers: {got}", flush=True)

    print(f"\nResNet-18 fused, {args.images} images {args.size}x{args.size} float32, chunks of "
          f"{args.batch}, images on the {args.data}, CONVTUNE_PLAN=none; medians of {args.rounds} runs "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    base = statistics.median(times["local"])
    for name, label in (("local", f"1 process x {args.threads} threads"),
                        ("local-cold", "the same, a fresh copy of the model each run"),
                        ("dask", f"LocalCluster {args.workers} workers x 1 thread, model shipped once"),
                        ("dask-installed", "the same, computing an array whose model is already on the workers"),
                        ("dask-per-chunk", f"LocalCluster {args.workers} workers x 1 thread, model in every task")):
        med = statistics.median(times[name])
        print(f"  {name:15s} {args.images / med:7.1f} images/s  {med:6.2f} s  x{base / med:4.2f} of local"
              f"  ({statistics.median(shipped[name]):.0f} deserialisations)  [{label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
