"""The package's shape: the stages in the order data flows through them, no import
cycle (imports inside functions count), no stage reaching back into a later one, no
module over 400 lines, dependencies' private modules read in one adapter each, and test
modules that never import one another."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# Every module of `pipeline`, in the order the data flows through them: a module may
# import only the modules listed before it. A new module goes where it belongs here.
STAGES = [
    ("rows, records and options", ["schema", "records", "config", "faults", "retry"]),
    ("the output folder's storage", ["listing", "localdisk", "parquet", "store", "ledger", "markers", "index",
                                     "publish", "lease"]),
    ("audio and the model", ["durations", "audio", "engine", "models", "languages"]),
    ("planning", ["inputs", "windows", "channels", "plan"]),
    ("transcribing", ["streams", "transcriber", "quality", "units"]),
    ("committing", ["shardcheck", "commit"]),
    ("the actor", ["actor"]),
    ("reading back", ["compact", "verify", "report", "query", "search", "export"]),
    ("driving", ["progress", "tune", "ray_session", "dispatch", "resume", "job", "submit", "arguments", "cli",
                 "__init__"]),
]
ORDER = [m for _, modules in STAGES for m in modules]
STAGE_OF = {m: name for name, modules in STAGES for m in modules}

# The one module allowed to reach into each dependency's private modules or names.
ADAPTERS = {"pyarrow": "parquet", "ray": "ray_session", "faster_whisper": "engine", "ctranslate2": "engine"}
MAX_LINES = 400


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _package_imports(tree: ast.Module, name: str) -> set[str]:
    """The modules of `pipeline` that `tree` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pipeline":
                found |= {a.name for a in node.names}
            elif node.module.startswith("pipeline."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return found - {name}


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def test_every_module_has_its_place_in_the_stage_order():
    assert sorted(ORDER) == sorted(_modules()), "add the new module to STAGES where the data flow meets it"
    assert len(ORDER) == len(set(ORDER))


def test_no_module_imports_a_later_stage_and_there_is_no_cycle():
    graph = {name: _package_imports(tree, name) for name, tree in _modules().items()}
    backward = [f"{m} ({STAGE_OF[m]}) imports {d} ({STAGE_OF[d]})"
                for m, deps in sorted(graph.items()) for d in sorted(deps) if ORDER.index(d) > ORDER.index(m)]
    assert not backward, "imports that reach back into a later stage:\n" + "\n".join(backward)
    # Implied by the order; checked on its own so that a wrong order cannot hide a cycle.
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == "done":
            return
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


def test_the_checker_sees_imports_inside_functions_and_catches_a_backward_one():
    tree = ast.parse("def f():\n    from pipeline.verify import verify\n    from pipeline import job\n")
    assert _package_imports(tree, "commit") == {"verify", "job"}
    assert ORDER.index("verify") > ORDER.index("commit")


def test_no_module_is_over_the_line_limit():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_private_apis_of_dependencies_are_used_in_their_adapter_only():
    misplaced = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                dotted = [node.module + "." + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                dotted = [a.name for a in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                dotted = [f"{node.value.id}.{node.attr}"]  # ray._private.worker, reached as an attribute
            else:
                continue
            for d in dotted:
                top = d.split(".")[0]
                if top in ADAPTERS and _private(d) and ADAPTERS[top] != name:
                    misplaced.append(f"{name}: {d} (belongs in {ADAPTERS[top]})")
    assert not misplaced, "\n".join(misplaced)


def test_private_apis_of_dependencies_still_exist():
    """Fails the day a dependency moves what its adapter reaches for."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from pyarrow._parquet import ParquetReader
    from ray._private import worker
    from ray._private.state import available_resources_per_node

    from pipeline.engine import language_codes
    from pipeline.parquet import parquet_bytes, read_parquet_bytes

    assert {"en", "ru", "zh"} <= set(_LANGUAGE_CODES) and language_codes() == frozenset(_LANGUAGE_CODES)
    assert {"open", "read_all", "column_paths"} <= set(dir(ParquetReader))
    import pyarrow as pa

    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    assert read_parquet_bytes(parquet_bytes(table), columns=["b"]).column("b").to_pylist() == ["x", "y"]
    assert callable(available_resources_per_node) and not inspect.signature(available_resources_per_node).parameters
    assert hasattr(worker, "_global_node")


def test_faster_whisper_and_ctranslate2_are_imported_by_the_engine_only():
    importers = sorted(name for name, tree in _modules().items() for node in ast.walk(tree)
                       if isinstance(node, (ast.Import, ast.ImportFrom))
                       and any(d.split(".")[0] in ("faster_whisper", "ctranslate2")
                               for d in ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                                         [a.name for a in node.names])))
    assert set(importers) == {"engine"}


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if isinstance(node, ast.ImportFrom) and node.module == "tests":
            names = [f"tests.{a.name}" for a in node.names]
        for n in names:
            last = n.split(".")[-1]
            assert not (last.startswith("test_") or last == "conftest"), f"{path.name} imports {n}"


def test_the_readme_and_the_package_docstring_tell_the_same_data_flow():
    """Both list the stages' modules in the order the code runs them (the order above)."""
    import pipeline

    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    for text, where in ((pipeline.__doc__, "pipeline/__init__.py"), (layout, "README.md")):
        seen = [m for m in ORDER if f"`{m}`" in text]
        positions = [text.index(f"`{m}`") for m in seen]
        missing = set(ORDER) - set(seen) - {"__init__"}
        assert not missing, f"{where} does not name {sorted(missing)}"
        flow = [m for m in ("inputs", "windows", "channels", "plan", "dispatch", "actor", "units", "commit")]
        at = [text.index(f"`{m}`") for m in flow]
        assert at == sorted(at), f"{where} tells the flow in another order: {[m for _, m in sorted(zip(at, flow))]}"
        assert positions  # every module named


def test_every_module_imports():
    for name in ORDER:
        importlib.import_module("pipeline" if name == "__init__" else f"pipeline.{name}")
