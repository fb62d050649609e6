"""Imports run one way: an ast walk over probes/ and baselines/ (every import, also inside functions and
TYPE_CHECKING blocks) against the layering each package's ``__init__`` docstring states."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("probes.methods", "baselines")
REPORTING = ("probes.compare", "probes.models.reporting", "probes.plots")
# (importer prefixes, forbidden prefixes, why)
RULES = [
    (
        ("probes.metrics",),
        ("probes", "baselines", "compare"),
        "metrics are pure: they import only themselves",
    ),
    (("probes.data",), ("probes.lm", "probes.features", "probes.pairs", "probes.models", *METHODS), "data"),
    (
        ("probes.lm", "probes.features"),
        (*METHODS, "probes.models", "probes.compare", "probes.counterfactual", "probes.pairs", "compare"),
        "the model and its feature passes sit below every consumer",
    ),
    (METHODS, ("probes.models", *REPORTING, "probes.counterfactual", "compare"), "methods"),
    (("probes.counterfactual",), ("compare",), "counterfactual never imports compare.py, the entry"),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted([*(ROOT / "probes").rglob("*.py"), *(ROOT / "baselines").rglob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports (``from package import submodule`` names the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return {m for m in out if m.split(".")[0] in ("probes", "baselines", "compare", "train_probe")}


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def arrows() -> set[tuple[str, str]]:
    found = modules()
    return {(name, other) for name, path in found.items() for other in imports(name, path, set(found))}


def violations(found: set[tuple[str, str]]) -> list[str]:
    out = []
    for importer, imported in sorted(found):
        for sources, forbidden, why in RULES:
            if under(importer, sources) and under(imported, forbidden) and not under(imported, sources):
                out.append(f"{importer} imports {imported} ({why})")
    return out


def test_imports_run_one_way():
    found = arrows()
    assert ("baselines.grad_sim", "baselines.ops.example_grads") in found  # the walk sees real arrows
    assert violations(found) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("probes.metrics.ranking", "probes.data.corpus"), ("baselines.random", "probes.models.module")],
)
def test_a_wrong_arrow_is_found(importer, imported):
    (found,) = violations({(importer, imported)})
    assert found.startswith(f"{importer} imports {imported}")


def test_every_package_says_what_it_may_import():
    for init in [*(ROOT / "probes").rglob("__init__.py"), *(ROOT / "baselines").rglob("__init__.py")]:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        where = init.relative_to(ROOT)
        assert "import" in doc.lower(), f"{where}: its docstring says nothing of what it may import"
