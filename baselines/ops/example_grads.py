"""Per-example parameter gradients of a padded batch from one backward pass: exact or Kronecker-projected."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from baselines.ops.interpolate import text_loss
from baselines.ops.projections import block_seed
from probes.features.backend import DEFAULT, PassOptions
from probes.lm.scoring import Tokenized


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and _eps(module) is not None


def _eps(module: nn.Module) -> float | None:
    return getattr(module, "variance_epsilon", getattr(module, "eps", None))


def owners(model: nn.Module, names: Sequence[str]) -> dict[str, list[tuple[nn.Module, str]]]:
    """For each parameter name, every (module, attribute) holding that tensor (tied weights have several);
    raises naming a parameter held by a module type without a per-example rule."""
    by_tensor: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            by_tensor[id(param)].append((module, attr))
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        for module, attr in by_tensor[id(params[name])]:
            if not has_rule(module, attr):
                raise TypeError(
                    f"parameter {name!r} belongs to a {type(module).__name__}, which has no per-example "
                    "gradient rule (Linear, Embedding, RMSNorm weight); leave it out (GradSim's params "
                    "or param_filter)"
                )
        out[name] = by_tensor[id(params[name])]
    return out


def has_rule(module: nn.Module, attr: str) -> bool:
    """Whether ``module.attr`` has a per-example gradient rule (Linear, Embedding, RMSNorm weight)."""
    return isinstance(module, (nn.Linear, nn.Embedding)) or (_is_rms_norm(module) and attr == "weight")


def with_rule(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters whose every holder has a per-example gradient rule, in its order."""
    held: dict[int, list[bool]] = defaultdict(list)
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            held[id(param)].append(has_rule(module, attr))
    return [n for n, p in model.named_parameters() if all(held[id(p)])]


# Named parameter groups of Llama / OLMo2 / GPT-style HF models, by parameter name: the first group whose
# pattern the name matches (re.search) holds it, "other" any parameter none matches. A tied input and output
# embedding is one parameter, named (and grouped) as the input embedding.
PARAM_GROUPS = {
    "norm": r"norm|(^|\.)ln_",
    "head": r"lm_head|embed_out",
    "embed": r"embed|wte|wpe",
    "attn": r"attn|attention",
    "mlp": r"mlp|feed_forward",
}
GROUPS = (*PARAM_GROUPS, "other")


def param_group(name: str) -> str:
    """The group (`PARAM_GROUPS`) of the parameter ``name``."""
    return next((group for group, pattern in PARAM_GROUPS.items() if re.search(pattern, name)), "other")


def select_parameters(model: nn.Module, groups: Sequence[str], pattern: str | None = None) -> list[str]:
    """Names of ``model``'s parameters in one of ``groups`` (`GROUPS`) whose name ``pattern`` matches
    (re.search; None = any), in the model's order; raises naming what there is when none is left."""
    names = [n for n in dict(model.named_parameters()) if param_group(n) in groups]
    chosen = [n for n in names if pattern is None or re.search(pattern, n)]
    if not chosen:
        have = sorted({param_group(n) for n, _ in model.named_parameters()})
        raise ValueError(
            f"params={list(groups)} with param_filter={pattern!r} select no parameter; the model has the "
            f"groups {have} and parameters e.g. {names[:5] or list(dict(model.named_parameters()))[:5]}"
        )
    return chosen


def _rule(module: nn.Module, attr: str, x: Tensor, g: Tensor) -> Tensor:
    """Per-example gradient [b, *shape] of ``attr`` from one call's input ``x`` and output gradient ``g``."""
    if isinstance(module, nn.Embedding):
        b, width = g.shape[0], g.shape[-1]
        flat = (x + torch.arange(b, device=x.device)[:, None] * module.num_embeddings).flatten()
        out = torch.zeros(b * module.num_embeddings, width, dtype=g.dtype, device=g.device)
        return out.index_add_(0, flat, g.reshape(-1, width)).view(b, module.num_embeddings, width)
    if isinstance(module, nn.Linear):
        if attr == "bias":
            return g.sum(1)
        return torch.einsum("bto,bti->boi", g, x.to(g.dtype))
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + _eps(module))
    return (g * normed.to(x.dtype)).sum(1)


