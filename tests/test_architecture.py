"""The import graph of `engine/` and `plugins/`: no cycles, plugins on the public API only,
and data flowing one way (nothing downstream reaches back upstream).

Every import statement counts, lazy and `TYPE_CHECKING` ones included: a
cycle hidden behind a function-level import is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

Graph = dict[str, set[str]]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in ("engine", "plugins"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(r for alias in node.names if (r := _resolve(alias.name, modules)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                resolved = full if full in modules else _resolve(target, modules)
                if resolved:
                    out.add(resolved)
    out.discard(module)
    return out


def import_graph() -> Graph:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH = import_graph()


def _importers(target: str) -> Iterator[str]:
    for module, imported in GRAPH.items():
        if any(t == target or t.startswith(target + ".") for t in imported):
            yield module


def test_the_graph_is_read_from_the_real_tree() -> None:
    assert "engine.journal.sqlite.store" in GRAPH
    assert "engine.journal.store" in GRAPH["engine.journal.sqlite.store"]
    assert GRAPH["plugins.http"] == {"engine.plugin", "plugins._http_common"}


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_plugins_import_only_the_public_plugin_api() -> None:
    for module, imported in GRAPH.items():
        if module.startswith("plugins"):
            engine = {m for m in imported if m.startswith("engine")}
            assert engine <= {"engine.plugin"}, (module, engine)


@pytest.mark.parametrize(
    ("package", "may_not_import"),
    [
        # The expression language knows nothing of rules, events' journeys or I/O.
        ("engine.expr", ("engine.config", "engine.loader", "engine.matcher", "engine.pipeline",
                         "engine.dispatch", "engine.journal", "engine.sources", "engine.runtime")),
        # Stores and sources are handed to the engine; they never reach into it.
        ("engine.journal", ("engine.pipeline", "engine.dispatch", "engine.journal_feed",
                            "engine.matcher", "engine.runtime", "engine.daemon",
                            "engine.sources", "engine.commands", "engine.cli")),
        ("engine.sources", ("engine.pipeline", "engine.dispatch", "engine.journal",
                            "engine.journal_feed", "engine.matcher", "engine.runtime",
                            "engine.daemon", "engine.commands", "engine.cli")),
        ("engine.dispatch", ("engine.pipeline", "engine.journal", "engine.journal_feed",
                             "engine.sources", "engine.runtime", "engine.daemon")),
        ("engine.pipeline", ("engine.journal", "engine.journal_feed", "engine.sources",
                             "engine.runtime", "engine.daemon")),
        ("engine.commands", ("engine.cli",)),
        # What answers HTTP or tells systemd sees the daemon as a DaemonState.
        *((http, ("engine.daemon", "engine.runtime", "engine.journal_feed"))
          for http in ("engine.health", "engine.metrics", "engine.sd_notify",
                       "engine.status", "engine.status_page", "engine.event_report")),
        # The status page's ring is fed by the pipeline; it knows nothing of where events go.
        ("engine.recent", ("engine.pipeline", "engine.journal", "engine.sources",
                           "engine.runtime", "engine.daemon")),
    ],
)  # fmt: skip
def test_data_flows_one_way(package: str, may_not_import: tuple[str, ...]) -> None:
    for module, imported in GRAPH.items():
        if module != package and not module.startswith(package + "."):
            continue
        wrong = {
            m
            for m in imported
            for banned in may_not_import
            if m == banned or m.startswith(banned + ".")
        }
        assert not wrong, (module, wrong)


def test_runtime_is_the_one_place_that_wires_parts() -> None:
    """Only the daemon and the commands start an engine; runtime is its one assembler."""
    allowed = {"engine.daemon", "engine.commands.replay", "engine.commands.dlq"}
    assert set(_importers("engine.runtime")) <= allowed
    # The feed between journal and pipeline is built by runtime alone.
    assert set(_importers("engine.journal_feed")) == {"engine.runtime"}


def test_backends_are_loaded_by_name_only() -> None:
    """No module outside a backend imports it: `engine.journal.backend(name)` does, lazily."""
    for module in _importers("engine.journal.sqlite"):
        assert module.startswith("engine.journal.sqlite"), module
