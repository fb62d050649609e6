"""The recall@k figure logged at the end of a DLP fit (TensorBoard, plus a PNG beside the logs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from probes.metrics import KS  # noqa: E402


def recall_curve(metrics: Mapping[str, float], prefix: str, average: str = "macro") -> dict[int, float]:
    """{k: recall@k} read from a flat metrics dict such as {"val/macro/recall@10": 0.4}."""
    return {
        k: metrics[f"{prefix}/{average}/recall@{k}"]
        for k in KS
        if f"{prefix}/{average}/recall@{k}" in metrics
    }


def recall_figure(curves: Mapping[str, Mapping[int, float]], title: str):
    """One line per curve, recall against k on a log axis."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        ks = sorted(curve)
        ax.plot(
            ks, [curve[k] for k in ks], marker="o", label=label, linestyle="--" if "random" in label else "-"
        )
    ax.set(xscale="log", xlabel="k", ylabel="recall@k", title=title, ylim=(0, None))
    ax.set_xticks(list(KS), [str(k) for k in KS])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def log_recall_figure(
    trainer, metrics: Mapping[str, float], chance: Mapping[str, float], prefix: str, log_dir: str | None
) -> None:
    """Macro/micro recall@k of the DLP and of a random ranking: TensorBoard and <log_dir>/recall_at_k.png.

    ``log_dir`` is the trainer's, read beforehand on every rank (reading it is a collective under DDP)."""
    curves = {f"DLP {a}": recall_curve(metrics, prefix, a) for a in ("macro", "micro")}
    curves["random (expected)"] = recall_curve(chance, prefix)
    fig = recall_figure(curves, f"{prefix} recall@k (epoch {trainer.current_epoch})")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(f"{prefix}/recall_at_k", fig, global_step=trainer.global_step)
    if log_dir is not None:
        path = Path(log_dir) / "recall_at_k.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