def _record_calls(
    model: nn.Module,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    modules: Sequence[nn.Module],
    candidate_ids: Int[Tensor, "c"] | None,
    on_input: Callable[[nn.Module, Tensor], object],
    on_grad: Callable[[nn.Module, object, Tensor], None],
    options: PassOptions = DEFAULT,
) -> None:
    """One batched forward and backward of each text's own loss; every call of each of ``modules`` hands
    its input ``x`` (detached) to ``on_input(module, x)`` in the forward, and what that returned with the
    call's output gradient ``g`` to ``on_grad(module, kept, g)`` when ``g`` is ready in the backward.

    Texts never attend to each other, so the gradient reaching a module's output at a text's positions is that
    text's own; pads get zero gradient. Hooks (removed in ``finally``) see the calls; the frozen model is not
    modified and no parameter gradient is accumulated. ``options``: the backend of the loss (its fused head is
    never taken here: the hooks observe the head).
    """
    recorded = {id(m) for m in modules}
    embedding = model.get_input_embeddings()
    roots: list[Tensor] = []

    def record(module, args, output):
        if module is embedding:  # the graph starts here: the frozen weights need no gradient
            output = output.detach().requires_grad_(True)
            roots.append(output)
        if id(module) in recorded:
            kept = on_input(module, args[0].detach())
            output.register_hook(lambda g: on_grad(module, kept, g))
        return output

    handles = [m.register_forward_hook(record) for m in {*modules, embedding}]
    try:
        with torch.enable_grad():
            total = text_loss(model, batch, items, loss, candidate_ids, options).sum()
            torch.autograd.grad(total, roots)
    finally:
        for handle in handles:
            handle.remove()


def _modules(holders: dict[str, list[tuple[nn.Module, str]]]) -> list[nn.Module]:
    return list({id(m): m for pairs in holders.values() for m, _ in pairs}.values())


def batch_example_gradients(
    model: nn.Module,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    names: Sequence[str],
    candidate_ids: Int[Tensor, "c"] | None = None,
    holders: dict[str, list[tuple[nn.Module, str]]] | None = None,
    options: PassOptions = DEFAULT,
) -> list[Float[Tensor, "b _"]]:
    """Each text's gradient of its own loss (see `baselines.ops.interpolate.text_loss`) w.r.t. each named
    parameter, flattened to ``[b, numel]``, in ``names`` order; exact, from one batched forward and backward
    (`_record_calls`)."""
    holders = owners(model, names) if holders is None else holders
    calls: dict[int, list[tuple[Tensor, Tensor]]] = defaultdict(list)
    _record_calls(
        model,
        batch,
        items,
        loss,
        _modules(holders),
        candidate_ids,
        on_input=lambda module, x: x,
        on_grad=lambda module, x, g: calls[id(module)].append((x, g)),
        options=options,
    )
    out = []
    for name in names:
        parts = [_rule(m, attr, x, g) for m, attr in holders[name] for x, g in calls[id(m)]]
        if not parts:  # the parameter took no part in this loss
            param = getattr(holders[name][0][0], holders[name][0][1])
            parts = [torch.zeros(len(items), *param.shape, dtype=param.dtype, device=param.device)]
        grad = parts[0]
        for part in parts[1:]:
            grad = grad + part
        out.append(grad.flatten(1))
    return out


