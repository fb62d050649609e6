"""Tokenising prompts, answers and texts one way for every part, batching them, and candidate logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.nn.attention import SDPBackend

from probes.progress import progress_bar

# The attention kernels the project's own passes run (the feature passes, each text's loss): not cuDNN's,
# PyTorch's first choice on Hopper, which builds a plan per new sequence length, and every length batch has
# its own (BENCHMARKS.md, "Measurements behind code choices").
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class TokenizationError(ValueError):
    """A string does not tokenise the way the method needs (e.g. an answer that is not a single token)."""

    def __init__(self, message: str, token: str | None = None):
        super().__init__(message)
        self.token = token


@dataclass(frozen=True)
class Tokenized:
    """One text as token ids; ``target`` is the [start, end) token range of its target span, if it has one."""

    ids: list[int]
    target: tuple[int, int] | None = None


def answer_token_ids(tokenizer, answers: Sequence[str | int]) -> Int[Tensor, "c"]:
    """The single token id of each candidate answer as it follows a prompt; raises naming a bad answer."""
    ids = []
    for answer in answers:
        # Our prompts end in a space ("... returns the value "), so the answer follows with no leading
        # space: the token the model must produce next is the answer string encoded alone, without BOS/EOS.
        # This is how the reference evaluation reads the candidates' logits, and how `tokenize` encodes a
        # target span.
        encoded = tokenizer.encode(str(answer), add_special_tokens=False)
        if len(encoded) != 1:
            pieces = tokenizer.convert_ids_to_tokens(encoded)
            raise TokenizationError(
                f"candidate answer {str(answer)!r} is {len(encoded)} tokens {pieces}, not one; every "
                "candidate answer must be a single token (train the tokenizer with integers as whole tokens)",
                token=str(answer),
            )
        if encoded[0] == tokenizer.unk_token_id:
            raise TokenizationError(
                f"candidate answer {str(answer)!r} maps to the unknown token {tokenizer.unk_token!r}; add "
                "it to the tokenizer's vocabulary",
                token=str(answer),
            )
        ids.append(encoded[0])
    return torch.tensor(ids, dtype=torch.long)


def special_template(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text's tokens (e.g. ([BOS], []) for Llama)."""
    plain = tokenizer.encode("0", add_special_tokens=False)
    full = tokenizer.encode("0", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise TokenizationError("the tokenizer's special-token template could not be found around the text '0'")


def tokenize(
    tokenizer,
    texts: Sequence[str],
    targets: Sequence[tuple[int, int]] | None = None,
    *,
    as_prompt: bool = False,
) -> list[Tokenized]:
    """Token ids of each text; with ``targets`` (character spans) each span is encoded alone and marked.

    A text with a target is encoded as three pieces, ``text[:start]`` + ``text[start:end]`` + ``text[end:]``
    (specials around the whole), so the target tokens are exactly the answer encoded alone (see
    `answer_token_ids`) and the positions before them equal the prompt run alone. ``as_prompt`` drops the
    trailing specials (e.g. an EOS) so that the next token is the one the model predicts.
    """
    if targets is not None and len(targets) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(targets)} targets; give one (start, end) per text")
    lead, trail = special_template(tokenizer)
    trail = [] if as_prompt else trail
    if targets is None:
        return [Tokenized(lead + ids + trail) for ids in _encode_all(tokenizer, texts)]
    pieces = []
    for i, (text, (start, end)) in enumerate(zip(texts, targets, strict=True)):
        if not 0 < start < end <= len(text):
            raise TokenizationError(f"text {i} ({text[:60]!r}): span {(start, end)} is empty or outside")
        pieces += [text[:start], text[start:end], text[end:]]
    encoded = _encode_all(tokenizer, pieces)
    out = []
    for i, text in enumerate(texts):
        before, span, after = encoded[3 * i : 3 * i + 3]
        first = len(lead) + len(before)
        if first == 0:
            raise TokenizationError(f"text {i} ({text[:60]!r}): no token precedes target span {targets[i]}")
        out.append(Tokenized(lead + before + span + after + trail, (first, first + len(span))))
    return out


