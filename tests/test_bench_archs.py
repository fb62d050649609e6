"""bench/archs.py: the random-weight stand-ins of the 1B architectures (built shrunk, on the CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from archs import ARCHS, build_model  # noqa: E402


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_olmo2_gradient_nan_no_zero_embedding_row(arch):
    """A zero row (transformers zeroes padding_idx; OLMo2's default pad id 1 is our <s>) made the OLMo2
    gradient pass overflow to NaN: no random-weight stand-in may have one."""
    model = build_model(arch, shrink=True, device=torch.device("cpu"), seed=0)
    assert model.get_input_embeddings().weight.abs().amax(-1).min() > 0
