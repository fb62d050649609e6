"""Presets of the embedded pair (model size, pretraining world, training phases) and the pretraining world."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from transformers import LlamaConfig

from probes.data.corpus import Corpus, corpus_from_rows
from probes.data.queries import QUERY_FORMATS
from probes.data.synthetic import generate_rows, pretraining_config
from probes.pairs.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    """How to build a pair from scratch.

    Args:
        layers, hidden, heads, intermediate: the Llama architecture of ``f_old`` / ``f_new``.
        bpe_vocab: size of the tokenizer's BPE part (integers and function tokens come on top).
        world_n_base: base functions of the pretraining world (None: ``pretraining_config``'s choice).
        world_docs_per_base, world_docs_per_wrapper: documents per function of the pretraining world.
        query_fraction: fraction of the world's functions (bases and wrappers alike) that also get
            query-format lines ("<F>(x) returns the value c"), so ``f_old`` learns the query format and
            two-hop answers; the rest are known from documents only, as the target's functions will be.
        query_inputs: query lines per such function and query format.
        pretrain, finetune: the two training phases (pretraining on the world, fine-tuning on the target).
    """

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    bpe_vocab: int = 1024
    world_n_base: int | None = None
    world_docs_per_base: int = 100
    world_docs_per_wrapper: int = 50
    query_fraction: float = 1.0
    query_inputs: int = 20
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=3e-3))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=2e-3))

    def model_config(self, vocab_size: int, *, bos: int, eos: int, pad: int) -> LlamaConfig:
        """The Llama config of this preset for a vocabulary of ``vocab_size`` rows."""
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=1024,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            tie_word_embeddings=False,
        )


PRESETS: dict[str, Preset] = {
    # 2 CPU cores, within 5 minutes including pretraining
    "tiny": Preset(),
    # a GPU (~30M parameters, minutes): a larger world and vocabulary; gentler fine-tuning for the wider model
    "small": Preset(
        layers=8,
        hidden=512,
        heads=8,
        intermediate=1536,
        bpe_vocab=2048,
        world_docs_per_base=200,
        world_docs_per_wrapper=100,
        query_inputs=40,
        pretrain=TrainConfig(epochs=6, lr=1e-3, batch_size=64),
        finetune=TrainConfig(epochs=6, lr=5e-4, batch_size=32),
    ),
    # tests: seconds, no accuracy expected
    "micro": Preset(
        layers=2,
        hidden=32,
        heads=2,
        intermediate=64,
        bpe_vocab=300,
        world_n_base=2,
        world_docs_per_base=4,
        world_docs_per_wrapper=2,
        query_inputs=2,
        pretrain=TrainConfig(epochs=1, lr=3e-3, batch_size=8, max_steps=3),
        finetune=TrainConfig(epochs=1, lr=3e-3, batch_size=8, max_steps=3),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]


def pretraining_world(target: Corpus, preset: Preset, seed: int) -> tuple[list[dict], Corpus]:
    """The generated corpus of other functions that ``f_old`` is pretrained on: (rows, corpus)."""
    cfg = pretraining_config(target, seed=seed + 1)
    n_base = preset.world_n_base or cfg.n_base
    cfg = dataclasses.replace(
        cfg,
        n_base=n_base,
        constants=cfg.constant_values[:n_base],
        docs_per_base=preset.world_docs_per_base,
        docs_per_wrapper=preset.world_docs_per_wrapper,
    )
    rows = generate_rows(cfg)
    return rows, corpus_from_rows(rows)


def query_lines(world: Corpus, preset: Preset, seed: int) -> tuple[list[str], list[str]]:
    """Query-format lines with their answers for a seeded ``query_fraction`` of the world's functions:
    (lines, the functions they ask about)."""
    rng = random.Random(f"queries:{seed}")
    names = list(world.functions)
    chosen = []
    for depth in sorted({f.hop_depth for f in world.functions.values()}):
        level = [n for n in names if world.functions[n].hop_depth == depth]
        chosen += rng.sample(level, round(preset.query_fraction * len(level)))
    lines = []
    for name in sorted(chosen, key=names.index):
        for template in QUERY_FORMATS.values():
            for x in rng.sample(range(1, 200), preset.query_inputs):
                lines.append(template.format(func=name, x=x) + str(world.functions[name].constant))
    return lines, sorted(chosen, key=names.index)
