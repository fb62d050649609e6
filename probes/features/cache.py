"""On-disk feature cache keyed by (model fingerprint, texts, spec), written atomically as safetensors."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes.files import atomic_path, cache_dir
from probes.hashing import SAMPLE, content_hash, tensor_sha256

log = logging.getLogger(__name__)
# The version of what a cached feature means, part of every key: bump it whenever the feature code changes a
# feature's value (pooling, layers, what is multiplied), so entries of older code are never read.
# 2: "penultimate" pooling, per-position attributions (kind "attr"), one shared layer resolver.
FEATURE_VERSION = 2


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's config, path, dtype and weights: any fine-tuning step changes it.

    Every parameter contributes its float64 sum, its norm and a strided sample of its values; all are
    gathered on the model's device and moved to the CPU once, so a 1B model on a GPU hashes in milliseconds.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
        digest.update(str(getattr(config, "_attn_implementation", None)).encode())
        digest.update(str(getattr(config, "_name_or_path", "")).encode())
    parts = []
    for name, param in model.named_parameters():
        flat = param.detach().flatten()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        parts.append(flat.sum(dtype=torch.float64)[None])
        parts.append(torch.linalg.vector_norm(flat, dtype=torch.float64)[None])
        parts.append(flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].double())
    digest.update(torch.cat(parts).cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


class FeatureCache:
    """Feature tensors on disk under ``root`` (default ``cache_dir()/"features"``), one safetensors file each.

    The key covers the feature code's ``version`` (default FEATURE_VERSION), the model's weights
    (`model_fingerprint`), the texts, the spec and ``extra`` (targets, candidate ids, the tokenizer, the old
    checkpoint of an attribution), so a stale entry is never found; files appear atomically, so a crash
    mid-write leaves nothing behind. Each file carries the SHA-256 of its tensor's bytes: one that is
    unreadable, non-finite or fails its checksum is reported by path, removed and recomputed.
    """

    def __init__(self, root: str | Path | None = None, version: int = FEATURE_VERSION):
        self.root = Path(root).expanduser() if root is not None else cache_dir() / "features"
        self.version = version

    def key(self, model: torch.nn.Module, texts: Sequence[str], spec: object, extra: object = None) -> str:
        parts = [model_fingerprint(model), content_hash(list(texts)), spec, extra]
        return content_hash([f"features v{self.version}", *parts])

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get_or_compute(
        self,
        model: torch.nn.Module,
        texts: Sequence[str],
        spec: object,
        fn: Callable[[], Tensor],
        *,
        extra: object = None,
        write: bool = True,
    ) -> Tensor:
        """The cached tensor for this key, else ``fn()`` (no arguments), stored (if ``write``) before it is
        returned; ``write=False`` for the ranks of a DDP run other than 0, which compute the same tensor."""
        path = self.path(self.key(model, texts, spec, extra))
        if path.exists():
            features, problem = self.read(path, len(texts))
            if problem is None:
                return features
            warnings.warn(f"feature cache file {path} {problem}; removing it and recomputing", stacklevel=2)
            if write:  # only the writer removes it, so a DDP rank never deletes rank 0's fresh file
                path.unlink(missing_ok=True)
        features = fn()
        if write:
            metadata = {"spec": str(spec), "rows": str(len(texts)), "sha256": tensor_sha256(features)}
            self.write(path, features, metadata)
            log.info("features cached in %s", path)
        return features

    @staticmethod
    def read(path: Path, rows: int) -> tuple[Tensor | None, str | None]:
        """``(features, None)`` if the file at ``path`` holds ``rows`` finite rows matching its checksum,
        else ``(None, what is wrong)``."""
        try:
            with safe_open(path, "pt") as handle:
                metadata = handle.metadata() or {}
                features = handle.get_tensor("features")
        except (OSError, SafetensorError, KeyError) as error:
            return None, f"is unreadable ({error})"
        if features.shape[0] != rows:
            return None, f"has {features.shape[0]} rows, not {rows}"
        if not bool(torch.isfinite(features).all()):
            return None, "holds NaN or inf (a corrupt cache file, or the model's features overflowed)"
        if "sha256" not in metadata:
            return None, "has no checksum (written by an older probes)"
        if tensor_sha256(features) != metadata["sha256"]:
            return None, "fails its checksum (corrupt on disk)"
        return features, None

    @staticmethod
    def write(path: Path, features: Tensor, metadata: dict[str, str]) -> None:
        with atomic_path(path) as tmp:
            save_file({"features": features.contiguous()}, str(tmp), metadata=metadata)
