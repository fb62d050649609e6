"""Per-layer pooled hidden states h_l and activation gradients g_l = dL/dh_l of texts, batched by length.

Layer index l runs over what Hugging Face returns with ``output_hidden_states=True``: 0 = the embeddings
(the first block's input), l = the output of block l, and the last index L = the final hidden state AFTER
the model's final norm (the tensor the LM head reads; transformers ties ``hidden_states[-1]`` to it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from probes.lm.losses import check_loss, text_losses
from probes.lm.pooling import Pooler, check_pooling
from probes.lm.scoring import Tokenized, collate, length_batches, pad_id, tokenize


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute: ``kind`` "hidden" or "grad", pooling, loss (grads only), layers (None = all)."""

    kind: str
    pooling: str = "last"
    loss: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in ("hidden", "grad"):
            raise ValueError(f"FeatureSpec.kind must be 'hidden' or 'grad', got {self.kind!r}")
        check_pooling(self.pooling)
        if (self.kind == "grad") != (self.loss is not None):
            raise ValueError(f"FeatureSpec: kind 'grad' needs a loss, kind 'hidden' takes none: {self}")
        if self.loss is not None:
            check_loss(self.loss)

    def as_dict(self) -> dict:
        return asdict(self)


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
) -> Float[Tensor, "n l d"]:
    """Pooled hidden states of each text at each layer (all layers by default; index 0 = embeddings).

    Batches hold at most ``batch_size`` texts and, with ``max_tokens``, at most that many padded tokens (see
    `probes.lm.scoring.length_batches`); neither changes the result."""
    acc = _out_dtype(model, dtype)

    def step(batch: dict[str, Tensor], items: list[Tokenized]) -> Tensor:
        with torch.inference_mode():
            pool = Pooler(items, batch["offset"], pooling, acc)
            states = _forward(model, batch, padding_side, logits_to_keep=1).hidden_states
            return torch.stack([pool(states[i]) for i in _layer_ids(layers, len(states))], 1)

    sizes = (batch_size, max_tokens)
    return _run(model, tokenizer, texts, targets, sizes, padding_side, progress, "hidden", step)


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
) -> Float[Tensor, "n l d"]:
    """Pooled activation gradients dL/dh_l of each text's own loss (see `probes.lm.losses`), at least fp32.

    The batch loss is the SUM of per-text losses; attention never crosses texts, so each text's slice of
    dL/dh is its own gradient; batches are formed as in `hidden_features`. Gradients flow in the model's
    dtype: load it in float32 for exact fp32 grads.
    """
    check_loss(loss)
    if loss != "lm" and targets is None:
        raise ValueError(f"loss {loss!r} needs targets (the answer's character span in each text)")
    if loss == "margin" and candidate_ids is None:
        raise ValueError("loss 'margin' needs candidate_ids (the candidate answers' token ids)")
    acc = _out_dtype(model, dtype)

    def step(batch: dict[str, Tensor], items: list[Tokenized]) -> Tensor:
        pool = Pooler(items, batch["offset"], pooling, acc)
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
            per_text, out = text_losses(
                model,
                lambda **kw: _forward(model, batch, padding_side, inputs_embeds=embeds, **kw),
                batch,
                items,
                loss,
                candidate_ids,
            )
            states = out.hidden_states
            wanted = _layer_ids(layers, len(states))
            grads = torch.autograd.grad(per_text.sum(), [states[i] for i in wanted])
        return torch.stack([pool(g) for g in grads], 1)

    if loss == "margin":
        _check_answers_are_candidates(tokenizer, texts, targets, candidate_ids)
    sizes = (batch_size, max_tokens)
    return _run(model, tokenizer, texts, targets, sizes, padding_side, progress, f"grad ({loss})", step)


def compute_features(
    model, tokenizer, texts: Sequence[str], spec: FeatureSpec, **options
) -> Float[Tensor, "n l d"]:
    """`hidden_features` or `gradient_features` as ``spec`` says; ``options`` go to that function."""
    common = dict(pooling=spec.pooling, layers=spec.layers, **options)
    if spec.kind == "hidden":
        common.pop("candidate_ids", None)
        return hidden_features(model, tokenizer, texts, **common)
    return gradient_features(model, tokenizer, texts, loss=spec.loss, **common)


def _forward(model, batch: dict[str, Tensor], padding_side: str, **kwargs):
    """The model with all hidden states. Right-padded batches run with no attention mask and one shared row
    of positions: under causal attention no real token can see the pads that follow it, so real tokens get
    exactly the masked result, while the attention kernels take their fast unmasked causal path and rotary
    embeddings are computed once instead of per row. Pad positions' outputs are never read."""
    if "inputs_embeds" not in kwargs:
        kwargs["input_ids"] = batch["input_ids"]
    kwargs.setdefault("output_hidden_states", True)
    if padding_side == "right":
        width = batch["input_ids"].shape[1]
        mask, positions = None, torch.arange(width, device=batch["input_ids"].device)[None]
    else:
        mask, positions = batch["attention_mask"], batch["position_ids"]
    return model(
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        **kwargs,
    )


def _run(
    model,
    tokenizer,
    texts: Sequence[str],
    targets: Sequence[tuple[int, int]] | None,
    sizes: tuple[int, int | None],
    padding_side: str,
    progress: bool,
    what: str,
    step: Callable[[dict[str, Tensor], list[Tokenized]], Tensor],
) -> Tensor:
    """Tokenise, batch by length (``sizes`` = batch_size, max_tokens), run ``step`` per batch ([b l d] on the
    model's device), restore order.

    Results stay on the model's device until the end: one large copy to the CPU instead of one per batch."""
    items = tokenize(tokenizer, texts, targets)
    device = next(model.parameters()).device
    out = None
    batches = length_batches([len(item.ids) for item in items], *sizes)
    for index in tqdm(
        batches, desc=f"{what} features", disable=not progress or len(batches) < 4, leave=False
    ):
        chunk = [items[i] for i in index]
        rows = step(collate(chunk, pad_id(tokenizer), padding_side, device), chunk)
        finite = torch.isfinite(rows).flatten(1).all(-1)
        if not bool(finite.all()):
            i = index[int((~finite).nonzero()[0, 0])]
            raise FloatingPointError(
                f"{what} features of text {i} ({texts[i][:60]!r}) contain NaN or inf; check the model's "
                "weights and dtype (bf16/fp16 can overflow; try float32)"
            )
        if out is None:
            out = torch.empty((len(texts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        out[torch.tensor(index, device=rows.device)] = rows
    if out is None:
        raise ValueError(f"no texts to compute {what} features for")
    return out.cpu()


def _layer_ids(layers: Sequence[int] | None, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    bad = [layer for layer in layers if not -count <= layer < count]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the model has hidden states 0..{count - 1}")
    return [layer % count for layer in layers]


def _out_dtype(model, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def _check_answers_are_candidates(tokenizer, texts, targets, candidate_ids) -> None:
    allowed = set(candidate_ids.tolist())
    for i, item in enumerate(tokenize(tokenizer, texts, targets)):
        if item.ids[item.target[0]] not in allowed:
            raise ValueError(
                f"text {i} ({texts[i][:60]!r}): its answer token is not a candidate answer, so the margin "
                "loss is undefined; include it in candidate_ids"
            )
