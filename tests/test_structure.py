"""The house rules of the package layout (docs/ARCHITECTURE.md, "House style"): light commands
start without torch, no import circles, small modules, one error base, one home per setting."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "m2a_pipe"
MAX_MODULE_LINES = 600


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``pkg`` for ``pkg/__init__.py``)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported_modules(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (function-level included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package imports absolutely)"
            base = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _command_names() -> list[str]:
    from m2a_pipe.cli import COMMANDS

    return list(COMMANDS)


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in _command_names()])
def test_help_imports_no_torch(args):
    """``m2a-pipe --help`` and every command's ``--help`` start without torch or Ray."""
    code = (
        "import sys, json\n"
        "from m2a_pipe.cli import cli\n"
        f"cli.main({args!r}, prog_name='m2a-pipe', standalone_mode=False)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'ray', 'cv2', 'av') if m in sys.modules)))\n"
    )
    heavy = json.loads(_run_python(code).splitlines()[-1])
    assert "torch" not in heavy and "ray" not in heavy, heavy


def test_mining_package_imports_no_torch():
    code = "import sys, m2a_pipe.mining, m2a_pipe.mining.cli; print('torch' in sys.modules)"
    assert _run_python(code) == "False"


def test_no_import_circles():
    graph = {name: _imported_modules(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        stack.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)


def test_the_graph_sees_imports():
    """The circle test would pass vacuously if the parser missed imports."""
    edges = _imported_modules("m2a_pipe.pipeline.process", MODULES["m2a_pipe.pipeline.process"])
    assert "m2a_pipe.pipeline.config" in edges and "m2a_pipe.pipeline.model" in edges


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]}: {lines} lines"


def test_every_exception_class_descends_from_the_base():
    from m2a_pipe.errors import M2AError

    classes = []
    for name in MODULES:
        if name.endswith("__main__"):
            continue  # importing it runs the command line
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, BaseException):
                classes.append(obj)
    assert len(classes) >= 10  # the walk found the package's errors
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, M2AError)]
    assert not strays, strays


def test_settings_have_one_home():
    """No other module assigns a name that m2a_pipe.settings defines."""
    from m2a_pipe import settings

    names = {n for n in vars(settings) if n.isupper()}
    redefined = []
    for name, path in MODULES.items():
        if name == "m2a_pipe.settings":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            redefined += [f"{name}.{t.id}" for t in targets if isinstance(t, ast.Name) and t.id in names]
    assert not redefined, redefined


def test_score_names_match_the_scoring_functions():
    from m2a_pipe.inference.scoring import SCORES
    from m2a_pipe.settings import BOUNDED_SCORES, SCORE_NAMES

    assert SCORE_NAMES == ("official", *SCORES)
    assert set(BOUNDED_SCORES) <= set(SCORE_NAMES)


LAYERS = [
    ("cli", "__main__", ""),       # the entry point and the package's lazy API
    ("bench",),                    # measures the pipeline
    ("pipeline", "mining"),        # the process job; mining its outputs (torch-free)
    ("training",),                 # uses the evaluation's datasets and metrics
    ("evaluation", "synth"),
    ("video",),                    # tracker, events, writers' pictures (torch-free)
    ("inference",),                # preprocessing, forward core, scoring, instances
    ("model",),                    # the network, weights files, registry
    ("io", "config"),              # video and file formats, output layout; model config
    ("settings",),                 # option lists and defaults
    ("errors", "_version"),
]
"""The package's layers, top-down (docs/ARCHITECTURE.md): a module imports only from its own
package or from a layer below."""


def test_layers_read_top_down():
    rank = {package: i for i, group in enumerate(LAYERS) for package in group}

    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    assert set(rank) >= {package(name) for name in MODULES}, "a package missing from LAYERS"
    upward = [f"{name} -> {dep}" for name, path in MODULES.items() for dep in _imported_modules(name, path)
              if package(dep) != package(name) and rank[package(dep)] <= rank[package(name)]
              and rank[package(name)] > 0]
    assert not upward, upward


ARCHITECTURE = PACKAGE_DIR.parent / "docs" / "ARCHITECTURE.md"


def test_architecture_names_every_module():
    """docs/ARCHITECTURE.md's tree lists every module of the package (by file name)."""
    text = ARCHITECTURE.read_text()
    missing = [str(path.relative_to(PACKAGE_DIR)) for path in MODULES.values()
               if path.name not in ("__init__.py", "__main__.py") and path.name not in text]
    assert not missing, missing


def test_architecture_equation_table_points_at_real_functions():
    """Every name of the paper-equation table resolves: ``module.attr`` under the package, or
    a bare ``attr`` of the module named before it in the same cell."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("## Paper equations in the code"):]
    table = table[: table.index("\n## ", 5)]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Eq.")]
    assert len(rows) >= 20
    checked = 0
    for row in rows:
        module = None
        for name in row.rstrip(" |").split(" | ")[-1].split("`")[1::2]:
            parts = name.split(" ")[0].split("(")[0].split(".")
            prefixes = [d for d in range(len(parts), 0, -1) if "m2a_pipe." + ".".join(parts[:d]) in MODULES]
            if prefixes:
                module, attrs = "m2a_pipe." + ".".join(parts[: prefixes[0]]), parts[prefixes[0]:]
            else:
                assert module is not None, f"{name!r} names no module: {row!r}"
                attrs = parts
            obj = importlib.import_module(module)
            for attr in attrs:
                obj = getattr(obj, attr)
            checked += 1
    assert checked >= 30


def test_public_api_survives_the_layout():
    """The names users import stay where the README says they are."""
    import m2a_pipe
    from m2a_pipe import RayConfig, process
    from m2a_pipe.config import preset
    from m2a_pipe.inference import Predictor
    from m2a_pipe.mining import cut_clip, mine
    from m2a_pipe.model.mask2anomaly import build_model

    assert callable(process) and callable(mine) and callable(cut_clip)
    assert RayConfig().workers is None and m2a_pipe.ProcessConfig().weights == "demo"
    assert hasattr(Predictor, "from_weights")
    model = build_model(preset("small"))  # the official call structure, stage by stage
    assert callable(model.backbone) and callable(model.sem_seg_head.pixel_decoder.forward_features)
    assert callable(model.sem_seg_head.predictor)
    with pytest.raises(AttributeError):
        m2a_pipe.no_such_name  # noqa: B018
