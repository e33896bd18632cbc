"""
Imports inside ssd_d2 point one way: every import statement of the package, those inside
functions included, read from the source, and no set of modules importing each other.
"""

import ast
import os
from typing import Dict, List, Set

PACKAGE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "ssd_d2"))


def _module_files(package_dir: str) -> Dict[str, str]:
    """Dotted module name -> file, packages named by their __init__.py."""
    root = os.path.dirname(package_dir)
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                modules[dotted[: -len(".__init__")] if name == "__init__.py" else dotted] = path
    return modules


def import_graph(package_dir: str = PACKAGE_DIR) -> Dict[str, Set[str]]:
    """Each module of the package -> the package's modules it imports."""
    modules = _module_files(package_dir)
    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        graph[module] = set()
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    base = ".".join(parts + ([base] if base else []))
                # "from package import name": the submodule where name is one, else the package.
                targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = targets or [base]
            else:
                continue
            graph[module].update(t for t in targets if t in modules and t != module)
    return graph


def import_circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_check_finds_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import f\n")
    (package / "a.py").write_text("from .sub import f\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(str(package))
    assert graph["pkg.sub"] == {"pkg.sub.b"} and graph["pkg.c"] == {"pkg.a"}
    assert import_circles(graph) == [["pkg.a", "pkg.sub", "pkg.sub.b"]]


def test_ssd_d2_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40 and "ssd_d2.convert.core" in graph["ssd_d2.convert"]
    assert import_circles(graph) == []


def test_the_layers_import_downwards_only():
    # DESIGN.md: config, modeling, data and convert at the bottom, engine above them, model_zoo
    # and tools on top; convert imports neither engine nor the model zoo.
    graph = import_graph()
    top = ("ssd_d2.engine", "ssd_d2.export", "ssd_d2.model_zoo", "ssd_d2.tools")
    above = {
        "ssd_d2.convert": top + ("ssd_d2.modeling", "ssd_d2.data"),
        "ssd_d2.modeling": top + ("ssd_d2.data",),
        "ssd_d2.data": top + ("ssd_d2.modeling", "ssd_d2.convert"),
        "ssd_d2.engine": ("ssd_d2.export", "ssd_d2.model_zoo", "ssd_d2.tools"),
        "ssd_d2.export": ("ssd_d2.engine", "ssd_d2.model_zoo", "ssd_d2.tools"),
        "ssd_d2.config": ("ssd_d2.",),
    }
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for layer, forbidden in above.items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if target.startswith(forbidden)
    ]
    assert wrong == []
