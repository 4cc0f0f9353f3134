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


def _classes():
    """(module path, class node) for every class defined in the framework."""
    for path in sorted(FRAMEWORK.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                yield path, node


def _self_attribute(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _foreign_private_reads(cls: ast.ClassDef) -> dict[str, int]:
    """`self._x` names a class reads but neither assigns (`self._x = ...`) nor defines in its body."""
    own = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own.update(t.id for t in targets if isinstance(t, ast.Name))
    reads = {}
    for node in ast.walk(cls):
        name = _self_attribute(node)
        if name is None:
            continue
        if isinstance(node.ctx, ast.Store):
            own.add(name)
        elif name.startswith("_") and not name.startswith("__"):
            reads.setdefault(name, node.lineno)
    return {name: line for name, line in reads.items() if name not in own}


# Classes that read a private name they do not set, each with why.
FOREIGN_PRIVATE_READS = {
    # A method of their base `_Overlap` (losses/library.py), shared input preparation, not state:
    # the subclasses differ only in how they combine the overlap statistics.
    "Dice": {"_inputs"},
    "Tversky": {"_inputs"},
}


def test_no_class_reads_private_names_another_class_sets():
    """Oracle: the AST. Every class declares the state it reads (the Trainer is built of components,
    each holding its own state, not of mixins reading what `Trainer.__init__` sets)."""
    found = {}
    for path, cls in _classes():
        reads = _foreign_private_reads(cls)
        allowed = FOREIGN_PRIVATE_READS.get(cls.name, {})
        unexpected = {n: line for n, line in reads.items() if n not in allowed}
        if unexpected:
            found[f"{path.name}:{cls.name}"] = unexpected
    assert not found, f"classes read private names they do not set: {found}"


def test_the_private_read_finder_finds_a_mixin():
    mixin = ast.parse(
        "class Reads:\n"
        "    def step(self):\n"
        "        return int(self._step.numpy()) + self._own\n"
        "    def set(self):\n"
        "        self._own = 1\n"
    ).body[0]
    assert _foreign_private_reads(mixin) == {"_step": 3}


def test_the_trainer_has_at_most_one_base_and_it_has_none():
    """Composition over mixins: `Trainer`'s one base (if any) derives from nothing else."""
    classes = {cls.name: cls for _, cls in _classes()}
    trainer = classes["Trainer"]
    bases = [b.id for b in trainer.bases if isinstance(b, ast.Name)]
    assert len(trainer.bases) <= 1, f"Trainer has bases {bases}"
    for base in bases:
        assert not classes[base].bases, f"Trainer's base {base} has bases of its own"
