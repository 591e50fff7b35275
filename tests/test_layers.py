"""The import layers of docs/architecture.md, checked on the source with `ast` (imports inside
functions count too): a module imports only modules on its own floor or below, no modules import
each other in a loop, and no module imports another module's underscore names (a package's own
``_module`` imported only inside that package is fine)."""

from __future__ import annotations

import ast
from pathlib import Path

import xaibench

# Floors, bottom-up, by top-level module or package of xaibench. "" is the package root: it holds
# ``__version__`` and imports nothing until a name of its lazy facade is used (``from xaibench import
# load_model`` counts as importing the module behind the name, see `EXPORTS`).
FLOORS: list[tuple[str, ...]] = [
    ("", "errors", "config", "registry", "seeding", "files", "stats", "checks", "devices", "colours",
     "passes", "modelspec"),  # foundations
    ("models", "data"),
    ("explainers",),
    ("perturbation",),
    ("metrics", "maps"),
    ("runner", "store", "reliability", "compat"),
    ("training", "streaming"),
    ("experiments",),
    ("report", "plotting"),
    ("cli", "harmony", "demo", "conformance"),
]
EXPORTS: dict[str, str] = xaibench._EXPORTS
FOUNDATIONS = set(FLOORS[0]) - {""}
# HARMONY modules that use the layers below; the web application (every other module) uses only the foundations.
HARMONY_BESIDE_APP = {"agreement", "study", "commands", "__main__"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[tuple[str, str | None]]:
    """(module, imported name or None) of every import of the package's own modules in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = name.split(".")[0]

    def resolve(dotted: str) -> str:
        while dotted not in known and "." in dotted:
            dotted = dotted.rpartition(".")[0]
        return dotted

    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(resolve(a.name), None) for a in node.names if a.name.split(".")[0] == top}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != top:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if base == top and alias.name in EXPORTS:
                    full = EXPORTS[alias.name]
                found.add((full, None) if full in known else (resolve(base), alias.name))
    return found


def _web_app(name: str) -> bool:
    """Whether `name` is part of the HARMONY web application."""
    parts = name.split(".")
    return parts[1:2] == ["harmony"] and (len(parts) == 2 or parts[2] not in HARMONY_BESIDE_APP)


def floor_of(name: str) -> int:
    key = name.split(".")[1] if "." in name else ""
    for level, names in enumerate(FLOORS):
        if key in names:
            return level
    raise AssertionError(f"{name} is on no floor: add {key!r} to FLOORS (and to docs/architecture.md)")


def violations(root: Path) -> list[str]:
    """Every broken rule in the package at `root`, as sentences."""
    known = modules(root)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = []
    for name, targets in graph.items():
        for target, imported in targets:
            if floor_of(target) > floor_of(name):
                found.append(f"{name} imports {target}, a floor above it")
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                found.append(f"{name} imports the underscore name {imported} of {target}")
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")]
            owner = ".".join(parts[: private[0]]) if private else ""
            if private and name != owner and not name.startswith(owner + "."):
                found.append(f"{name} imports {target}, private to its package")
            if _web_app(name) and not (_web_app(target) or target.split(".")[1:2] in ([f] for f in FOUNDATIONS)):
                found.append(f"{name} (the web application) imports {target}")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles({n: {t for t, _ in ts} for n, ts in graph.items()})]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w == v or w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_xaibench_keeps_its_layers() -> None:
    assert violations(Path(xaibench.__file__).parent) == []


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "xaibench" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "xaibench"


def test_the_check_finds_each_broken_rule(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "report.py": "",
        "models.py": "from xaibench.metrics import score\n",  # up: metrics is above models
        "metrics/__init__.py": "from xaibench.metrics._engine import run\n",  # own private module: fine
        "metrics/_engine.py": "def f():\n    from xaibench.report import go\n",  # lazy, still up
        "runner/__init__.py": "from xaibench.metrics._engine import run\nfrom xaibench.store import _read\n",
        "store.py": "import xaibench.runner\n",  # runner <-> store: a cycle
        "harmony/__init__.py": "",
        "harmony/views.py": "from xaibench.models import load\n",  # the web application below the foundations
        "harmony/agreement.py": "from xaibench.metrics import score\n",  # allowed beside the app
    })
    found = violations(pkg)
    assert sorted(found) == sorted([
        "xaibench.models imports xaibench.metrics, a floor above it",
        "xaibench.metrics._engine imports xaibench.report, a floor above it",
        "xaibench.runner imports xaibench.metrics._engine, private to its package",
        "xaibench.runner imports the underscore name _read of xaibench.store",
        "xaibench.harmony.views (the web application) imports xaibench.models",
        "import cycle: xaibench.runner -> xaibench.store",
    ])
