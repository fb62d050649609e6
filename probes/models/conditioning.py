"""Conditioning T(p_i, x): probe soft tokens before (or after) a text via inputs_embeds; the LM's response."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.lm.scoring import special_template, tokenize


@dataclass
class Conditioned:
    """A batch of k*b sequences (probe-major: row ``i * b + j`` is probe i on text j), right-padded."""

    embeds: Float[Tensor, "kb s d"]
    attention_mask: Int[Tensor, "kb s"]
    position_ids: Int[Tensor, "kb s"]
    last: Int[Tensor, " kb"]  # index of the last real position of each row


def condition(
    token_embeds: Float[Tensor, "b s d"],
    lengths: Int[Tensor, " b"],
    keep_first: Int[Tensor, " b"],
    probes: Float[Tensor, "k m d"],
    position: Literal["prefix", "suffix"] = "prefix",
) -> Conditioned:
    """Insert every probe into every (right-padded) text: ``concat(p_i, x)`` or ``concat(x, p_i)``.

    ``keep_first`` tokens of each text stay in front of a prefix probe (1 when the tokenizer adds BOS: the LM
    never saw anything before its BOS). Padding stays at the end, so each row's real tokens keep positions
    0..len-1; ``position_ids`` is the cumulative attention mask all the same, as for any padded batch.
    """
    b, s, d = token_embeds.shape
    k, m, _ = probes.shape
    pos = torch.arange(s + m, device=token_embeds.device)[None]  # [1, S]
    start = (keep_first if position == "prefix" else lengths)[:, None]  # where the probe begins, [b, 1]
    is_probe = (pos >= start) & (pos < start + m)
    src = torch.where(pos < start, pos, pos - m).clamp(0, s - 1)  # text token each non-probe slot takes
    text_part = token_embeds.gather(1, src[..., None].expand(b, s + m, d))
    probe_part = probes.to(token_embeds.dtype)[:, (pos - start).clamp(0, m - 1)]  # [k, b, S, d]
    embeds = torch.where(is_probe[None, ..., None], probe_part, text_part[None]).reshape(k * b, s + m, d)
    total = lengths + m
    mask = (pos < total[:, None]).long().repeat(k, 1)
    return Conditioned(embeds, mask, (mask.cumsum(-1) - 1).clamp_min(0), (total - 1).repeat(k))


class ProbeReader:
    """Runs a frozen causal LM on probe-conditioned texts and returns one response vector per (text, probe).

    The reader is a plain object that holds the LM without owning it (ProbeModule owns it as a frozen
    submodule kept out of its state_dict). Gradients flow to the probes through the LM's activations only.

    Args:
        lm: a Hugging Face causal LM (frozen by the caller).
        tokenizer: its tokenizer.
        position: "prefix" (``concat(p, x)``) or "suffix" (``concat(x, p)``).
        layer: hidden-state index of the response (-1 = final, after the final norm; 0 = embeddings).
        response: "hidden" (hidden state at the last real position) or "logprobs" (log-probabilities of the
            candidate answer tokens at that position).
        candidate_ids: token ids of the candidate answers (needed for response="logprobs").
    """

    def __init__(
        self,
        lm,
        tokenizer,
        position: Literal["prefix", "suffix"] = "prefix",
        layer: int = -1,
        response: Literal["hidden", "logprobs"] = "hidden",
        candidate_ids: Int[Tensor, " c"] | None = None,
    ):
        if position not in ("prefix", "suffix"):
            raise ValueError(f"position={position!r}: choose 'prefix' or 'suffix'")
        if response not in ("hidden", "logprobs"):
            raise ValueError(f"response={response!r}: choose 'hidden' or 'logprobs'")
        if response == "logprobs" and candidate_ids is None:
            raise ValueError("response='logprobs' needs the candidate answers (link the data's candidates)")
        n_layers = lm.config.num_hidden_layers
        if not -n_layers - 1 <= layer <= n_layers:
            raise ValueError(f"layer={layer}: this LM has hidden states 0..{n_layers} (or -1 for the last)")
        self.lm, self.tokenizer, self.position, self.layer = lm, tokenizer, position, layer
        self.response, self.candidate_ids = response, candidate_ids
        self._ids: dict[tuple[str, bool], list[int]] = {}
        self._lead = len(special_template(tokenizer)[0])

    @property
    def response_dim(self) -> int:
        return len(self.candidate_ids) if self.response == "logprobs" else self.lm.config.hidden_size

    def encode(
        self, texts: Sequence[str], as_prompt: bool
    ) -> tuple[Int[Tensor, "b s"], Int[Tensor, " b"], Int[Tensor, " b"]]:
        """Right-padded token ids, lengths, and how many leading specials (BOS) stay before a prefix probe.

        Tokenised as every other part does (``probes.lm.scoring.tokenize``); ``as_prompt`` (queries) drops
        trailing specials so the last position is the one that predicts the answer.
        """
        missing = [t for t in dict.fromkeys(texts) if (t, as_prompt) not in self._ids]
        for text, item in zip(missing, tokenize(self.tokenizer, missing, as_prompt=as_prompt), strict=True):
            self._ids[text, as_prompt] = item.ids
        rows = [self._ids[t, as_prompt] for t in texts]
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, lengths, torch.full_like(lengths, self._lead)

    def __call__(
        self, texts: Sequence[str], probes: Float[Tensor, "k m d"], as_prompt: bool = True
    ) -> Float[Tensor, "b k r"]:
        """Responses of every text under every probe; ``as_prompt`` for queries, False for documents."""
        device = probes.device
        ids, lengths, keep = (t.to(device) for t in self.encode(texts, as_prompt))
        cond = condition(self.lm.get_input_embeddings()(ids), lengths, keep, probes, self.position)
        out = self.lm.base_model(
            inputs_embeds=cond.embeds,
            attention_mask=cond.attention_mask,
            position_ids=cond.position_ids,
            output_hidden_states=self.layer != -1,
            use_cache=False,
        )
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        rows = hidden[torch.arange(len(cond.last), device=device), cond.last]
        if self.response == "logprobs":
            logits = self.lm.get_output_embeddings()(rows).float().log_softmax(-1)
            rows = logits[:, self.candidate_ids.to(device)]
        k = probes.shape[0]
        return rows.float().view(k, len(texts), -1).transpose(0, 1)
