"""An offline BPE tokenizer for HOPS corpora: function tokens atomic, integers 0..999 single tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
INTEGERS = tuple(str(i) for i in range(1000))
_FUNC_RE = re.compile(r"<[A-Z][A-Za-z0-9_]*>")
# Words keep their leading space; a space before a digit, a function token or the end of the text is its
# own token. Digits never reach this split (they are added tokens), so "value 5" is "value", " ", "5" and
# the prompt "... value " ends in the same " " token: prompt + answer = the prompt's tokens + the answer's.
_SPLIT = r"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"


def train_tokenizer(
    texts: Iterable[str],
    function_tokens: Sequence[str],
    new_tokens: Sequence[str] = (),
    *,
    vocab_size: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and add the atomic tokens.

    Args:
        texts: training texts (function tokens are removed before BPE training: they are added whole).
        function_tokens: function tokens known before fine-tuning (the pretraining world's).
        new_tokens: function tokens introduced by fine-tuning; they get the highest ids, after every other
            token, so a model pretrained on ``len(tokenizer) - len(new_tokens)`` rows can be resized to add
            them.
        vocab_size: size of the BPE part (256 byte symbols, the special tokens and learned merges).

    The id layout is: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, BPE symbols, integers 0..999 not already in the
    BPE vocabulary, ``function_tokens``, then ``new_tokens``. Every encoding starts with ``<s>``; none ends
    in ``</s>``.
    """
    overlap = sorted(set(function_tokens) & set(new_tokens))
    if overlap:
        raise ValueError(f"train_tokenizer: tokens {overlap[:5]} are in both function_tokens and new_tokens")
    for token in [*function_tokens, *new_tokens]:
        if not _FUNC_RE.fullmatch(token):
            raise ValueError(f"train_tokenizer: {token!r} is not a function token like '<GN>'")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_FUNC_RE.sub(" ", t) for t in texts), trainer=trainer)
    tok.add_tokens([AddedToken(i, normalized=False) for i in INTEGERS])
    tok.add_tokens([AddedToken(t, normalized=False) for t in [*function_tokens, *new_tokens]])
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1024
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerFast, function_tokens: Sequence[str]) -> None:
    """Raise ValueError naming the token if a function token or an integer 0..999 is not one token."""
    for token in [*function_tokens, *INTEGERS]:
        ids = tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"tokenizer splits {token!r} into {pieces}; it must be a single token")
