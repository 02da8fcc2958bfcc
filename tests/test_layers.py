"""The package's layers: every import of a pipeline module (function-level ones included)
points down or within its layer, no import closes a cycle, and no code outside
pipeline/families tests a covariance_type."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

#: top to bottom; a module may import its own layer and the ones below it
LAYERS = [
    "pipeline",  # the package root: the public entry points, imported by nobody inside
    "pipeline.batch",
    "pipeline.estimators",
    "pipeline.engine",
    "pipeline.kernels",
    "pipeline.core",
    "pipeline.families",
    "pipeline.data",
    "pipeline.storage",
    "pipeline.options",
    "pipeline.exceptions",
]
FAMILY_NAMES = {"full", "tied", "diag", "spherical"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    """Index in LAYERS (0 = top) of the longest layer prefix of ``module``."""
    best = None
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            if best is None or len(layer) > len(LAYERS[best]):
                best = i
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def _imports(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    """pipeline modules imported anywhere in ``tree`` (relative imports resolved)."""
    out = set()
    package = module if (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists() else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from pipeline.batch import cluster" imports the submodule pipeline.batch.cluster
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "pipeline" or n.startswith("pipeline."))
    return out


def test_imports_point_down_and_close_no_cycle():
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(m, tree, known) - {m} for m, tree in modules.items()}
    upward = [
        f"{m} ({LAYERS[_layer(m)]}) imports {d} ({LAYERS[_layer(d)]})"
        for m, deps in graph.items() for d in sorted(deps) if _layer(d) < _layer(m)
    ]
    assert not upward, "imports that point up:\n" + "\n".join(upward)
    # cycles: depth-first search over the module graph
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_check_sees_function_level_and_upward_imports():
    """The checker is not vacuous: a function-level upward import and a cycle are caught."""
    tree = ast.parse("def f():\n    from pipeline.batch.runner import run\n")
    deps = _imports("pipeline.core.stats", tree, {"pipeline.batch.runner"})
    assert deps == {"pipeline.batch.runner"}
    assert _layer("pipeline.batch.runner") < _layer("pipeline.core.stats")
    assert _layer("pipeline.families.sklearn") == LAYERS.index("pipeline.families")


def _covariance_type_tests(tree: ast.Module) -> list[int]:
    """Lines comparing a covariance_type, or with family-name literals, or dispatching on a
    dict keyed by family names."""

    def names_covariance_type(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "covariance_type") or (
            isinstance(node, ast.Attribute) and node.attr == "covariance_type"
        )

    def literals(node):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e.value for e in node.elts if isinstance(e, ast.Constant)]
        return [node.value] if isinstance(node, ast.Constant) else []

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(names_covariance_type(o) for o in operands) or any(
                v in FAMILY_NAMES for o in operands for v in literals(o)
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & FAMILY_NAMES) >= 2:
                lines.append(node.lineno)
    return lines


def test_no_covariance_type_tests_outside_the_families_package():
    found = {
        m: lines for m, tree in _modules().items()
        if not m.startswith("pipeline.families") and (lines := _covariance_type_tests(tree))
    }
    assert not found, f"covariance_type tested outside pipeline.families (module: lines): {found}"
    # and the check does see one
    assert _covariance_type_tests(ast.parse("if covariance_type == 'full':\n    pass\n")) == [1]
    assert _covariance_type_tests(ast.parse("x = {'full': 1, 'tied': 2}[ct]\n")) == [1]
