"""Which DDP rank this process is and where its models go; Lightning is imported only with several devices
(a one-device run, e.g. compare.py on one GPU, never pays for importing it)."""

from __future__ import annotations

import os


def global_rank(devices: int) -> int:
    """This process's rank among ``devices`` DDP ranks: 0 with one device; with several, 0 in the process
    that launched the run (Lightning reads it from the environment of a relaunched script before any Trainer
    starts, and sets it on each rank)."""
    if devices == 1:
        return 0
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # lazy: imports Lightning

    return int(rank_zero_only.rank)


def rank_device(device: str, devices: int) -> str:
    """Where this rank's models go: with several devices, "cuda" is the rank's own ``cuda:LOCAL_RANK``."""
    if devices < 1:
        raise ValueError(f"devices={devices}: must be >= 1")
    if devices == 1 or device == "cpu":
        return device
    if device != "cuda":
        raise ValueError(
            f"device {device!r} with devices={devices}: give 'cuda' (each rank takes cuda:<LOCAL_RANK>) "
            "or 'cpu'"
        )
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
