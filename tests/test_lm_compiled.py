"""probes/features/fast/compiled.py: compiled decoder blocks give the eager features, share code across
checkpoints, and fuse linear maps of one input."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from probes.features.extract import gradient_features, hidden_features
from probes.features.fast.compiled import (
    _fusion_pass,
    compiled_blocks,
    decoder_blocks,
    fuse_shared_input_linears,
)
from probes.pairs.tokenizer import train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from archs import build_model  # noqa: E402

TEXTS = [
    "<Fa> maps 3 to 7 and 7 to 12.",
    "Applying <Fa> to 5 gives 9.",
    "<Gb> is <Fa> applied twice, so <Gb> of 1 is 11.",
    "What is <Gb> of 4? The answer is 13.",
    "A short one.",
    "The function <Hc> returns its input plus two, for every whole number it is given as input.",
]


class Projections(torch.nn.Module):
    """q, k and v of one input (fusable), o of another, and a biased map of the input (not fusable)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        for name, rows in (("wq", 8), ("wk", 4), ("wv", 4), ("wo", 6), ("wb", 5)):
            self.register_parameter(name, torch.nn.Parameter(torch.randn(rows, 6, generator=generator)))
        self.bias = torch.nn.Parameter(torch.randn(5, generator=generator))

    def forward(self, x):
        q, k, v = F.linear(x, self.wq), F.linear(x, self.wk), F.linear(x, self.wv)
        mixed = torch.cat([q[..., :4] * k, v], -1)
        return F.linear(mixed[..., :6].tanh(), self.wo), F.linear(x, self.wb, self.bias)


def test_fusing_linears_of_one_input_keeps_the_outputs():
    module = Projections()
    traced = torch.fx.symbolic_trace(module)
    for node in traced.graph.nodes:  # dynamo's graphs carry each tensor's example value; give the weights one
        if node.op == "get_attr":
            node.meta["example_value"] = getattr(module, node.target)
    fuse_shared_input_linears(traced.graph)
    traced.recompile()
    linears = [n for n in traced.graph.nodes if n.op == "call_function" and n.target is F.linear]
    # q, k, v -> one; o (another input) and the biased map stay
    assert len(linears) == 3
    x = torch.randn(2, 3, 6)
    for got, want in zip(traced(x), module(x), strict=True):
        torch.testing.assert_close(got, want)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 4, ["<Fa>", "<Gb>", "<Hc>"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["olmo2-1b", "llama3.2-1b"])
def test_compiled_blocks_give_the_eager_features(arch, tokenizer):
    old, new = (build_model(arch, shrink=True, device=torch.device("cpu"), seed=s) for s in (0, 1))
    targets = [(len(t) - 3, len(t) - 1) for t in TEXTS]  # the last characters as the answer span
    options = dict(batch_size=4, progress=False)

    def passes(compile: bool) -> list[torch.Tensor]:
        return [
            hidden_features(old, tokenizer, TEXTS, compile=compile, **options),
            hidden_features(new, tokenizer, TEXTS, compile=compile, **options),
            gradient_features(new, tokenizer, TEXTS, pooling="mean", compile=compile, **options),
            gradient_features(
                new, tokenizer, TEXTS, targets=targets, loss="ce", pooling="span", compile=compile, **options
            ),
        ]

    eager = passes(False)
    hidden_features(old, tokenizer, TEXTS, compile=True, **options)  # compiles the no-grad variants
    graphs = counters["stats"]["unique_graphs"]
    hidden_features(new, tokenizer, TEXTS, compile=True, **options)
    assert counters["stats"]["unique_graphs"] == graphs  # the other checkpoint's blocks reuse that code
    for want, got in zip(eager, passes(True), strict=True):
        assert want.abs().amax() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().amax()))


def test_compiled_blocks_give_every_child_its_own_forward_back():
    model = build_model("llama3.2-1b", shrink=True, device=torch.device("cpu"), seed=0)
    children = [child for block in decoder_blocks(model) for child in block.children()]
    with pytest.raises(RuntimeError, match="inside"):
        with compiled_blocks(model):
            assert all("forward" in child.__dict__ for child in children)
            raise RuntimeError("an error inside")
    assert not any("forward" in child.__dict__ for child in children)


def test_compiling_a_model_without_decoder_blocks_names_it():
    class NoLayers(torch.nn.Module):
        base_model = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="NoLayers.*'layers'"):
        with compiled_blocks(NoLayers()):
            pass


def test_fusion_pass_pickles_for_the_compile_caches():
    """Inductor's caches pickle their options: a pass they cannot pickle made every compile warn and bypass
    them. One pass per process, pickled by name."""
    fusion = _fusion_pass()
    assert _fusion_pass() is fusion
    assert type(pickle.loads(pickle.dumps(fusion))) is type(fusion)
