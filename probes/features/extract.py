"""Per-layer pooled hidden states h_l, activation gradients g_l = dL/dh_l and attributions Δh_l ⊙ g_l.

Layer l indexes Hugging Face's ``output_hidden_states``: 0 = the embeddings, l = block l's output, the last
= the final hidden state AFTER the final norm (what the LM head reads); `probes.lm.layer_ids.hidden_state_ids`
is the one resolver of a layer option into these indices."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from probes.features.backend import DEFAULT, PassOptions, pass_for
from probes.features.host_rows import HostRows, check_finite
from probes.features.losses import check_loss
from probes.features.pooling import Pooler, check_pooling
from probes.lm.layer_ids import hidden_state_ids
from probes.lm.scoring import ATTENTION_BACKENDS, Tokenized, collate, length_batches, pad_id, tokenize
from probes.progress import progress_bar

KINDS = ("hidden", "grad", "attr")


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute: ``kind``, pooling, loss (grads and attributions only), layers (None = all states).

    kind: "hidden" (h_l of the model), "grad" (g_l = dL/dh_l of the model's loss) or "attr" (per position
    ``(h_l^model - h_l^old) ⊙ g_l``, multiplied before pooling: first-order loss change along old -> model).
    """

    kind: str
    pooling: str = "last"
    loss: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"FeatureSpec.kind must be one of {KINDS}, got {self.kind!r}")
        check_pooling(self.pooling)
        if (self.kind == "hidden") != (self.loss is None):
            raise ValueError(f"FeatureSpec: kinds 'grad', 'attr' need a loss, 'hidden' takes none: {self}")
        if self.loss is not None:
            check_loss(self.loss)

    @property
    def what(self) -> str:
        """A short name for progress bars and errors: "hidden", "grad (<loss>)" or "attr (<loss>)"."""
        return "hidden" if self.kind == "hidden" else f"{self.kind} ({self.loss})"


def query_inputs(queries) -> tuple[list[str], list[tuple[int, int]]]:
    """Queries as teacher-forced texts ``prompt + answer`` with the answer's character span as target."""
    texts = [q.prompt + q.answer for q in queries]
    return texts, [(len(q.prompt), len(q.prompt) + len(q.answer)) for q in queries]


def hidden_features(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    targets: Sequence[tuple[int, int]] | None = None,
    pooling: str = "last",
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    padding_side: str = "right",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    compile: bool = False,
    backend: str = "fast",
) -> Float[Tensor, "n l d"]:
    """Pooled hidden states of each text at each layer (all layers by default; index 0 = embeddings).

    Batches hold at most ``batch_size`` texts and, with ``max_tokens``, at most that many padded tokens (see
    `probes.lm.scoring.length_batches`); neither changes the result."""
    spec = FeatureSpec("hidden", pooling, layers=None if layers is None else tuple(layers))
    options = dict(batch_size=batch_size, max_tokens=max_tokens, padding_side=padding_side)
    options.update(dtype=dtype, progress=progress, compile=compile, backend=backend)
    return compute_features(model, tokenizer, texts, spec, targets=targets, **options)


def gradient_features(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    targets: Sequence[tuple[int, int]] | None = None,
    loss: str = "lm",
    candidate_ids: Int[Tensor, "c"] | None = None,
    pooling: str = "last",
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    padding_side: str = "right",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    compile: bool = False,
    backend: str = "fast",
) -> Float[Tensor, "n l d"]:
    """Pooled activation gradients dL/dh_l of each text's own loss (`probes.features.losses`), >= fp32.

    The batch loss is the SUM of per-text losses; attention never crosses texts, so each text's slice of
    dL/dh is its own gradient; batches are formed as in `hidden_features`. Gradients flow in the model's
    dtype: load it in float32 for exact fp32 grads.
    """
    spec = FeatureSpec("grad", pooling, loss, None if layers is None else tuple(layers))
    options = dict(batch_size=batch_size, max_tokens=max_tokens, padding_side=padding_side)
    options.update(dtype=dtype, progress=progress, compile=compile, backend=backend)
    return compute_features(
        model, tokenizer, texts, spec, targets=targets, candidate_ids=candidate_ids, **options
    )


