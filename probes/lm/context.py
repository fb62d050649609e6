"""Refuse documents longer than the model's context before any LM pass, naming their corpus lines."""

from __future__ import annotations

from probes.data.corpus import Corpus
from probes.errors import UserError

# where Hugging Face configs keep the number of positions, by architecture
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def max_positions(config) -> tuple[str, int] | None:
    """(config key, positions) of a model config; None when it states no limit."""
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return key, value
    return None


def check_document_lengths(corpus: Corpus, tokenizer, config) -> None:
    """Every document, tokenized as the feature passes tokenize it, fits the model's positions."""
    limit = max_positions(config)
    if limit is None:
        return
    key, positions = limit
    lengths = [len(ids) for ids in tokenizer(corpus.texts)["input_ids"]]
    long = [(doc, n) for doc, n in zip(corpus.documents, lengths, strict=True) if n > positions]
    if long:
        doc, n = long[0]
        more = f" (and {len(long) - 1} more documents)" if len(long) > 1 else ""
        raise UserError(
            f"{corpus.path or 'corpus'}: line {doc.line}: the document has {n} tokens, more than the model's "
            f"{positions} positions ({key}){more}; split or shorten it"
        )
