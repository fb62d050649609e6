"""TrackStar (Chang et al. 2024) through bergson's gradient collector: second-moment-normalised, randomly
projected per-module gradients, preconditioned by their autocorrelation, unit-normalised, dot product."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from baselines.ops.influence_data import Texts, check_common, require_library, tracked_linears
from probes.methods import AttributionContext, Method, register
from probes.progress import progress_bar

EPS = 1e-8  # bergson's AdamNormalizer epsilon, added to the second moment's square root


@register("trackstar")
class TrackStar(Method):
    """``cos(R^-1/2 P (g_q / (sqrt(v) + eps)), R^-1/2 P (g_d / (sqrt(v) + eps)))`` at f_new, per tracked
    Linear module m (blocks concatenated before the cosine): g the per-example weight gradient (the answer
    token's cross-entropy for a query, the document's own mean next-token loss for a document), v the Adam
    second moment, P bergson's seeded double-sided random projection to ``projection_dim`` x
    ``projection_dim``, R the projected gradients' autocorrelation (``+ damping x mean eigenvalue``).

    bergson forms the normalised, projected per-example gradients (its `HookCollectorBase`, `AdamNormalizer`
    and projection matrices). What it lacks here is written on top: the pairs come without optimiser states,
    so v is estimated as the mean squared per-example gradient over ``fit_data`` (what Adam's second moment
    tracks, at batch size 1); bergson's own loss and data loading are replaced by this project's per-text
    losses and length batches; R is fitted and applied (as R^-1/2 per module) in torch, in memory.

    Args:
        projection_dim: rows and columns of each module's projected gradient (p x p numbers); None = the full
            gradient (exact, for small models).
        damping: R + damping x mean eigenvalue(R) x I before its inverse square root; 0 = none.
        normalizer: "adam" (divide by sqrt(v) + eps) or "none".
        modules: parameter groups whose nn.Linear modules are tracked (as `ekfac`'s); default attn + mlp.
        module_filter: regular expression; only tracked modules whose name it matches (re.search).
        fit_data: the data of v and R: "docs" (training documents, default) or "val_queries".
        batch_size: texts per forward and backward.
        max_tokens: also cap a batch at this many padded tokens; None = no cap.
        seed: seed of the projection.
    """

    def __init__(
        self,
        projection_dim: int | None = 16,
        damping: float = 0.1,
        normalizer: str = "adam",
        modules: str | Sequence[str] = ("attn", "mlp"),
        module_filter: str | None = None,
        fit_data: str = "docs",
        batch_size: int = 16,
        max_tokens: int | None = None,
        seed: int = 0,
    ):
        groups = check_common("trackstar", modules, fit_data)
        if normalizer not in ("adam", "none"):
            raise ValueError(f"method 'trackstar': option normalizer={normalizer!r} is not one of adam, none")
        if (projection_dim is not None and projection_dim < 1) or damping < 0 or batch_size < 1:
            raise ValueError(
                f"method 'trackstar': projection_dim ({projection_dim}) must be >= 1 or None, damping "
                f"({damping}) >= 0 and batch_size ({batch_size}) >= 1"
            )
        super().__init__(
            projection_dim=projection_dim,
            damping=damping,
            normalizer=normalizer,
            modules=",".join(groups),
            module_filter=str(module_filter),
            fit_data=fit_data,
            batch_size=batch_size,
            max_tokens=max_tokens,
            seed=seed,
        )
        self.groups, self.module_filter = groups, module_filter

    def prepare(self, ctx: AttributionContext) -> None:
        require_library(self.name)
        pair, s = ctx.require("pair", self.name), self.settings
        self.model, self.device = pair.new, ctx.device
        self.modules = tracked_linears(self.name, pair.new, self.groups, self.module_filter)
        self.texts = Texts(ctx, pair.tokenizer)
        fit = self.texts.fit_rows(ctx, s["fit_data"])
        key = (
            "trackstar",
            tuple(self.modules),
            s["normalizer"],
            s["projection_dim"],
            s["seed"],
            s["fit_data"],
        )
        if key not in ctx.memo:
            normalizers = self._second_moments(fit) if s["normalizer"] == "adam" else {}
            fitted = self._gradients(fit, normalizers, "trackstar fit")
            docs = fitted if s["fit_data"] == "docs" else self._gradients(self.texts.doc_rows(), normalizers)
            ctx.memo[key] = normalizers, fitted, docs, {}
        self.normalizers, fitted, docs, self.query_cache = ctx.memo[key]
        self.whiten = {m: inverse_sqrt(autocorrelation(fitted[m]), s["damping"]) for m in self.modules}
        self.docs = self._features(docs)

    def _collector(self, normalizers: dict, moments: bool):
        from bergson.gradients import GradientProcessor

        s = self.settings
        processor = GradientProcessor(
            normalizers=normalizers,
            projection_dim=None if moments else s["projection_dim"],
            projection_seed=s["seed"],
        )
        return collector_class()(model=self.model, target_modules=set(self.modules), processor=processor)

    def _run(self, rows: Sequence[int], collector, desc: str) -> None:
        """One forward and backward of each batch of ``rows``' own losses with ``collector``'s hooks on;
        ``collector.rows`` receives the batch's rows first."""
        s = self.settings
        batches = self.texts.batches(list(rows), s["batch_size"], s["max_tokens"])
        for index in progress_bar(batches, desc=desc, leave=False, disable=len(batches) < 4):
            batch = self.texts.batch(index, self.device)
            collector.rows = index
            with collector, input_gradient(self.model) as root:
                torch.autograd.grad(self.texts.loss(self.model, batch).sum(), root)

    def _second_moments(self, rows: Sequence[int]) -> dict:
        """bergson AdamNormalizers holding v = the mean squared per-example gradient over ``rows``."""
        from bergson.gradients import AdamNormalizer

        collector = self._collector({}, moments=True)
        collector.squares = True
        self._run(rows, collector, "trackstar second moments")
        dtype = torch.float64 if next(self.model.parameters()).dtype == torch.float64 else torch.float32
        return {m: AdamNormalizer((collector.total[m] / len(rows)).to(dtype)) for m in self.modules}

    def _gradients(self, rows: Sequence[int], normalizers: dict, desc: str = "trackstar docs") -> dict:
        """Each module's normalised, projected per-example gradients of ``rows``, [len(rows), p * p]."""
        collector = self._collector(normalizers, moments=False)
        self._run(rows, collector, desc)
        where = {r: i for i, r in enumerate(collector.order)}
        order = torch.tensor([where[r] for r in rows])
        return {m: torch.cat(collector.rows_of[m])[order] for m in self.modules}

    def _features(self, grads: dict) -> Float[Tensor, "r f"]:
        """R^-1/2-whitened blocks, concatenated, unit-normalised."""
        blocks = [grads[m].to(self.whiten[m].dtype) @ self.whiten[m] for m in self.modules]
        return F.normalize(torch.cat(blocks, 1), dim=1)

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        ids, cache = query_ids.tolist(), self.query_cache
        new = sorted({i for i in ids if i not in cache})
        if new:
            grads = self._gradients(self.texts.query_rows(new), self.normalizers, "trackstar queries")
            for j, i in enumerate(new):
                cache[i] = {m: grads[m][j : j + 1] for m in self.modules}
        queries = {m: torch.cat([cache[i][m] for i in ids]) for m in self.modules}
        return self._features(queries) @ self.docs.T


def autocorrelation_dtype(x: Tensor) -> Tensor:
    """``x`` in at least float32 (float64 kept)."""
    return x if x.dtype == torch.float64 else x.float()


def autocorrelation(grads: Float[Tensor, "r d"]) -> Float[Tensor, "d d"]:
    """Mean outer product of the rows, at least float32 (float64 kept)."""
    grads = autocorrelation_dtype(grads)
    return grads.T @ grads / len(grads)


def inverse_sqrt(matrix: Float[Tensor, "d d"], damping: float) -> Float[Tensor, "d d"]:
    """(matrix + damping x mean eigenvalue x I)^-1/2 of a symmetric PSD matrix; eigenvalues left at (or
    numerically below) zero by an undamped rank-deficient matrix are dropped (pseudo-inverse)."""
    values, vectors = torch.linalg.eigh(matrix)
    values = values + damping * values.mean().clamp_min(0)
    keep = values > values.max() * len(values) * torch.finfo(values.dtype).eps
    scale = torch.where(keep, values.clamp_min(torch.finfo(values.dtype).tiny).rsqrt(), 0)
    return (vectors * scale) @ vectors.T


class input_gradient:
    """Context: the output of ``model``'s input embeddings becomes a leaf that requires grad (the frozen
    weights need none), so a backward pass reaches every module's hooks; ``as`` gives the list of leaves."""

    def __init__(self, model: nn.Module):
        self.model, self.roots = model, []

    def __enter__(self) -> list[Tensor]:
        def hook(module, args, output):
            output = output.detach().requires_grad_(True)
            self.roots.append(output)
            return output

        self.handle = self.model.get_input_embeddings().register_forward_hook(hook)
        self.grad = torch.enable_grad()
        self.grad.__enter__()
        return self.roots

    def __exit__(self, *exc) -> None:
        self.grad.__exit__(*exc)
        self.handle.remove()


def collector_class():
    """A bergson collector keeping each batch's per-example module gradients in memory (or, with
    ``squares``, only their summed squares), keyed by module, with the rows they belong to."""
    from bergson.collector.collector import HookCollectorBase

    @dataclass(kw_only=True)
    class RowCollector(HookCollectorBase):
        def setup(self) -> None:
            self.squares, self.rows = False, []
            self.total: dict[str, Tensor] = {}
            self.rows_of: dict[str, list[Tensor]] = {}
            self.order: list[int] = []

        def teardown(self) -> None:
            """Nothing to write: the gradients stay in memory."""

        def backward_hook(self, module: nn.Module, g: Tensor) -> None:
            name = module._name
            grads = self._compute_gradient(module, g)
            if self.squares:
                summed = autocorrelation_dtype(grads).pow(2).sum(0).double().view(module.weight.shape)
                self.total[name] = self.total.get(name, 0) + summed.to(module.weight.device)
                return
            self.rows_of.setdefault(name, []).append(grads.cpu())
            if name == self.last:
                self.order += list(self.rows)

        def process_batch(self, indices: list[int], **kwargs) -> None:
            """Unused: `TrackStar._run` drives the passes."""

        @property
        def last(self) -> str:
            return next(iter(self.target_info))

    return RowCollector