def compute_features(
    model,
    tokenizer,
    texts: Sequence[str],
    spec: FeatureSpec,
    *,
    targets: Sequence[tuple[int, int]] | None = None,
    candidate_ids: Int[Tensor, "c"] | None = None,
    old=None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    padding_side: str = "right",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    devices: int = 1,
    strategy: str = "ddp",
    compile: bool = False,
    backend: str = "fast",
) -> Float[Tensor, "n l d"]:
    """The features ``spec`` names of every text, in text order, on the CPU (kind "attr": ``old`` is the
    checkpoint its Δh starts from, on the model's device).

    ``devices=1``: this process runs every length batch. ``devices>1``: a Lightning ``strategy`` ("ddp";
    "ddp_fork" on the CPU where the script cannot be relaunched) deals the batches out over that many
    devices and every rank gets all rows back (see `probes.features.distributed`); the model must sit on the
    rank's device. ``backend``: "fast" or the plain "reference" (same result, see `probes.features.backend`);
    ``compile`` (fast only): run the decoder blocks compiled (see `probes.features.fast.compiled`); the first
    passes pay for compiling, later ones (either checkpoint, any length) reuse it.
    Each batch's rows travel to the CPU while the device computes the next (`HostRows`).
    """
    step = FeatureStep(
        model,
        tokenizer,
        spec,
        candidate_ids=candidate_ids,
        old=old,
        options=PassOptions(backend, compile, padding_side, dtype),
    )
    items, batches = plan(tokenizer, texts, targets, spec, candidate_ids, batch_size, max_tokens)
    if devices > 1 and len(batches) >= devices:  # fewer batches: nothing to share (and each rank needs one)
        from probes.features.distributed import distributed_features

        return distributed_features(step, items, batches, texts, devices, strategy, progress)
    out = HostRows(len(texts))
    bar = progress_bar(
        batches, desc=f"{spec.what} features", disable=not progress or len(batches) < 4, leave=False
    )
    for index in bar:
        out.add(index, step([items[i] for i in index]))
    return out.result(texts, spec.what)


def plan(
    tokenizer,
    texts: Sequence[str],
    targets: Sequence[tuple[int, int]] | None,
    spec: FeatureSpec,
    candidate_ids: Int[Tensor, "c"] | None,
    batch_size: int,
    max_tokens: int | None = None,
) -> tuple[list[Tokenized], list[list[int]]]:
    """Check the inputs ``spec`` needs, tokenise, and group the text indices into length batches of at most
    ``batch_size`` texts and ``max_tokens`` padded tokens."""
    if spec.loss not in (None, "lm") and targets is None:
        raise ValueError(f"loss {spec.loss!r} needs targets (the answer's character span in each text)")
    if spec.loss == "margin" and candidate_ids is None:
        raise ValueError("loss 'margin' needs candidate_ids (the candidate answers' token ids)")
    items = _tokenized(tokenizer, texts, targets)
    if not items:
        raise ValueError(f"no texts to compute {spec.what} features for")
    if spec.loss == "margin":
        _check_answers_are_candidates(items, texts, candidate_ids)
    return items, length_batches([len(item.ids) for item in items], batch_size, max_tokens)


# The token ids of the last few text lists of each tokenizer: a FeatureStore runs several passes over the same
# texts (both checkpoints' hidden states, the gradients), and the device waits while the host tokenises (the
# 3000 documents of 20hops: ~0.2 s on this project's 2-core machine).
_TOKENIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZED_LISTS = 4


def _tokenized(tokenizer, texts: Sequence[str], targets: Sequence[tuple[int, int]] | None) -> list[Tokenized]:
    """`probes.lm.scoring.tokenize` of ``texts``, reused while the same tokenizer (and vocabulary size)
    meets the same texts and targets again."""
    key = (len(tokenizer), tuple(texts), None if targets is None else tuple(map(tuple, targets)))
    recent = _TOKENIZED.setdefault(tokenizer, {})
    if key not in recent:
        if len(recent) == _TOKENIZED_LISTS:
            del recent[next(iter(recent))]  # the oldest
        recent[key] = tokenize(tokenizer, texts, targets)
    return recent[key]


