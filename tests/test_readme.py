"""The README's Python examples run as written: each ```python block, in a fresh
interpreter (blocks are self-contained), in a scratch directory where ``configs/`` is
the repository's."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index, tmp_path):
    code = python_blocks()[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    if "import onnx" in code:
        pytest.importorskip("onnx")
    if "distributed" in code:
        pytest.importorskip("distributed")
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")   # paths as in the repo
    env = {**os.environ, "CONVTUNE_PLAN": "none", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"README python block {index + 1} failed:\n{code}\n{proc.stderr}"
