"""keras_dino's import structure: no cycles, and docs/architecture.md's table holds.

Read with `ast` only (this file imports nothing of keras_dino, Keras or TensorFlow), every
import counts: at module level and inside functions, `import x`, `from x import y`
(relative ones resolved; `from package import name` is the submodule when `name` is
one), and a module named by a string (`importlib.import_module("keras_dino.x")`, the
values of a table of lazily imported modules).

Rooms are the entries of keras_dino/: each subpackage (`layers/`, `models/`, ...) and
each top-level module (`losses.py`, `callbacks.py`, ...). Two rooms stand apart from the
layering: the package facade `keras_dino/__init__.py`, which gathers the public API and
may import anything, and `testing/`, the tests' helpers, which may import anything. No
room imports either of them. (Python runs the facade whenever any submodule is first
imported; that is package mechanics, not a dependency of the submodule, so the facade's
imports do not make every room depend on every other.)

The table "Rooms" of docs/architecture.md lists, in its last column, the rooms each room
imports, in backticks (`nothing` or `anything` in plain words). The table is read here,
so the document and this test cannot drift: a room that starts or stops importing
another fails until the table says so, and each row may import only rows above it.
The table's rule that TensorFlow is imported at module level only by `data/` and
`export/` is checked here too.
"""

import ast
import collections
import pathlib
import re

import pytest

# Runs in one backend's process (tests/conftest.py): import structure, read from the source.
pytestmark = pytest.mark.once

# Resolved: under Bazel this file is a symlink into the checkout, which holds the package
# and docs/architecture.md (also a runfile of this test, see tests/BUILD).
REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "keras_dino"
DOC = REPO / "docs" / "architecture.md"

FACADE = "__init__.py"  # the room of keras_dino/__init__.py
UNLAYERED = {FACADE, "testing/"}  # may import anything; imported by no room
OUTSIDE_PACKAGE = {"examples/"}  # rows of the table that are not under keras_dino/


# --- reading the code -------------------------------------------------------------------


def _modules():
    """`{dotted module name: path}` of every .py file under keras_dino/."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _owner(name):
    """The module a dotted name lives in: itself, or the nearest module above it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module, path):
    """`{imported module: first line}` for one module, every kind of import counted."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = {}

    def add(target, line):
        if target and target != module:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "keras_dino":
                    add(_owner(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "keras_dino":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in MODULES else _owner(source), node.lineno)
        else:
            for name in _module_strings(node):
                add(name, node.lineno)
    return found


def _module_strings(node):
    """Module names given as strings: `import_module("keras_dino.x")`, `__import__(...)`,
    and the values of a table of lazy imports (`{"name": "keras_dino.x"}`)."""
    if isinstance(node, ast.Call):
        function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
            node.func, "id", None)
        candidates = node.args[:1] if function in ("import_module", "__import__") else []
    elif isinstance(node, ast.Dict):
        candidates = node.values
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        candidates = node.elts
    else:
        candidates = []
    return [
        c.value
        for c in candidates
        if isinstance(c, ast.Constant) and isinstance(c.value, str)
        and c.value.startswith("keras_dino.") and c.value in MODULES
    ]


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _room(module):
    """`layers/` for keras_dino.layers.*, `losses.py` for keras_dino.losses, the facade."""
    parts = module.split(".")
    if len(parts) == 1:
        return FACADE
    folder = PACKAGE / parts[1]
    return f"{parts[1]}/" if folder.is_dir() else f"{parts[1]}.py"


def _where(module, target):
    path = MODULES[module].relative_to(REPO)
    return f"{path}:{IMPORTS[module][target]}"


def _room_imports():
    """`{room: {imported room: one place that imports it}}`, rooms other than itself."""
    rooms = collections.defaultdict(dict)
    for module, targets in IMPORTS.items():
        rooms[_room(module)]  # every room, also one that imports nothing
        for target in targets:
            if _room(target) != _room(module):
                rooms[_room(module)].setdefault(_room(target), _where(module, target))
    return dict(rooms)


ROOM_IMPORTS = _room_imports()


# --- cycles -----------------------------------------------------------------------------


def _strongly_connected(graph):
    """Tarjan's components of `{node: iterable of nodes}` with more than one node."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_through(graph, component):
    """One shortest cycle inside `component`, from its first node back to it."""
    start = min(component)
    parents, queue = {start: None}, collections.deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                path = [node]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return path[::-1] + [start]
            if nxt in component and nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _describe(graph, component, where):
    """The component's members, then one loop through them, each step with its import."""
    cycle = _cycle_through(graph, component)
    hops = [f"    {a} -> {b}   ({where(a, b)})" for a, b in zip(cycle, cycle[1:])]
    return (f"  {len(component)} import each other: {', '.join(sorted(component))}; "
            f"one loop:\n" + "\n".join(hops))


def _module_cycles_in(room):
    """Cycles among the modules of one room (a cycle through another room is a cycle
    between rooms, which `test_no_import_cycle_between_rooms` names)."""
    members = {module for module in MODULES if _room(module) == room}
    graph = {module: set(IMPORTS[module]) & members for module in members}
    return [_describe(graph, component, _where) for component in _strongly_connected(graph)]


