"""The recall@k figure logged at the end of a DLP fit (TensorBoard, plus a PNG beside the logs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

from probes.metrics import KS
from probes.plots import recall_figure


def recall_curve(metrics: Mapping[str, float], prefix: str, average: str = "macro") -> dict[int, float]:
    """{k: recall@k} read from a flat metrics dict such as {"val/macro/recall@10": 0.4}."""
    return {
        k: metrics[f"{prefix}/{average}/recall@{k}"]
        for k in KS
        if f"{prefix}/{average}/recall@{k}" in metrics
    }


def log_recall_figure(
    trainer, metrics: Mapping[str, float], chance: Mapping[str, float], prefix: str, log_dir: str | None
) -> None:
    """Macro/micro recall@k of the DLP and of a random ranking: TensorBoard and <log_dir>/recall_at_k.png.

    ``log_dir`` is the trainer's, read beforehand on every rank (reading it is a collective under DDP)."""
    import matplotlib.pyplot as plt

    curves = {f"DLP {a}": recall_curve(metrics, prefix, a) for a in ("macro", "micro")}
    curves["random (expected)"] = recall_curve(chance, prefix)
    fig = recall_figure({f"{prefix} recall@k (epoch {trainer.current_epoch})": curves})
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(f"{prefix}/recall_at_k", fig, global_step=trainer.global_step)
    if log_dir is not None:
        path = Path(log_dir) / "recall_at_k.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
