"""MAGIC's metagradients (Ilyas & Engstrom 2025): d output / d w_doc through every step of the fine-tune that
made f_new, for every document and several outputs at once.

Reverse-mode through a `Replay`: a forward pass stores the state (parameters and AdamW moments) before every
``every``-th step; the reverse pass walks the segments from the last, recomputes a segment's states from its
checkpoint, and pulls the outputs' cotangents back through each step with ``torch.func.vjp`` (the step holds
the loss gradient, so this differentiates twice), vmapped over the outputs. Each step's vjp also gives the
cotangent of that batch's document weights, summed into the document's score: a document seen in several
epochs collects one term per occurrence. Memory: the checkpoints (steps / every states) plus one segment's
states plus three parameter-sized cotangents per output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor
from torch.func import functional_call, vjp, vmap

from probes.pairs.replay import Replay, State
from probes.progress import progress_bar

JACOBIAN_CHUNK = 16  # outputs differentiated at once at the final parameters
# the outputs at the final parameters: params -> [q] (one scalar per output)
Outputs = Callable[[dict[str, Tensor]], Float[Tensor, " q"]]


def checkpoints(replay: Replay, weights: Float[Tensor, " n"], every: int) -> tuple[dict[int, State], State]:
    """({step t: the state before step t, for t = 0, every, 2 every, ...}, the final state)."""
    state, saved = replay.initial(), {}
    for start in range(0, replay.steps, every):
        saved[start] = state
        state = replay.run(state, start, min(start + every, replay.steps), weights)[-1]
    return saved, state


def output_cotangents(outputs: Outputs, params: dict[str, Tensor], q: int) -> State:
    """Each output's gradient with respect to the final parameters ([q, *shape] per parameter; zero for
    the moments, which the outputs do not read)."""
    # in chunks: each output's vjp runs over every output's inputs (e.g. the whole batch of prompts)
    jac = torch.func.jacrev(outputs, chunk_size=JACOBIAN_CHUNK)(params)
    grads = {n: g.detach() for n, g in jac.items()}
    zeros = {n: torch.zeros(q, *p.shape, dtype=p.dtype, device=p.device) for n, p in params.items()}
    return grads, zeros, {n: z.clone() for n, z in zeros.items()}


class Metagradients:
    """d outputs(final params) / d w at ``weights`` (default: every document at 1), ``[q, n]``, for any
    outputs: the forward pass (checkpoints) runs once, each call one reverse pass.

    Args:
        replay: the fine-tune.
        weights: the documents' loss weights the derivative is taken at.
        every: steps between checkpoints (default: about the square root of the step count, which balances
            the checkpoints against one segment's states).
    """

    def __init__(self, replay: Replay, weights: Float[Tensor, " n"] | None = None, every: int | None = None):
        dtype = next(iter(replay.initial()[0].values())).dtype
        n = len(replay.seqs)
        self.replay, self.every = replay, every or max(1, round(replay.steps**0.5))
        self.weights = torch.ones(n, dtype=dtype, device=replay.device) if weights is None else weights
        self.saved, self.final = checkpoints(replay, self.weights, self.every)

    def __call__(self, outputs: Outputs, q: int, progress: bool = True) -> Float[Tensor, "q n"]:
        """The metagradients of the q outputs ``outputs`` returns (e.g. each test query's answer
        log-probability), summed over every step that holds a document."""
        replay, every = self.replay, self.every
        with replay.attention():
            cotangent = output_cotangents(outputs, self.final[0], q)
        scores = torch.zeros(q, len(replay.seqs), dtype=torch.float64, device=replay.device)
        bar = progress_bar(total=replay.steps, desc="metagradients", unit="step", disable=not progress)
        for start in sorted(self.saved, reverse=True):
            stop = min(start + every, replay.steps)
            first = self.saved[start]
            states = [first, *replay.run(first, start, stop - 1, self.weights)]  # the states before each step
            for t in range(stop - 1, start - 1, -1):
                cotangent, weight_cotangent = _step_back(replay, states.pop(), t, self.weights, cotangent)
                index = torch.tensor(replay.batches[t], device=scores.device)
                scores.index_add_(1, index, weight_cotangent.to(scores.dtype))
                bar.update(1)
        bar.close()
        return scores


def _step_back(
    replay: Replay, state: State, t: int, weights: Tensor, cotangent: State
) -> tuple[State, Tensor]:
    """Pull the cotangents of the state after step ``t`` back to the state before it, and to the weights of
    step ``t``'s documents ([q, b])."""
    ids, labels = replay.inputs(t)
    w = replay.batch_weights(weights, t)
    with replay.attention():
        _, pull = vjp(lambda s, w_: replay.step(s, t, ids, labels, w_, traced=True), state, w)
        return vmap(pull)(cotangent)


def answer_logprobs(replay: Replay, prompts: list[list[int]], answers: list[int]) -> Outputs:
    """``params -> [q]``: each prompt's answer log-probability (over the whole vocabulary, float32 or
    better) at its last token, the output the counterfactual retrains record; prompts right-padded into one
    batch (causal attention: a prompt never sees its pads)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), replay.pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt)
    ids, rows = ids.to(replay.device), torch.arange(len(prompts), device=replay.device)
    last = torch.tensor([len(p) - 1 for p in prompts], device=replay.device)
    target = torch.tensor(answers, device=replay.device)

    def outputs(params: dict[str, Tensor]) -> Tensor:
        logits = functional_call(replay.model, (params, replay.buffers), (ids,), {"use_cache": False}).logits
        logits = logits[rows, last]
        logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
        return logits.log_softmax(-1)[rows, target]

    return outputs
