"""``torch.compile`` for the feature passes: the modules inside each decoder block, one compiled function per
module class, shared by every block and every model of that class.

Eager Hugging Face blocks spend most of their time outside the matmuls: every RMSNorm makes fp32 round trips
through memory, rotary embeddings and SwiGLU run as a chain of element-wise kernels. Compiling fuses each
chain into a few kernels. The units are the blocks' children (attention, MLP, norms), not the blocks:
transformers records hidden states and attentions with forward hooks, and tracing those hooks breaks the
graph; a child's ``forward`` is replaced by its class's compiled ``forward`` bound to it, so ``__call__`` and
its hooks stay eager. Weights are graph inputs (dynamo inlines modules), so the blocks of both checkpoints
share one compiled function per class and mode (inference, gradients); batch size and length are dynamic, so
length batches do not recompile (but for a few variants: a length divisible by 8 or not, a single row).
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from probes.lm.stack import decoder_stack

_COMPILED: dict[Callable, Callable] = {}
# Entries one code object may collect: grad mode on or off, a length divisible by 8 or not, single rows, and a
# few model configurations (dtype, width) per process. Past the limit dynamo would quietly run the rest eager.
RECOMPILE_LIMIT = 32


def fuse_shared_input_linears(graph: torch.fx.Graph) -> None:
    """Bias-free linear maps of one input become one map by the concatenated weights, split afterwards:
    attention's q, k and v projections and the MLP's gate and up run as one wide GEMM each (wide GEMMs run
    nearer the device's peak; BENCHMARKS.md). The concatenation copies the weights on every call (24 MB per
    1B block), a small price beside the GEMMs of a batch.
    Weight nodes need their ``meta["example_value"]`` (dynamo's graphs carry it)."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target is F.linear and _bias(node) is None:
            groups.setdefault(node.args[0], []).append(node)
    for x, linears in groups.items():
        weights = [node.args[1] if len(node.args) > 1 else node.kwargs["weight"] for node in linears]
        # the fused map goes after its input and weights, and must come before any use of the maps
        ready = max([x, *weights], key=order.__getitem__)
        uses = [order[user] for node in linears for user in node.users]
        if len(linears) < 2 or (uses and order[ready] >= min(uses)):
            continue
        with graph.inserting_after(ready):
            cat = graph.call_function(torch.cat, (weights,), {"dim": 0})
        with graph.inserting_after(cat):
            fused = graph.call_function(F.linear, (x, cat))
        with graph.inserting_after(fused):
            sizes = [w.meta["example_value"].shape[0] for w in weights]
            parts = graph.call_function(torch.split, (fused, sizes), {"dim": -1})
        point = parts
        for i, node in enumerate(linears):
            with graph.inserting_after(point):
                point = graph.call_function(operator.getitem, (parts, i))
            point.meta.update(node.meta)
            node.replace_all_uses_with(point)
            graph.erase_node(node)


def _bias(node: torch.fx.Node):
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")


@functools.cache
def _fusion_pass():
    """`fuse_shared_input_linears` as inductor's pre-grad pass, with the hash its compile cache keys on.
    Built on first use: importing inductor takes 1.5-2 s, which no run with compile off should pay."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class FuseSharedInputLinears(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            fuse_shared_input_linears(graph)

        def uuid(self) -> bytes:
            return get_hash_for_files((str(Path(__file__)),))

    # inductor's compile caches pickle their options, this pass among them: by name, as the one class of that
    # name in this module (a class local to this function cannot be pickled: every compile warned and
    # bypassed the cache)
    FuseSharedInputLinears.__qualname__ = FuseSharedInputLinears.__name__
    globals()[FuseSharedInputLinears.__name__] = FuseSharedInputLinears
    return FuseSharedInputLinears()


def compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process, every tensor dimension dynamic but the parameters' (batch size and
    length vary from batch to batch; widths meet the static weights and become static themselves), with
    linear maps of one input fused (`fuse_shared_input_linears`). Decorators that keep ``__wrapped__``
    (runtime type checks, transformers' deprecation wrappers) are left out: dynamo would trace them too, and
    every method such a wrapper wraps shares its code object, and with it dynamo's cache and recompile
    limit."""
    fn = inspect.unwrap(fn)
    if fn not in _COMPILED:
        options = {"pre_grad_custom_pass": _fusion_pass()}
        _COMPILED[fn] = torch.compile(fn, dynamic=True, options=options)
    return _COMPILED[fn]


def compiled_forward(cls: type) -> Callable:
    """``cls.forward`` compiled, taking the module as its first argument."""
    return compiled(cls.forward)


def decoder_blocks(model) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM or its base model (``base_model.layers``)."""
    return decoder_stack(model, use="compiling (compile=True)").layers


@contextmanager
def compiled_blocks(model) -> Iterator[None]:
    """Run the children of ``model``'s decoder blocks through their class's compiled ``forward``; each gets
    its class's eager ``forward`` back on leaving, also after an error, and dynamo's recompile limit is raised
    to at least `RECOMPILE_LIMIT` only inside the block. A child whose ``forward`` was already replaced on the
    instance (by a hook library, say) is left as it is."""
    blocks = decoder_blocks(model)
    children = [c for block in blocks for c in block.children() if "forward" not in c.__dict__]
    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    try:
        with torch._dynamo.config.patch(recompile_limit=limit):
            for child in children:
                child.forward = functools.partial(compiled_forward(type(child)), child)
            yield
    finally:
        for child in children:
            child.__dict__.pop("forward", None)
