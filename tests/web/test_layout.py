"""The web's layout holds: small modules, no import cycle, the JSON API on the query layer, not on the pages."""
from __future__ import annotations

import ast
from pathlib import Path

import services.web

WEB = Path(services.web.__file__).parent
MOST_LINES = 400


def _imports() -> dict[str, set[str]]:
    """services.web module -> the services.web modules it imports (anywhere in it, functions too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(WEB.glob("*.py")):
        name = f"services.web.{path.stem}"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "services.web":
                    found |= {f"services.web.{alias.name}" for alias in node.names}
                elif node.module.startswith("services.web."):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("services.web.")}
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for child in sorted(graph.get(node, ())):
            if (found := visit(child, path + [node])) is not None:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        if (found := visit(start, [])) is not None:
            return found
    return None


def test_no_web_module_imports_itself_back():
    graph = _imports()
    assert "services.web.queries" in graph and "services.web.pages" in graph  # the graph is really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_api_and_the_pages_share_the_query_layer_and_not_each_other():
    graph = _imports()
    for handlers in ("services.web.api", "services.web.pages"):
        assert "services.web.queries" in graph[handlers]
    assert "services.web.pages" not in graph["services.web.api"]
    assert "services.web.api" not in graph["services.web.pages"]
    # The read model knows nothing of the HTTP handlers.
    handlers = {"services.web.pages", "services.web.api", "services.web.actions", "services.web.sse", "services.web.operations"}
    assert not graph["services.web.queries"] & handlers


def test_no_web_module_is_over_400_lines():
    long = {path.name: n for path in WEB.glob("*.py") if (n := len(path.read_text().splitlines())) > MOST_LINES}
    assert not long
