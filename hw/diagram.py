"""Draw the accelerator block diagram (hw/accel_block_diagram.png) with matplotlib.

    python -m edgekit.hw.diagram
"""
from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent / "accel_block_diagram.png"


def draw(path: Path = OUT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from edgekit.compile.accel import isa

    hw = isa.HW_DEFAULTS
    n = hw["N"]
    fig, ax = plt.subplots(figsize=(13, 7.2))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 7.2)
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.03", fc=color, ec="black", lw=1.2))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(x0, y0, x1, y1, text="", both=False):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="<->" if both else "->", lw=1.3))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=7.5, color="#333")

    box(0.2, 5.6, 2.2, 1.2,
        "control/status block\nstart, soft reset,\nerror code + PC,\n12 x 64-bit counters", "#f6e8c3")
    box(3.0, 5.6, 2.2, 1.2, f"fetch unit\n{hw['IQ_DEPTH']}-entry instruction\nqueue, bursts of 8 insns", "#dfc27d")
    box(5.8, 5.6, 3.0, 1.2,
        "dispatcher\ndecode + error checks\nfootprint hazard interlock\n(in order, precise faults)", "#dfc27d")
    box(3.0, 3.4, 2.2, 1.3, "load unit\n2-D DMA, zero-point\npadding", "#c7eae5")
    box(5.8, 3.4, 3.0, 1.3,
        f"compute unit\n{n}x{n} INT4/INT8 MAC array (int32)\nvector unit (set/add/max/min)\n"
        f"{n} post lanes: bias, M+shift RNE,\nzp, clamp, residual", "#80cdc1")
    box(9.4, 3.4, 2.2, 1.3, "store unit\n2-D DMA, starts only\nas oldest in flight", "#c7eae5")
    depth = {b: isa.buffer_depth(b) for b in isa.BUFFERS}
    kib = {b: depth[b] * isa.row_bytes(b, n) // 1024 for b in isa.BUFFERS}
    box(3.0, 1.1, 8.6, 1.5, "", "#f5f5f5")
    ax.text(7.3, 2.35, "on-chip buffers (row ports for compute, word ports for DMA)", ha="center", fontsize=9)
    for i, (b, label) in enumerate((("act", "activation"), ("wgt", "weight"), ("acc", "accumulator"),
                                    ("param", "parameter"))):
        box(3.2 + i * 2.1, 1.25, 1.9, 0.85, f"{label}\n{depth[b]} x {isa.row_bytes(b, n)} B = {kib[b]} KiB", "white")
    box(0.2, 1.1, 2.2, 3.6,
        "AXI4 master\n(subset)\n64-bit data\nINCR bursts <= 16\nno 4 KiB crossing\n1 read + 1 write\n"
        "burst in flight\n\nDRAM", "#e0e0e0")
    arrow(2.4, 6.2, 3.0, 6.2, "start")
    arrow(5.2, 6.2, 5.8, 6.2, "insn")
    arrow(6.6, 5.6, 4.1, 4.7, "issue")
    arrow(7.3, 5.6, 7.3, 4.7, "issue")
    arrow(8.2, 5.6, 10.5, 4.7, "issue")
    arrow(4.1, 3.4, 4.1, 2.6)
    arrow(7.3, 3.4, 7.3, 2.6, both=True)
    arrow(10.5, 2.6, 10.5, 3.4)
    arrow(3.0, 4.0, 2.4, 4.0, "AR/R")
    arrow(3.0, 6.0, 2.4, 4.5, "AR/R")
    # write channel: from the store unit around the buffers to the bus port
    ax.plot([11.6, 12.4, 12.4, 1.3], [4.0, 4.0, 0.7, 0.7], color="black", lw=1.3)
    arrow(1.3, 0.7, 1.3, 1.1)
    ax.text(7.0, 0.8, "AW/W/B", fontsize=7.5, color="#333")
    ax.set_title(f"edgekit accelerator (N={n}): decoupled load / compute / store with hardware hazard interlocks",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw())
