"""The recall@k figure of a comparison and of a DLP fit: recall against k on a log axis, one line a curve."""

from __future__ import annotations

from collections.abc import Mapping

from probes.metrics import KS

Curves = Mapping[str, Mapping[int, float]]  # label -> {k: recall@k}


def recall_figure(panels: Mapping[str, Curves], ylabel: str = "recall@k", width: float = 5.0):
    """One panel per title in ``panels``, side by side with a shared y axis; a curve whose label names
    "random" is drawn dashed in black. The caller saves or logs the figure and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 0.8 * width), sharey=True)
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, curves) in zip(axes, panels.items(), strict=True):
        for label, curve in curves.items():
            ks = sorted(curve)
            style = {"ls": "--", "c": "k"} if "random" in label else {}
            ax.plot(ks, [curve[k] for k in ks], marker="o", label=label, **style)
        ax.set(title=title, xlabel="k", xscale="log", ylim=(0, None))
        ax.set_xticks(list(KS), [str(k) for k in KS])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig
