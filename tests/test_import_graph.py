"""fastmlp's modules import each other without cycles, lazy imports inside functions
included (issue 9: io and model used to import each other)."""
import ast
import pathlib

import fastmlp

PACKAGE = pathlib.Path(fastmlp.__file__).parent


def _imports(path, module):
    """fastmlp modules that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text())
    parts = module.split(".")
    package = parts[:-1] if path.name != "__init__.py" else parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in [target] + names if n.startswith("fastmlp"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fastmlp"))
    return found


def _graph():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if path.name == "__init__.py" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        # an import of a package's attribute (from . import io) names the module io
        graph[name] = {t for t in _imports(path, name) if t in modules and t != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    graph.pop("fastmlp")  # the package's __init__ re-exports; its submodules never import it
    for deps in graph.values():
        deps.discard("fastmlp")
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_io_does_not_import_model():
    assert "fastmlp.model" not in _graph()["fastmlp.io"]