class FeatureStep:
    """One length batch's pooled features of ``spec``, [b l d] on the model's device: the work of the feature
    pass, shared by the in-process loop of `compute_features` and the Lightning ``predict_step``.

    A plain object, not an ``nn.Module``: a LightningModule holding it does not adopt the model, so a Trainer
    neither moves it nor sends it to the CPU at teardown.
    """

    def __init__(
        self,
        model,
        tokenizer,
        spec: FeatureSpec,
        *,
        candidate_ids: Int[Tensor, "c"] | None = None,
        old=None,
        options: PassOptions = DEFAULT,
    ):
        if (spec.kind == "attr") != (old is not None):
            raise ValueError(f"{spec.what} features: kind 'attr' needs the old checkpoint, others take none")
        self.model, self.spec, self.candidate_ids, self.options = model, spec, candidate_ids, options
        self.backend = pass_for(options)
        self.old = old
        self.pad = pad_id(tokenizer)
        self.dtype = _out_dtype(model, options.dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def rows(self, items: Sequence[Tokenized], index: Sequence[int], texts: Sequence[str]) -> Tensor:
        """The features of texts ``index`` (into ``items`` and ``texts``); an error names a non-finite one."""
        rows = self([items[i] for i in index])
        check_finite(rows, index, texts, self.spec.what)
        return rows

    @sdpa_kernel(ATTENTION_BACKENDS)
    def __call__(self, items: Sequence[Tokenized]) -> Float[Tensor, "b l d"]:
        with self.backend.blocks(self.model):
            return self._pooled(items)

    def _pooled(self, items: Sequence[Tokenized]) -> Float[Tensor, "b l d"]:
        batch = collate(items, self.pad, self.options.padding_side, self.device)
        pool = Pooler(items, batch["offset"], self.spec.pooling, self.dtype, self.device)
        if self.spec.kind == "hidden":
            with torch.inference_mode():  # the decoder stack alone: hidden states need no LM head
                states = self.backend.forward(self.model.base_model, batch).hidden_states
                return torch.stack([pool(states[i]) for i in _layer_ids(self.spec.layers, len(states))], 1)
        if self.spec.kind == "attr":
            with torch.inference_mode():
                old_states = self.backend.forward(self.old.base_model, batch).hidden_states
        with torch.enable_grad():
            embeds = self.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
            per_text, out = self.backend.text_losses(
                self.model,
                lambda **kw: self.backend.forward(self.model, batch, inputs_embeds=embeds, **kw),
                batch,
                items,
                self.spec.loss,
                self.candidate_ids,
            )
            states = out.hidden_states
            wanted = _layer_ids(self.spec.layers, len(states))
            grads = torch.autograd.grad(per_text.sum(), [states[i] for i in wanted])
        if self.spec.kind == "attr":  # per position (h^new - h^old) ⊙ g, then pooled
            grads = [(states[i].detach() - old_states[i]) * g for i, g in zip(wanted, grads, strict=True)]
        return torch.stack([pool(g) for g in grads], 1)


def _layer_ids(layers: Sequence[int] | None, count: int) -> list[int]:
    return hidden_state_ids("all_with_embeddings" if layers is None else list(layers), count)


def _out_dtype(model, dtype: torch.dtype | None) -> torch.dtype:
    exact = next(model.parameters()).dtype == torch.float64
    return dtype if dtype is not None else torch.float64 if exact else torch.float32


def _check_answers_are_candidates(items: Sequence[Tokenized], texts: Sequence[str], candidate_ids) -> None:
    allowed = set(candidate_ids.tolist())
    for i, item in enumerate(items):
        if item.ids[item.target[0]] not in allowed:
            raise ValueError(
                f"text {i} ({texts[i][:60]!r}): its answer token is not a candidate answer, so the margin "
                "loss is undefined; include it in candidate_ids"
            )
