"""The package's layout: one sub-package per stage, imports that follow the data flow, no cycle.

Every `geoloc` import counts, also those inside functions and under TYPE_CHECKING: a name a
module reaches for is a dependency, whenever it is resolved.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "geoloc"
STAGES = ("data", "model", "train", "evaluate", "report")
# What every stage may use: the shared plumbing at the top of the package.
PLUMBING = {
    "geoloc",
    "geoloc.atomic",
    "geoloc.errors",
    "geoloc.device",
    "geoloc.arguments",
    "geoloc.provenance",
    "geoloc.locking",
}
# The modules outside a stage's own folder that it may import.
ALLOWED = {
    "data": set(),
    "model": {"data"},
    "evaluate": {"data", "model", "geoloc.grid"},  # grid: the baseline's run name
    "train": {"data", "model", "evaluate"},  # evaluate: in-loop validation
    # model.published: a released model's backbone, for its reference rows (imported lazily)
    "report": {"geoloc.evaluate.result_files", "geoloc.model.backbones", "geoloc.model.published", "geoloc.grid"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def geoloc_imports(path: Path) -> set[str]:
    """The geoloc modules `path` imports (for `from geoloc.x import y`, y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "geoloc"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "geoloc":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: geoloc_imports(path) for name, path in MODULES.items()}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in STAGES else None


def test_every_stage_is_a_documented_sub_package():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and "import" in docstring, f"{init} must say what the stage may import"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_data_flow(module):
    stage = stage_of(module)
    for imported in GRAPH[module]:
        target = stage_of(imported)
        if stage is None:  # the plumbing: atomic, errors, device need nothing of the stages
            if module in PLUMBING:
                assert imported in PLUMBING, f"{module} imports {imported}"
            continue
        if imported in PLUMBING or target == stage:
            continue
        allowed = ALLOWED[stage]
        assert target in allowed or imported in allowed, f"{module} (stage {stage}) imports {imported}"


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(GRAPH.get(module, ())):
            if imported not in MODULES or imported == module:
                continue
            if state.get(imported) == "open":
                cycle = path[path.index(imported) :] + [imported] if imported in path else [module, imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_a_cycle_and_a_backward_import(monkeypatch):
    # The rules above must be able to fail: a made-up graph with both faults.
    monkeypatch.setitem(GRAPH, "geoloc.data.names", {"geoloc.model.network"})
    monkeypatch.setitem(GRAPH, "geoloc.model.network", {"geoloc.data.names"})
    with pytest.raises(AssertionError, match="imports geoloc.model.network"):
        test_imports_follow_the_data_flow("geoloc.data.names")
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
