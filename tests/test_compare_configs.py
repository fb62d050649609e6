"""Every committed comparison config parses, documents each key, and builds its methods (nothing runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import compare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("configs/compare*.yaml"), *ROOT.glob("configs/ablations/*.yaml")])


# each ablation config and the options it is about
ABLATES = {
    "layers": ("layers", "aggregate"),
    "pooling": ("query_pooling", "doc_pooling", "product"),
    "normalisation": ("normalize",),
    "ig_steps": ("ig_steps",),
    "gating": ("percentile", "gate", "layer"),
    "similarity": ("similarity",),
}


@pytest.mark.parametrize("topic", sorted(ABLATES))
def test_each_ablation_varies_its_option_for_every_method_it_names(topic):
    cfg = compare.build_parser().parse_args(["--config", str(ROOT / f"configs/ablations/{topic}.yaml")])
    seen: dict[str, set] = {}
    for label, candidates in compare.build_methods(cfg):
        for _, method in candidates:
            settings = method.hparams()
            assert set(ABLATES[topic]) & set(settings), f"{label}: {method.name} has none of {ABLATES[topic]}"
            seen.setdefault(method.name, set()).add(tuple(settings.get(k) for k in ABLATES[topic]))
    assert seen and all(len(values) > 1 for values in seen.values()), seen


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