class KroneckerProjection:
    """A seeded random projection of the per-example gradient of each Linear weight to its own block of
    ``dim`` = k x k coordinates that never forms the gradient: the weight gradient of one call is
    ``sum_t g_t x_t^T``, and its projection by ``A (x) B`` (A: [out, k], B: [in, k], Gaussian) is
    ``sum_t (A^T g_t)(B^T x_t)^T``, two thin products per token (LoGra, Choe et al. 2024, one block per
    module). Each parameter's (A, B) is seeded by ``seed`` and its name (`block_seed`), so a block does not
    depend on which other parameters are projected; blocks are scaled by 1/k, so inner products are preserved
    in expectation, as by the other projections. The exact per-example gradient of a 1B model's weights is
    1.5e9 numbers per text; this costs ~k x (in + out) per token and weight, and only the thin products are
    kept (`batch_projected_gradients`).
    """

    def __init__(self, holders: dict[str, list[tuple[nn.Module, str]]], dim: int, seed: int = 0):
        k = math.isqrt(dim)
        if k * k != dim:
            raise ValueError(f"projection 'kronecker' needs a square projection_dim (k x k), got {dim}")
        for name, pairs in holders.items():
            for module, attr in pairs:
                if not isinstance(module, nn.Linear) or attr != "weight":
                    raise TypeError(
                        f"projection 'kronecker' covers Linear weights, but {name!r} is "
                        f"{type(module).__name__}.{attr}; leave it out (GradSim's params or "
                        "param_filter, e.g. params: [attn, mlp] or param_filter: 'proj.weight$')"
                    )
        self.holders, self.dim, self.k, self.seed = holders, dim, k, seed
        self.names = list(holders)
        self.modules = _modules(holders)
        # each module's block: the position of the parameter it holds (tied weights share one block)
        self.block = {id(module): i for i, pairs in enumerate(holders.values()) for module, _ in pairs}
        self._factors: dict[tuple[str, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def factors(self, name: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(A, B) of parameter ``name``: [out, k] and [in, k]."""
        key = (name, device, dtype)
        if key not in self._factors:
            weight = getattr(*self.holders[name][0])
            generator = torch.Generator().manual_seed(block_seed(self.seed, name))
            a = torch.randn(weight.shape[0], self.k, generator=generator)
            b = torch.randn(weight.shape[1], self.k, generator=generator)
            self._factors[key] = (a.to(device, dtype), b.to(device, dtype))
        return self._factors[key]

    def of(self, module: nn.Module, like: Tensor) -> tuple[Tensor, Tensor]:
        """(A, B) of the weight that ``module`` holds, on ``like``'s device and in its dtype."""
        return self.factors(self.names[self.block[id(module)]], like.device, like.dtype)


def batch_projected_gradients(
    model: nn.Module,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    projection: KroneckerProjection,
    candidate_ids: Int[Tensor, "c"] | None = None,
    options: PassOptions = DEFAULT,
) -> Float[Tensor, "b m dim"]:
    """Each text's gradient w.r.t. each of the projection's Linear weights, projected by its own block
    (`KroneckerProjection`), from one batched forward and backward: ``[b, len(names), dim]``, at least
    float32.

    Each call's input is projected to ``B^T x`` [b, t, k] in the forward and its output gradient to ``A^T g``
    in the backward, in the model's dtype, as soon as they exist: only these thin products are kept (the full
    inputs and gradients are freed as the backward goes on). Calls of equal length (every decoder module's;
    the LM head's chunks have their own) are stacked, and one batched product each, at least float32, sums
    ``(A^T g)(B^T x)^T`` into each call's block: no loop over modules or texts.
    """
    calls: dict[int, list[tuple[int, Tensor, Tensor]]] = defaultdict(list)  # length -> (block, A^T g, B^T x)

    def on_grad(module: nn.Module, projected_input: Tensor, g: Tensor) -> None:
        block = projection.block[id(module)]
        calls[g.shape[1]].append((block, g @ projection.of(module, g)[0], projected_input))

    _record_calls(
        model,
        batch,
        items,
        loss,
        projection.modules,
        candidate_ids,
        on_input=lambda module, x: x @ projection.of(module, x)[1],
        on_grad=on_grad,
        options=options,
    )
    dtype = torch.promote_types(model.dtype, torch.float32)
    k = projection.k
    out = torch.zeros(len(items), len(projection.names), k, k, dtype=dtype, device=model.device)
    for group in calls.values():
        blocks = torch.tensor([block for block, _, _ in group], device=out.device)
        grads = torch.stack([g for _, g, _ in group]).to(dtype)
        inputs = torch.stack([x for _, _, x in group]).to(dtype)
        out.index_add_(1, blocks, torch.einsum("mbtk,mbtl->bmkl", grads, inputs))
    return out.flatten(2) / k
