"""RepSim: per-layer similarity of f_new's hidden states of a query and of a training document."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.ops.feature_method import HiddenStateMethod
from probes.methods import register


@register("repsim")
class RepSim(HiddenStateMethod):
    """Similarity of ``h_l^new(query)`` and ``h_l^new(doc)``, per layer, aggregated over layers; options:
    see `baselines.ops.feature_method.HiddenStateMethod` ("reference" preset: the reference RepSim script)."""

    def hidden(self, store, side: str, pooling: str) -> Float[Tensor, "b l d"]:
        return store.hidden("new", side, pooling)
