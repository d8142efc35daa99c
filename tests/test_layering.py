"""Product code never depends on the proving harness: no module of a product package imports `harness`,
except the CLI's thin bench/chaos entry points, and those only inside the command functions (lazily,
so the CLI and every other product module load without the harness)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = "harness"
# Every top-level package that is not the harness or the tests is product code; these at least.
NAMED_PRODUCT = {"ledger_service", "invoice_service", "coordinator", "service_runtime", "creditctl", "stack", "portal"}
# The customer portal is a client of the gRPC APIs like any other: never the services' code or databases.
PORTAL_NEVER_IMPORTS = ("ledger_service", "invoice_service", "coordinator", "stack", "asyncpg", "reconciler")
PRODUCT_SCRIPTS = [ROOT / "deploy" / "docker" / "entrypoint.py"]
# The CLI modules whose command functions run a benchmark or the chaos campaign (lazy imports only).
LAZY_HARNESS_ALLOWED = {"creditctl.commands.bench", "creditctl.commands.chaos"}


def product_packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir()
                  if (p / "__init__.py").is_file() and p.name not in {HARNESS, "tests"})


def product_modules() -> Iterator[tuple[str, Path]]:
    for package in product_packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path
    for path in PRODUCT_SCRIPTS:
        yield str(path.relative_to(ROOT)), path


def _is_harness(name: str) -> bool:
    return name == HARNESS or name.startswith(HARNESS + ".")


def harness_imports(tree: ast.AST) -> Iterator[tuple[int, bool]]:
    """(line, inside a function) of every import of the harness: import statements and
    importlib.import_module / __import__ calls with a literal name."""
    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[int, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import) and any(_is_harness(a.name) for a in child.names):
                yield child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and not child.level and _is_harness(child.module or ""):
                yield child.lineno, in_function
            elif isinstance(child, ast.Call) and _dynamic_import_of_harness(child):
                yield child.lineno, in_function
            yield from walk(child, nested)

    yield from walk(tree, False)


def _dynamic_import_of_harness(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in {"import_module", "__import__"} or not call.args:
        return False
    arg = call.args[0]
    return isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_harness(arg.value)


def test_the_product_packages_are_all_checked() -> None:
    assert NAMED_PRODUCT <= set(product_packages()), product_packages()
    assert (ROOT / HARNESS / "__init__.py").is_file()


def test_no_product_module_imports_the_harness() -> None:
    found: list[str] = []
    for module, path in product_modules():
        for line, lazy in harness_imports(ast.parse(path.read_text(), str(path))):
            if not (lazy and module in LAZY_HARNESS_ALLOWED):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {HARNESS}"
                             f"{' (lazily, but not an allowed CLI entry point)' if lazy else ' at module level'}")
    assert not found, "\n".join(found)


def test_the_allow_list_names_modules_that_exist_and_use_it() -> None:
    """A stale entry would silently allow a module that no longer is a thin entry point."""
    modules = dict(product_modules())
    for module in sorted(LAZY_HARNESS_ALLOWED):
        assert module in modules, f"{module} is allowed to import the harness but does not exist"
        assert any(lazy for _line, lazy in harness_imports(ast.parse(modules[module].read_text()))), \
            f"{module} is allowed to import the harness but does not"


def test_the_checker_sees_every_form_of_import() -> None:
    source = ("import harness\nfrom harness.faults import FaultPlan\nimport importlib\n"
              "def f():\n    from harness.benches import saga\n    return importlib.import_module('harness.worker')\n"
              "from harnessed import x\nfrom . import harness\n")
    assert list(harness_imports(ast.parse(source))) == [(1, False), (2, False), (5, True), (6, True)]


def test_no_fault_or_bench_code_in_the_production_worker() -> None:
    """Fault plans and the benchmark's workflow reach a worker only through the harness's extensions."""
    for module, path in product_modules():
        text = path.read_text()
        for needle in ("CREDITS_FAULTS", "CREDITS_FAULT_DIR", "FaultPlan", "BenchBare", "bench.noop"):
            assert needle not in text, f"{module} mentions {needle}"


def test_the_portal_reaches_the_services_only_through_their_apis() -> None:
    found = []
    for path in sorted((ROOT / "portal").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in PORTAL_NEVER_IMPORTS]
    assert not found, "\n".join(found)
