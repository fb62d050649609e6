"""Per-example parameter gradients of a padded batch from one backward pass, and seeded random projections."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.lm.interpolate import text_loss
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
            if not isinstance(module, (nn.Linear, nn.Embedding)) and not (
                _is_rms_norm(module) and attr == "weight"
            ):
                raise TypeError(
                    f"parameter {name!r} belongs to a {type(module).__name__}, which has no per-example "
                    "gradient rule (Linear, Embedding, RMSNorm weight); leave it out with a param_filter"
                )
        out[name] = by_tensor[id(params[name])]
    return out


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


Calls = dict[int, list[tuple[Tensor, Tensor]]]


def _record_calls(
    model: nn.Module,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    holders: dict[str, list[tuple[nn.Module, str]]],
    candidate_ids: Int[Tensor, "c"] | None,
) -> Calls:
    """One batched forward and backward of each text's own loss; for every module holding a named
    parameter, each call's input and output gradient, keyed by the module's id.

    Texts never attend to each other, so the gradient reaching a module's output at a text's positions is that
    text's own; pads get zero gradient. Hooks record them (removed in ``finally``); the frozen model is not
    modified and no parameter gradient is accumulated.
    """
    modules = {id(m): m for pairs in holders.values() for m, _ in pairs}
    calls: Calls = defaultdict(list)
    embedding = model.get_input_embeddings()
    roots: list[Tensor] = []

    def record(module, args, output):
        if module is embedding:  # the graph starts here: the frozen weights need no gradient
            output = output.detach().requires_grad_(True)
            roots.append(output)
        if id(module) in modules:
            x = args[0].detach()
            output.register_hook(lambda g: calls[id(module)].append((x, g)))
        return output

    handles = [m.register_forward_hook(record) for m in {**modules, id(embedding): embedding}.values()]
    try:
        with torch.enable_grad():
            total = text_loss(model, batch, items, loss, candidate_ids).sum()
            torch.autograd.grad(total, roots)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def batch_example_gradients(
    model: nn.Module,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    names: Sequence[str],
    candidate_ids: Int[Tensor, "c"] | None = None,
    holders: dict[str, list[tuple[nn.Module, str]]] | None = None,
) -> list[Float[Tensor, "b _"]]:
    """Each text's gradient of its own loss (see `probes.lm.interpolate.text_loss`) w.r.t. each named
    parameter, flattened to ``[b, numel]``, in ``names`` order; exact, from one batched forward and backward
    (`_record_calls`)."""
    holders = owners(model, names) if holders is None else holders
    calls = _record_calls(model, batch, items, loss, holders, candidate_ids)
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
    """A seeded random projection of the per-example gradients of Linear weights to ``dim`` = k x k
    coordinates that never forms them: the weight gradient of one call is ``sum_t g_t x_t^T``, and its
    projection by ``A (x) B`` (A: [out, k], B: [in, k], Gaussian) is ``sum_t (A^T g_t)(B^T x_t)^T``, two thin
    products per token (the factored projection of LoGra, Choe et al. 2024). Every parameter has its own
    (A, B), seeded by ``seed`` and its position in ``names``, all added into one ``dim``-space and scaled by
    1/sqrt(dim): inner products are preserved in expectation, as by the other projections. The exact
    per-example gradient of a 1B model's weights is 1.5e9 numbers per text; this costs ~k x (in + out) per
    token and weight.
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
                        f"{type(module).__name__}.{attr}; leave it out with a param_filter "
                        "(e.g. 'proj.weight$')"
                    )
        self.holders, self.dim, self.k, self.seed = holders, dim, k, seed
        self._factors: dict[str, tuple[Tensor, Tensor]] = {}

    def factors(self, name: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(A, B) of parameter ``name``: [out, k] and [in, k]."""
        if name not in self._factors:
            weight = getattr(*self.holders[name][0])
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + list(self.holders).index(name))
            a = torch.randn(weight.shape[0], self.k, generator=generator)
            b = torch.randn(weight.shape[1], self.k, generator=generator)
            self._factors[name] = (a.to(device, dtype), b.to(device, dtype))
        return self._factors[name]

    def __call__(self, calls: Calls, rows: int, like: Tensor) -> Float[Tensor, "b dim"]:
        """The projected gradients of ``rows`` texts from `_record_calls`' record; ``like`` gives their
        device and dtype."""
        out = torch.zeros(rows, self.k, self.k, dtype=like.dtype, device=like.device)
        for name, pairs in self.holders.items():
            a, b = self.factors(name, like.device, like.dtype)
            for module, _ in pairs:
                for x, g in calls[id(module)]:
                    out += torch.einsum("btk,btl->bkl", g.to(like.dtype) @ a, x.to(like.dtype) @ b)
        return out.flatten(1) / math.sqrt(self.dim)


def batch_projected_gradients(
    model: nn.Module,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    projection: KroneckerProjection,
    candidate_ids: Int[Tensor, "c"] | None = None,
) -> Float[Tensor, "b dim"]:
    """Each text's gradient w.r.t. the projection's Linear weights, projected by it (`KroneckerProjection`),
    from one batched forward and backward; at least float32."""
    calls = _record_calls(model, batch, items, loss, projection.holders, candidate_ids)
    like = torch.empty(0, dtype=torch.promote_types(model.dtype, torch.float32), device=model.device)
    return projection(calls, len(items), like)


PROJECTIONS = ("sparse", "rademacher", "gaussian")
BLOCK_ROWS = 4096  # parameter coordinates per generated block: the matrix depends on (seed, dim, kind) only


class RandomProjection:
    """A seeded random ``[N, P]`` projection applied block by block, so the full matrix never has to exist.

    "rademacher" / "gaussian": dense ±1 or N(0, 1) entries scaled by 1/sqrt(P) (cost N*P per example);
    "sparse": a sparse Rademacher (count-sketch) matrix with one ±1 per parameter in a random column
    (cost N per example; inner products preserved in expectation, like the dense ones). Each block of
    ``BLOCK_ROWS`` rows has its own seeded generator; blocks stay in memory when all fit ``cache_mb``.
    """

    def __init__(
        self, n_params: int, dim: int, kind: str = "sparse", seed: int = 0, cache_mb: int | float = 512
    ):
        self.n_params, self.dim, self.kind, self.seed = n_params, dim, kind, seed
        size = {"sparse": 9, "rademacher": dim, "gaussian": 4 * dim}[kind] * n_params
        self.cache: dict[int, tuple[Tensor, ...]] | None = {} if size <= cache_mb * 2**20 else None

    def block(self, index: int) -> tuple[Tensor, ...]:
        """Block ``index``: (matrix rows,) for dense kinds, (column index, sign) per row for "sparse"."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        rows = min(BLOCK_ROWS, self.n_params - index * BLOCK_ROWS)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        if self.kind == "sparse":
            columns = torch.randint(0, self.dim, (rows,), generator=generator)
            out = (columns, torch.randint(0, 2, (rows,), generator=generator, dtype=torch.int8) * 2 - 1)
        elif self.kind == "rademacher":
            out = (torch.randint(0, 2, (rows, self.dim), generator=generator, dtype=torch.int8) * 2 - 1,)
        else:
            out = (torch.randn(rows, self.dim, generator=generator),)
        if self.cache is not None:
            self.cache[index] = out
        return out

    def __call__(self, pieces: Sequence[Float[Tensor, "b _"]]) -> Float[Tensor, "b proj"]:
        """Project the concatenation of ``pieces`` (consecutive coordinate ranges, e.g. one per parameter)
        without ever concatenating them."""
        first = pieces[0]
        out = torch.zeros(first.shape[0], self.dim, dtype=first.dtype, device=first.device)
        start = 0
        for piece in pieces:
            end = start + piece.shape[1]
            for index in range(start // BLOCK_ROWS, math.ceil(end / BLOCK_ROWS)):
                lo, hi = max(start, index * BLOCK_ROWS), min(end, (index + 1) * BLOCK_ROWS)
                part = piece[:, lo - start : hi - start]
                block = [
                    t[lo - index * BLOCK_ROWS : hi - index * BLOCK_ROWS].to(out.device)
                    for t in self.block(index)
                ]
                if self.kind == "sparse":
                    out.index_add_(1, block[0], part * block[1].to(out.dtype))
                else:
                    out += part @ block[0].to(out.dtype)
            start = end
        return out if self.kind == "sparse" else out / math.sqrt(self.dim)