@pytest.mark.parametrize("room", sorted({_room(m) for m in MODULES} - {FACADE}))
def test_no_import_cycle_between_the_modules_of_a_room(room):
    cycles = _module_cycles_in(room)
    assert not cycles, f"import cycles inside {room}:\n" + "\n".join(cycles)


def test_no_import_cycle_between_rooms():
    graph = {room: set(targets) for room, targets in ROOM_IMPORTS.items() if room != FACADE}
    cycles = [
        _describe(graph, component, lambda a, b: ROOM_IMPORTS[a][b])
        for component in _strongly_connected(graph)
    ]
    assert not cycles, "import cycles between keras_dino's rooms:\n" + "\n".join(cycles)


def test_cycle_finder_finds_a_cycle_and_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    (component,) = _strongly_connected(graph)
    assert component == {"a", "b", "c"}
    assert _cycle_through(graph, component) == ["a", "b", "c", "a"]


def test_every_kind_of_import_is_read():
    # Lazy (inside a function), relative, `from package import submodule`, and a string.
    callbacks = IMPORTS["keras_dino.callbacks"]
    assert "keras_dino.evaluation.datasets" in callbacks  # lazy, inside a method
    assert "keras_dino.evaluation" in callbacks  # a name from the package's __init__
    assert "keras_dino.callbacks" in IMPORTS["keras_dino.training.dino"]  # from pkg import mod
    assert "keras_dino.data.pipeline" in IMPORTS["keras_dino.data"]  # a lazy-import table
    assert "keras_dino.export.litert" in IMPORTS["keras_dino.export"]


def test_relative_imports_are_resolved(tmp_path):
    path = tmp_path / "fake.py"
    path.write_text("from . import backbones\n"
                    "def f():\n    from ..layers import batch_norm\n    from .. import losses\n")
    assert set(_imports("keras_dino.models.fake", path)) == {
        "keras_dino.models.backbones", "keras_dino.layers.batch_norm", "keras_dino.losses"}


def test_the_facade_and_testing_are_imported_by_no_room():
    importers = {
        room: targets[unlayered]
        for room, targets in ROOM_IMPORTS.items()
        for unlayered in UNLAYERED
        if unlayered in targets
    }
    assert not importers, f"rooms import the facade or testing/: {importers}"


# --- docs/architecture.md ---------------------------------------------------------------


def _table():
    """The rows of the table "Rooms": `[(room, set of rooms it may import or None)]`."""
    text = DOC.read_text()
    section = text.split("## Rooms", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        room = re.findall(r"`([^`]+)`", cells[0])[0]
        may_import = cells[-1]
        if room in OUTSIDE_PACKAGE:
            continue
        if may_import == "anything":
            rows.append((room, None))
        elif may_import == "nothing":
            rows.append((room, set()))
        else:
            names = re.findall(r"`([^`]+)`", may_import)
            assert names, f"docs/architecture.md: '{room}' may import '{may_import}'?"
            rows.append((room, {_table_name(name) for name in names}))
    return rows


def _table_name(name):
    """A room as the table writes it (`layers/`, `losses`, `callbacks.py`) -> its room."""
    if name.endswith("/") or name.endswith(".py"):
        return name
    return f"{name}/" if (PACKAGE / name).is_dir() else f"{name}.py"


TABLE = _table()


def test_the_table_has_one_row_per_room():
    rooms = [room for room, _ in TABLE]
    assert len(rooms) == len(set(rooms)), f"a room has two rows: {rooms}"
    in_code = set(ROOM_IMPORTS)
    assert not in_code - set(rooms), (
        f"docs/architecture.md has no row for {sorted(in_code - set(rooms))}")
    assert not set(rooms) - in_code, (
        f"docs/architecture.md has rows for rooms that do not exist: "
        f"{sorted(set(rooms) - in_code)}")


@pytest.mark.parametrize("room", sorted(ROOM_IMPORTS))
def test_a_room_imports_what_the_table_says(room):
    allowed = dict(TABLE).get(room)
    if allowed is None:
        assert room in UNLAYERED, f"only {sorted(UNLAYERED)} may import anything, not {room}"
        return
    imported = ROOM_IMPORTS[room]
    undeclared = {target: imported[target] for target in sorted(set(imported) - allowed)}
    stale = sorted(allowed - set(imported))
    assert not undeclared, (
        f"{room} imports {undeclared}, which docs/architecture.md does not let it import: "
        "move the code to a lower room, or change the table if the new edge is right")
    assert not stale, (
        f"docs/architecture.md says {room} imports {stale}; it no longer does: "
        "take them out of its row")


def test_each_row_imports_only_rows_above_it():
    # The table reads from the ground up, which makes its layering free of cycles.
    above = set()
    for room, allowed in TABLE:
        if allowed is not None:
            higher = sorted(allowed - above)
            assert not higher, f"docs/architecture.md: {room} imports {higher}, not above it"
        above.add(room)


def _run_on_import(tree):
    """The nodes a module runs when imported: all but the bodies of its functions."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                stack.append(child)


def test_tensorflow_is_imported_on_import_only_by_data_and_export():
    # The table's rule of thumb: elsewhere TensorFlow waits inside the function needing it.
    offenders = []
    for module, path in MODULES.items():
        if _room(module) in ("data/", "export/"):
            continue
        for node in _run_on_import(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "tensorflow" for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"TensorFlow imported at module level outside data/, export/: {offenders}"
