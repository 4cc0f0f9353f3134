"""The framework's module structure: folders import each other as their docstrings allow, in a DAG;
no import cycles; no module uses another module's private names; the host loop sees the runner
interface only.

Oracle: each package's `__init__` docstring ("May import: ...") and the lists of exceptions below,
written by hand; the imports are read from the source with `ast`.
"""

import ast
import pathlib
import re

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


def _folder(module: str) -> str:
    """`framework.loop.controller` -> `loop`; a module directly in framework/ -> `leaves`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "framework"
    if len(parts) == 2 and not (FRAMEWORK / parts[1] / "__init__.py").exists():
        return "leaves"
    return parts[1]


FOLDERS = sorted(p.name for p in FRAMEWORK.iterdir() if (p / "__init__.py").exists())


def _allowed() -> dict[str, set[str]]:
    """Folder -> the folders its `__init__` docstring's first "May import:" sentence names."""
    allowed = {"leaves": {"leaves"}}
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((FRAMEWORK / folder / "__init__.py").read_text())) or ""
        found = re.search(r"May import:(.*?)(\.\s|\.$)", doc, re.S)
        assert found, f"framework/{folder}/__init__.py: the docstring says nothing of what it may import"
        sentence = found.group(1)
        if "everything" in sentence:
            allowed[folder] = set(FOLDERS) | {"leaves"}
            continue
        named = {f for f in FOLDERS if re.search(rf"\b{f}\b", sentence)}
        allowed[folder] = named | ({"leaves"} if "leaves" in sentence else set())
    return allowed


def test_the_folder_rules_form_a_dag():
    allowed = _allowed()
    graph = {folder: targets - {folder} for folder, targets in allowed.items()}
    assert _cycle(graph) is None


def test_folders_import_only_what_their_docstrings_allow():
    allowed = _allowed()
    wrong = []
    for module, imported in _graph().items():
        source = _folder(module)
        if source == "framework":
            continue  # the top-level package re-exports the public API
        for target in imported:
            folder = _folder(target)
            if folder not in (source, "framework") and folder not in allowed[source]:
                wrong.append(f"{module} imports {target} ({source}/ may import {sorted(allowed[source])})")
    assert not wrong, "\n".join(wrong)


def test_no_module_uses_another_modules_private_names():
    """`module._name` or `from module import _name` across modules: a private name is private."""
    paths = {_module_name(p): p for p in FRAMEWORK.rglob("*.py")}
    used = []
    for name, path in paths.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("framework"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in paths:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        used.append(f"{name}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in paths})
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                used.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not used, "\n".join(used)


# Where TensorFlow's and Keras' private names may appear, and nowhere else.
QUARANTINE = {"framework/tf_internals.py", "framework/optim/keras_internals.py"}
PRIVATE_LIBRARY_NAMES = re.compile(
    r"tensorflow\.python|\._collective_key_base|\._num_workers|\._as_serialized_graph|\._global_shuffle\b"
    r"|\._learning_rate|\._trial_id|optuna\.\w+\._"
)


def test_library_private_names_only_in_the_quarantine_modules():
    found = []
    for path in FRAMEWORK.rglob("*.py"):
        relative = str(path.relative_to(FRAMEWORK.parent))
        if relative in QUARANTINE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if PRIVATE_LIBRARY_NAMES.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_folder_checks_can_fail():
    assert _folder("framework.loop.controller") == "loop"
    assert _folder("framework.distribute") == "leaves"
    assert _cycle({"loop": {"trainer"}, "trainer": {"loop"}}) == ["loop", "trainer", "loop"]
    assert PRIVATE_LIBRARY_NAMES.search("strategy.extended._num_workers")


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
