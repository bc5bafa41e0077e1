"""Per-layer SQNR report as a picture (the JSON is the pipeline's report dict)."""
from __future__ import annotations

from pathlib import Path


def plot_layer_sqnr(per_step: dict, title: str, path) -> None:
    """per_step: {step name: {layer name: SQNR dB}} -> PNG line chart, layers in topological order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.fileio import atomic_path

    steps = list(per_step)
    layers = list(per_step[steps[0]])
    fig, ax = plt.subplots(figsize=(max(8, len(layers) * 0.18), 4.5))
    for step in steps:
        ax.plot(range(len(layers)), [per_step[step][name] for name in layers], marker=".", label=step)
    ax.set_xlabel("layer (topological order)")
    ax.set_ylabel("SQNR at block output (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
