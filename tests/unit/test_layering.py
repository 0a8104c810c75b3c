"""The package rules, read from the source: imports point down only, and nothing loops.

Top-level packages: ``geo`` imports none of ours; ``schema`` only itself; ``streams`` never
``dispatch`` (what the worker needs from the engine is handed to it by
``dispatch/tracking/worker.py``). Inside ``dispatch`` the rooms are ranked; a module may import
its own room and rooms ranked below it. ``app.py`` and ``cli.py`` are the composition roots and
may import anything. Function-level (lazy) imports count as well: hiding an upward import
inside a function is still an upward import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("geo", "schema", "streams", "dispatch", "loadtest")
ALLOWED = {
    "geo": {"geo"},
    "schema": {"schema"},
    "streams": {"streams", "schema", "geo"},
    "dispatch": {"dispatch", "streams", "schema", "geo"},
    "loadtest": set(OURS),
}
# Rooms of dispatch, lowest first. Commerce sits below identity: creating a vendor user checks
# its payment methods against the order vocabulary, and nothing in commerce needs a token.
ROOMS = ["core", "web", "commerce", "identity", "deliveries", "matching", "tracking", "gateway",
         "messaging", "api", "ops"]
ROOTS = {"dispatch.app", "dispatch.cli", "dispatch"}
# Composition roots and the demo may drive the load generator (it is how the demo replays a city).
MAY_IMPORT_LOADTEST = {"dispatch.cli", "dispatch.ops.demo"}


def is_root(module: str) -> bool:
    """The composition roots: the app, the package itself, and the CLI with its command modules."""
    return module in ROOTS or module.startswith("dispatch.cli.")


def may_import_loadtest(module: str) -> bool:
    return module in MAY_IMPORT_LOADTEST or module.startswith("dispatch.cli.")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Iterator[tuple[str, Path]]:
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path


def imports(name: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import of one of our packages."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            # ``from dispatch.matching import keys`` imports the submodule
            targets += [f"{base}.{alias.name}" for alias in node.names
                        if (ROOT / Path(*f"{base}.{alias.name}".split("."))).with_suffix(".py").exists()
                        or (ROOT / Path(*f"{base}.{alias.name}".split("."))).is_dir()]
        for target in targets:
            if target.split(".")[0] in OURS:
                yield target, node.lineno, id(node) in top


def room(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "dispatch" and parts[1] in ROOMS:
        return parts[1]
    return None


def test_packages_import_only_what_they_stand_on() -> None:
    wrong = [f"{name} ({path.relative_to(ROOT)}:{line}) imports {target}"
             for name, path in modules() for target, line, _ in imports(name, path)
             if target.split(".")[0] not in ALLOWED[name.split(".")[0]]
             and not (may_import_loadtest(name) and target.startswith("loadtest"))]
    assert wrong == []


def test_dispatch_rooms_import_downward_only() -> None:
    assert sorted({p.name for p in (ROOT / "dispatch").iterdir() if (p / "__init__.py").exists()}) \
        == sorted([*ROOMS, "cli"]), "a new room of dispatch/ needs its rank here"
    wrong = []
    for name, path in modules():
        if not name.startswith("dispatch.") or is_root(name):
            continue
        mine = ROOMS.index(room(name) or "")
        for target, line, _ in imports(name, path):
            if target.startswith("loadtest") and not may_import_loadtest(name):
                wrong.append(f"{name}:{line} imports {target}")
            elif is_root(target) and target != "dispatch":
                wrong.append(f"{name}:{line} imports the composition root {target}")
            elif (other := room(target)) is not None and ROOMS.index(other) > mine:
                wrong.append(f"{name}:{line} ({room(name)}) imports {target} ({other})")
    assert wrong == []


def test_no_import_cycles() -> None:
    """No cycle among top-level imports of our modules (a cycle works only by import order)."""
    known = dict(modules())
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _, at_top in imports(name, path):
            if at_top and target in known and target != name:
                graph[name].add(target)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    # A package __init__ re-exporting its own submodules is not a cycle of meaning.
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert cycles == []


@pytest.mark.parametrize("package", ["dispatch", "streams", "geo", "schema"])
def test_modules_stay_short(package: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 520}
    assert long == {}


PURE = ["dispatch.deliveries.state", "dispatch.commerce.orders.lifecycle",
        "dispatch.commerce.orders.input", "dispatch.matching.ranking",
        "dispatch.matching.assignment", "dispatch.gateway.pings", "dispatch.core.errors",
        "schema.ids", "streams.keys", "dispatch.matching.keys", "dispatch.matching.terms",
        "dispatch.deliveries.reports", "dispatch.commerce.catalogue.parse",
        "dispatch.commerce.catalogue.tags", "dispatch.commerce.catalogue.rows",
        "dispatch.tracking.frames", "dispatch.ops.config", "dispatch.core.cache_keys",
        "dispatch.commerce.promotions", "dispatch.commerce.pricing", "schema.moves.plan",
        "schema.moves.balance", "schema.retention.policies", "schema.backups.container",
        "schema.backups.retention", "schema.privacy.registry", "dispatch.identity.subjects",
        "dispatch.identity.consent", "dispatch.identity.access", "dispatch.identity.subject_archive",
        "dispatch.gateway.osmand", "dispatch.messaging.templates", "dispatch.messaging.graph",
        "dispatch.messaging.webhook", "dispatch.deliveries.proof", "dispatch.tracking.pages.basemap"]
IO_LIBRARIES = ("asyncpg", "redis", "aiokafka", "faust", "fastapi", "starlette", "websockets",
                "uvicorn", "httpx", "socket", "subprocess")


@pytest.mark.parametrize("module", PURE)
def test_pure_rules_import_no_io(module: str) -> None:
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert sorted(n for n in names if n.split(".")[0] in IO_LIBRARIES) == []
    ours = {n for n in names if n.split(".")[0] in OURS}
    impure = [n for n in ours if n.startswith("dispatch.") and n not in PURE
              and not n.startswith(("dispatch.core.errors", "dispatch.core.ids"))]
    assert impure == [], "a pure rule imports a module that is not known to be pure"
