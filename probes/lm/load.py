"""Loading the two checkpoints (f_old, f_new) frozen, and checking that they form a comparable pair."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from probes.data.corpus import Corpus
from probes.errors import refuse_pickle
from probes.hashing import failed_pair_files, unreadable_weights
from probes.lm.scoring import TokenizationError, answer_token_ids

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}
SAMPLE_TEXTS = 64  # corpus texts whose encodings must agree between the two tokenizers


class PairMismatchError(ValueError):
    """The two checkpoints cannot be compared: ``check`` names the failed check, ``token`` the culprit."""

    def __init__(self, check: str, message: str, token: str | None = None):
        where = f" (token {token!r})" if token is not None else ""
        super().__init__(f"model pair check '{check}' failed{where}: {message}")
        self.check, self.token = check, token


@dataclass
class ModelPair:
    """f_old and f_new with their shared tokenizer (``old_tokenizer`` is kept for the equality checks)."""

    old: torch.nn.Module
    new: torch.nn.Module
    tokenizer: object
    old_path: str
    new_path: str
    old_tokenizer: object | None = None

    def model(self, which: str) -> torch.nn.Module:
        """``"old"`` or ``"new"``."""
        if which not in ("old", "new"):
            raise ValueError(f"model must be 'old' or 'new', got {which!r}")
        return self.old if which == "old" else self.new


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name ("float32", "bf16", ...) or itself."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _source(path_or_id: str | Path) -> tuple[str, bool]:
    """(what to give from_pretrained, whether it is a local directory); a missing local path is an error."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(
            f"model path {text!r} is not a directory; give a directory written by save_pretrained "
            "(config.json + weights) or a hub id 'owner/name'"
        )
    return text, False


def load_tokenizer(path_or_id: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer saved with a checkpoint (local directory or hub id)."""
    from transformers import AutoTokenizer

    source, _ = _source(path_or_id)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_model(
    path_or_id: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """A causal LM from a local directory or hub id, on ``device``, in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM

    source, local = _source(path_or_id)
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if local and any(Path(source).glob("*.safetensors")):
        kwargs["use_safetensors"] = True  # never fall back to pickled .bin weights when safetensors exist
        damaged = unreadable_weights(source) or failed_pair_files(source)
        if damaged:
            raise OSError(
                f"model {source!r} has damaged weights: {'; '.join(damaged)}; restore or re-save them "
                "(a pair from `python -m probes.pairs build` can be built again)"
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except pickle.UnpicklingError as error:  # pickled weights holding objects: refused, never run
        raise refuse_pickle(source, "model", error) from None
    except OSError as error:
        raise OSError(
            f"could not load a causal LM from {source!r}: {error}\nGive a directory with config.json and "
            "weights, or a hub id that this machine can download (or has in its Hugging Face cache)."
        ) from error
    return model.to(device).eval().requires_grad_(False)


def load_pair(
    old: str | Path,
    new: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    corpus: Corpus | None = None,
    candidates: Sequence[int] | None = None,
) -> ModelPair:
    """Load f_old and f_new (and both tokenizers) and run `check_pair` before anything else uses them."""
    options = dict(dtype=dtype, device=device, attn_implementation=attn_implementation)
    pair = ModelPair(
        old=load_model(old, trust_remote_code=trust_remote_code, **options),
        new=load_model(new, trust_remote_code=trust_remote_code, **options),
        tokenizer=load_tokenizer(new, trust_remote_code=trust_remote_code),
        old_path=str(old),
        new_path=str(new),
        old_tokenizer=load_tokenizer(old, trust_remote_code=trust_remote_code),
    )
    check_pair(pair, corpus, candidates)
    return pair


def check_pair(
    pair: ModelPair, corpus: Corpus | None = None, candidates: Sequence[int] | None = None
) -> None:
    """Raise `PairMismatchError` unless the pair shares architecture and tokenizer, and (given a corpus and
    candidate answers) every function token and every candidate answer is a single token."""
    _check_architecture(pair.old, pair.new)
    tokenizers = [pair.tokenizer] if pair.old_tokenizer is None else [pair.old_tokenizer, pair.tokenizer]
    if len(tokenizers) == 2:
        _check_same_tokenizer(*tokenizers)
    rows = pair.new.get_input_embeddings().weight.shape[0]
    if corpus is not None:
        for tok in corpus.function_tokens:
            ids = [_function_token_id(tokenizer, tok, rows) for tokenizer in tokenizers]
            if len(set(ids)) > 1:
                raise PairMismatchError("function token ids", f"ids differ between old and new: {ids}", tok)
        if len(tokenizers) == 2:
            _check_encodings(*tokenizers, corpus.texts)
    if candidates is not None:
        answers = [answer_ids(tokenizer, candidates) for tokenizer in tokenizers]
        for answer, *ids in zip(candidates, *answers, strict=True):
            if len(set(ids)) > 1 or ids[0] >= rows:
                message = f"ids {ids} differ or exceed the {rows} embedding rows"
                raise PairMismatchError("candidate answers", message, str(answer))


def answer_ids(tokenizer, candidates: Sequence[int]) -> list[int]:
    """`answer_token_ids` as a list, with its error turned into a `PairMismatchError`."""
    try:
        return answer_token_ids(tokenizer, candidates).tolist()
    except TokenizationError as error:
        raise PairMismatchError("candidate answers", str(error), error.token) from error


def _check_architecture(old: torch.nn.Module, new: torch.nn.Module) -> None:
    for name, read in [
        ("model class", lambda m: type(m).__name__),
        ("config class", lambda m: type(m.config).__name__),
        ("model_type", lambda m: m.config.model_type),
        ("num_hidden_layers", lambda m: m.config.num_hidden_layers),
        ("hidden_size", lambda m: m.config.hidden_size),
        ("embedding rows", lambda m: m.get_input_embeddings().weight.shape[0]),
    ]:
        if read(old) != read(new):
            raise PairMismatchError("architecture", f"{name}: old {read(old)!r} vs new {read(new)!r}")


def _check_same_tokenizer(old, new) -> None:
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    if old_vocab != new_vocab:
        diff = sorted(set(old_vocab.items()) ^ set(new_vocab.items()))
        raise PairMismatchError("tokenizer vocabulary", f"{len(diff)} (token, id) entries differ", diff[0][0])
    for attr in ("special_tokens_map", "all_special_ids"):
        if getattr(old, attr) != getattr(new, attr):
            a, b = getattr(old, attr), getattr(new, attr)
            raise PairMismatchError("special tokens", f"{attr}: old {a!r} vs new {b!r}")


def _check_encodings(old, new, texts: list[str]) -> None:
    step = max(1, len(texts) // SAMPLE_TEXTS)
    for text in texts[::step][:SAMPLE_TEXTS]:
        a, b = old.encode(text), new.encode(text)
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            token = old.convert_ids_to_tokens(a[at : at + 1] or b[at : at + 1])[0]
            raise PairMismatchError("text encodings", f"sample text {text[:60]!r} encodes differently", token)


def _function_token_id(tokenizer, token: str, rows: int) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise PairMismatchError("function tokens", f"encodes as {pieces}, not one known token", token)
    # atomic in context too: the tokenizer must not merge it with the "(" that follows in every query
    if ids[0] not in tokenizer.encode(f"{token}(1)", add_special_tokens=False):
        raise PairMismatchError("function tokens", "is split when followed by '(1)'", token)
    if ids[0] >= rows:
        raise PairMismatchError(
            "function tokens", f"id {ids[0]} has no row in the {rows}-row embedding", token
        )
    return ids[0]
