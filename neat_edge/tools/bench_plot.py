"""`neat-bench --plot OUT.png`: step latency, throughput, size and bits/byte of every row, side by side."""

from __future__ import annotations

from pathlib import Path

from neat_edge.fileio import atomic_write


def plot_results(results: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [r for r in results if "error" not in r]
    labels = [f"{r['backend']}\n{r['precision']}" for r in rows]
    panels = [("step latency p50 ms (bars) / p99 (ticks)", [r["step_latency_ms"]["p50"] for r in rows]),
              ("scoring bytes/s", [r["score_bytes_per_s"] for r in rows]),
              ("generation bytes/s", [r["generate_bytes_per_s"] for r in rows]),
              ("size MB", [r["size_mb"] for r in rows]),
              ("bits/byte", [r["bits_per_byte"] for r in rows])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4 + 0.15 * len(rows)))
    colors = [f"C{i}" for i in range(len(rows))]
    for ax, (name, values) in zip(axes, panels):
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if name.startswith("step"):
            ax.scatter(range(len(rows)), [r["step_latency_ms"]["p99"] for r in rows], marker="_", s=300, color="k")
        if name == "bits/byte" and values:
            lo = min(values)
            ax.set_ylim(lo - 0.05 * max(lo, 0.1), max(values) + 0.02 * max(lo, 0.1))
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
