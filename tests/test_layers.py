"""The package's layers, as the folders show them: imports run one way, no cycles,
the engine knows nothing of MLflow, and the cheap layers never load TensorFlow."""

import ast
import os
import subprocess
import sys

from conftest import ROOT

SRC = ROOT / "src"
PKG = SRC / "transferlab"
# config, data -> models -> engine | report -> runner -> api/cli/app (the entry points);
# the report reads MLflow only, and the runner writes one at the end of a sweep.
ORDER = {"config": 0, "data": 1, "models": 2, "engine": 3, "report": 3, "runner": 4}
TOP = 5  # api.py, app.py, cli.py, predict.py, server.py, __init__.py


def _module(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return ORDER.get(parts[1], TOP) if len(parts) > 1 else TOP


def _imports():
    """module -> every transferlab module it imports (at any depth of the file)."""
    graph = {}
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("transferlab")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transferlab"):
                for a in node.names:  # `from transferlab.models import weights` imports the submodule
                    sub = f"{node.module}.{a.name}"
                    base = SRC / sub.replace(".", "/")
                    is_module = base.with_suffix(".py").exists() or (base / "__init__.py").exists()
                    found.add(sub if is_module else node.module)
        graph[mod] = found - {mod}
    return graph


def test_imports_run_one_way():
    wrong = [f"{m} ({_layer(m)}) imports {i} ({_layer(i)})"
             for m, deps in _imports().items() for i in deps
             if _layer(i) > _layer(m) and not i.startswith(m + ".")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = _imports()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in graph.get(m, ()):
            # a package's __init__ re-exporting its own submodules is not a cycle
            if not (d.startswith(m + ".") or m.startswith(d + ".")):
                visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


def test_the_engine_and_models_know_nothing_of_mlflow_runs():
    for folder in ("engine", "config", "data"):
        for path in (PKG / folder).rglob("*.py"):
            assert "mlflow" not in path.read_text(), path


def test_cheap_layers_import_without_tensorflow():
    mods = ["transferlab", "transferlab.config", "transferlab.data", "transferlab.data.synthetic",
            "transferlab.models", "transferlab.models.registry", "transferlab.models.freeze",
            "transferlab.models.pretrained", "transferlab.runner.validate", "transferlab.runner.tracking",
            "transferlab.runner.sweep", "transferlab.runner.isolate", "transferlab.report",
            "transferlab.cli", "transferlab.app"]
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {mods!r}]; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
