"""The library's layers point one way: every module of shared/ has a declared layer, imports only
modules of its own layer or lower ones (counting imports inside functions and under TYPE_CHECKING),
and no chain of imports leads back to where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "base",
        {
            "shared",
            "shared.errors",
            "shared.authmode",
            "shared.settings",
            "shared.logcontext",
            "shared.jsonbody",
            "shared.message_content",
            "shared.request_models",
            "shared.response_models",
        },
    ),
    (
        "clients",
        {
            "shared.http",
            "shared.throttle",
            "shared.tokens",
            "shared.graph",
            "shared.connector",
            "shared.botframework",
            "shared.callerauth",
            "shared.azurecore",
            "shared.tablehttp",
        },
    ),
    (
        "storage",
        {
            "shared.storage",
            "shared.storage.tables",
            "shared.storage.references",
            "shared.storage.idempotency",
            "shared.storage.failures",
            "shared.storage.notifications",
            "shared.storage.notification_rows",
            "shared.storage.signing",
            "shared.storage.optout",
            "shared.storage.budget",
        },
    ),
    ("domain", {"shared.pipeline", "shared.notification_ids", "shared.results"}),
    ("wiring", {"shared.bootstrap"}),
    (
        "use cases",
        {
            "shared.delivery",
            "shared.fanout",
            "shared.lifecycle",
            "shared.queue_delivery",
            "shared.failures",
            "shared.inbound",
            "shared.health",
            "shared.doctor",
            "shared.service",
            "shared.retention",
        },
    ),
    ("entry points", {"shared.cli", "shared.cli_io", "shared.cli_failures", "shared.cli_notifications"}),
]
LEVEL = {module: level for level, (_name, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def shared_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SHARED.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every shared module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from shared import x" may name a submodule x; "from shared.a import b" names module shared.a.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = shared_modules()
    return {name: imports_of(path, set(modules)) - {"shared", name} for name, path in modules.items()}


def test_every_module_declares_its_layer() -> None:
    assert sorted(set(shared_modules()) - set(LEVEL)) == []
    assert sorted(set(LEVEL) - set(shared_modules())) == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} ({LAYERS[LEVEL[module]][0]}) imports {target} ({LAYERS[LEVEL[target]][0]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if LEVEL.get(target, -1) > LEVEL.get(module, -1)
    ]
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_a_function_level_import_counts(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from shared.service import deliver\n    return deliver\n")
    assert imports_of(module, {"shared.service"}) == {"shared.service"}
