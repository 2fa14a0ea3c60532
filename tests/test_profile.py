"""Seeing what the engine does: ``convtune profile`` (table, --json, --trace), --json on
bench/check, --plot on bench/profile/show, hooks only while profiling.

Tiny configs and models, --repeat 3: a few seconds in all."""
import json
import os
import statistics

import numpy as np
import pytest

import engine
from test_cli import ROOT, run

# Two convolutions of different shapes and a pool (shapes of the config format).
NET = {"name": "net", "input": [8, 10, 10], "batch": 1, "layers": [
    {"type": "conv", "name": "c1", "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"type": "conv", "name": "c2", "out_channels": 16, "kernel_size": 3, "padding": 1},
    {"type": "maxpool", "name": "p1", "kernel_size": 2},
]}
FIRST = {**NET, "name": "first", "layers": NET["layers"][:1]}


def write(tmp_path, doc, name):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def conv_flops(n, cin, cout, oh, ow, k):
    return 2 * n * cout * oh * ow * cin * k * k


class Tiny(engine.Module):
    """conv -> relu -> conv -> relu (the same ReLU module twice) -> max pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = engine.Conv2d(3, 8, 3, padding=1, seed=0)
        self.conv2 = engine.Conv2d(8, 8, 3, padding=1, seed=1)
        self.relu = engine.ReLU()
        self.pool = engine.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.relu(self.conv2(self.relu(self.conv1(x)))))


def tiny():
    return Tiny()


def hook_lists(model):
    """Per module, the hook lists it holds itself (none: the class's empty tuples)."""
    return [(m.__dict__.get("_forward_hooks", ()), m.__dict__.get("_forward_pre_hooks", ()),
             "_forward_hooks" in m.__dict__ or "_forward_pre_hooks" in m.__dict__)
            for m in model.modules()]


# ------------------------------------------------------------------ profile: library
def test_profile_model_rows_and_hooks_removed(plans_off):
    from tuner.profile import profile_model
    model = Tiny()
    assert not any(any(h) for h in hook_lists(model))      # nothing installed before
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    res = profile_model(model, x, repeat=3, warmup=1)
    assert not any(any(h) for h in hook_lists(model))      # and nothing left after
    rows = {r["path"]: r for r in res["layers"]}
    assert set(rows) == {"conv1", "conv2", "relu", "pool"}
    assert rows["relu"]["calls"] == 2 and rows["conv1"]["calls"] == 1
    assert [r["median_ms"] for r in res["layers"]] == sorted((r["median_ms"] for r in res["layers"]),
                                                             reverse=True)
    assert sum(r["percent"] for r in res["layers"]) == pytest.approx(100.0)
    c1 = rows["conv1"]
    assert c1["input_shape"] == [1, 3, 12, 12] and c1["output_shape"] == [1, 8, 12, 12]
    assert c1["source"] == "heuristic" and c1["algorithm"] in engine.algorithms()
    assert c1["algorithm"] == engine.explain(model.conv1, (1, 3, 12, 12))["algorithm"]
    assert c1["gflops"] == pytest.approx(conv_flops(1, 3, 8, 12, 12, 3) / (c1["median_ms"] * 1e6))
    assert rows["pool"]["algorithm"] == "pool" and rows["relu"]["algorithm"] is None
    assert not any(r["no_plan_entry"] for r in res["layers"])     # no plan in use: nothing flagged
    lat = res["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["max"]
    # one record per layer call per run, plus one per forward
    per_run = sum(r["calls"] for r in res["layers"])
    assert sum(1 for c in res["calls"] if c[1] != "model") == 3 * per_run
    assert sum(1 for c in res["calls"] if c[1] == "model") == 3


def test_profile_removes_hooks_when_the_model_fails(plans_off):
    from tuner.profile import profile_model
    model = Tiny()
    calls = {"n": 0}

    def run_model():
        calls["n"] += 1
        if calls["n"] > 2:          # warm-up and the latency run pass, the hooked run fails
            raise RuntimeError("boom")
        model(x)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(RuntimeError, match="boom"):
        profile_model(model, x, repeat=1, warmup=1, run_model=run_model)
    assert not any(any(h) for h in hook_lists(model))


def test_profile_times_torch_per_layer(plans_off, torch):
    from tuner.profile import profile_model
    model = Tiny()
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    rows = {r["path"]: r for r in profile_model(model, x, repeat=3, warmup=1, torch=torch)["layers"]}
    assert rows["conv1"]["torch_ms"] > 0 and rows["pool"]["torch_ms"] > 0
    assert rows["relu"]["torch_ms"] is None       # not a layer torch is timed for


# --------------------------------------------------------------------- profile: CLI
def test_profile_cli_json_and_trace(tmp_path):
    c = write(tmp_path, NET, "net.json")
    rep, trace = tmp_path / "rep.json", tmp_path / "trace.json"
    r = run("profile", c, "--threads", 1, "--repeat", 3, "--no-torch", "--json", rep, "--trace", trace)
    assert r.returncode == 0, r.stderr
    assert "threads 1; 3 timed runs" in r.stdout and "whole model: min" in r.stdout
    doc = json.loads(rep.read_text())
    assert (doc["schema"], doc["version"], doc["command"]) == ("convtune-report", 1, "profile")
    assert doc["settings"]["threads"] == 1 and doc["settings"]["repeat"] == 3
    layers = doc["layers"]
    assert sorted(l["path"] for l in layers) == ["c1", "c2", "p1"]
    for l in layers:
        assert l["path"] in r.stdout and f"{l['median_ms']:.3f}" in r.stdout
    c2 = next(l for l in layers if l["path"] == "c2")
    assert c2["gflops"] == pytest.approx(conv_flops(1, 8, 16, 10, 10, 3) / (c2["median_ms"] * 1e6))
    # the trace: one X event per layer call per run (+ one per forward), in microseconds,
    # and each layer's median over the runs is the report's
    tr = json.loads(trace.read_text())
    xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert all({"ts", "dur", "pid", "tid", "name"} <= set(e) and e["dur"] >= 0 for e in xs)
    assert sum(e["name"] == "forward" for e in xs) == 3
    for l in layers:
        durs = [e["dur"] for e in xs if e["name"] == l["path"]]
        assert len(durs) == 3
        assert statistics.median(durs) / 1e3 == pytest.approx(l["median_ms"], rel=1e-3, abs=1e-5)


def test_profile_flags_shapes_without_plan_entry(tmp_path):
    plan = tmp_path / "plan.json"
    r = run("tune", write(tmp_path, FIRST, "first.json"), "--plan", plan, "--threads", 1,
            "--level", "estimate", "--no-progress")
    assert r.returncode == 0, r.stderr
    rep = tmp_path / "rep.json"
    r = run("profile", write(tmp_path, NET, "net.json"), "--plan", plan, "--threads", 1,
            "--repeat", 2, "--no-torch", "--json", rep)
    assert r.returncode == 0, r.stderr
    rows = {l["path"]: l for l in json.loads(rep.read_text())["layers"]}
    assert rows["c1"]["source"] == "plan" and not rows["c1"]["no_plan_entry"]
    assert rows["c2"]["source"] == "heuristic" and rows["c2"]["no_plan_entry"]
    assert not rows["p1"]["no_plan_entry"]
    assert "! no plan entry" in r.stdout and "1 layer(s) marked" in r.stdout


def test_profile_model_spec(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    rep = tmp_path / "rep.json"
    r = run("profile", "--model", "test_profile:tiny", "--input", "1,3,12,12", "--threads", 1,
            "--repeat", 2, "--no-torch", "--no-fuse", "--json", rep, env=env)
    assert r.returncode == 0, r.stderr
    assert {l["path"] for l in json.loads(rep.read_text())["layers"]} == {"conv1", "conv2", "relu", "pool"}


@pytest.mark.parametrize("args, needle", [
    (["--model", "engine.models:resnet18", "--input", "1,3"], "--input"),
    (["--model", "engine.models:nope"], "nope"),
    (["--model", "engine.models:resnet18", "--input", "1,5,32,32"], "--input 1,5,32,32"),
    ([], "CONFIG"),
    (["configs/seed_cnn.json", "--plan", "no-such-plan.json"], "--plan no-such-plan.json"),
    (["configs/seed_cnn.json", "--plot", "x.jpg"], "--plot x.jpg"),
])
def test_profile_usage_errors_are_one_line(args, needle):
    r = run("profile", *args, "--repeat", 1, "--no-torch")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ------------------------------------------------------------------ --json elsewhere
def test_check_and_bench_json_envelope(tmp_path, capsys, plans_off):
    from tuner import cli
    c = str(write(tmp_path, FIRST, "first.json"))
    rep = tmp_path / "check.json"
    assert cli.main(["check", c, "--threads", "1", "--json", str(rep)]) == 0
    doc = json.loads(rep.read_text())
    assert (doc["schema"], doc["version"], doc["command"]) == ("convtune-report", 1, "check")
    assert doc["failures"] == 0 and doc["results"]
    rep = tmp_path / "bench.json"
    capsys.readouterr()
    assert cli.main(["bench", c, "--threads", "1", "--reps", "2", "--json", str(rep)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(rep.read_text())
    assert (doc["schema"], doc["version"], doc["command"]) == ("convtune-report", 1, "bench")
    (layer,) = doc["layers"]
    assert set(engine.registry.applicable(
        engine.Conv2d(8, 8, 3, padding=1).op_params((1, 8, 10, 10)))) <= set(layer["times_ms"])
    assert f"{layer['times_ms']['planned']:.3f}" in out


# ------------------------------------------------------------------------- plots
def test_plots_draw_the_reports_numbers(tmp_path, monkeypatch, plans_off):
    """The figure each command saves (caught on its way to the file) shows the numbers
    of the --json report the same run wrote."""
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    from tuner import cli, plot
    saved = []
    real_save = plot._save
    monkeypatch.setattr(plot, "_save", lambda fig, path: saved.append(fig) or real_save(fig, path))
    c = str(write(tmp_path, NET, "net.json"))

    rep, png = tmp_path / "rep.json", tmp_path / "profile.png"
    assert cli.main(["profile", c, "--threads", "1", "--repeat", "2", "--no-torch",
                     "--json", str(rep), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(rep.read_text())
    shown = [l["median_ms"] for l in doc["layers"] if l["percent"] >= 0.1][:30]
    assert shown and plot.drawn_bars(saved[-1])["convtune"] == shown

    plan, rep, svg = tmp_path / "plan.json", tmp_path / "bench.json", tmp_path / "bench.svg"
    assert cli.main(["tune", c, "--plan", str(plan), "--threads", "1", "--reps", "2", "--no-progress"]) == 0
    assert cli.main(["bench", c, "--plan", str(plan), "--threads", "1", "--reps", "2",
                     "--json", str(rep), "--plot", str(svg)]) == 0
    assert b"<svg" in svg.read_bytes()[:1000]
    layers = json.loads(rep.read_text())["layers"]
    drawn = plot.drawn_bars(saved[-1])
    # each algorithm's forced time; the pool (one kernel) drawn with its planned time
    want = {}
    for l in layers:
        times = {a: t for a, t in l["times_ms"].items() if a != "planned"}
        if l["planned"] == "pool":
            times["pool"] = l["times_ms"]["planned"]
        for a, t in times.items():
            want.setdefault(a, []).append(t)
    assert {"direct", "im2col", "pool"} <= set(want)
    assert drawn == want

    out = tmp_path / "plan.png"
    assert cli.main(["show", str(plan), "--plot", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    want = {}
    for e in json.loads(plan.read_text())["entries"]:
        for cand in e["candidates"]:
            if cand["status"] == "ok" and cand["median_s"]:
                name = cand["algorithm"] + "".join(f"[{k}={v}]" for k, v in cand["params"].items())
                want.setdefault(name, []).append(cand["median_s"] * 1e3)
    drawn = plot.drawn_bars(saved[-1])
    assert {k: sorted(v) for k, v in drawn.items()} == {k: sorted(v) for k, v in want.items()}


def test_plot_without_matplotlib_says_how_to_install(tmp_path):
    block = tmp_path / "block"
    (block / "matplotlib").mkdir(parents=True)
    (block / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(block), ROOT])}
    out = tmp_path / "x.png"
    r = run("profile", "configs/seed_cnn.json", "--repeat", 1, "--no-torch", "--plot", out, env=env)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and 'pip install "convtune[plot]"' in r.stderr
    assert not out.exists()
