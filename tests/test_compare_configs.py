"""Every committed comparison config parses, documents each key, and builds its methods (nothing runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import compare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("configs/compare*.yaml"), *ROOT.glob("configs/ablations/*.yaml")])


def test_there_are_configs():
    names = {p.relative_to(ROOT).as_posix() for p in CONFIGS}
    assert "configs/compare.yaml" in names
    for topic in ("layers", "pooling", "normalisation", "ig_steps", "gating", "similarity"):
        assert f"configs/ablations/{topic}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_parses_and_builds_its_methods(path):
    cfg = compare.build_parser().parse_args(["--config", str(path)])
    methods = compare.build_methods(cfg)
    assert len(methods) == len(cfg.methods) > 0
    assert len({label for label, _ in methods}) == len(methods)
    for label, candidates in methods:
        assert candidates, label
        for point, method in candidates:  # every grid point builds, and its options reach the method
            settings = method.hparams()
            assert all(isinstance(v, (bool, int, float, str)) for v in settings.values()), label
            for key, value in point.items():
                shown = (str(value), ",".join(map(str, value))) if isinstance(value, list) else (value,)
                assert settings[key] in shown, (label, key)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_line_is_commented(path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert not line.strip() or "#" in line, f"{path.name}:{number} has no comment: {line!r}"
