"""The package's structure: layers import downward only, no cycles, honest ``__all__``.

An AST walk over ``blossom_dash`` (every import, also those inside functions and under
``TYPE_CHECKING``), against the order in DESIGN.md, "Layers".
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "blossom_dash"

#: Bottom to top. A module may import its own layer-group only inside its own package,
#: and any lower layer; ``policies`` and ``telemetry`` are siblings and never import
#: each other (nothing flows sideways).
LAYERS: list[set[str]] = [
    {"pricing"},  # prices and costs, on the standard library alone (settings checks its file)
    {"results", "errors", "settings"},
    {"sdk", "demo_backend", "health"},  # health: the readiness probe, on settings alone
    {"policies", "telemetry"},
    {"gateway"},
    {"features"},
    # the facade (service), its base classes (service_*: one mixin a feature area) and the
    # per-session handle (session, which names the service for type checking only)
    {"service", "service_features", "service_access", "service_budget", "service_prompts", "service_chat",
     "service_compare", "service_vision", "session"},
    {"ui"},
]


def _unit(module: str) -> str:
    """``blossom_dash.sdk.call`` -> ``sdk``; ``blossom_dash.service`` -> ``service``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"blossom_dash.{unit} is in no layer: add it to LAYERS (and DESIGN.md)")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """``(imported blossom_dash module, line)`` for every import in ``path``."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "blossom_dash"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "blossom_dash":
                continue
            for alias in node.names:  # "from . import errors" imports a module
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


MODULES = _modules()


class TestLayers:
    def test_every_module_is_in_a_layer(self) -> None:
        """Each top-level module or package of blossom_dash has its place in the order."""
        for module in MODULES:
            if module != "blossom_dash":
                _layer(_unit(module))

    def test_imports_run_downward(self) -> None:
        """No module imports a higher layer, or a sibling package of its own layer."""
        wrong = []
        for module, path in MODULES.items():
            if module == "blossom_dash":
                continue  # the package's public face re-exports from every layer
            unit = _unit(module)
            for target, line in _imports(module, path):
                other = _unit(target)
                if target == "blossom_dash" or other == unit:
                    if target == "blossom_dash":
                        wrong.append(f"{module}:{line} imports the package root")
                    continue
                # the facade and its base classes: service -> service_* -> service_access, and
                # service -> session (the handle it hands out)
                same_layer_ok = ((unit == "service" and (other.startswith("service_") or other == "session"))
                                 or (unit.startswith("service_") and other == "service_access"))
                if _layer(other) > _layer(unit) or (_layer(other) == _layer(unit) and not same_layer_ok):
                    wrong.append(f"{module}:{line} imports {target} ({other} is not below {unit})")
        assert not wrong, "\n".join(wrong)

    def test_no_import_cycles(self) -> None:
        """The module import graph (module-level imports included) has no cycle."""
        graph = {m: {t for t, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
        state: dict[str, int] = {}
        cycle: list[str] = []

        def visit(node: str, trail: list[str]) -> bool:
            state[node] = 1
            for nxt in graph[node]:
                if nxt == "blossom_dash" or (node.startswith(nxt + ".") and MODULES[nxt].name == "__init__.py"):
                    continue  # a package's __init__ re-exporting its own modules is not a cycle
                if state.get(nxt) == 1:
                    cycle.extend(trail + [node, nxt])
                    return True
                if not state.get(nxt) and visit(nxt, trail + [node]):
                    return True
            state[node] = 2
            return False

        for module in MODULES:
            if not state.get(module) and visit(module, []):
                break
        assert not cycle, " -> ".join(cycle)

    def test_only_ui_imports_streamlit(self) -> None:
        """Core modules never import streamlit; ui/ is the one bridge."""
        offenders = []
        for module, path in MODULES.items():
            if _unit(module) == "ui":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] == "streamlit" for n in names):
                    offenders.append(f"{module}:{node.lineno}")
        assert not offenders, offenders

    def test_pages_use_no_facade_parts(self) -> None:
        """Pages call handle and facade methods, never ``.cache``, ``.limiter``, ``.store``, ``.metrics``."""
        offenders = []
        for page in [ROOT / "app.py", *sorted((ROOT / "app_pages").glob("*.py"))]:
            for node in ast.walk(ast.parse(page.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and node.value.id in {"service", "svc", "handle"}
                        and node.attr in {"cache", "limiter", "store", "metrics", "gateway"}):
                    offenders.append(f"{page.name}:{node.lineno} .{node.attr}")
        assert not offenders, offenders

    def test_pages_stay_thin(self) -> None:
        """A page reads widgets, calls the handle and draws: about 150 lines at most (STYLE.md)."""
        long = {p.name: n for p in (ROOT / "app_pages").glob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > 155}
        assert not long, long

    def test_no_module_is_over_600_lines(self) -> None:
        """Modules stay readable: about 600 lines at most (DESIGN.md)."""
        long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 620}
        assert not long, long


@pytest.mark.parametrize("module", sorted(m for m, p in MODULES.items() if "__all__" in p.read_text("utf-8")))
def test_all_is_honest(module: str) -> None:
    """Every name in a module's ``__all__`` exists there, and none is listed twice."""
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert len(names) == len(set(names)), f"duplicates in {module}.__all__"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"


def test_public_imports_keep_working() -> None:
    """``from blossom_dash import ...`` offers the facade, the value types and every error."""
    import blossom_dash

    for name in ("BlossomService", "Settings", "SessionHandle", "Caller", "TextResult", "ImageResult",
                 "AudioResult", "TextStream", "Usage", "DashError", "InvalidRequest", "RateLimited",
                 "BackendUnavailable", "UpstreamError", "AuthenticationFailed", "errors"):
        assert name in blossom_dash.__all__ and hasattr(blossom_dash, name), name
