"""The package layout (README, "Package layout"): the plugin never imports the lab; imports flow
one way through the plugin's parts; no import cycle anywhere; imports inside functions only for
optional dependencies or threestudio, each saying why; modules of a size a reader can hold."""

import ast
import re
import os
from typing import Dict, List, Set, Tuple

import pytest
from helpers import REPO  # noqa: E402

CUSTOM = os.path.join(REPO, "custom")
PACKAGES = ("antijanus", "janus_lab")
#: the plugin's parts, lowest first: a part imports only parts before it (or itself)
PLUGIN_LAYERS = ("utils", "testing", "backbones", "core", "prompting", "adapters", "tools", "cpu")
MAX_LINES = 600
MAX_LAB_LINES = 420


def project_modules() -> Dict[str, str]:
    """Module name -> file, for both packages (the CPU mode's import-only stand-ins excluded)."""
    modules = {}
    for package in PACKAGES:
        root = os.path.join(CUSTOM, package)
        for parent, folders, files in os.walk(root):
            folders[:] = [f for f in folders if f not in ("standins", "scripts", "docs", "models", "configs",
                                                          "build", "__pycache__") and not f.endswith(".egg-info")]
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(parent, file)
                    parts = os.path.relpath(path, CUSTOM)[:-3].split(os.sep)
                    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = project_modules()


def _absolute(module: str, path: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: str) -> List[Tuple[str, bool, int]]:
    """(imported project-or-not module name, inside a function?, line) for every import."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, path, child)
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    found.append((name if name in MODULES else base, in_function, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def project_target(name: str) -> str:
    """The project module an import names (the longest known prefix), or ''."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def graph() -> Dict[str, Set[str]]:
    edges = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _, _ in imports_of(module, path):
            target = project_target(name)
            if target and target != module and not module.startswith(target + "."):  # a package's own __init__
                edges[module].add(target)
    return edges


def test_the_plugin_never_imports_the_lab():
    offenders = [(m, name, line) for m, path in MODULES.items() if m.startswith("antijanus")
                 for name, _, line in imports_of(m, path) if name.split(".")[0] == "janus_lab"]
    assert offenders == []


def test_no_import_cycle():
    edges, index, low, stack, on_stack, cycles = graph(), {}, {}, [], set(), []

    def connect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert cycles == []


def _layer(module: str) -> int:
    parts = module.split(".")
    return PLUGIN_LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in PLUGIN_LAYERS else -1


def test_the_plugins_parts_import_downward_only():
    upward = [(m, t) for m, targets in graph().items() if m.startswith("antijanus.") and _layer(m) >= 0
              for t in targets if t.startswith("antijanus.") and _layer(t) > _layer(m)]
    assert upward == []


def test_imports_inside_functions_are_optional_dependencies_or_threestudio_and_say_why():
    """Our own modules inside a function only where they import threestudio (the adapters); other
    packages only with a comment on the line saying why (optional, threestudio, a slow import)."""
    bad = []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for name, in_function, line in imports_of(module, path):
            if not in_function:
                continue
            comment = lines[line - 1].partition("#")[2]
            project = project_target(name) or name.split(".")[0] in PACKAGES
            if not comment.strip() or (project and "threestudio" not in comment):  # ours: only for threestudio
                bad.append(f"{os.path.relpath(path, REPO)}:{line}: {lines[line - 1].strip()}")
    assert bad == []


@pytest.mark.parametrize("package, limit", [("antijanus", MAX_LINES), ("janus_lab", MAX_LAB_LINES)])
def test_modules_stay_small(package, limit):
    sizes = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in MODULES.items() if m.startswith(package)}
    assert {m: n for m, n in sizes.items() if n > limit} == {}


def test_the_readme_package_layout_names_every_folder():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        layout = f.read().split("\n## Package layout\n", 1)[1].split("\n## ", 1)[0]
    folders = sorted({m.split(".")[1] for m in MODULES if m.startswith("antijanus.") and
                      os.path.isdir(os.path.join(CUSTOM, *m.split(".")[:2]))})
    layout = layout.split("| folder | what |")[0]  # the plugin's table
    rows = re.findall(r"^\| `([a-z_0-9]+)/` \|", layout, flags=re.M)
    assert rows == list(PLUGIN_LAYERS) and set(folders) == set(rows)  # in import order, every folder
    for part in rows:  # every module of the part named in its row
        row = re.search(rf"^\| `{part}/` \|.*$", layout, flags=re.M).group(0)
        modules = {m.split(".")[2] for m in MODULES if m.startswith(f"antijanus.{part}.")} - {"__main__"}
        assert all(f"`{m}`" in row or f"`{m}/`" in row for m in modules), (part, modules)


def test_functions_fit_on_a_screen():
    long = []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        long += [f"{module}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert long == []
