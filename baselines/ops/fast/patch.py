"""Causal patching over cached prefixes: positions before the last are f_old's own, so their keys/values are
computed once per prompt and every candidate's patched last token runs through the remaining blocks as one
batch, attending to its prompt's cached prefix (the reference: `baselines.ops.patch.Patcher`)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from baselines.ops.patch import Patcher, Prefix
from probes.lm.scoring import to_device
from probes.lm.stack import attention_implementation


def _layer_kv(cache, index: int) -> tuple[Tensor, Tensor]:
    """Keys and values of block ``index`` from a transformers DynamicCache (new ``layers`` or old lists)."""
    if hasattr(cache, "layers"):
        return cache.layers[index].keys, cache.layers[index].values
    return cache.key_cache[index], cache.value_cache[index]


class _SharedPrefix:
    """What the candidates of one `Patcher.logits` call attend to: the cached prefixes of the ``prompts`` they
    come from (u distinct prompts of ``prefix``), and ``inverse``, each candidate's prompt among them (None
    when u = 1)."""

    def __init__(self, prefix: Prefix, rows: Tensor | int, device: torch.device):
        self.prefix = prefix
        if not isinstance(rows, int):
            prompts, inverse = torch.unique(rows.cpu(), return_inverse=True)
            if len(prompts) > 1:
                self.prompts, self.inverse = to_device(prompts, device), to_device(inverse, device)
                return
            rows = int(prompts[0])
        self.prompts, self.inverse = slice(rows, rows + 1), None  # a view of the one prompt's prefix

    def keys_values(self, layer: int) -> tuple[Tensor, Tensor]:
        """Block ``layer``'s prefix keys and values of the prompts, [u, heads, P, dim] each."""
        return self.prefix.keys[layer][self.prompts], self.prefix.values[layer][self.prompts]


def shared_prefix_attention(
    module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float, **kwargs
) -> tuple[Tensor, None]:
    """Attention of each candidate's one position over its prompt's cached prefix and its own key/value.

    A transformers attention function (`PREFIX_ATTENTION` inside `attention_implementation`): ``query``
    [b, H, 1, dim], ``key`` and ``value`` [b, H_kv, 1, dim] are the candidates' own;
    ``kwargs["shared_prefix"]`` holds the prefixes. Concatenating a prefix to every candidate's key/value
    (what a KV cache does) copied it b times per block and took half of patching's time. Here all
    candidates are scored against the u prompts' prefixes at once, one product per key/value head
    ([b, dim] x [dim, u * P]), and each keeps its own prompt's scores; the values are mixed back the same
    way. Scores and softmax in float32 (float64 for a float64 model).
    """
    shared = kwargs["shared_prefix"]
    prefix_keys, prefix_values = shared.keys_values(module.layer_idx)
    prompts, kv_heads, length, dim = prefix_keys.shape
    count, heads = query.shape[:2]
    groups, rows = heads // kv_heads, count * heads // kv_heads
    exact = torch.float64 if query.dtype == torch.float64 else torch.float32

    def per_kv_head(x: Tensor) -> Tensor:
        """[count, heads or kv_heads, 1, dim] -> [kv_heads, count * groups, dim], the query heads that share
        a key/value head side by side (key/value heads repeated over their groups)."""
        x = x.reshape(count, kv_heads, -1, dim).expand(count, kv_heads, groups, dim)
        return x.permute(1, 0, 2, 3).reshape(kv_heads, rows, dim)

    q = per_kv_head(query)
    scores = q @ prefix_keys.permute(1, 3, 0, 2).reshape(kv_heads, dim, prompts * length)
    own_prompt = None
    if shared.inverse is not None:  # keep each candidate's own prompt's P columns
        own_prompt = (
            shared.inverse.repeat_interleave(groups).view(1, rows, 1, 1).expand(kv_heads, rows, 1, length)
        )
        scores = (
            scores.view(kv_heads, rows, prompts, length).gather(2, own_prompt).view(kv_heads, rows, length)
        )
    own = (q.to(exact) * per_kv_head(key).to(exact)).sum(-1, keepdim=True)
    weights = (torch.cat((scores.to(exact), own), -1) * scaling).softmax(-1)
    mixed = weights[..., :length].to(value.dtype)
    if own_prompt is not None:  # back to u * P columns, zero outside the candidate's own prompt
        spread = torch.zeros(kv_heads, rows, prompts, length, dtype=mixed.dtype, device=mixed.device)
        mixed = spread.scatter_(2, own_prompt, mixed[:, :, None]).view(kv_heads, rows, prompts * length)
    out = mixed @ prefix_values.permute(1, 0, 2, 3).reshape(kv_heads, prompts * length, dim)
    out = out.to(exact) + weights[..., length:] * per_kv_head(value).to(exact)
    out = out.view(kv_heads, count, groups, dim).permute(1, 0, 2, 3)
    return out.to(query.dtype).reshape(count, 1, heads, dim), None


PREFIX_ATTENTION = "probes_shared_prefix"


class FastPatcher(Patcher):
    """`Patcher` whose prefixes keep f_old's keys/values and whose `logits` push every candidate state through
    blocks ``layer+1..L``, the final norm and the candidate rows of ``lm_head`` as one batch."""

    caches = True

    def cached(self, run) -> dict[str, dict[int, Tensor]]:
        """The keys and values of every position before the last, per block from the patch layer on."""
        cache = run.cache if getattr(run, "cache", None) is not None else run.past_key_values
        kv = {i: _layer_kv(cache, i) for i in range(self.layer, self.blocks)}
        return dict(
            keys={i: k[:, :, :-1].contiguous() for i, (k, _) in kv.items()},
            values={i: v[:, :, :-1].contiguous() for i, (_, v) in kv.items()},
        )

    @torch.inference_mode()
    def logits(
        self, prefix: Prefix, rows: Int[Tensor, "b"] | int, states: Float[Tensor, "b d"]
    ) -> Float[Tensor, "b c"]:
        """Candidate-answer logits of f_old when prompt ``prefix.rows[rows]`` has ``states`` at the layer.

        ``rows`` is each candidate's prompt within ``prefix`` (read on the host: give a CPU tensor, or a GPU
        one is waited for), or one int when all share a prompt.
        """
        hidden = states.to(device=self.device, dtype=self.dtype)[:, None, :]
        if self.layer < self.blocks:
            position = torch.full((hidden.shape[0], 1), prefix.position, device=self.device)
            rotary = self.stack.rotary_emb(hidden, position_ids=position[:1])
            shared = _SharedPrefix(prefix, rows, self.device)
            with attention_implementation(self.model, PREFIX_ATTENTION, shared_prefix_attention):
                for block in self.stack.layers[self.layer :]:
                    hidden = block(
                        hidden,
                        attention_mask=None,
                        position_ids=position,
                        position_embeddings=rotary,
                        shared_prefix=shared,
                    )
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            hidden = self.stack.norm(hidden)
        logits = hidden[:, 0] @ self.head.T
        return logits if self.bias is None else logits + self.bias
