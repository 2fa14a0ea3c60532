"""The front door: the ImportError of a checkout whose kernels are not built, what
``convtune tune`` says at its end (--json too), the progress bar's best so far,
diagnostics through ``logging.getLogger("convtune")``."""
import json
import logging
import os
import shutil
import subprocess
import sys

from test_cli import ROOT, run
from test_profile import FIRST, NET, write


def test_unbuilt_checkout_gives_one_clear_import_error(tmp_path):
    """A source checkout without compiled kernels (``pip install .`` then ``python`` in the
    repository root): one ImportError saying why and what to do."""
    src = os.path.join(ROOT, "engine")
    shutil.copytree(src, tmp_path / "engine",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.c"))
    assert not list((tmp_path / "engine").rglob("*.so"))
    (tmp_path / "setup.py").write_text("# a checkout\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", "import engine"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    err = r.stderr
    assert err.count("Traceback") == 1 and "During handling" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError: convtune's compiled kernels could not be imported"), last
    for text in ("source checkout", "pip install -e .", "build_ext --inplace", "another directory"):
        assert text in last, text
    assert str(tmp_path) in last or os.path.realpath(tmp_path) in last     # the checkout it found


# ----------------------------------------------------------------------- logging
def test_diagnostics_go_through_the_convtune_logger(tmp_path, capsys, caplog):
    from tuner import cli
    missing = tmp_path / "nope.json"
    with caplog.at_level(logging.INFO, logger="convtune"):
        assert cli.main(["show", str(missing)]) == 2
    assert [r.levelno for r in caplog.records if str(missing) in r.getMessage()] == [logging.ERROR]
    assert f"convtune: error: {missing}" in capsys.readouterr().err
    logger = logging.getLogger("convtune")
    before = logger.level
    logger.setLevel(logging.CRITICAL)          # an application silencing them
    try:
        assert cli.main(["show", str(missing)]) == 2
        assert capsys.readouterr().err == ""
    finally:
        logger.setLevel(before)


def test_tune_json_and_next_steps(tmp_path):
    plan, rep = tmp_path / "plan.json", tmp_path / "tune.json"
    r = run("tune", write(tmp_path, NET, "net.json"), "--plan", plan, "--threads", 1, "--reps", 2,
            "--no-progress", "--json", rep)
    assert r.returncode == 0, r.stderr
    for text in (f"the plan is {plan}", f"convtune show {plan}", "convtune bench", "convtune profile",
                 f"CONVTUNE_PLAN={plan}"):
        assert text in r.stdout
    doc = json.loads(rep.read_text())
    assert (doc["schema"], doc["version"], doc["command"]) == ("convtune-report", 1, "tune")
    assert doc["written"] == 3 and doc["plan"] == str(plan) and doc["exit_status"] == 0
    written = {json.dumps(e["key"], sort_keys=True): e for e in json.loads(plan.read_text())["entries"]}
    assert len(doc["shapes"]) == 3
    for s in doc["shapes"]:
        e = written[json.dumps(s["key"], sort_keys=True)]
        assert (e["algorithm"], e["time_s"]) == (s["algorithm"], s["time_s"])


def test_tuning_progress_reports_best_so_far(plans_off):
    from tuner import configs, search
    (shape,) = configs.parse(FIRST).shapes
    steps = []
    entry, _ = search.tune_shape(shape, 1, reps=2, on_step=steps.append)
    best = [s for s in steps if "best so far" in s]
    assert best, steps
    names = {c["algorithm"] for c in entry["candidates"]}
    assert all(s.split("best so far ")[1].split()[0] in names for s in best)
    # the last sample's best is the choice (ranked by the same medians)
    assert best[-1].split("best so far ")[1].split()[0] == entry["algorithm"]
