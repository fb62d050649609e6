"""EK-FAC influence functions through kronfluence (Grosse et al. 2023): g_q^T (G + λI)^-1 g_d at f_new."""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset

from baselines.ops.influence_data import Texts, check_common, require_library, tracked_linears
from probes.methods import AttributionContext, Method, check_choice, register

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")  # kronfluence's; "identity" = the plain gradient dot


@register("ekfac")
class EKFAC(Method):
    """Influence of each training document on a query's answer loss through kronfluence's EK-FAC
    (block-diagonal over the tracked Linear modules, Kronecker factors with eigenvalue correction):
    ``score = g_q^T (G + λI)^-1 g_d``, where g_q is the gradient of the answer token's cross-entropy, g_d of
    the document's own mean next-token loss, and G the Gauss-Newton / Fisher matrix fitted on ``fit_data``.
    Higher = the document lowers the query's loss more (kronfluence's sign).

    kronfluence wraps the modules it tracks, so it runs on a copy of f_new (the shared pair stays as it is);
    factors live in a temporary folder and are shared (``ctx.memo``) by every instance on the same context
    that fits the same ones, so a tuning grid over ``damping`` fits them once. kronfluence has no per-text
    loss of its own, no padding-aware length batching and no sampled-label loss for a language model: those
    are this project's (`baselines.ops.influence_data`). Each ``score`` call runs one pass of document
    gradients per ``query_batch_size`` queries.

    Args:
        strategy: kronfluence's Hessian approximation: "ekfac" (default), "kfac", "diagonal" or "identity".
        damping: λ added to the (corrected) eigenvalues; None = kronfluence's heuristic, 0.1 x their mean.
        modules: parameter groups whose nn.Linear modules are tracked ("all" or a list of `GROUPS`:
            attn, mlp, head, ...); default attn + mlp (the LM head's 128k-row output covariance is not
            fitted at 1B).
        module_filter: regular expression; only tracked modules whose name it matches (re.search).
        fit_data: the data the factors are fitted on: "docs" (the training documents, default) or
            "val_queries" (the validation queries' answer loss).
        fisher: "sampled" (labels drawn from the model: the true Fisher = the Gauss-Newton matrix of the
            cross-entropy, kronfluence's default) or "empirical" (the texts' own labels).
        query_low_rank: kronfluence's query_gradient_low_rank (rank of each query gradient per module;
            None = exact, for small models); a memory knob at 1B.
        batch_size: texts per factor-fitting and document-gradient batch.
        query_batch_size: queries preconditioned at once (one pass over the documents each).
        lambda_examples: texts of ``fit_data``, evenly spaced over its rows, whose per-example gradients fit
            the corrected eigenvalues (kronfluence's Lambda pass; ekfac and diagonal); None = all of them.
            A time knob at 1B, where this pass costs ~11 s per 32 documents on an H200 (OLMo2-1B: ~17 min
            for 3000, against ~2.5 min for the covariances and their eigendecomposition together).
        seed: seed of the sampled labels.
    """

    batches_queries = True  # one document pass per query_batch_size queries, whatever the call's size

    def __init__(
        self,
        strategy: str = "ekfac",
        damping: float | None = None,
        modules: str | Sequence[str] = ("attn", "mlp"),
        module_filter: str | None = None,
        fit_data: str = "docs",
        fisher: str = "sampled",
        query_low_rank: int | None = None,
        batch_size: int = 16,
        query_batch_size: int = 256,
        lambda_examples: int | None = None,
        seed: int = 0,
    ):
        check_choice("ekfac", "strategy", strategy, STRATEGIES)
        groups = check_common("ekfac", modules, fit_data, fisher)
        if (damping is not None and damping < 0) or batch_size < 1 or query_batch_size < 1:
            raise ValueError(
                f"method 'ekfac': damping ({damping}) must be >= 0 or None, batch_size ({batch_size}) and "
                f"query_batch_size ({query_batch_size}) >= 1"
            )
        for key, value in (("query_low_rank", query_low_rank), ("lambda_examples", lambda_examples)):
            if value is not None and value < 1:
                raise ValueError(f"method 'ekfac': {key} ({value}) must be >= 1 or None")
        super().__init__(
            strategy=strategy,
            damping=damping,
            modules=",".join(groups),
            module_filter=str(module_filter),
            fit_data=fit_data,
            fisher=fisher,
            query_low_rank=query_low_rank,
            batch_size=batch_size,
            query_batch_size=query_batch_size,
            lambda_examples=lambda_examples,
            seed=seed,
        )
        self.groups, self.module_filter = groups, module_filter

    def prepare(self, ctx: AttributionContext) -> None:
        require_library(self.name)
        pair, s = ctx.require("pair", self.name), self.settings
        self.modules = tracked_linears(self.name, pair.new, self.groups, self.module_filter)
        model_dtype = next(pair.new.parameters()).dtype
        self.dtype = torch.float64 if model_dtype == torch.float64 else torch.float32
        # per-example gradients (the lambda pass, preconditioning, scoring) in a half-precision model's own
        # dtype, as kronfluence's smart_low_precision arguments keep them: in float32 the 1B lambda pass alone
        # is ~5e16 FLOPs off the tensor cores; covariances, eigenvalues and scores stay float32
        self.low = model_dtype if model_dtype in (torch.bfloat16, torch.float16) else self.dtype
        fitted = ("strategy", "fit_data", "fisher", "lambda_examples", "seed")
        key = ("ekfac", tuple(self.modules), *(s[k] for k in fitted))
        if key not in ctx.memo:
            ctx.memo[key] = self._fit(ctx)
        self.analyzer, self.texts, self.factors, self._folder = ctx.memo[key]
        self.n_scores = 0

    def _fit(self, ctx: AttributionContext):
        """A kronfluence Analyzer on a copy of f_new, with its factors fitted on ``fit_data``."""
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        s, texts = self.settings, Texts(ctx, ctx.pair.tokenizer)
        task = model_task(texts, self.modules, s["seed"])
        model = prepare_model(copy.deepcopy(ctx.pair.new), task)
        folder = tempfile.TemporaryDirectory(prefix="probes-ekfac-")
        analyzer = Analyzer(
            "probes",
            model,
            task,
            cpu=ctx.device.type == "cpu",
            log_level=logging.WARNING,
            disable_tqdm=False,
            output_dir=folder.name,
        )
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=texts.batch))
        dt = self.dtype
        args = FactorArguments(
            strategy=s["strategy"],
            use_empirical_fisher=s["fisher"] == "empirical",
            activation_covariance_dtype=dt,
            gradient_covariance_dtype=dt,
            per_sample_gradient_dtype=self.low,
            lambda_dtype=dt,
        )
        rows, batch = texts.fit_rows(ctx, s["fit_data"]), s["batch_size"]
        # kronfluence's fit_all_factors, with the Lambda pass on its own rows
        analyzer.fit_covariance_matrices("factors", Rows(rows), per_device_batch_size=batch, factor_args=args)
        analyzer.perform_eigendecomposition("factors", factor_args=args)
        lambda_rows = Rows(evenly_spaced(rows, s["lambda_examples"]))
        analyzer.fit_lambda_matrices("factors", lambda_rows, per_device_batch_size=batch, factor_args=args)
        return analyzer, texts, "factors", folder

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        from kronfluence.arguments import ScoreArguments

        s, dt = self.settings, self.dtype
        args = ScoreArguments(
            damping_factor=s["damping"],
            query_gradient_low_rank=s["query_low_rank"],
            per_sample_gradient_dtype=self.low,
            precondition_dtype=self.low,
            score_dtype=dt,
        )
        self.n_scores += 1
        name = f"scores_{id(self)}_{self.n_scores}"
        self.analyzer.compute_pairwise_scores(
            name,
            self.factors,
            query_dataset=Rows(self.texts.query_rows(query_ids.tolist())),
            train_dataset=Rows(self.texts.doc_rows()),
            per_device_query_batch_size=s["query_batch_size"],
            per_device_train_batch_size=s["batch_size"],
            score_args=args,
        )
        scores = self.analyzer.load_pairwise_scores(name)["all_modules"]
        return scores.to(torch.float32 if dt == torch.float32 else dt).cpu()


def evenly_spaced(rows: Sequence[int], count: int | None) -> list[int]:
    """``count`` of ``rows`` at even steps (all of them when ``count`` is None or not smaller): a corpus in
    function order keeps every function's share, as kronfluence's own lambda_max_examples (the first rows)
    would not."""
    if count is None or count >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // count] for i in range(count)]


class Rows(Dataset):
    """A dataset of text rows (`Texts`), batched by `Texts.batch`."""

    def __init__(self, rows: Sequence[int]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return self.rows[i]


def model_task(texts: Texts, modules: list[str], seed: int):
    """The kronfluence Task: each batch's summed own losses (sampled labels when kronfluence asks for the
    true Fisher), the query measurement = the summed answer losses, the tracked modules, the padding mask."""
    from kronfluence.task import Task

    class ProbesTask(Task):
        def compute_train_loss(self, batch, model, sample: bool = False) -> Tensor:
            return texts.loss(model, batch, sample, seed).sum()

        def compute_measurement(self, batch, model) -> Tensor:
            return texts.loss(model, batch).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return modules

        def get_attention_mask(self, batch) -> Tensor:
            return batch["attention_mask"]

    return ProbesTask()
