"""compare.py's configuration objects: the model pair and how its features are computed, and a method row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probes.errors import UserError, check_at_least, check_device


@dataclass
class PairConfig:
    """The model pair and how its features are computed.

    Args:
        old: f_old, a local path or hub id; null for the embedded default tiny pair (built on first use).
        new: f_new, a local path or hub id; null for the embedded default tiny pair.
        dtype: weights' dtype (float32, bfloat16, float16, float64).
        device: where the models run (cpu, cuda, cuda:1, ...).
        attn_implementation: transformers attention implementation (null = the model's default).
        trust_remote_code: allow custom model code from a hub repository.
        feature_batch_size: texts per forward/backward pass when computing hidden states and gradients.
        feature_max_tokens: also cap each forward pass at this many padded tokens (longest text x texts;
            gradient passes at half), so batches of long texts shrink instead of running out of memory;
            null = no cap.
        feature_compile: run the feature passes' decoder blocks through torch.compile (see
            probes/features/fast/compiled.py; BENCHMARKS.md has its speed-up and compile time); worth it when
            the passes are long (large corpora) and the feature cache is cold. Fast backend only.
        feature_backend: "fast" (masks dropped for right padding, fused losses, optional compile) or
            "reference" (the plain computation, for checking); both give the same features
            (probes/features/backend.py).
        score_batch_size: test queries per call to a method's score().
        feature_cache: keep hidden states and gradients on disk (under $PROBES_CACHE) for later runs.
        threads: CPU intra-op threads while the models run on the CPU (null = torch's default, every
            core). Give 1 when another torch process shares the cores: on 2 shared cores two threads ran the
            patched forward ~6x slower than one; alone on 2 cores, 2 threads ran the default config in 3m48s
            against 5m44s with 1. With a GPU torch's default stays: the CPU then ranks and writes.
        devices: devices that share the feature passes (hidden states, gradients) through Lightning's ddp
            strategy. Above 1, the first uncached pass relaunches compare.py once per extra device; every rank
            loads the pair on its own device (device cuda -> cuda:LOCAL_RANK) and runs the methods, and rank 0
            alone writes the results. Needs device cuda (or cpu, a CPU smoke test), not cuda:N.
    """

    old: str | None = None
    new: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    feature_batch_size: int = 32
    feature_max_tokens: int | None = None
    feature_compile: bool = False
    feature_backend: str = "fast"
    score_batch_size: int = 64
    feature_cache: bool = True
    threads: int | None = None
    devices: int = 1

    def __post_init__(self) -> None:
        """Refuse bad values before anything loads: dtype, device, the pair's paths, sizes."""
        from probes.features.backend import BACKENDS
        from probes.lm.load import DTYPES

        if self.dtype not in DTYPES:
            raise UserError(f"model.dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        check_device(self.device, "model.device")
        if (self.old is None) != (self.new is None):
            raise UserError(
                "model.old and model.new: give both paths, or neither for the embedded default pair"
            )
        if self.feature_backend not in BACKENDS:
            raise UserError(f"model.feature_backend={self.feature_backend!r} is not one of {list(BACKENDS)}")
        if self.feature_compile and self.feature_backend != "fast":
            raise UserError("model.feature_compile: true needs model.feature_backend: fast")
        for key in ("feature_batch_size", "score_batch_size", "devices"):
            check_at_least(f"model.{key}", getattr(self, key))
        for key in ("feature_max_tokens", "threads"):
            check_at_least(f"model.{key}", getattr(self, key), optional=True)

    def paths(self, corpus_path: str | None) -> tuple[str, str]:
        """(f_old, f_new): the configured ones, or the embedded default pair for the corpus (built on first
        use, cached)."""
        if self.old is not None:
            return str(self.old), str(self.new)
        from probes.pairs.default import ensure_default_pair

        old, new = ensure_default_pair(corpus_path)
        return str(old), str(new)


@dataclass
class MethodEntry:
    """One row of the comparison.

    Args:
        label: its name in every output (unique; the same method may appear under several labels).
        method: a registered method name (see probes.methods.method_names()).
        options: keyword options of that method.
        tune: options to choose on the validation queries only (see probes/compare/tune.py): ``{option:
        [values]}``
            (their product) or a list of option dicts; each point overrides ``options``, is scored on val by
            macro mAP, and the best one scores the test split. null = no tuning.
    """

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, list[Any]] | list[dict[str, Any]] | None = None


def add_study_arguments(parser) -> None:
    """compare.py's config keys (``--config``, ``data``, ``model``, ``methods``, ``dlp_checkpoint``), shared
    with ``python -m probes.counterfactual``, which reads the same configs."""
    from jsonargparse import ActionConfigFile

    from probes.data.hops import HopsData

    parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML config such as configs/compare.yaml"
    )
    # the loader options serve the DataModule only; compare.py scores in model.score_batch_size batches
    parser.add_class_arguments(HopsData, "data", skip={"batch_size", "num_workers"})
    parser.add_class_arguments(PairConfig, "model")
    parser.add_argument("--methods", type=list[MethodEntry], default=[], help="the methods, in table order")
    parser.add_argument(
        "--dlp_checkpoint",
        type=str | list[str] | None,
        default=None,
        help="a DLP checkpoint to add as 'dlp', or a list of them (the fits of several seeds), whose "
        "per-query standardised scores are averaged into the one row",
    )
