"""No import cycles among the product packages, counting lazy imports inside functions too.

The graph is built from the source (ast), not by importing: every `import` / `from ... import`
anywhere in a module (module level, inside functions, inside classes) is an edge, except imports
under `if TYPE_CHECKING:`, which never run. A lazy import that closes a cycle is still a cycle: it
only moves the failure from start-up to the first call that takes that path.

Product packages are the top-level directories with an `__init__.py`, other than the proving and
test code (tests/, harness/) and the generated stubs (protos/).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_PRODUCT = {"tests", "harness", "protos"}


def product_packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name not in NOT_PRODUCT)


def module_files(packages: list[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` (a package is its __init__)."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    """`name` and the packages above it (importing a.b.c runs a and a.b first), as far as they are ours."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules that `module` imports."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _with_parents(alias.name, modules)
            continue
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        found |= _with_parents(target, modules)
        for alias in node.names:  # `from pkg import sub` imports the submodule pkg.sub
            if f"{target}.{alias.name}" in modules:
                found.add(f"{target}.{alias.name}")
    found.discard(module)
    return found


def import_graph(packages: list[str]) -> dict[str, set[str]]:
    modules = module_files(packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
    return sorted(found)


def one_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, as a path a -> ... -> a."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not a cycle")


def test_product_packages_are_discovered() -> None:
    packages = product_packages()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = config["tool"]["setuptools"]["packages"]["find"]["include"]
    declared = {p.rstrip("*") for p in included} - {"credits", *NOT_PRODUCT}
    assert declared <= set(packages), declared - set(packages)
    assert {"service_runtime", "ledger_service", "invoice_service", "coordinator", "creditctl"} <= set(packages)


def test_the_graph_sees_lazy_imports() -> None:
    tree = "def f():\n    from service_runtime.postgres import create_pool\n"
    modules = {"service_runtime": Path(), "service_runtime.postgres": Path()}
    assert [n.module for n in _imports(ast.parse(tree)) if isinstance(n, ast.ImportFrom)] == [
        "service_runtime.postgres"]
    assert _with_parents("service_runtime.postgres", modules) == {"service_runtime", "service_runtime.postgres"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph(product_packages())
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(one_cycle(c, graph)) + f"   (all: {', '.join(c)})"
                                                     for c in found)
