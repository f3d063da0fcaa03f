"""The house rules, checked statically over hybrid/: heavy imports stay in their homes, no
module imports back into one that imports it, no file or function grows past its bound."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hybrid"

#: top-level module -> the only sub-tree of hybrid/ allowed to import it
HOMES = {
    "tensorflow": "cnn", "keras": "cnn",
    "faiss": "dictionary",
    "pydicom": "io",
    "h5py": "io",
    "pynetdicom": "serve",
}
MAX_FILE_LINES = 800
MAX_FUNCTION_LINES = 150


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Every module named by an import anywhere in the file (lazy ones too), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append((mod, node.lineno))
            for a in node.names:  # `from hybrid.x import y` where y is a module
                if f"{mod}.{a.name}" in MODULES:
                    names.append((f"{mod}.{a.name}", node.lineno))
    return names


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for name, _ in _imports(path, mod):
            if name in MODULES and name != mod:
                graph[mod].add(name)
    # `from hybrid.x import y` with y a module also names hybrid.x; keep only the most precise
    for mod, deps in graph.items():
        for d in list(deps):
            if any(o != d and o.startswith(d + ".") for o in deps) and not _imports_names(mod, d):
                deps.discard(d)
    return graph


def _imports_names(mod: str, pkg: str) -> bool:
    """Does ``mod`` import a non-module name from package ``pkg`` (its __init__)?"""
    tree = ast.parse(MODULES[mod].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == pkg:
            if any(f"{pkg}.{a.name}" not in MODULES for a in node.names):
                return True
        if isinstance(node, ast.Import) and any(a.name == pkg for a in node.names):
            return True
    return False


def test_heavy_imports_stay_in_their_homes():
    wrong = []
    for mod, path in MODULES.items():
        sub = mod.split(".")[1] if "." in mod else ""
        for name, line in _imports(path, mod):
            top = name.split(".")[0]
            if top in HOMES and sub != HOMES[top]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} "
                             f"(home: hybrid/{HOMES[top]})")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_one():
    # the checker itself can fail: a two-module loop and a three-module loop are found
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_file_and_function_sizes(mod):
    path = MODULES[mod]
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.name}: {lines} lines > {MAX_FILE_LINES}"
    tree = ast.parse(path.read_text())
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checkouts_layout_is_derived_in_one_place():
    """Only hybrid/_paths.py turns ``__file__`` into the repository's or the workspace's
    folders (``parents[...]``); every other module imports its constants, so moving a folder
    is one edit.  The constants name this checkout's real folders."""
    from hybrid._paths import EXPERIMENTS_DIR, REPO_ROOT

    offenders = [f"{path.relative_to(PACKAGE.parent)}:{n}"
                 for path in MODULES.values() if path.name != "_paths.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if "__file__" in line and "parents[" in line]
    assert offenders == [], f"derive the checkout's folders in hybrid/_paths.py: {offenders}"
    assert (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "hybrid").is_dir()
    assert (EXPERIMENTS_DIR / "splits.json").is_file()
