"""The architecture's rules that import-linter cannot state, checked on the source tree.

docs/internals.md names real modules and every package; no module is too long; the top
of the package stays small; only systems/ compares batch-system names; and no module
imports another that imports it back (imports inside functions and under
TYPE_CHECKING included: a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "jobstrap"
INTERNALS = ROOT / "docs" / "internals.md"

MAX_MODULE_LINES = 600
MAX_TOP_LEVEL_MODULES = 12
SYSTEM_NAMES = {"slurm", "pbs", "local"}

#: An inline code span naming a module: a path ending in .py, or a dotted jobstrap name.
_MODULE_PATH = re.compile(r"[\w./{},-]+\.py")
_MODULE_NAME = re.compile(r"jobstrap(?:\.\w+)+")


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def packages() -> list[str]:
    """Every package below jobstrap, as a path relative to the package (``engines/dask``)."""
    return sorted(
        init.parent.relative_to(PACKAGE).as_posix()
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE
    )


def doc_code_spans() -> list[str]:
    """Inline code spans of docs/internals.md, outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", INTERNALS.read_text(), flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


def expand_braces(path: str) -> list[str]:
    """``systems/{slurm,pbs}.py`` -> ``systems/slurm.py``, ``systems/pbs.py``."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [
        expanded
        for choice in match[1].split(",")
        for expanded in expand_braces(path[: match.start()] + choice + path[match.end() :])
    ]


def module_file(dotted: str) -> Path | None:
    base = ROOT / "src" / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defines(path: Path, name: str) -> bool:
    """Whether the module at ``path`` defines or imports ``name`` at its top level."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found = {node.name}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found = {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = {target.id for target in targets if isinstance(target, ast.Name)}
        else:
            continue
        if name in found:
            return True
    return False


def module_exists(span: str) -> bool:
    if _MODULE_NAME.fullmatch(span):
        # jobstrap.a.b is a module, or jobstrap.a.name a name module jobstrap.a defines.
        parent, _, name = span.rpartition(".")
        path = module_file(parent)
        return module_file(span) is not None or (path is not None and defines(path, name))
    # A path is relative to the repository (tests/..., scripts/...) or to the package.
    return (ROOT / span).is_file() or (PACKAGE / span).is_file()


def test_the_module_map_names_only_modules_that_exist() -> None:
    named = [
        path
        for span in doc_code_spans()
        if _MODULE_PATH.fullmatch(span) or _MODULE_NAME.fullmatch(span)
        for path in expand_braces(span)
    ]
    missing = sorted({path for path in named if not module_exists(path)})
    assert named, "docs/internals.md names no module at all"
    assert missing == [], f"docs/internals.md names modules that do not exist: {missing}"


def test_the_module_map_names_every_package() -> None:
    spans = doc_code_spans()

    def named(package: str) -> bool:
        dotted = "jobstrap." + package.replace("/", ".")
        return any(
            span.startswith(package + "/") or span == dotted or span.startswith(dotted + ".")
            for span in spans
        )

    unnamed = [package for package in packages() if not named(package)]
    assert unnamed == [], f"packages docs/internals.md does not name: {unnamed}"


def test_no_module_is_longer_than_the_limit() -> None:
    lengths = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
        for path in python_files()
    }
    too_long = {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_top_of_the_package_stays_small() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules at the top: {top}"


def system_name_constants(node: ast.AST) -> Iterator[str]:
    """Batch-system names among the string constants of a comparison operand."""
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and child.value in SYSTEM_NAMES:
            yield str(child.value)


def test_only_systems_compares_batch_system_names() -> None:
    # Knowledge of a batch system belongs to its BatchSystem object; a comparison
    # with its name anywhere else is that knowledge leaking out.
    found = []
    for path in python_files():
        if path.is_relative_to(PACKAGE / "systems"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.MatchValue):
                operands = [node.value]
            else:
                continue
            names = sorted(
                {name for operand in operands for name in system_name_constants(operand)}
            )
            if names:
                where = f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}"
                found.append(f"{where} compares with {', '.join(names)}")
    assert found == [], "batch-system names compared outside systems/:\n" + "\n".join(found)


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """The import graph's cycles, as its strongly connected sets of several modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(root: str) -> None:
        # Tarjan's algorithm, iterative: the package is deep enough to matter for recursion.
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    imported = graph.find_modules_directly_imported_by(successor)
                    work.append((successor, iter(sorted(imported))))
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        components.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("jobstrap", cache_dir=None)
    cycles = []
    for component in strongly_connected(graph):
        first = min(component)
        # One concrete loop through the component, to say which imports close it.
        loop = min(
            (
                graph.find_shortest_chain(importer=imported, imported=first) or ()
                for imported in graph.find_modules_directly_imported_by(first)
                if imported in component
            ),
            key=len,
        )
        cycles.append(f"{' -> '.join([first, *loop])}  (the cycle joins {sorted(component)})")
    assert cycles == [], "import cycles:\n" + "\n".join(sorted(cycles))
