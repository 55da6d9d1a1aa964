"""The package's layering, checked on its source: no import cycle between
modules (imports inside functions included), no lower package importing a
higher one, no module over 500 lines, few modules directly in ``dhm_data/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dhm_data"

#: Each package's rank in the data flow: a module may import its own package
#: and packages of a strictly lower rank, never a higher one or a sibling of
#: the same rank.  (This table is the rule; each package's __init__ says it.)
RANKS = {
    "errors": 0, "atomic": 0,
    "geometry": 1, "formats": 1,
    "models": 2, "datasets": 2,
    "shards": 3, "fit": 3,
    "prepare": 4,
    "build": 5,
    "load": 6,
    "evaluation": 7,
    "synth": 8, "viz": 8,
    "cli": 9,
    "__init__": 10, "__main__": 10,
}
#: Cross-package imports allowed against the ranks, each with its reason.
EXCEPTIONS = {
    # the loader and the evaluation find a build's shards through the one
    # place that knows the folder layout
    ("load", "build.layout"),
    ("evaluation", "build.layout"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every dhm_data module ``name`` imports, anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("dhm_data"):
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_rank_table_covers_every_package():
    assert {_package(m) for m in MODULES} <= set(RANKS)


def test_no_import_cycles():
    # a package's __init__ importing its own submodules (to re-export them) is
    # not a cycle the submodules can see: they never import their __init__
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for m, ts in GRAPH.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_lower_packages_never_import_higher_ones():
    bad = []
    for m, targets in GRAPH.items():
        src = _package(m)
        for t in targets:
            dst = _package(t)
            if dst == src or dst == "__init__" and t == "dhm_data" and src != "__init__":
                continue
            sub = ".".join(t.split(".")[1:3])
            if (src, sub) in EXCEPTIONS:
                continue
            if RANKS[dst] >= RANKS[src]:
                bad.append(f"{m} imports {t} ({src} rank {RANKS[src]}, {dst} rank {RANKS[dst]})")
    assert not bad, "\n".join(bad)


def test_importing_the_package_root_for_its_version_only():
    # `from dhm_data import __version__` is the one import of the root allowed below it
    for m, targets in GRAPH.items():
        if "dhm_data" in targets and _package(m) not in ("__init__", "__main__"):
            tree = ast.parse(MODULES[m].read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "dhm_data"
                     for a in n.names}
            modules = {n for n in names if f"dhm_data.{n}" in MODULES}
            assert names - modules <= {"__version__"}, f"{m} imports {names - modules} from the package root"


#: where an import inside a function is allowed, and why (the reason goes in a
#: comment on the import, or on the line above a run of imports)
def _function_level_imports_without_a_reason(path: Path) -> list[str]:
    lines = path.read_text().split("\n")
    out = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if any("#" in lines[k] for k in range(node.lineno - 1, node.end_lineno)):
                continue
            j = node.lineno - 2  # walk up over the run of imports this one belongs to
            while j >= 0 and (lines[j].strip().startswith(("import ", "from ", ")")) or lines[j].strip().endswith(",")
                              or not lines[j].strip()):
                if "#" in lines[j]:
                    break
                j -= 1
            if j < 0 or "#" not in lines[j]:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def test_function_level_imports_say_why():
    """Imports inside functions only where they buy something (command
    start-up, optional or slow dependencies), each saying so in a comment."""
    bad = [row for path in sorted(PACKAGE.rglob("*.py")) for row in _function_level_imports_without_a_reason(path)]
    assert not bad, "imports inside functions without a reason comment:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= 500, f"{MODULES[name]} has {lines} lines; split it by concern"


def test_few_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "atomic.py", "errors.py"], top
