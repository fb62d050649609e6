"""The method registry: every method module is built in under its name; bad names and options are named."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from baselines_fixtures import HELPER_MODULES, make_ctx, micro_corpus

import baselines
from probes.data.queries import make_queries
from probes.methods import BUILTIN, Method, build_method, method_class, method_names

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_method_module_is_builtin_and_registers_its_name():
    # a method module missing from BUILTIN (or listed under a wrong name) would be unbuildable by name
    modules = {p.stem for p in (Path(baselines.__file__).parent).glob("*.py")} - HELPER_MODULES
    assert {f"baselines.{m}" for m in modules} | {"probes.models.method"} == set(BUILTIN.values())
    for name, module in BUILTIN.items():
        cls = method_class(name)
        assert cls.__module__ == module and cls.name == name and name in method_names()
        assert issubclass(cls, Method) and not inspect.isabstract(cls)


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("no_such_method", {}, "no_such_method"),
        ("repsim", {"no_such_option": 1}, "no_such_option"),
        ("delta_h", {"normalize": "sphere"}, "normalize='sphere'"),
        ("act_grad", {"loss": "mse"}, "loss='mse'"),
        ("repsim", {"preset": "reference", "layers": [0, 1]}, "layers"),
        ("delta_h", {"preset": "paper"}, "preset='paper'"),
        ("bm25", {"variant": "bm99"}, "bm99"),
        ("edit_distance", {"metric": "hamming"}, "hamming"),
        ("repsim", {"aggregate": "median"}, "median"),
    ],
)
def test_unknown_name_or_option_is_named(name, options, needle):
    with pytest.raises(ValueError, match=needle):
        build_method(name, **options)


def test_bad_layer_is_named_at_prepare():
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    method = build_method("repsim", layers=[7])
    method.features = lambda ctx: (torch.zeros(len(corpus), 3, 4), torch.zeros(len(queries), 3, 4))
    with pytest.raises(ValueError, match="index 7"):
        method.prepare(make_ctx(corpus, queries))