def _encode_all(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of every text without specials, in one batched call.

    A fast tokenizer with no truncation or padding set is called through its Rust backend directly:
    transformers' conversion of each result to a Python dict cost more than the encoding (BENCHMARKS.md),
    and it returns the same ids."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [encoding.ids for encoding in backend.encode_batch(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


# With max_tokens, a batch holding at least 1/MIN_BATCH_SHARE of it stops growing before its padding passes
# MAX_PADDING of its padded tokens. On the 20hops documents (batches of 1024 texts, 32768 tokens) padding fell
# from 22% to 8% of the tokens run, in 12 batches instead of 6; the floor keeps batches large enough that the
# device, not the host launching their kernels, sets the pace.
MIN_BATCH_SHARE = 4
MAX_PADDING = 0.05


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (out of memory shows early).

    With ``max_tokens`` a batch also stops growing before its padded size, (longest length) x (rows), would
    pass ``max_tokens``: batches of short texts stay at ``batch_size`` while those of long texts shrink, and a
    text longer than ``max_tokens`` gets a batch of its own. A batch of at least ``max_tokens / 4`` padded
    tokens also stops before its padding would pass 5% of them (`MAX_PADDING`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    real = 0  # real tokens of the last batch
    for i in order:
        if not batches or len(batches[-1]) == batch_size or _full(batches[-1], lengths, real, i, max_tokens):
            batches.append([])
            real = 0
        batches[-1].append(i)
        real += lengths[i]
    return batches


def _full(batch: list[int], lengths: Sequence[int], real: int, i: int, max_tokens: int | None) -> bool:
    """Whether text ``i`` must start a new batch after ``batch`` (longest first: its longest is its first)."""
    if max_tokens is None:
        return False
    longest = lengths[batch[0]]
    padded = longest * (len(batch) + 1)
    large = longest * len(batch) * MIN_BATCH_SHARE >= max_tokens
    return padded > max_tokens or (large and padded - real - lengths[i] > MAX_PADDING * padded)


def collate(
    items: Sequence[Tokenized], pad_id: int, padding_side: str = "right", device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Pad to one tensor batch on ``device``: input_ids, attention_mask, position_ids (cumsum of the mask, so
    the padding side never changes a real token's position), and ``offset`` [b], where each row's real tokens
    start, kept on the CPU (host-side bookkeeping: reading it back from a GPU would wait for the GPU)."""
    input_ids, mask, offset = pad_rows([item.ids for item in items], pad_id, padding_side)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
    return {**{key: to_device(value, device) for key, value in batch.items()}, "offset": offset}


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"], Int[Tensor, "b"]]:
    """Token id rows padded to one width on ``padding_side``: the ids, the attention mask, and where each
    row's real tokens start."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(row) for row in rows)
    ids, masks, offsets = [], [], []
    for row in rows:
        pad, left = width - len(row), padding_side == "left"
        ids.append([pad_id] * pad + list(row) if left else list(row) + [pad_id] * pad)
        masks.append([0] * pad + [1] * len(row) if left else [1] * len(row) + [0] * pad)
        offsets.append(pad if left else 0)
    return tuple(torch.tensor(x, dtype=torch.long) for x in (ids, masks, offsets))


def to_device(tensor: Tensor, device: str | torch.device) -> Tensor:
    """A CPU tensor on ``device`` without making the host wait: to a GPU through pinned memory, so the copy
    queues behind the work already there (a copy from pageable memory waits for it to finish first)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def pad_id(tokenizer) -> int:
    """The id used for padding (its value never matters: padded positions are masked)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def candidate_logits(
    model, tokenizer, prompts: Sequence[str], candidate_ids: Int[Tensor, "c"], batch_size: int = 64
) -> Float[Tensor, "q c"]:
    """The model's logits for each candidate answer token at the last prompt position (fp32, on CPU)."""

    def read(logits: Tensor, _: list[int]) -> Tensor:
        return logits[:, candidate_ids.to(logits.device)]

    return prompt_outputs(model, tokenizer, prompts, read, batch_size)


def prompt_outputs(
    model,
    tokenizer,
    prompts: Sequence[str],
    read: Callable[[Float[Tensor, "b v"], list[int]], Float[Tensor, "b k"]],
    batch_size: int = 64,
    forward: Callable | None = None,
) -> Float[Tensor, "q k"]:
    """``read(logits, rows)`` of the model's logits at the last position of each prompt (``rows``: the
    prompts' indices in the batch), in length-bucketed batches; fp32, on CPU, rows in prompt order.
    ``forward(batch, positions)`` replaces `logits_at` of ``model`` (e.g. several stacked models at once,
    whose logits ``read`` then gets as [b, ..., v])."""
    items = tokenize(tokenizer, prompts, as_prompt=True)
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), 0)
    batches = length_batches([len(item.ids) for item in items], batch_size)
    with torch.inference_mode():
        for index in progress_bar(batches, desc="prompt logits", disable=len(batches) < 4, leave=False):
            # right padding: left padding makes fully masked pad rows, which eager attention in float64 turns
            # into NaN that then leaks into the real rows
            batch = collate([items[i] for i in index], pad_id(tokenizer), "right", device)
            last = batch["attention_mask"].sum(-1) - 1
            positions = last[:, None]
            logits = forward(batch, positions) if forward else logits_at(model, batch, positions)
            values = read(logits[:, 0], index).float().cpu()
            if out.shape[1] != values.shape[1]:
                out = torch.empty(len(prompts), values.shape[1])
            out[index] = values
    return out


def last_position(input_ids: Int[Tensor, "b s"]) -> Int[Tensor, "1"]:
    """``logits_to_keep`` for the last position only, as an index tensor rather than HF's int 1: the int keeps
    the strided slice ``hidden[:, -1:]``, on which the LM head runs as a batched matmul that reads the whole
    vocabulary matrix once per row (BENCHMARKS.md); an index gathers a contiguous [b, 1, d], one matrix
    product."""
    return torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)


def logits_at(model, batch: dict[str, Tensor], positions: Int[Tensor, "b p"]) -> Float[Tensor, "b p v"]:
    """Logits at the given positions of each row; the vocabulary projection runs only at positions some row
    needs (with length bucketing, usually one or two)."""
    keep = torch.unique(positions)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=keep,
    ).logits
    return out[torch.arange(len(positions), device=keep.device)[:, None], torch.searchsorted(keep, positions)]
