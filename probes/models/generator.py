"""The DLP probe generator: k learned latents through one deep-linear G into k soft prompts of m tokens."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class DeepLinear(nn.Module):
    """``depth`` linear layers with no activation between them, so the stack is one affine map.

    Over-parametrising a linear map this way changes the optimisation (implicit low-rank bias), not what the
    map can express. ``activation`` inserts a non-linearity between the layers: the ablation control.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        depth: int = 3,
        width: int = 256,
        activation: Literal["relu", "gelu", "tanh"] | None = None,
        bias: bool = True,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"generator depth={depth}: need at least 1 linear layer")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"generator activation={activation!r}: use one of {sorted(ACTIVATIONS)} or null")
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in pairs)
        self.activation = ACTIVATIONS[activation]() if activation else None

    def forward(self, x: Float[Tensor, "*batch i"]) -> Float[Tensor, "*batch o"]:
        for i, layer in enumerate(self.layers):
            if i and self.activation is not None:
                x = self.activation(x)
            x = layer(x)
        return x

    def collapsed(self) -> tuple[Float[Tensor, "i o"], Float[Tensor, " o"]]:
        """The single affine map ``x @ weight + bias`` that the stack equals (biases folded through)."""
        if self.activation is not None:
            raise ValueError("a generator with an activation between its layers is not one linear map")
        first = self.layers[0].weight
        weight = torch.eye(first.shape[1], dtype=first.dtype, device=first.device)
        bias = torch.zeros(first.shape[1], dtype=first.dtype, device=first.device)
        for layer in self.layers:
            weight = weight @ layer.weight.T
            bias = bias @ layer.weight.T
            if layer.bias is not None:
                bias = bias + layer.bias
        return weight, bias


class ProbeGenerator(nn.Module):
    """Probes ``p_i = G(z_i)``, each reshaped to ``probe_tokens`` soft tokens of the LM's embedding width.

    Every soft token is rescaled to ``token_norm`` (set from the LM's real token embeddings by
    ``set_token_norm``), so a probe looks to the LM like a sequence of ordinary tokens whatever G's scale.

    Args:
        embedding_dim: the LM's hidden size (given by ProbeModule once the LM is loaded).
        num_probes: k, the number of probes (small: each one is a full LM pass per text).
        probe_tokens: m, soft tokens per probe.
        latent_dim: size of each learned latent z_i.
        depth: linear layers in G (no activation between them).
        width: hidden width of G.
        activation: null for the deep-linear G; relu/gelu/tanh between the layers as the ablation control.
        norm: which statistic of the real token embedding norms the soft tokens are scaled to.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_probes: int = 4,
        probe_tokens: int = 4,
        latent_dim: int = 32,
        depth: int = 3,
        width: int = 256,
        activation: Literal["relu", "gelu", "tanh"] | None = None,
        norm: Literal["median", "mean"] = "median",
    ):
        super().__init__()
        sizes = {"num_probes": num_probes, "probe_tokens": probe_tokens, "latent_dim": latent_dim}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"generator {name}={value}: must be at least 1")
        if norm not in ("median", "mean"):
            raise ValueError(f"generator norm={norm!r}: choose 'median' or 'mean'")
        self.num_probes, self.probe_tokens, self.embedding_dim, self.norm = (
            num_probes,
            probe_tokens,
            embedding_dim,
            norm,
        )
        self.latents = nn.Parameter(torch.randn(num_probes, latent_dim))
        self.net = DeepLinear(latent_dim, probe_tokens * embedding_dim, depth, width, activation)
        self.register_buffer("token_norm", torch.tensor(1.0))

    @torch.no_grad()
    def set_token_norm(self, embedding_weight: Float[Tensor, "v d"]) -> None:
        """Scale target: the median (or mean) L2 norm of the LM's input embedding rows."""
        norms = embedding_weight.detach().to(self.token_norm).norm(dim=-1)
        value = norms.median() if self.norm == "median" else norms.mean()
        self.token_norm.copy_(value)

    def raw(self) -> Float[Tensor, "k m d"]:
        """G(z_i) before the norm scaling, one row of m soft tokens per probe."""
        return self.net(self.latents).view(self.num_probes, self.probe_tokens, self.embedding_dim)

    def forward(self) -> Float[Tensor, "k m d"]:
        raw = self.raw()
        return raw * (self.token_norm / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12))
