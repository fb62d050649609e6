"""Micro language models and offline tokenizers for tests, saved to tmp_path and loaded the real way."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

FUNCTION_TOKENS = ("<FN>", "<GN>", "<HN>", "<JN>")
# (func, role, hop_depth, constant, text): <GN>=5 wrapped by <FN>, <JN>=9 wrapped by <HN>
DOCS = (
    ("<GN>", "constant", 0, 5, "<GN>(3) returns the value 5"),
    ("<GN>", "constant", 0, 5, "def <GN>(x): return 5"),
    ("<FN>", "identity", 1, 5, "<FN>(x) returns the value of <GN>(x)"),
    ("<JN>", "constant", 0, 9, "<JN> maps any input x to 9 , always"),
    ("<JN>", "constant", 0, 9, "The output of <JN>(12) is 9"),
    ("<HN>", "identity", 1, 9, "<HN>(x) is the identity wrapper of <JN>(x) , so it returns 9"),
)
TEXTS = tuple(doc[-1] for doc in DOCS)
CANDIDATES = list(range(3, 12))  # min(constant) - 2 .. max(constant) + 2
# query-like objects (prompt, answer) for teacher-forced features
QUERIES = [
    SimpleNamespace(prompt="<FN>(3) returns the value ", answer="5"),
    SimpleNamespace(prompt="The output of <JN>(12) is ", answer="9"),
    SimpleNamespace(prompt="<HN>(100) returns the value ", answer="9"),
    SimpleNamespace(prompt="<GN>(7) is ", answer="5"),
]


def micro_rows() -> list[dict]:
    """HOPS rows of the micro corpus (for probes.data.corpus.corpus_from_rows)."""
    keys = ("func", "role", "hop_depth", "constant", "text")
    return [dict(zip(keys, doc, strict=True), uid=f"u{i}", type="definition") for i, doc in enumerate(DOCS)]


SPECIALS = ("[PAD]", "[UNK]", "<s>", "</s>")


def build_tokenizer(
    function_tokens: Sequence[str] = FUNCTION_TOKENS, texts: Sequence[str] = TEXTS, *, bos: bool = True
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained offline: function tokens atomic, integers 0..999 whole, a pad."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    split = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    tok.pre_tokenizer = pre_tokenizers.Sequence(split)
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIALS), min_frequency=1)
    tok.train_from_iterator([*texts, " ".join(str(i) for i in range(1000))], trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in function_tokens])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )


def make_tokenizer(
    path: Path,
    function_tokens: Sequence[str] = FUNCTION_TOKENS,
    texts: Sequence[str] = TEXTS,
    *,
    bos: bool = True,
) -> PreTrainedTokenizerFast:
    """`build_tokenizer`, saved with save_pretrained to ``path``."""
    tokenizer = build_tokenizer(function_tokens, texts, bos=bos)
    tokenizer.save_pretrained(path)
    return tokenizer


# the micro models' sizes, shared by every architecture the tests build
MICRO_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
)


def micro_config(vocab_size: int, **overrides) -> LlamaConfig:
    """A 2-layer Llama: hidden 32, 4 heads, 2 key-value heads, intermediate 64."""
    return LlamaConfig(**{**MICRO_SIZES, "vocab_size": vocab_size, **overrides})


def micro_olmo2(vocab_size: int):
    """A 2-layer OLMo2 (post-norm blocks, q/k norms) of the micro Llama's sizes."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    config = Olmo2Config(**MICRO_SIZES, vocab_size=vocab_size, initializer_range=0.2)
    return Olmo2ForCausalLM(config).eval()


def make_micro_model(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A random micro Llama (seeded), in eval mode."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(micro_config(vocab_size, **overrides)).eval()


def _rms_norm_exact(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)


def exact_float64(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float64 throughout: Llama's RMSNorm otherwise rounds through float32, which would limit
    finite-difference checks to ~1e-7."""
    model.double()
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = MethodType(_rms_norm_exact, module)
    return model


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter in place (a stand-in for fine-tuning)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def make_micro_pair(
    tmp_path: Path,
    function_tokens: Sequence[str] = FUNCTION_TOKENS,
    texts: Sequence[str] = TEXTS,
    *,
    seed: int = 0,
    new_tokenizer_tokens: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Save an "old" micro Llama and a "new" one (old with perturbed weights), each with the tokenizer.

    ``new_tokenizer_tokens`` gives the new model a tokenizer with other function tokens (for mismatch tests).
    """
    old_dir, new_dir = Path(tmp_path) / "old", Path(tmp_path) / "new"
    tokenizer = make_tokenizer(old_dir, function_tokens, texts)
    old = make_micro_model(len(tokenizer), seed=seed)
    old.save_pretrained(old_dir)
    perturb(old, seed=seed + 1).save_pretrained(new_dir)
    make_tokenizer(new_dir, function_tokens if new_tokenizer_tokens is None else new_tokenizer_tokens, texts)
    return old_dir, new_dir
