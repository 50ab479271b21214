"""The package's shape: no import cycles between sdesolve's modules, the kernels import nothing
from above them, and every public name says what it is."""
import ast
import inspect
from pathlib import Path

import sdesolve as sds

ROOT = Path(sds.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set:
    """The sdesolve modules a file imports, anywhere in it (a function-level import is still an
    edge: deferring it hides a cycle, it does not remove it)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sdesolve")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("sdesolve"):
                continue
            for a in node.names:  # `from . import x` may name a module
                sub = f"{mod}.{a.name}"
                out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (ROOT.parent / sub.replace(".", "/")).is_dir() else mod)
    return out


def _graph():
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {d for d in _imports(p) if d in files and d != m} for m, p in files.items()}


def _is_ancestor(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    """A package's __init__ re-exporting its children is not a cycle; any other loop is."""
    graph = {m: {d for d in deps if not _is_ancestor(m, d) and not _is_ancestor(d, m)} for m, deps in _graph().items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_kernels_import_nothing_from_above():
    above = {d for m, deps in _graph().items() if m.startswith("sdesolve.kernels") for d in deps
             if not d.startswith("sdesolve.kernels")}
    assert not above, f"sdesolve.kernels imports {sorted(above)}"


def test_module_names_are_not_shadowed():
    """``sds.x`` is the module ``sdesolve.x`` wherever a module of that name exists."""
    import importlib
    import types
    for p in ROOT.glob("*.py"):
        name = p.stem
        if name.startswith("_") or not hasattr(sds, name):
            continue
        assert isinstance(getattr(sds, name), types.ModuleType), f"sds.{name} shadows the module sdesolve.{name}"
        importlib.import_module(f"sdesolve.{name}")


def test_public_names_have_docstrings():
    missing = []
    for name in sds.__all__:
        obj = getattr(sds, name)
        if inspect.ismodule(obj):
            continue
        if not (obj.__doc__ or "").strip() or (inspect.isclass(obj) and obj.__doc__ == type.__doc__):
            missing.append(name)
        if inspect.isclass(obj):
            for m, f in vars(obj).items():
                f = f.__func__ if isinstance(f, (classmethod, staticmethod)) else f
                if not m.startswith("_") and inspect.isfunction(f) and f.__module__.startswith("sdesolve") \
                        and not (f.__doc__ or "").strip() and m in ("from_eps", "from_x0", "from_v", "from_denoiser",
                                                                   "from_score", "from_velocity"):
                    missing.append(f"{name}.{m}")
    for name in ("uniform", "quadratic", "logsnr", "karras"):
        if not (getattr(sds.schedules, name).__doc__ or "").strip():
            missing.append(f"schedules.{name}")
    assert not missing, f"public names without a docstring: {missing}"
