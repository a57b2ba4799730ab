"""The import graph of `rcnn/`: no cycles, and the library never imports its front ends.

Built from the source with `ast` (every ``import`` and ``from ... import``, including those
inside functions, which a cycle hides behind), not by importing anything. An edge goes to the
module named: ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
``a.b``. Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, but those
implicit edges are left out: a package's ``__init__`` re-exporting its submodules is not a
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rcnn"
FRONT_ENDS = ("rcnn.cli", "rcnn.commands")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """Every module name `path` imports (absolute; relative imports resolved), anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(edges between rcnn modules, every imported name per module)``."""
    modules = _modules()
    edges, raw = {}, {}
    for name, path in modules.items():
        names = _imports(name, path)
        raw[name] = names
        targets = set()
        for imported in names:
            if imported in modules:
                targets.add(imported)
            elif imported.rpartition(".")[0] in modules and imported.startswith("rcnn."):
                # ``from a.b import c`` where c is a name in a.b: the edge is to a.b (added as base)
                continue
            elif imported.startswith("rcnn."):
                parent = imported
                while parent and parent not in modules:
                    parent = parent.rpartition(".")[0]
                if parent:
                    targets.add(parent)
        targets.discard(name)
        edges[name] = targets
    return edges, raw


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _path_in(component: list[str], edges) -> str:
    """One cycle through a component, spelled ``a -> b -> a``, for the failure message."""
    members, first = set(component), component[0]
    parent, queue = {first: None}, [first]
    for node in queue:  # breadth first, within the component, back to `first`
        for child in sorted(edges[node] & members):
            if child == first:
                path = [first]
                while node is not None:
                    path.insert(1, node)
                    node = parent[node]
                return " -> ".join(path[1:] + [first])
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return " -> ".join(component)


def test_the_graph_sees_imports_inside_functions():
    edges, _ = _graph()
    assert "rcnn.datasets.rules" in edges["rcnn.datasets.voc"]
    assert "rcnn.cache" in edges["rcnn.datasets.synthetic"]
    # a lazy import in a function body counts: rcnn.commands.data imports the checker there
    assert "rcnn.datasets.check" in edges["rcnn.commands.data"]


def test_no_import_cycle_in_rcnn():
    edges, _ = _graph()
    cycles = _cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(_path_in(c, edges) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _path_in(["a", "b", "c"], edges) == "a -> b -> c -> a"


def test_the_library_does_not_import_its_front_ends_or_experiments():
    _, raw = _graph()
    bad = []
    for name, imported in sorted(raw.items()):
        front_end = name.startswith(FRONT_ENDS)
        for target in sorted(imported):
            if target == "experiments" or target.startswith("experiments."):
                bad.append(f"{name} imports {target}")
            elif not front_end and (target in FRONT_ENDS or target.startswith(tuple(f + "." for f in FRONT_ENDS))):
                bad.append(f"{name} imports {target}")
    assert not bad, "; ".join(bad)


@pytest.mark.slow  # three fresh interpreters loading torch: about 10 s, far more on a loaded machine
def test_importing_rcnn_leaves_the_environment_alone_and_the_command_sets_openmp_passive(tmp_path):
    """`import rcnn` (torch included) sets no OMP_WAIT_POLICY (OpenCV and torch set variables
    of their own on import); the `rcnn` command sets ``OMP_WAIT_POLICY=PASSIVE`` before torch
    loads (and keeps a value the environment gives)."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "import rcnn, rcnn.detectors\n"
        "assert 'torch' in sys.modules and 'OMP_WAIT_POLICY' not in os.environ, 'import rcnn set OMP_WAIT_POLICY'\n"
    )
    command = (
        "import os, sys\n"
        "from rcnn.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        f"main(['--quiet', 'data', 'check', {str(tmp_path / 'nowhere')!r}])\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)

    def run(source, **extra):
        return subprocess.run(
            [sys.executable, "-c", source], env={**env, **extra}, capture_output=True, text=True, check=True
        )

    run(code)
    assert run(command).stdout.splitlines()[-1] == "PASSIVE"
    assert run(command, OMP_WAIT_POLICY="ACTIVE").stdout.splitlines()[-1] == "ACTIVE"
