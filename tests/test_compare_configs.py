"""Every committed comparison config parses, documents each key, and builds its methods (nothing runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from compare_fixtures import compare

from probes.methods import missing_extra

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
    installed = [m for m in cfg.methods if missing_extra(m.method) is None]  # others are skipped, named
    if not installed:
        pytest.skip(
            f"every row of {path.name} needs an optional library: {missing_extra(cfg.methods[0].method)}"
        )
    methods = compare.build_methods(cfg)
    assert len(methods) == len(installed) > 0
    assert len({label for label, _ in methods}) == len(methods)
    for label, candidates in methods:
        assert candidates, label
        for point, method in candidates:  # every grid point builds, and its options reach the method
            settings = method.hparams()
            assert all(isinstance(v, (bool, int, float, str)) for v in settings.values()), label
            for key, value in point.items():
                shown = (
                    (str(value), ",".join(map(str, value)))
                    if isinstance(value, list)
                    else (value, str(value))
                )
                assert settings[key] in shown, (label, key)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_line_is_commented(path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert not line.strip() or "#" in line, f"{path.name}:{number} has no comment: {line!r}"


def test_rows_whose_library_is_missing_are_skipped_by_name(monkeypatch, capsys):
    """Without the `influence` extra, compare.py drops the ekfac and trackstar rows with one line naming
    them and the install command, and builds every other row."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("kronfluence", "bergson") else real(name, *a),
    )
    cfg = compare.build_parser().parse_args(["--config", str(ROOT / "configs/compare.yaml")])
    labels = [label for label, _ in compare.build_methods(cfg)]
    assert "ekfac" not in labels and "trackstar" not in labels and "grad_sim" in labels
    out = capsys.readouterr().out
    assert "skipping ekfac, trackstar" in out and "pip install -e '.[influence]'" in out
