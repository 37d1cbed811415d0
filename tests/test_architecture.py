"""The rings stay honest: imports point one way, cores do no I/O, modules and functions stay small.

Read from the source with `ast` (late imports inside functions included), so a cycle hidden by
an import in a function body is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relay365"

# Ring 1: pure protocol cores and rules - no sockets, no event loop, no clock, no logging.
CORES = {
    "relay365.sasl", "relay365.replies", "relay365.states", "relay365.secret", "relay365.errors",
    "relay365.addrspec",
    "relay365.throttle", "relay365.proxyproto", "relay365.imap.core", "relay365.imap.parse",
    "relay365.smtp.policy", "relay365.smtp.effects", "relay365.smtp.data", "relay365.smtp.rewrite",
    "relay365.spool.schedule", "relay365.spool.outcome", "relay365.tokens.classify",
    "relay365.config.units",
    "relay365.web.page", "relay365.web.sections", "relay365.web.chart", "relay365.web.markup",
    "relay365.web.security", "relay365.web.model", "relay365.web.wire",
    "relay365.graph.mime", "relay365.graph.errors", "relay365.graph.parts", "relay365.graph.draft",
    "relay365.graph.claims", "relay365.delivery.pipeline",
    "relay365.alerts.core", "relay365.alerts.conditions", "relay365.alerts.render",
}
FORBIDDEN_IN_CORES = {"asyncio", "socket", "time", "logging", "structlog", "ssl", "selectors"}
# Ring 3: the daemon shell; nothing inside the rings may import it.
SHELL = {"relay365.__main__", "relay365.app", "relay365.cli", "relay365.checks", "relay365.onboard",
         "relay365.accounts", "relay365.runloop", "relay365.sdnotify"}
STANDINS = "relay365.standins"  # shipped for the demo; only the CLI's demo command may import it
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every relay365 module `name` imports, anywhere in the file (late imports included),
    resolved to modules that exist (a `from pkg import mod` names the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules, or None. A package's `__init__` importing its own
    submodules is an edge like any other (importing `relay365.config` runs `config.units`); only
    a submodule's `from . import x` is not an edge to the package, since the package is already
    being imported when its submodule runs."""
    def edges(m: str) -> set[str]:
        return {d for d in graph[m] if not m.startswith(d + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_there_is_no_import_cycle_not_even_through_a_late_import():
    assert _cycle(_graph()) is None


def test_the_cycle_check_finds_a_planted_cycle():
    graph = _graph()
    graph["relay365.replies"] = graph["relay365.replies"] | {"relay365.smtp.server"}
    assert _cycle(graph) is not None


def test_the_cycle_check_finds_a_cycle_through_a_package_init():
    """config.units -> spool.worker -> relay365.config (whose __init__ imports config.units)."""
    graph = _graph()
    assert "relay365.config" in graph["relay365.spool.worker"]
    graph["relay365.config.units"] = graph["relay365.config.units"] | {"relay365.spool.worker"}
    assert _cycle(graph) is not None


def test_cores_do_no_io_and_import_no_adapter_or_shell():
    graph = _graph()
    mods = _modules()
    for core in sorted(CORES):
        tree = ast.parse(mods[core].read_text())
        stdlib = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                  for a in n.names}
        stdlib |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                   if isinstance(n, ast.ImportFrom) and not n.level}
        assert not stdlib & FORBIDDEN_IN_CORES, f"{core} imports {stdlib & FORBIDDEN_IN_CORES}"
        inward = {d for d in graph[core] if d in SHELL or d.startswith(STANDINS)}
        assert not inward, f"{core} imports {inward}"


def test_nothing_but_the_shell_imports_the_shell_and_only_the_cli_the_standins():
    for name, deps in _graph().items():
        if name in SHELL or name.startswith(STANDINS):
            continue
        assert not deps & SHELL, f"{name} imports the shell: {deps & SHELL}"
        assert not {d for d in deps if d.startswith(STANDINS)}, f"{name} imports the stand-ins"
    for name, deps in _graph().items():
        if any(d.startswith(STANDINS) for d in deps) and not name.startswith(STANDINS):
            assert name == "relay365.cli", name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_and_functions_stay_small(name):
    path = _modules()[name]
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {length} lines"
