"""The engine's layering, checked from the source: every import statement (module level or
inside a function) becomes an edge between packages, and the rules below must hold.

Layers (top to bottom): entrypoints -> engine (vllm/v1/engine) -> worker (the runner) ->
spec decode -> models -> layers -> kernels (vllm/v1/attention); the scheduler and KV manager
(vllm/v1/core) sit beside the runner and never see it. Nothing in vllm/ imports tools/.

A package's __init__.py that re-exports (vllm/__init__.py: the public facade) is its own node,
so `from vllm import LLM` does not make the whole `vllm` package depend on the entrypoints."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (importer prefix, forbidden imported prefix, why)
FORBIDDEN = [
    ("vllm.v1.core", "vllm.v1.worker", "the scheduler / KV manager must not know the runner"),
    ("vllm.v1.core", "vllm.model_executor", "the scheduler / KV manager must not know models"),
    ("vllm.v1.attention", "vllm.v1.worker", "kernels must not know the runner"),
    ("vllm.model_executor.layers", "vllm.v1.worker", "kernels must not know the runner"),
    ("vllm.model_executor", "vllm.v1.spec_decode", "models must not know speculative decoding"),
    ("vllm.v1.spec_decode", "vllm.v1.worker", "drafters get a ProposerContext, not the runner"),
    ("vllm", "tools", "the engine must not depend on the benchmark / profiling tools"),
]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_files(root: Path, top: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root/top."""
    out = {}
    for f in sorted((root / top).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(module: str, is_pkg: bool, node: ast.AST, known: set[str]) -> list[str]:
    """The dotted names an import statement pulls in (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    # `from pkg import sub` imports the submodule pkg.sub when there is one
    subs = [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in known]
    return subs if len(subs) == len(node.names) else subs + [src]


def import_edges(root: Path, tops=("vllm", "tools")) -> list[tuple[str, str, str, int]]:
    """(importer module, imported name, file, line) for every import in the given trees."""
    files: dict[str, Path] = {}
    for top in tops:
        if (root / top).is_dir():
            files.update(module_files(root, top))
    known = set(files)
    edges = []
    for mod, f in files.items():
        tree = ast.parse(f.read_text(), filename=str(f))
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _resolve(mod, is_pkg, node, known):
                    edges.append((mod, name, str(f.relative_to(root)), node.lineno))
    return edges


def package_of(module: str, known_files: dict[str, Path]) -> str:
    """A module's node in the package graph: its package, or `pkg.__init__` for a package's
    own __init__.py (a facade is not the package's base modules)."""
    f = known_files.get(module)
    if f is not None and f.name == "__init__.py":
        return module + ".__init__"
    return module.rsplit(".", 1)[0] if "." in module else module


def forbidden_edges(root: Path) -> list[str]:
    out = []
    for src, dst, f, line in import_edges(root):
        for a, b, why in FORBIDDEN:
            if _under(src, a) and _under(dst, b):
                out.append(f"{f}:{line}: {src} imports {dst} ({why})")
    return out


def package_cycles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    files: dict[str, Path] = {}
    for top in ("vllm", "tools"):
        if (root / top).is_dir():
            files.update(module_files(root, top))
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in import_edges(root):
        if dst not in files:
            # `import vllm.x.y` of a name inside a module, or a third-party module
            while dst and dst not in files:
                dst = dst.rsplit(".", 1)[0] if "." in dst else ""
            if not dst:
                continue
        a, b = package_of(src, files), package_of(dst, files)
        if a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


# ---- the repository ------------------------------------------------------------------------------

def test_no_forbidden_imports():
    bad = forbidden_edges(REPO)
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_no_import_cycle_between_packages():
    cycles = package_cycles(REPO)
    assert not cycles, f"import cycles between packages: {cycles}"


# ---- the checker itself, on a copy of the tree ---------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "vllm", tmp_path / "vllm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "helper.py").write_text("X = 1\n")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_checker_sees_the_real_edges(tree):
    edges = {(s, d) for s, d, _, _ in import_edges(tree)}
    # a function-level import counts as much as a module-level one
    assert ("vllm.v1.engine.executor", "vllm.v1.worker.gpu_model_runner") in edges
    # `from vllm import envs` is an edge to the submodule, not to the facade
    assert ("vllm.config", "vllm.envs") in edges
    assert forbidden_edges(tree) == [] and package_cycles(tree) == []


@pytest.mark.parametrize("importer,line,rule", [
    ("vllm/v1/core/scheduler.py", "from vllm.v1.worker.input_batch import InputBuffers",
     "the runner"),
    ("vllm/v1/core/kv_cache_manager.py", "import vllm.model_executor.models.llama", "models"),
    ("vllm/v1/attention/paged_attention.py",
     "def f():\n    from vllm.v1.worker import gpu_model_runner", "kernels"),
    ("vllm/model_executor/models/llama.py", "from vllm.v1.spec_decode import ngram",
     "speculative decoding"),
    ("vllm/v1/spec_decode/eagle.py", "from ..worker.cudagraph import CudaGraphRunner",
     "ProposerContext"),
    ("vllm/v1/engine/llm_engine.py", "from tools.helper import X", "tools"),
])
def test_checker_fails_on_a_forbidden_import(tree, importer, line, rule):
    _append(tree / importer, line)
    bad = forbidden_edges(tree)
    assert len(bad) == 1 and importer in bad[0] and rule in bad[0], bad


def test_checker_fails_on_a_package_cycle(tree):
    # the scheduler's data types importing the engine closes engine -> core -> engine
    _append(tree / "vllm/v1/core/sched_output.py", "from vllm.v1.engine import detokenizer")
    cycles = package_cycles(tree)
    assert any({"vllm.v1.core", "vllm.v1.engine"} <= set(c) for c in cycles), cycles
