"""The package's dependency rules, read from the source (every import, top-level or
inside a function):

- the numerical core (``engine`` outside ``engine.nn``) never imports ``engine.nn``;
- nothing under ``engine`` imports ``tuner``;
- the tuner uses the runtime's public names only: no ``engine`` module or name that
  starts with an underscore, from an import or as an attribute of an imported module;
- the layers, functional API, tuner and benchmarks call kernels only through operators.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path):
    """[(absolute module imported, [names], line)] for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            names = [a.name for a in node.names]
            out.append((mod, names, node.lineno))
            # "from engine import nn" imports the module engine.nn
            out += [(f"{mod}.{n}", [], node.lineno) for n in names]
    return out


def _sources(folder, exclude=()):
    return [p for p in sorted(folder.rglob("*.py"))
            if not any(part in exclude for part in p.relative_to(folder).parts)]


def _is(mod, target):
    return mod == target or mod.startswith(target + ".")


CORE = [p for p in _sources(ENGINE, exclude=("nn",)) if p != ENGINE / "__init__.py"]


def test_the_rules_see_the_whole_package():
    core = {_module_name(p) for p in CORE}
    assert {"engine.functional", "engine.dispatch", "engine.registry", "engine.operator",
            "engine.plan", "engine.shapes", "engine.threads", "engine.explain"} <= core
    assert "engine.nn.layers" not in core and "engine.nn.layers" in {
        _module_name(p) for p in _sources(ENGINE)}


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_the_network_layer(path):
    bad = [(m, line) for m, _, line in _imports(path) if _is(m, "engine.nn")]
    assert not bad, f"{path.relative_to(ROOT)} imports engine.nn: {bad}"


@pytest.mark.parametrize("path", _sources(ENGINE), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_never_imports_the_tuner(path):
    bad = [(m, line) for m, _, line in _imports(path) if _is(m, "tuner")]
    assert not bad, f"{path.relative_to(ROOT)} imports the tuner: {bad}"


def _private_uses(path):
    """Private engine names the file reaches: imported, or read off an imported
    engine module (``P._WHAT`` where ``from engine import plan as P``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases, bad = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is(a.name, "engine"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and _is(node.module, "engine"):
            if any(part.startswith("_") for part in node.module.split(".")):
                bad.append((node.module, node.lineno))
            for a in node.names:
                if a.name.startswith("_"):
                    bad.append((f"{node.module}.{a.name}", node.lineno))
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                bad.append((f"{ast.unparse(node)}", node.lineno))
    return bad


@pytest.mark.parametrize("path", _sources(ROOT / "tuner"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_tuner_uses_public_names_only(path):
    bad = _private_uses(path)
    assert not bad, f"{path.relative_to(ROOT)} reaches private runtime names: {bad}"


def test_the_private_name_check_can_fail(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from engine import plan as P\nfrom engine.registry import _ALGORITHMS\n"
                 "print(P._WHAT, P.lookup)\n")
    assert {m for m, _ in _private_uses(f)} == {"engine.registry._ALGORITHMS", "P._WHAT"}


KERNEL_CALLS = ("conv2d_winograd", "conv2d_im2col", "conv2d_direct", "conv2d_depthwise",
                "max_pool2d", "avg_pool2d", "pad2d")


# bench_ukernels.py times the micro-kernels themselves (engine.kernels._ukernels), not
# convolutions: it is the one benchmark that calls below the operators.
CALLERS = [ENGINE / "functional.py", *_sources(ENGINE / "nn"), *_sources(ROOT / "tuner"),
           *[p for p in _sources(ROOT / "benchmarks") if p.name != "bench_ukernels.py"]]


@pytest.mark.parametrize("path", CALLERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_are_called_through_operators_only(path):
    """Nothing but the registry and the operators calls a compiled kernel, or an
    algorithm's run: the layers, functional, the tuner and the benchmarks build an
    ``engine.operator``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and ".kernels" in f".{node.module}":
            bad.append((f"imports {node.module}", node.lineno))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            owner = ast.unparse(node.func.value)
            if name == "run" and ("REGISTRY" in owner or "registry" in owner):
                bad.append((ast.unparse(node.func), node.lineno))
            if name in KERNEL_CALLS and owner not in ("F", "TF", "torch.nn.functional", "nn.functional"):
                bad.append((ast.unparse(node.func), node.lineno))
        if isinstance(node, ast.Subscript) and "REGISTRY" in ast.unparse(node.value):
            parent_calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and c.func is node]
            if parent_calls:     # REGISTRY[name](x, w, ...): an algorithm called directly
                bad.append((ast.unparse(node), node.lineno))
    assert not bad, f"{path.relative_to(ROOT)} calls kernels directly: {bad}"
