"""The framework's module structure: no import cycles; the host loop sees the runner interface only."""

import ast
import pathlib

FRAMEWORK = pathlib.Path(__file__).resolve().parent.parent / "framework"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(FRAMEWORK.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Framework modules `path` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in FRAMEWORK.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        # A package's __init__ re-exports its modules; a module importing its own package is
        # an import of the package's public names, so edges into packages are kept.
        graph[name] = _imports(path, modules) - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_framework_modules():
    graph = _graph()
    # Packages import their own modules to re-export them; those edges are not cycles of concern.
    for package in [n for n in graph if (FRAMEWORK.parent / n.replace(".", "/") / "__init__.py").exists()]:
        graph[package] = {m for m in graph[package] if not m.startswith(package + ".")}
    graph.pop("framework", None)  # the top-level package re-exports the public API
    assert _cycle(graph) is None


def test_the_controller_knows_the_runner_interface_not_the_trainer():
    imported = _imports(FRAMEWORK / "loop" / "controller.py", set(_graph()))
    assert not {m for m in imported if m == "framework.trainer" or m.startswith("framework.trainer.")}
    for path in FRAMEWORK.rglob("*.py"):
        if path.name == "trainer.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("t", "trainer", "runner")
                and node.attr.startswith("_")
            ):
                raise AssertionError(f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}")
