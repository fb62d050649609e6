"""Causal patching: f_old with its hidden state at one layer replaced at the last prompt token, the reference
computation (`baselines.ops.fast.patch` runs it over cached prefixes; `make_patcher` picks by the backend)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.features.backend import DEFAULT, PassOptions
from probes.lm.layer_ids import hidden_state_ids
from probes.lm.scoring import last_position, tokenize
from probes.lm.stack import decoder_stack, edited_hidden_state

LAYER_NAMES = ("middle", "last")
STACK_PARTS = ("layers", "norm", "rotary_emb")


def num_blocks(model) -> int:
    """The number of decoder blocks L (hidden-state index 0 = embeddings .. L = after the final norm)."""
    return len(decoder_stack(model, STACK_PARTS, "patching").layers)


def resolve_layer(model, layer: int | str) -> int:
    """A hidden-state index in 0..L from an int (negative counts from L) or "middle" (L // 2) / "last" (L),
    by `probes.lm.layer_ids.hidden_state_ids`."""
    if isinstance(layer, str) and layer not in LAYER_NAMES:
        raise ValueError(f"layer must be an int or one of {LAYER_NAMES}, got {layer!r}")
    return hidden_state_ids(layer, num_blocks(model) + 1)[0]


@dataclass
class Prefix:
    """f_old on prompts of one token length: the keys/values of every position before the last, per block."""

    rows: Int[Tensor, "b"]  # positions of these prompts in the list given to `Patcher.prefixes`
    position: int  # index of the last prompt token (where the patch goes)
    ids: Int[Tensor, "b s"]  # the prompts' token ids, on the model's device
    old: Float[Tensor, "b d"]  # f_old's hidden state at the patch layer, last token
    logits: Float[Tensor, "b c"]  # f_old's candidate-answer logits at the last token
    # the fast patcher's: block index (>= the patch layer) -> [b, heads, position, head_dim]
    keys: dict[int, Tensor] = field(default_factory=dict)
    values: dict[int, Tensor] = field(default_factory=dict)


class Patcher:
    """Runs f_old with its hidden state at layer ``layer`` replaced at the last prompt token only.

    `prefixes` runs f_old once over the prompts; `logits` runs it again over each candidate's prompt with the
    state replaced (a hook, `probes.lm.stack.edited_hidden_state`). ``layer`` indexes hidden states as
    transformers' ``output_hidden_states`` does: 0 = embeddings, L = after the final norm.
    """

    caches = False  # whether `prefixes` keeps f_old's prefix keys/values (`baselines.ops.fast.patch`)

    def __init__(self, model, tokenizer, candidate_ids: Int[Tensor, "c"], layer: int | str = "middle"):
        self.model, self.tokenizer = model, tokenizer
        self.stack = decoder_stack(model, STACK_PARTS, "patching")
        self.blocks = num_blocks(model)
        self.layer = resolve_layer(model, layer)
        weight = model.get_output_embeddings().weight
        self.device, self.dtype = weight.device, weight.dtype
        self.candidate_ids = candidate_ids.to(self.device)
        self.head = weight[self.candidate_ids]
        bias = getattr(model.get_output_embeddings(), "bias", None)
        self.bias = None if bias is None else bias[self.candidate_ids]

    @torch.inference_mode()
    def prefixes(self, prompts: Sequence[str], batch_size: int = 64) -> list[Prefix]:
        """f_old once over the prompts, grouped by token length (no padding), keeping prefix keys/values."""
        items = tokenize(self.tokenizer, prompts, as_prompt=True)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[len(item.ids)].append(i)
        out = []
        for length, members in sorted(groups.items()):
            for start in range(0, len(members), batch_size):
                rows = members[start : start + batch_size]
                ids = torch.tensor([items[i].ids for i in rows], device=self.device)
                run = self.model(
                    input_ids=ids,
                    use_cache=self.caches,
                    output_hidden_states=True,
                    logits_to_keep=last_position(ids),
                )
                out.append(
                    Prefix(
                        rows=torch.tensor(rows, dtype=torch.long),
                        position=length - 1,
                        ids=ids,
                        old=run.hidden_states[self.layer][:, -1],
                        logits=run.logits[:, -1, self.candidate_ids],
                        **self.cached(run),
                    )
                )
        return out

    def cached(self, run) -> dict[str, dict[int, Tensor]]:
        """What a prefix keeps of f_old's run beyond its states and logits: nothing here."""
        return {}

    @torch.inference_mode()
    def logits(
        self, prefix: Prefix, rows: Int[Tensor, "b"] | int, states: Float[Tensor, "b d"]
    ) -> Float[Tensor, "b c"]:
        """Candidate-answer logits of f_old when prompt ``prefix.rows[rows]`` has ``states`` at the layer.

        ``rows`` is each candidate's prompt within ``prefix`` (read on the host: give a CPU tensor, or a GPU
        one is waited for), or one int when all share a prompt.
        """
        hidden = states.to(device=self.device, dtype=self.dtype)[:, None, :]
        if isinstance(rows, int):
            ids = prefix.ids[rows : rows + 1].expand(len(hidden), -1)
        else:
            ids = prefix.ids[rows.to(prefix.ids.device)]

        def last_replaced(state: Tensor) -> Tensor:
            return torch.cat((state[:, :-1], hidden.to(state.dtype)), 1)

        with edited_hidden_state(self.model, self.layer, last_replaced, "patching"):
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, self.candidate_ids]


def make_patcher(
    model,
    tokenizer,
    candidate_ids: Int[Tensor, "c"],
    layer: int | str = "middle",
    options: PassOptions = DEFAULT,
) -> Patcher:
    """The `Patcher` of ``options``' backend: the reference one, or the fast one over cached prefixes."""
    if not options.fast:
        return Patcher(model, tokenizer, candidate_ids, layer)
    from baselines.ops.fast.patch import FastPatcher

    return FastPatcher(model, tokenizer, candidate_ids, layer)
